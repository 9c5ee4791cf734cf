// The data that ships with the project (data/, issue #16): WikiText-2 test for perplexity and WikiText-2 validation
// for calibration. Defaults never depend on the current directory: the folder is found through QOQ_DATA, else the
// checkout this binary was built from (the package root is known at compile time), else $QOQ_CACHE/data.
import Foundation

public enum BundledData {
  /// The files of data/ (data/README.md has their sources, license and sha256).
  public enum File: String, CaseIterable, Sendable {
    case wikitext2Test = "wikitext-2-raw/wiki.test.raw"
    case calibration = "calibration/wikitext-2-valid.tokens.txt"

    /// Bytes of the shipped copy: a file of another size is not the one the defaults promise.
    public var byteCount: Int {
      switch self {
      case .wikitext2Test: return 1_290_590
      case .calibration: return 1_121_681
      }
    }
    public var what: String {
      switch self {
      case .wikitext2Test: return "WikiText-2 test (wiki.test.raw)"
      case .calibration: return "WikiText-2 validation calibration text"
      }
    }
  }

  /// data/ of the checkout that built this binary: this file is Sources/QoQIO/BundledData.swift.
  public static let packageDataFolder: String = {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
      .deletingLastPathComponent().appendingPathComponent("data").path
  }()

  /// The folders searched, in order, each with where it came from.
  public static func folders(environment env: [String: String] = ProcessInfo.processInfo.environment,
                             checkout: String = packageDataFolder) -> [(String, String)] {
    var out: [(String, String)] = []
    if let d = env["QOQ_DATA"], !d.isEmpty { out.append((d, "QOQ_DATA")) }
    out.append((checkout, "the checkout qoq was built from"))
    let cache = env["QOQ_CACHE"].flatMap { $0.isEmpty ? nil : $0 } ?? ((env["HOME"] ?? NSHomeDirectory()) + "/.cache/qoq")
    out.append((cache + "/data", "QOQ_CACHE/data"))
    return out
  }

  /// The first copy of `file` with the shipped size, else nil.
  public static func locate(_ file: File, environment env: [String: String] = ProcessInfo.processInfo.environment,
                            checkout: String = packageDataFolder) -> String? {
    for (folder, _) in folders(environment: env, checkout: checkout) {
      let p = folder + "/" + file.rawValue
      if let a = try? FileManager.default.attributesOfItem(atPath: p), (a[.type] as? FileAttributeType) == .typeRegular,
         (a[.size] as? NSNumber)?.intValue == file.byteCount {
        return p
      }
    }
    return nil
  }

  /// The path of `file`, or an error naming every place looked at and the flag that replaces it.
  public static func path(_ file: File, flag: String, environment env: [String: String] = ProcessInfo.processInfo.environment,
                          checkout: String = packageDataFolder) throws -> String {
    if let p = locate(file, environment: env, checkout: checkout) { return p }
    let looked = folders(environment: env, checkout: checkout).map { "\($0.0)/\(file.rawValue) (\($0.1))" }.joined(separator: ", ")
    throw QoQError("the bundled \(file.what) was not found with its shipped size of \(file.byteCount) bytes; looked at "
      + "\(looked). Pass \(flag) FILE, or set QOQ_DATA to a folder laid out like the project's data/")
  }
}

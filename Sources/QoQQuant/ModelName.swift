// deepcompressor's --model-name / --model-root resolution: the name must contain a size token (`7b`, `135m`,
// `8x7b`); the family is what precedes it (`llama-2-7b` → `llama-2`); the path is root/family/name.
import Foundation
import QoQIO

public enum ModelName {
  public static func family(_ name: String) throws -> String {
    let lower = name.lowercased()
    guard let re = try? NSRegularExpression(pattern: #"(?<![\d.])(\d+x)?\d+[mb](?![a-z0-9])"#),
          let m = re.firstMatch(in: lower, range: NSRange(lower.startIndex..., in: lower)),
          let r = Range(m.range, in: lower) else {
      throw QoQError("--model-name \(name) has no size token like 7b, 135m or 8x7b (note: 1.1b must be written 1100m)")
    }
    var fam = String(name[name.startIndex..<r.lowerBound])
    while fam.hasSuffix("-") || fam.hasSuffix("_") { fam.removeLast() }
    guard !fam.isEmpty else { throw QoQError("--model-name \(name) has no family before its size token") }
    return fam
  }

  /// The model path from a recipe: model.path, else model.root/family/name.
  public static func resolve(path: String?, name: String?, root: String?) throws -> String {
    if let p = path, !p.isEmpty { return p }
    guard let n = name, !n.isEmpty else { throw QoQError("give --model-path PATH (or --model-name NAME with --model-root ROOT)") }
    guard let r = root, !r.isEmpty else { throw QoQError("--model-name needs --model-root (the path is ROOT/FAMILY/NAME)") }
    return r + "/" + (try family(n)) + "/" + n
  }
}

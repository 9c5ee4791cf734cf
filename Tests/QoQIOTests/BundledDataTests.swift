import Foundation
import Testing
@testable import QoQIO

/// Issue #16 "data in the box": the shipped data/ files, found without depending on the current directory.
@Suite struct BundledDataTests {
  /// The checkout's data/, computed independently of BundledData (this file is Tests/QoQIOTests/…).
  static let repoData = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("data").path

  /// The shipped files are the ones data/README.md names: size and sha256 pinned here by hand.
  @Test func shippedFilesArePinned() throws {
    let expected: [(BundledData.File, String)] = [
      (.wikitext2Test, "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08"),
      (.calibration, "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"),
    ]
    for (file, sha) in expected {
      let bytes = try Data(contentsOf: URL(fileURLWithPath: Self.repoData + "/" + file.rawValue))
      #expect(bytes.count == file.byteCount)
      #expect(sha256Hex(bytes) == sha)
    }
  }

  /// With no environment the checkout's own copy is found, from any current directory.
  @Test func foundWithoutEnvironmentFromAnywhere() throws {
    let cwd = FileManager.default.currentDirectoryPath
    defer { FileManager.default.changeCurrentDirectoryPath(cwd) }
    FileManager.default.changeCurrentDirectoryPath(NSTemporaryDirectory())
    for f in BundledData.File.allCases {
      let p = try BundledData.path(f, flag: "--dataset", environment: ["HOME": "/nonexistent-home"])
      #expect(URL(fileURLWithPath: p).standardizedFileURL.path
              == URL(fileURLWithPath: Self.repoData + "/" + f.rawValue).standardizedFileURL.path)
    }
  }

  /// QOQ_DATA comes first; a copy of the wrong size is passed over; the error names every place and the flag.
  @Test func overrideOrderAndRefusal() throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("qoq-data-\(UUID().uuidString)").path
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let f = BundledData.File.wikitext2Test
    try FileManager.default.createDirectory(atPath: dir + "/wikitext-2-raw", withIntermediateDirectories: true)
    // Wrong size: skipped, so the checkout's copy wins.
    try Data("short".utf8).write(to: URL(fileURLWithPath: dir + "/" + f.rawValue))
    let skipped = BundledData.locate(f, environment: ["QOQ_DATA": dir])
    #expect(skipped != nil && !skipped!.hasPrefix(dir))
    // The right size: QOQ_DATA wins.
    try Data(repeating: 0x41, count: f.byteCount).write(to: URL(fileURLWithPath: dir + "/" + f.rawValue))
    #expect(BundledData.locate(f, environment: ["QOQ_DATA": dir]) == dir + "/" + f.rawValue)
    // The search order: QOQ_DATA, the checkout, QOQ_CACHE/data.
    let folders = BundledData.folders(environment: ["QOQ_DATA": "/a", "QOQ_CACHE": "/c"]).map(\.0)
    #expect(folders.count == 3 && folders[0] == "/a" && folders[2] == "/c/data")
    #expect(BundledData.folders(environment: ["HOME": "/h"]).last?.0 == "/h/.cache/qoq/data")
    // Nothing anywhere (the checkout's folder moved away): the error names each place looked at and the flag.
    let env = ["QOQ_DATA": dir + "/none", "QOQ_CACHE": dir + "/cache"]
    #expect(BundledData.locate(.calibration, environment: env, checkout: dir + "/gone") == nil)
    do {
      _ = try BundledData.path(.calibration, flag: "--calib-path", environment: env, checkout: dir + "/gone")
      Issue.record("a missing calibration file was accepted")
    } catch let e as QoQError {
      for part in [dir + "/none/", dir + "/gone/", dir + "/cache/data/", "--calib-path", "QOQ_DATA", "1121681"] {
        #expect(e.message.contains(part), "\(part) not in: \(e.message)")
      }
    }
  }
}

import Foundation
import Testing
import QoQIO
@testable import QoQTokenizers

let fixturesRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
  .appendingPathComponent("Fixtures").path

/// Ids produced by the reference `tokenizers` library (scripts/fixtures/make_tokenizer_fixtures.py).
struct TokenizerFixture {
  let strings: [String]
  let cases: [JSONValue]
  let longText: String
  let longIds: [Int32]

  init(_ name: String) throws {
    let dir = fixturesRoot + "/tokenizers"
    strings = try JSON.parseFile(dir + "/strings.json").array!.map { $0.string! }
    let e = try JSON.parseFile("\(dir)/\(name)/expected.json")
    cases = e["cases"]!.array!
    let lt = try JSON.parseFile(dir + "/long_text.json")
    longText = lt.string ?? lt["text"]!.string!
    longIds = (e["long_text"]?["ids"]?.array ?? []).map { Int32($0.int!) }
  }
}

func ids(_ v: JSONValue?) -> [Int32] { (v?.array ?? []).map { Int32($0.int!) } }

@Suite struct TokenizerFixtureTests {
  @Test(arguments: ["smollm2", "spm", "qwen2"])
  func matchesReferenceLibrary(_ name: String) throws {
    guard FileManager.default.fileExists(atPath: "\(fixturesRoot)/tokenizers/\(name)/tokenizer.json") else {
      Issue.record("fixture \(name) missing"); return
    }
    let fx = try TokenizerFixture(name)
    let tok = try Tokenizer.load(folder: "\(fixturesRoot)/tokenizers/\(name)")
    var failures: [String] = []
    for (i, s) in fx.strings.enumerated() {
      let c = fx.cases[i]
      let got = try tok.encode(s)
      if got != ids(c["ids"]) { failures.append("#\(i) \(s.debugDescription): \(got) vs \(ids(c["ids"]))"); continue }
      let gotSpecial = try tok.encode(s, addSpecialTokens: true)
      if gotSpecial != ids(c["ids_with_special"]) { failures.append("#\(i) with special: \(gotSpecial)"); continue }
      let dec = try tok.decode(got)
      if dec != c["decoded"]!.string! { failures.append("#\(i) decode \(dec.debugDescription) vs \(c["decoded"]!.string!.debugDescription)") }
      if let dss = c["decoded_skip_special"]?.string, try tok.decode(got, skipSpecialTokens: true) != dss {
        failures.append("#\(i) decode skip special")
      }
    }
    #expect(failures.isEmpty, "\(name): \(failures.count) of \(fx.strings.count) failed; first: \(failures.prefix(8).joined(separator: "\n"))")
    if !fx.longIds.isEmpty {
      #expect(try tok.encode(fx.longText) == fx.longIds, "\(name): long text")
    }
  }
}

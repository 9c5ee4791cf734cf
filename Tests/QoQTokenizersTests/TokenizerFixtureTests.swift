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

@Suite struct GGUFTokenizerTests {
  /// Tokenizers built from GGUF metadata (scripts/fixtures/make_gguf_tokenizer_fixtures.py) must produce the ids
  /// of the reference `tokenizers` library: smollm2 (gpt2 BPE + merges), spm (SentencePiece scores → merges).
  @Test(arguments: ["smollm2", "spm"])
  func ggufMetadataTokenizerMatchesReference(_ name: String) throws {
    let fx = try TokenizerFixture(name)
    let tok = try Tokenizer.load(gguf: GGUFFile(path: "\(fixturesRoot)/tokenizers/\(name)/tokenizer.gguf"))
    var failures: [String] = []
    for (i, s) in fx.strings.enumerated() {
      let c = fx.cases[i]
      let got = try tok.encode(s, addSpecialTokens: true)
      if got != ids(c["ids_with_special"]) { failures.append("#\(i) \(s.debugDescription): \(got) vs \(ids(c["ids_with_special"]))"); continue }
      if try tok.decode(ids(c["ids"])) != c["decoded"]!.string! { failures.append("#\(i) decode") }
    }
    #expect(failures.isEmpty, "\(name): \(failures.count) failed; first: \(failures.prefix(5).joined(separator: "\n"))")
    #expect(try tok.encode(fx.longText) == fx.longIds)
  }

  @Test func exportedTokenizerJSONRoundTrips() throws {
    // The tokenizer.json that `qoq convert` writes from GGUF metadata loads back to the same behaviour.
    let g = try GGUFFile(path: "\(fixturesRoot)/tokenizers/smollm2/tokenizer.gguf")
    let text = JSON.serialize(try tokenizerJSON(gguf: g))
    let tok = try Tokenizer.load(tokenizerJSON: JSON.parse(text, what: "exported"), config: nil, what: "exported")
    let fx = try TokenizerFixture("smollm2")
    for (i, s) in fx.strings.enumerated().prefix(200) { #expect(try tok.encode(s) == ids(fx.cases[i]["ids"])) }
  }
}

import Foundation
import Testing
@testable import QoQEngine
import QoQIO
import QoQTokenizers

/// Incremental detokenization (issue #17 item 5): the streamed pieces add up to the Hugging Face `tokenizers` decode
/// of the whole sequence (the fixtures' `decoded_skip_special`), for byte-level BPE (SmolLM2, Qwen2) and SentencePiece,
/// fed one token at a time; and each token costs a bounded number of decoded ids, so a long output is linear.
@Suite struct DetokenizerTests {
  static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures/tokenizers").path

  static func stream(_ ids: [Int32], _ tok: Tokenizer) throws -> (String, IncrementalDetokenizer) {
    var d = IncrementalDetokenizer(), out = ""
    for n in 1...max(1, ids.count) where !ids.isEmpty {
      out += try d.next(ids[0..<n], flush: n == ids.count) { try tok.decode($0, skipSpecialTokens: true) }
    }
    return (out, d)
  }

  @Test(arguments: ["smollm2", "qwen2", "spm"]) func piecesAddUpToTheReferenceDecode(_ name: String) throws {
    let tok = try Tokenizer.load(folder: Self.root + "/" + name)
    let cases = try JSON.parseFile(Self.root + "/" + name + "/expected.json")["cases"]!.array!
    var checked = 0
    for c in cases {
      let ids = c["ids"]!.array!.map { Int32($0.int!) }
      guard !ids.isEmpty, let want = c["decoded_skip_special"]?.string else { continue }
      let (got, _) = try Self.stream(ids, tok)
      #expect(got == want, "\(name) \(ids)")
      checked += 1
    }
    #expect(checked > 500)
  }

  @Test func longOutputsCostTheSamePerToken() throws {
    let tok = try Tokenizer.load(folder: Self.root + "/smollm2")
    let text = try JSON.parseFile(Self.root + "/long_text.json")["text"]!.string!
    var ids = try tok.encode(text, addSpecialTokens: false, parseSpecial: false)
    while ids.count < 4096 { ids += ids }
    ids = Array(ids.prefix(4096))
    let (got, d) = try Self.stream(ids, tok)
    #expect(got == (try tok.decode(ids, skipSpecialTokens: true)))
    // A full re-decode per token would touch ~n²/2 = 8.4 M ids; the window touches a few per token.
    #expect(d.decodedIds < 8 * ids.count, "\(d.decodedIds) ids decoded for \(ids.count) tokens")
  }

  /// Ids that never complete a UTF-8 sequence (a model emitting stray continuation bytes) do not grow the window
  /// without bound: after a few, their U+FFFD is emitted.
  @Test func brokenUTF8DoesNotStallTheStream() throws {
    let tok = try Tokenizer.load(folder: Self.root + "/smollm2")
    // Byte-level BPE: "Ģ" (id 218 in SmolLM2's vocabulary) is the lone byte 0x82, a UTF-8 continuation byte.
    let ids = [Int32](repeating: 218, count: 40)
    var d = IncrementalDetokenizer(), out = ""
    for n in 1...ids.count { out += try d.next(ids[0..<n]) { try tok.decode($0, skipSpecialTokens: true) } }
    #expect(out.unicodeScalars.count >= 30 && out.unicodeScalars.allSatisfy { $0 == "\u{FFFD}" })
    #expect(d.decodedIds < 40 * 20)
  }
}

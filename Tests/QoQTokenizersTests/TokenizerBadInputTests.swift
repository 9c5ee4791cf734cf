import Foundation
import Testing
@testable import QoQIO
@testable import QoQTokenizers

@Suite struct TokenizerBadInputTests {
  static let good = #"{"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":["a b"]},"pre_tokenizer":null,"decoder":null}"#

  /// Corrupt or hostile tokenizer.json files end in an error that names the problem.
  @Test func corruptTokenizerJSONIsRejected() throws {
    _ = try Tokenizer.load(tokenizerJSON: JSON.parse(Self.good, what: "t"), config: nil, what: "t")
    let cases: [(String, String)] = [
      (#"{"added_tokens":[]}"#, "missing \"model\""),
      (#"{"model":{"type":"Unigram","vocab":[]}}"#, "not supported"),
      (#"{"model":{"type":"BPE","vocab":[1,2]}}"#, "model.vocab"),
      (#"{"model":{"type":"BPE","vocab":{"a":-1}}}"#, "bad id"),
      (#"{"model":{"type":"BPE","vocab":{"a":"x"}}}"#, "bad id"),
      (#"{"model":{"type":"BPE","vocab":{"a":99999999999}}}"#, "bad id"),
      (#"{"model":{"type":"BPE","vocab":{"a":20000000}}}"#, "implausibly large"),
      (#"{"model":{"type":"BPE","vocab":{"a":0,"b":1},"merges":["a c"]}}"#, "missing from the vocabulary"),
      (#"{"model":{"type":"BPE","vocab":{"a":0,"b":1},"merges":["a b"]}}"#, "produces"),
      (#"{"model":{"type":"BPE","vocab":{"a":0},"merges":["ab"]}}"#, "has no space"),
      (#"{"model":{"type":"BPE","vocab":{"a":0},"merges":[[1,2]]}}"#, "neither"),
      (#"{"model":{"type":"BPE","vocab":{"a":0},"merges":{}}}"#, "not an array"),
      (#"{"model":{"type":"BPE","vocab":{"a":0},"unk_token":"zz"}}"#, "unk_token"),
      (###"{"model":{"type":"BPE","vocab":{"a":0},"continuing_subword_prefix":"##"}}"###, "continuing_subword_prefix"),
      (#"{"model":{"type":"BPE","vocab":{"a":0}},"added_tokens":[{"id":5}]}"#, "added_tokens[0]"),
      (#"{"model":{"type":"BPE","vocab":{"a":0}},"added_tokens":[{"id":5,"content":""}]}"#, "added_tokens[0]"),
      (#"{"model":{"type":"BPE","vocab":{"a":0}},"normalizer":{"type":"Lowercase"}}"#, "normalizer type"),
      (#"{"model":{"type":"BPE","vocab":{"a":0}},"pre_tokenizer":{"type":"BertPreTokenizer"}}"#, "pre_tokenizer type"),
      (#"{"model":{"type":"BPE","vocab":{"a":0}},"pre_tokenizer":{"type":"Split","pattern":{"Regex":"(unclosed"},"behavior":"Isolated"}}"#, "cannot compile"),
      (#"{"model":{"type":"BPE","vocab":{"a":0}},"pre_tokenizer":{"type":"Split","pattern":{"Regex":"a"},"behavior":"Removed"}}"#, "behavior"),
      (#"{"model":{"type":"BPE","vocab":{"a":0}},"decoder":{"type":"WordPiece"}}"#, "decoder type"),
      (#"{"model":{"type":"BPE","vocab":{"a":0}},"post_processor":{"type":"BertProcessing"}}"#, "post_processor type"),
      (#"{"model":{"type":"BPE","vocab":{"a":0}},"post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>"}}],"special_tokens":{}}}"#, "has no ids"),
      (#"{"model":{"type":"BPE","vocab":{"a":0}},"normalizer":{"type":"Replace","pattern":{"Regex":"x"},"content":"y"}}"#, "only String patterns"),
    ]
    var failures: [String] = []
    for (json, needle) in cases {
      do {
        _ = try Tokenizer.load(tokenizerJSON: JSON.parse(json, what: "t"), config: nil, what: "tokenizer.json")
        failures.append("accepted: \(json)")
      } catch let e as QoQError {
        if !e.message.localizedCaseInsensitiveContains(needle) { failures.append("\(json): \"\(e.message)\" lacks \"\(needle)\"") }
      }
    }
    #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
  }

  @Test func hostileUsageIsBounded() throws {
    let tok = try Tokenizer.load(folder: fixturesRoot + "/tokenizers/smollm2")
    // Unknown ids are an error, not a crash.
    #expect(throws: QoQError.self) { _ = try tok.decode([999_999]) }
    #expect(throws: QoQError.self) { _ = try tok.decode([-1]) }
    // A 200 KB run without spaces is one pre-token: merging is O(n log n), so this finishes quickly.
    let long = String(repeating: "ab", count: 100_000)
    let ids = try tok.encode(long)
    #expect(try tok.decode(ids) == long)
    // Byte tokens must be exactly <0xHH>.
    #expect(Tokenizer.byteTokenValue("<0x41>") == 0x41)
    #expect(Tokenizer.byteTokenValue("<0x-1>") == nil && Tokenizer.byteTokenValue("<0x100>") == nil && Tokenizer.byteTokenValue("<0xG1>") == nil)
    // Special tokens in user text are literal text when parsing specials is off.
    #expect(try tok.encode("<|im_start|>", parseSpecial: false) != [1])
    #expect(try tok.encode("<|im_start|>") == [1])
  }

  /// One tokenizer shared by many threads (a server's handlers) encodes as it does alone: its piece cache is shared.
  @Test func concurrentEncodingMatchesSerial() throws {
    let tok = try Tokenizer.load(folder: fixturesRoot + "/tokenizers/smollm2")
    let texts = (0..<64).map { i in "request \(i): the quick brown fox \(i * 7919) jumps over \(String(repeating: "z", count: i % 9)) dogs" }
    let serial = try texts.map { try tok.encode($0) }
    let fresh = try Tokenizer.load(folder: fixturesRoot + "/tokenizers/smollm2")
    let box = ResultsBox(count: texts.count)
    DispatchQueue.concurrentPerform(iterations: texts.count * 4) { k in
      let i = k % texts.count
      box.set(i, (try? fresh.encode(texts[i])) ?? [])
    }
    #expect(box.all() == serial)
  }
}

final class ResultsBox: @unchecked Sendable {
  private let lock = NSLock()
  private var values: [[Int32]]
  init(count: Int) { values = Array(repeating: [], count: count) }
  func set(_ i: Int, _ v: [Int32]) { lock.lock(); values[i] = v; lock.unlock() }
  func all() -> [[Int32]] { lock.lock(); defer { lock.unlock() }; return values }
}

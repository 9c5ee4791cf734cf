import Foundation
import Testing
@testable import QoQEval
import QoQIO
import QoQTokenizers

/// Evaluation datasets (issue #16): the same text given as WikiText raw, plain text and JSON Lines gives the same
/// GPTQ-protocol text and token ids, which match the Hugging Face `tokenizers` reference; the format is detected
/// from the file; bad files are refused naming the line.
@Suite struct EvalDatasetTests {
  static let rows = [" = Title = \n", "", " Body line one .\n", "", " = = Sub = = \n", " Two\n"]
  static let joined = " = Title = \n\n\n\n\n Body line one .\n\n\n\n\n = = Sub = = \n\n\n Two\n"
  /// `Tokenizer.from_file("Tests/Fixtures/tokenizers/smollm2/tokenizer.json").encode(joined).ids` (tokenizers 0.22).
  static let referenceIds: [Int32] = [446, 7606, 446, 38028, 16506, 11514, 1761, 582, 1673, 1116, 16506, 446, 446, 5119, 446,
                                      446, 216, 16506, 5713, 198]
  static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures").path

  func write(_ name: String, _ text: String) throws -> String {
    let dir = NSTemporaryDirectory() + "qoq-dataset-\(UInt64.random(in: 0..<UInt64.max))"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    try text.write(toFile: dir + "/" + name, atomically: true, encoding: .utf8)
    return dir + "/" + name
  }

  @Test func threeFormatsGiveTheReferenceTokens() throws {
    let raw = Self.rows.map { $0.isEmpty ? " \n" : $0 }.joined()
    let jsonl = Self.rows.map { "{\"text\": \(JSON.serialize(.string($0)))}" }.joined(separator: "\n") + "\n"
    let tok = try Tokenizer.load(folder: Self.fixtures + "/tokenizers/smollm2")
    let cases: [(String, String, DatasetFormat)] = [("wiki.test.raw", raw, .wikitext), ("notes.txt", Self.joined, .text),
                                                    ("rows.jsonl", jsonl, .jsonl)]
    for (name, text, format) in cases {
      let d = try EvalDataset(path: try write(name, text))
      #expect(d.format == format, "\(name)")
      #expect(d.gptqText == Self.joined, "\(name)")
      #expect(try d.tokens(tok, proto: .gptq) == Self.referenceIds, "\(name)")
    }
    // A WikiText file under another name is recognised by its heading; forcing text keeps the file as it is.
    #expect(try EvalDataset(path: try write("corpus.txt", raw)).format == .wikitext)
    let forced = try EvalDataset(path: try write("wiki.test.raw", raw), format: .text)
    #expect(forced.gptqText == raw && forced.gptqText != Self.joined)
    // Plain prose is not rewritten: no row join.
    let prose = "First line.\nSecond line.\n"
    #expect(try EvalDataset(path: try write("prose.txt", prose)).gptqText == prose)
  }

  @Test func badFilesAreRefused() throws {
    func refusal(_ name: String, _ text: String) -> String {
      do { _ = try EvalDataset(path: try write(name, text)); return "" } catch { return "\(error)" }
    }
    #expect(refusal("a.jsonl", "{\"text\": \"ok\"}\n{\"txt\": \"no\"}\n").contains("a.jsonl:2"))
    #expect(refusal("b.jsonl", "{\"text\": \"ok\"}\n\nnot json\n").contains("b.jsonl:3"))
    #expect(refusal("c.jsonl", "\n\n").contains("no JSON lines"))
    #expect(refusal("d.jsonl", "{\"text\": 5}\n").contains("d.jsonl:1"))
    #expect(throws: QoQError.self) { try EvalDataset(path: "/nonexistent/wiki.test.raw") }
    let bin = NSTemporaryDirectory() + "qoq-bad-\(UInt64.random(in: 0..<UInt64.max)).txt"
    try Data([0xFF, 0xFE, 0x00, 0xC3]).write(to: URL(fileURLWithPath: bin))
    #expect(throws: QoQError.self) { try EvalDataset(path: bin) }
  }
}

import Foundation
import Testing
@testable import QoQIO
@testable import QoQModels
@testable import QoQQuant
import QoQTestSupport
import QoQTokenizers

private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
  .appendingPathComponent("Fixtures").path

/// Calibration from token-id files (issue #20): the sequences come back exactly as written, and every kind of bad
/// file is refused with a message naming the file and the line (or tensor row).
@Suite struct CalibrationIDTests {
  func options(_ path: String, samples: Int = 2, length: Int = 4) -> CalibrationOptions {
    var o = CalibrationOptions()
    o.path = path; o.numSamples = samples; o.seqLength = length
    return o
  }

  func tokenizer(_ dir: String) throws -> Tokenizer {
    let c = try LlamaConfiguration(modelType: "llama", hiddenSize: 32, intermediateSize: 32, numHiddenLayers: 1,
                                   numAttentionHeads: 2, numKeyValueHeads: 2, rmsNormEps: 1e-5, vocabSize: 300)
    try writeTinyCheckpoint(c, to: dir + "/model")
    return try ModelLoader.load(path: dir + "/model").tokenizer
  }

  @Test func readsJSONLAndSafetensors() throws {
    let dir = tempDir("calib-ids")
    let tok = try tokenizer(dir)
    #expect(tok.vocabSize >= 10)
    // Arrays and input_ids objects, blank lines skipped; only the first num_samples are used.
    let jsonl = dir + "/ids.jsonl"
    try "[1, 2, 3, 4]\n\n{\"input_ids\": [5, 6, 7, 8], \"extra\": 1}\n[9, 0, 0, 9]\n".write(toFile: jsonl, atomically: true, encoding: .utf8)
    #expect(try CalibrationData.isIDFile(jsonl))
    #expect(try CalibrationData.samples(options(jsonl), tokenizer: tok) == [[1, 2, 3, 4], [5, 6, 7, 8]])
    // A text JSONL is not an id file.
    let text = dir + "/docs.jsonl"
    try "{\"text\": \"hello\"}\n".write(toFile: text, atomically: true, encoding: .utf8)
    #expect(try !CalibrationData.isIDFile(text))
    // safetensors, I64 and I32.
    for dt in [DType.I64, .I32] {
      let ids: [Int64] = [3, 1, 4, 1, 5, 9, 2, 6]
      let data = dt == .I64 ? ids.withUnsafeBytes { Data($0) } : ids.map { Int32($0) }.withUnsafeBytes { Data($0) }
      let path = dir + "/ids-\(dt).safetensors"
      try SafeTensorsWriter.write([TensorBlob(name: "input_ids", dtype: dt, shape: [2, 4], data: data)], to: path)
      #expect(try CalibrationData.samples(options(path), tokenizer: tok) == [[3, 1, 4, 1], [5, 9, 2, 6]], "\(dt)")
    }
  }

  /// scripts/calib/deepcompressor_sampler.py's output on the hand-checked case (Tests/Fixtures/calib/sampler_case, its
  /// README): rows visited in the order [3, 2, 5, …] of numpy's default_rng(42).permutation(6), row 3 cut to ids[1:9]
  /// by random.Random(42).randint(0, 9) = 1, row 2 whole, row 5 cut to ids[0:8], then 19 ids split into 8 | 8 | 3 and
  /// the last chunk dropped. Rebuilt here from our own tokenizer (equal to the reference library's) and compared with
  /// what our reader returns for the script's file.
  @Test func samplerScriptHandCase() throws {
    let fx = fixtures + "/calib/sampler_case"
    let tok = try Tokenizer.load(folder: fixtures + "/tokenizers/smollm2")
    let docs = try String(contentsOfFile: fx + "/docs.txt", encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
    let enc = try docs.prefix(6).map { try tok.encode($0.trimmingCharacters(in: .whitespaces), addSpecialTokens: true, parseSpecial: false) }
    #expect(enc.map(\.count) == [16, 0, 3, 17, 2, 9])
    let all = Array(enc[3][1..<9]) + enc[2] + Array(enc[5][0..<8])
    #expect(try CalibrationData.samples(options(fx + "/ids.jsonl", samples: 2, length: 8), tokenizer: tok)
            == [Array(all[0..<8]), Array(all[8..<16])])
  }

  /// Each bad file: the error names the file, and the line where there is one.
  @Test func badFilesAreRefused() throws {
    let dir = tempDir("calib-ids-bad")
    let tok = try tokenizer(dir)
    let v = tok.vocabSize
    let cases: [(String, String, String)] = [
      ("fraction", "[1, 2, 3, 4]\n[1, 2.5, 3, 4]\n", ":2: position 1 is not an integer id"),
      ("string", "[1, 2, 3, 4]\n[1, \"2\", 3, 4]\n", ":2: position 1 is not an integer id"),
      ("negative", "[1, -2, 3, 4]\n[1, 2, 3, 4]\n", ":1: id -2 at position 1 is outside the vocabulary"),
      ("too large", "[1, 2, 3, 4]\n[1, 2, 3, \(v)]\n", ":2: id \(v) at position 3 is outside the vocabulary"),
      ("huge", "[1, 2, 3, 4]\n[1e300, 2, 3, 4]\n", ":2: position 0 is not an integer id"),
      ("short", "[1, 2, 3, 4]\n[1, 2, 3]\n", "sequence 2 has 3 ids, seq_length is 4"),
      ("long", "[1, 2, 3, 4, 5]\n[1, 2, 3, 4]\n", "sequence 1 has 5 ids, seq_length is 4"),
      ("too few", "[1, 2, 3, 4]\n", "1 id sequences, num_samples is 2"),
      ("mixed", "[1, 2, 3, 4]\n{\"text\": \"hi\"}\n", ":2: expected a JSON array of token ids"),
      ("broken", "[1, 2, 3, 4]\n[1, 2,\n", ":2:"),
      ("empty seq", "[1, 2, 3, 4]\n[]\n", ":2: empty sequence"),
    ]
    for (name, body, want) in cases {
      let path = dir + "/\(name.replacingOccurrences(of: " ", with: "-")).jsonl"
      try body.write(toFile: path, atomically: true, encoding: .utf8)
      do {
        _ = try CalibrationData.samples(options(path), tokenizer: tok)
        Issue.record("\(name): accepted")
      } catch let e as QoQError {
        #expect(e.description.contains(path) && e.description.contains(want), "\(name): \(e.description)")
      }
    }
    // safetensors: missing tensor, wrong dtype, wrong rank, id out of range (row named).
    let st: [(String, TensorBlob, String)] = [
      ("missing", TensorBlob(name: "ids", dtype: .I32, shape: [2, 4], data: Data(count: 32)), "no \"input_ids\" tensor"),
      ("float", TensorBlob(name: "input_ids", shape: [2, 4], floats: [Float](repeating: 1, count: 8)), "must be I32 or I64"),
      ("rank", TensorBlob(name: "input_ids", dtype: .I32, shape: [8], data: Data(count: 32)), "must be 2-D"),
      ("range", TensorBlob(name: "input_ids", dtype: .I32, shape: [2, 4],
                           data: ([1, 2, 3, 4, 5, Int32(v), 7, 8] as [Int32]).withUnsafeBytes { Data($0) }),
       "input_ids row 1: id \(v) at position 1"),
    ]
    for (name, blob, want) in st {
      let path = dir + "/\(name).safetensors"
      try SafeTensorsWriter.write([blob], to: path)
      do {
        _ = try CalibrationData.samples(options(path), tokenizer: tok)
        Issue.record("\(name): accepted")
      } catch let e as QoQError {
        #expect(e.description.contains(path) && e.description.contains(want), "\(name): \(e.description)")
      }
    }
  }
}

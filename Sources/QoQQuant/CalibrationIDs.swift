// Calibration sequences given as token ids (issue #20): any sampler's exact output — deepcompressor's, reproduced by
// scripts/calib/deepcompressor_sampler.py — instead of text sampled here, so two quantizers can be compared on the
// same calibration tokens. An id file holds the final sequences: the first num_samples are used as they are, each
// must be seq_length ids long, and min/max_seq_length (filters on documents) do not apply.
//   .jsonl / .json   one sequence per non-empty line: a JSON array of ids, or an object with an "input_ids" array
//   .safetensors     a 2-D I32 or I64 tensor "input_ids" (sequences, seq_length)
import Foundation
import QoQIO

extension CalibrationData {
  /// Whether `path` holds token ids rather than text: a .safetensors file, or a .jsonl/.json file whose first
  /// non-empty line is a JSON array or an object with "input_ids".
  public static func isIDFile(_ path: String) throws -> Bool {
    if path.hasSuffix(".safetensors") { return true }
    guard path.hasSuffix(".jsonl") || path.hasSuffix(".json") else { return false }
    guard let fh = FileHandle(forReadingAtPath: path) else { throw QoQError("calibration file \(path) cannot be opened") }
    defer { try? fh.close() }
    // The first line decides; 64 KiB is enough to see its first character and, for objects, its keys.
    let head = String(decoding: (try fh.read(upToCount: 1 << 16)) ?? Data(), as: UTF8.self)
    guard let line = head.split(separator: "\n").first(where: { !$0.trimmingCharacters(in: .whitespaces).isEmpty }) else {
      return false
    }
    let t = line.trimmingCharacters(in: .whitespaces)
    return t.hasPrefix("[") || (t.hasPrefix("{") && t.contains("\"input_ids\""))
  }

  /// Every sequence of an id file, each id checked to lie in 0..<vocabSize; errors name the line (or tensor row).
  public static func idSequences(path: String, vocabSize: Int) throws -> [[Int32]] {
    guard FileManager.default.fileExists(atPath: path) else { throw QoQError("calibration file \(path) does not exist") }
    func checked(_ v: Int64, _ where_: String, _ j: Int) throws -> Int32 {
      guard v >= 0 && v < Int64(vocabSize) else {
        throw QoQError("\(where_): id \(v) at position \(j) is outside the vocabulary (0..<\(vocabSize))")
      }
      return Int32(v)
    }
    var seqs: [[Int32]] = []
    if path.hasSuffix(".safetensors") {
      let st = try SafeTensorsFile(path: path)
      guard st.names.contains("input_ids") else { throw QoQError("\(path): no \"input_ids\" tensor (has \(st.names.sorted()))") }
      let info = try st.info("input_ids")
      guard info.shape.count == 2, info.shape[0] > 0, info.shape[1] > 0 else {
        throw QoQError("\(path): input_ids must be 2-D (sequences, seq_length), not \(info.shape)")
      }
      guard info.dtype == .I32 || info.dtype == .I64 else { throw QoQError("\(path): input_ids must be I32 or I64, not \(info.dtype)") }
      let raw = try st.raw("input_ids"), (n, l) = (info.shape[0], info.shape[1])
      for r in 0..<n {
        seqs.append(try (0..<l).map { j in
          let k = r * l + j
          let v = info.dtype == .I64 ? raw.loadUnaligned(fromByteOffset: 8 * k, as: Int64.self)
            : Int64(raw.loadUnaligned(fromByteOffset: 4 * k, as: Int32.self))
          return try checked(v, "\(path): input_ids row \(r)", j)
        })
      }
      return seqs
    }
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw QoQError("\(path): not UTF-8 text") }
    for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
      let l = line.trimmingCharacters(in: .whitespacesAndNewlines)
      if l.isEmpty { continue }
      let at = "\(path):\(i + 1)"
      let v = try JSON.parse(l, what: at)
      guard let ids = v.array ?? v["input_ids"]?.array else {
        throw QoQError("\(at): expected a JSON array of token ids or an object with an \"input_ids\" array")
      }
      guard !ids.isEmpty else { throw QoQError("\(at): empty sequence") }
      seqs.append(try ids.enumerated().map { j, x in
        guard let d = x.double, d == d.rounded(), abs(d) < 9e15 else { throw QoQError("\(at): position \(j) is not an integer id") }
        return try checked(Int64(d), at, j)
      })
    }
    guard !seqs.isEmpty else { throw QoQError("\(path): no sequences") }
    return seqs
  }

  /// The first `numSamples` sequences of an id file, each exactly `seqLength` ids.
  static func idSamples(_ o: CalibrationOptions, vocabSize: Int) throws -> [[Int32]] {
    let seqs = try idSequences(path: o.path, vocabSize: vocabSize)
    guard seqs.count >= o.numSamples else {
      throw QoQError("\(o.path): \(seqs.count) id sequences, num_samples is \(o.numSamples)")
    }
    for (i, s) in seqs.prefix(o.numSamples).enumerated() where s.count != o.seqLength {
      throw QoQError("\(o.path): sequence \(i + 1) has \(s.count) ids, seq_length is \(o.seqLength) (id files hold the final sequences)")
    }
    return Array(seqs.prefix(o.numSamples))
  }
}

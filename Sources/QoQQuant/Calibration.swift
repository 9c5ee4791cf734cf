// Calibration data (deepcompressor.md §2.1) and the layer-by-layer pass (§2.3).
// Data: documents from a text file (one per non-empty line) or JSONL ({"text": …} per line), shuffled with seed 42,
// tokenized with the tokenizer's default special tokens, long ones cut to a random window, then concatenated and
// split into `numSamples` chunks of `seqLength`. (deepcompressor shuffles with HF datasets' permutation, which we
// cannot reproduce bit for bit; the procedure is otherwise the same. Its exact output can be fed in as token ids
// instead: CalibrationIDs.swift.)
// Pass: each layer runs on the outputs of the previous layer *before* that layer was quantized, so transforms see
// FP-propagated inputs; statistics are reduced chunk by chunk, so memory stays bounded.
import Foundation
import QoQIO
import QoQModels
import QoQTokenizers

public struct CalibrationOptions: Sendable, Equatable {
  public var path: String = ""
  public var numSamples = 128
  public var seqLength = 1024
  public var minSeqLength = 0
  public var maxSeqLength = 0
  public init() {}
}

public enum CalibrationData {
  /// Reads documents from a .txt (one per non-empty line) or .jsonl ({"text": …}) file.
  public static func documents(path: String) throws -> [String] {
    guard FileManager.default.fileExists(atPath: path) else { throw QoQError("calibration file \(path) does not exist") }
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw QoQError("\(path): not UTF-8 text") }
    var docs: [String] = []
    let isJSONL = path.hasSuffix(".jsonl") || path.hasSuffix(".json")
    for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: true).enumerated() {
      let l = line.trimmingCharacters(in: .whitespacesAndNewlines)
      if l.isEmpty { continue }
      if isJSONL {
        guard let v = try? JSON.parse(String(l), what: "\(path):\(i + 1)"), let t = v["text"]?.string else {
          throw QoQError("\(path):\(i + 1): expected a JSON object with a \"text\" string")
        }
        docs.append(t)
      } else {
        docs.append(l)
      }
    }
    guard !docs.isEmpty else { throw QoQError("\(path): no documents") }
    return docs
  }

  /// `numSamples` sequences of `seqLength` tokens.
  public static func samples(_ o: CalibrationOptions, tokenizer: Tokenizer) throws -> [[Int32]] {
    guard o.numSamples > 0, o.seqLength > 1 else { throw QoQError("calibration needs num_samples > 0 and seq_length > 1") }
    if try isIDFile(o.path) { return try idSamples(o, vocabSize: tokenizer.vocabSize) }
    var docs = try documents(path: o.path)
    var shuffle = SplitMix64(seed: 42)
    docs.shuffle(using: &shuffle)
    var rng = SplitMix64(seed: 43)
    var pieces: [[Int32]] = []
    var total = 0
    let need = o.numSamples * o.seqLength
    for d in docs {
      var ids = try tokenizer.encode(d.trimmingCharacters(in: .whitespacesAndNewlines), addSpecialTokens: true, parseSpecial: false)
      if ids.isEmpty { continue }
      if o.minSeqLength > 0 && ids.count < o.minSeqLength { continue }
      if o.maxSeqLength > 0 && ids.count > o.maxSeqLength { continue }
      if ids.count > o.seqLength {
        let start = Int(rng.next() % UInt64(ids.count - o.seqLength + 1))
        ids = Array(ids[start..<(start + o.seqLength)])
      }
      pieces.append(ids)
      total += ids.count
      if pieces.count >= o.numSamples && total >= need { break }
    }
    let all = pieces.flatMap { $0 }
    guard all.count >= need else {
      throw QoQError("\(o.path): only \(all.count) calibration tokens, \(need) needed (\(o.numSamples) × \(o.seqLength))")
    }
    return (0..<o.numSamples).map { Array(all[($0 * o.seqLength)..<(($0 + 1) * o.seqLength)]) }
  }
}

/// The calibration activations between decoder layers: each sample's residual stream (length × H) entering the next
/// layer. These are the only state of a streamed quantization run that grows with the calibration set (not with
/// depth): 128 × 1024 tokens of a 4096-wide model hold 2 GiB in fp32, 1 GiB when kept in bf16
/// (`quant.calib.activations_dtype: torch.bfloat16`, issue #12; each layer still computes in fp32 and its outputs
/// are rounded to bf16, round-to-nearest-even, when stored).
public final class LayerwisePass {
  public let samples: [[Int32]]
  /// Whether the stored rows are bf16 (else fp32).
  public let bf16: Bool
  /// Samples run through a layer together (bounds the capture and activation memory).
  public var chunk = 4
  /// Per sample, one of the two is filled: (length, H) rows in fp32, or the same rows as bf16 bits.
  private var f32: [[Float]]
  private var b16: [[UInt16]]
  var pool: [KVCache] = []

  /// `hidden[s]` holds sample s's rows entering the next layer (rounded to bf16 when `bf16`).
  public init(samples: [[Int32]], hidden: [[Float]], bf16: Bool = false) {
    precondition(hidden.count == samples.count)
    self.samples = samples; self.bf16 = bf16
    f32 = bf16 ? [] : hidden
    b16 = bf16 ? hidden.map(Self.toBF16) : []
  }

  /// A second pass over the same rows (the static-KV stream); arrays are shared until either pass writes.
  public init(copying o: LayerwisePass) {
    samples = o.samples; bf16 = o.bf16; chunk = o.chunk; f32 = o.f32; b16 = o.b16
  }

  /// A pass whose sample s holds `rows(s)`, converted one sample at a time (so fp32 copies of all samples never
  /// coexist with the bf16 ones).
  public static func build(samples: [[Int32]], bf16: Bool, rows: (Int) throws -> [Float]) throws -> LayerwisePass {
    let p = LayerwisePass(samples: samples, bf16: bf16)
    for s in samples.indices {
      let x = try rows(s)
      if bf16 { p.b16.append(toBF16(x)) } else { p.f32.append(x) }
    }
    return p
  }

  /// The embeddings of every sample (rows of a (vocab, H) table, ids checked).
  public static func embedded(samples: [[Int32]], table: [Float], hiddenSize H: Int, bf16: Bool) throws -> LayerwisePass {
    try build(samples: samples, bf16: bf16) { try embed(samples: [samples[$0]], table: table, hiddenSize: H)[0] }
  }

  private init(samples: [[Int32]], bf16: Bool) {
    self.samples = samples; self.bf16 = bf16; f32 = []; b16 = []
  }

  /// Sample s's rows in fp32.
  public func hidden(_ s: Int) -> [Float] { bf16 ? b16[s].map(bf16ToF32) : f32[s] }

  /// Every sample's rows as tensors "\(prefix).\(s)" of shape (length, H), in the stored dtype.
  public func tensors(prefix: String, hiddenSize H: Int) -> [StreamedTensor] {
    samples.indices.map { s in
      if !bf16 { return StreamedTensor(name: "\(prefix).\(s)", shape: [samples[s].count, H], floats: f32[s]) }
      let rows = b16[s]
      return StreamedTensor(name: "\(prefix).\(s)", dtype: .BF16, shape: [samples[s].count, H], byteCount: rows.count * 2) { fh in
        try rows.withUnsafeBytes { b in if b.count > 0 { try fh.write(contentsOf: Data(b)) } }
      }
    }
  }

  static func toBF16(_ x: [Float]) -> [UInt16] { x.map(f32ToBF16) }

  /// The embeddings of every sample: rows of a (vocab, H) table, ids checked.
  public static func embed(samples: [[Int32]], table: [Float], hiddenSize H: Int) throws -> [[Float]] {
    let vocab = table.count / H
    return try samples.map { s in
      var x = [Float](repeating: 0, count: s.count * H)
      for (r, t) in s.enumerated() {
        guard t >= 0 && Int(t) < vocab else { throw QoQError("calibration token id \(t) is outside the vocabulary (0..<\(vocab))") }
        for j in 0..<H { x[r * H + j] = table[Int(t) * H + j] }
      }
      return x
    }
  }

  /// Runs every sample through decoder layer `l` of `model` (a whole model or a layer view), capturing `points` and
  /// calling `observe` per chunk. With `advance` the layer's outputs become the next layer's inputs.
  public func run(model: LlamaModel, layer l: Int, points: Set<LayerCapture.Point>, advance: Bool = true,
                  observe: (_ capture: LayerCapture) throws -> Void) throws {
    let c = model.config
    let lengths = samples.map(\.count)
    // One set of caches for the whole run: runLayer writes layer l's K/V at position 0 (cache lengths stay 0), so
    // reusing them avoids allocating a cache per chunk and layer; only layer l's rows are ever touched.
    if pool.isEmpty { pool = (0..<chunk).map { _ in KVCache(config: c, capacity: lengths.max() ?? 1) } }
    // The chunk's rows and its capture are reused from chunk to chunk (same sizes), and the outputs are written back
    // into each sample's rows in place: a pass allocates its buffers once instead of once per chunk.
    var i = 0
    var x: [Float] = []
    let cap = LayerCapture(points)
    while i < samples.count {
      let j = min(samples.count, i + chunk)
      x.removeAll(keepingCapacity: true)
      for s in i..<j { if bf16 { x.append(contentsOf: b16[s].lazy.map(bf16ToF32)) } else { x.append(contentsOf: f32[s]) } }
      cap.clear()
      try model.runLayer(l, x: &x, lengths: Array(lengths[i..<j]), caches: Array(pool.prefix(j - i)), capture: cap)
      try observe(cap)
      if advance {
        var off = 0
        for s in i..<j {
          let n = lengths[s] * c.hiddenSize
          if n > 0 { x.withUnsafeBufferPointer { xb in
            if bf16 {
              b16[s].withUnsafeMutableBufferPointer { for t in 0..<n { $0[t] = f32ToBF16(xb[off + t]) } }
            } else {
              f32[s].withUnsafeMutableBufferPointer { $0.baseAddress!.update(from: xb.baseAddress! + off, count: n) }
            }
          } }
          off += n
        }
      }
      i = j
    }
  }
}

/// Per-channel minimum and maximum over rows (N, width): post-RoPE key statistics — the span SmoothAttention scales
/// and, with key centering (issue #19), the midrange the cache subtracts.
public struct MinMaxAccumulator: Sendable {
  public private(set) var minimum: [Float]
  public private(set) var maximum: [Float]
  public init(width: Int) {
    minimum = [Float](repeating: .infinity, count: width); maximum = [Float](repeating: -.infinity, count: width)
  }
  public mutating func add(_ x: [Float]) {
    let w = minimum.count
    for r in 0..<(x.count / w) {
      for i in 0..<w { let v = x[r * w + i]; minimum[i] = min(minimum[i], v); maximum[i] = max(maximum[i], v) }
    }
  }
  /// The midrange c = (max + min)/2 (0 for a channel never seen) and the centered span (max − min)/2 = max|x − c|.
  public var center: [Float] { zip(minimum, maximum).map { $0 <= $1 ? ($0 + $1) / 2 : 0 } }
  public var centeredSpan: [Float] { zip(minimum, maximum).map { $0 <= $1 ? ($1 - $0) / 2 : 0 } }
  /// max |x − c_j| per channel about a given center c (0 for a channel never seen).
  public func span(about c: [Float]) -> [Float] {
    precondition(c.count == minimum.count, "center of \(c.count) channels for \(minimum.count)")
    return (0..<c.count).map { Swift.max(maximum[$0] - c[$0], c[$0] - minimum[$0], 0) }
  }
  /// max |x| (0 for a channel never seen), as AbsMaxAccumulator gives it.
  public var absMax: [Float] { zip(minimum, maximum).map { Swift.max(0, $1, -$0) } }
}

/// Per-channel mean and mean square over the rows seen (Double sums); 0 for nothing seen.
public struct MomentAccumulator: Sendable {
  private var sums: [Double]
  private var squares: [Double]
  public private(set) var rows = 0
  public init(width: Int) { sums = [Double](repeating: 0, count: width); squares = sums }
  public mutating func add(_ x: [Float]) {
    let w = sums.count
    guard w > 0 else { return }
    rows += x.count / w
    sums.withUnsafeMutableBufferPointer { s in
      squares.withUnsafeMutableBufferPointer { q in
        x.withUnsafeBufferPointer { xb in
          for r in 0..<(xb.count / w) { for i in 0..<w { let v = Double(xb[r * w + i]); s[i] += v; q[i] += v * v } }
        }
      }
    }
  }
  public var mean: [Double] { sums.map { rows == 0 ? 0 : $0 / Double(rows) } }
  public var meanSquare: [Double] { squares.map { rows == 0 ? 0 : $0 / Double(rows) } }
}

/// Per-channel sqrt(mean x²) over the rows seen (Double sums): deepcompressor's `RootMeanSquare` span.
public struct RMSAccumulator: Sendable {
  private var moments: MomentAccumulator
  public init(width: Int) { moments = MomentAccumulator(width: width) }
  public mutating func add(_ x: [Float]) { moments.add(x) }
  public var values: [Float] { moments.meanSquare.map { Float($0.squareRoot()) } }
}

public struct AbsMaxAccumulator: Sendable {
  public private(set) var values: [Float]
  public init(width: Int) { values = [Float](repeating: 0, count: width) }
  public mutating func add(_ x: [Float]) {
    let w = values.count
    values.withUnsafeMutableBufferPointer { v in
      x.withUnsafeBufferPointer { xb in
        for r in 0..<(xb.count / w) { for i in 0..<w { v[i] = max(v[i], abs(xb[r * w + i])) } }
      }
    }
  }
}

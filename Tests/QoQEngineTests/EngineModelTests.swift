import Foundation
import Testing
@testable import QoQEngine
import QoQFormat
import QoQIO
import QoQKernels
import QoQModels
import QoQQuant
import QoQTestSupport

/// Tiny configs the integer kernels accept (head_dim and widths multiples of 32), one per family.
func engineConfigs() throws -> [(String, LlamaConfiguration)] {
  [("llama-gqa", try LlamaConfiguration(modelType: "llama", hiddenSize: 64, intermediateSize: 96, numHiddenLayers: 2,
                                        numAttentionHeads: 4, numKeyValueHeads: 2, headDim: 32, rmsNormEps: 1e-5, ropeTheta: 10000, vocabSize: 100)),
   ("mistral", try LlamaConfiguration(modelType: "mistral", hiddenSize: 128, intermediateSize: 160, numHiddenLayers: 2,
                                      numAttentionHeads: 4, numKeyValueHeads: 1, rmsNormEps: 1e-6, ropeTheta: 1e6, vocabSize: 120)),
   ("qwen2-tied-bias", try LlamaConfiguration(modelType: "qwen2", hiddenSize: 64, intermediateSize: 64, numHiddenLayers: 2,
                                              numAttentionHeads: 2, numKeyValueHeads: 2, rmsNormEps: 1e-6, ropeTheta: 1e6,
                                              vocabSize: 90, tieWordEmbeddings: true)),
   // Qwen2 as it ships (issue #19): GQA and K biases up to ~±150 on a few channels (see writeQuantizedTiny).
   ("qwen2-gqa-kbias", try LlamaConfiguration(modelType: "qwen2", hiddenSize: 64, intermediateSize: 96, numHiddenLayers: 2,
                                              numAttentionHeads: 4, numKeyValueHeads: 2, headDim: 32, rmsNormEps: 1e-6,
                                              ropeTheta: 1e6, vocabSize: 90)),
   // The same with centered keys (quantization_config key_center, self_attn.k_center subtracted before the cache).
   ("qwen2-gqa-kbias-center", try LlamaConfiguration(modelType: "qwen2", hiddenSize: 64, intermediateSize: 96, numHiddenLayers: 2,
                                                     numAttentionHeads: 4, numKeyValueHeads: 2, headDim: 32, rmsNormEps: 1e-6,
                                                     ropeTheta: 1e6, vocabSize: 90)),
   // And with key rotation (key_rotation hadamard): the engine rotates q and the centered k per head, the fake path
   // rotates k, quantizes and rotates back.
   ("qwen2-gqa-kbias-center-rotate", try LlamaConfiguration(modelType: "qwen2", hiddenSize: 64, intermediateSize: 96, numHiddenLayers: 2,
                                                            numAttentionHeads: 4, numKeyValueHeads: 2, headDim: 32, rmsNormEps: 1e-6,
                                                            ropeTheta: 1e6, vocabSize: 90)),
   // And with key scales (key_scale k_scale): the engine multiplies the centered k by s and q by 1/s of its KV head
   // before the rotation; the fake path scales k, rotates, quantizes and undoes both.
   ("qwen2-gqa-kbias-center-scale-rotate", try LlamaConfiguration(modelType: "qwen2", hiddenSize: 64, intermediateSize: 96,
                                                                  numHiddenLayers: 2, numAttentionHeads: 4, numKeyValueHeads: 2,
                                                                  headDim: 32, rmsNormEps: 1e-6, ropeTheta: 1e6, vocabSize: 90))]
}

/// Qwen2-like K biases: every 7th channel of k_proj's bias gets ±150 (the sign alternating), the magnitude
/// Qwen2.5's real checkpoints carry on a few channels per head.
func largeKBiases(_ dir: String, _ c: LlamaConfiguration) throws {
  let st = try SafeTensorsFile(path: dir + "/model.safetensors")
  var blobs: [TensorBlob] = []
  for n in st.names {
    var v = try st.floats(n)
    if n.hasSuffix("k_proj.bias") { for j in stride(from: 0, to: v.count, by: 7) { v[j] += (j / 7) % 2 == 0 ? 150 : -150 } }
    blobs.append(TensorBlob(name: n, shape: try st.info(n).shape, floats: v))
  }
  try SafeTensorsWriter.write(blobs, to: dir + "/model.safetensors")
}

func engineTempDir(_ name: String) -> String {
  let d = NSTemporaryDirectory() + "qoq-engine-\(name)-\(UInt64.random(in: 0..<UInt64.max))"
  try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
  return d
}

/// Writes a tiny FP model and its RTN-quantized checkpoint (every linear in `format`, 8-bit activations, KV bits).
func writeQuantizedTiny(_ c: LlamaConfiguration, format: WeightFormat, actBits: Int? = 8, kvBits: Int? = 4, dir: String) throws -> String {
  try writeTinyCheckpoint(c, to: dir + "/fp")
  if dir.contains("kbias") { try largeKBiases(dir + "/fp", c) }
  let st = try CheckpointWeights(folder: dir + "/fp")
  var fp: [String: [Float]] = [:], quantized: [String: QuantizedWeight] = [:], biases: [String: [Float]] = [:]
  for name in st.names {
    let v = try st.floats(name)
    let module = String(name.dropLast(name.hasSuffix(".weight") ? 7 : 5))
    if name.contains("_proj.") {
      if name.hasSuffix(".bias") { biases[module] = v; continue }
      let s = tensorShape(name, c)
      quantized[module] = WeightQuantizer(weight: v, out: s[0], inp: s[1], format: format).rtn(v)
    } else { fp[name] = v }
  }
  var q = QuantizationConfig(method: "rtn", weight: format, actBits: actBits, kvBits: kvBits, kvGroup: kvBits == nil ? nil : c.headDim)
  q.kvAsymmetric = true
  if dir.contains("center") && kvBits != nil {
    // Any constant is exact (softmax ignores the shift); the K bias plus an offset is near the keys' midrange on the
    // slowly rotating channels and far from it elsewhere, so both cases reach the cache.
    q.kvKeyCenter = true
    for l in 0..<c.numHiddenLayers {
      fp["model.layers.\(l).self_attn.k_center"] = biases["model.layers.\(l).self_attn.k_proj"]!.enumerated().map { $1 + Float($0 % 5) - 2 }
    }
  }
  q.kvKeyRotation = dir.contains("rotate") && kvBits != nil
  if dir.contains("scale") && kvBits != nil {
    // Scales from 1/4 to 4 (any positive scale is exact in FP), different per channel, layer and KV head.
    q.kvKeyScale = true
    var rng = SplitMix64(seed: 11)
    for l in 0..<c.numHiddenLayers {
      fp["model.layers.\(l).self_attn.k_scale"] = (0..<c.kvDim).map { _ in Float(pow(2, Double.random(in: -2...2, using: &rng))) }
    }
  }
  try QuantizedCheckpoint.write(to: dir + "/q", config: c, quantization: q, fp: fp, quantized: quantized, biases: biases,
                                recipeYAML: "", tokenizerFrom: dir + "/fp", overwrite: true)
  return dir + "/q"
}

func relL2(_ a: [Float], _ b: [Float]) -> Double {
  var num = 0.0, den = 0.0
  for i in a.indices { num += Double(a[i] - b[i]) * Double(a[i] - b[i]); den += Double(b[i]) * Double(b[i]) }
  return (num / max(den, 1e-30)).squareRoot()
}

/// Runs the engine on sequences given as chunk lists, fresh pages per sequence; returns the logits of every step.
final class EngineHarness {
  let model: EngineModel
  let pool: KVPool
  let ws: Workspace
  var next: Int32 = 0
  init(_ m: EngineModel, blocks: Int = 64) throws {
    model = m; pool = try KVPool(format: m.kvFormat, layers: m.config.numHiddenLayers, numBlocks: blocks); ws = Workspace(config: m.config)
  }
  func pages(_ n: Int) -> [Int32] { defer { next += Int32(n) }; return (0..<Int32(n)).map { next + $0 } }
}

@Suite struct EngineModelTests {
  static let prompt: [Int32] = [1, 5, 9, 3, 77, 12, 45, 6, 88, 2, 31, 64, 17, 23, 50, 8, 19, 70, 4, 11]

  /// The engine on a quantized checkpoint computes the fake-quantized model that `qoq eval` measures: progressive
  /// (integer group rescale), asymmetric per-channel and per-group, and W8A8; KV4/KV8 pages. With fp32 scores the
  /// differences are fp32 rounding (~1e-7, checked per linear in the kernel tests), except where a rounding
  /// difference flips one activation or KV code downstream: a discrete jump of ~1e-2 in these 64-wide random models
  /// that then persists through the KV cache. So: the first position (nothing to flip yet but the prompt's own
  /// codes) within 1e-4 when scores are fp32, every position within a few flips, and far below the quantization
  /// error itself (engine vs fake-quant ≤ 1/3 of fake-quant vs FP; 1/2 with integer scores, which add the int8 query
  /// quantization).
  @Test(arguments: [WeightFormat.progressive(group: 32, protective: 120), .asym(bits: 4, group: nil), .asym(bits: 4, group: 32), .sym(bits: 8)])
  func quantizedEngineMatchesFakeQuant(_ format: WeightFormat) throws {
    let p = Self.prompt
    for (name, c) in try engineConfigs() {
      for kv in [4, 8] {
        let path = try writeQuantizedTiny(c, format: format, kvBits: kv, dir: engineTempDir(name))
        let (fake, _) = try AnyModelLoader.load(path: path)
        let V = c.vocabSize
        let want = try (1...p.count).map { try fake.model.lastLogits([Array(p[0..<$0])], caches: [KVCache(config: c)])[0] }
        let fpModel = try ModelLoader.load(path: path + "/../fp").model
        let fpLogits = try fpModel.lastLogits([p], caches: [KVCache(config: c)])[0]
        let quantError = relL2(want.last!, fpLogits)
        let m = try EngineModel.load(quantized: path, lmHead: .fp32)
        #expect(m.kvFormat.mode == (kv == 4 ? .kv4 : .kv8))
        // Large K biases keep exact scores (an int8 query's error times |k| ~150 moved scores by whole units).
        #expect(m.layers.allSatisfy { $0.exactScores == name.contains("kbias") }, "\(name)")
        #expect(m.layers.allSatisfy { ($0.kCenter != nil) == name.contains("center") }, "\(name)")
        #expect(m.layers.allSatisfy { $0.rotateKeys == name.contains("rotate") }, "\(name)")
        #expect(m.layers.allSatisfy { ($0.kScale != nil) == name.contains("scale") }, "\(name)")
        for integer in [false, true] {
          let h = try EngineHarness(m)
          let got = try m.step([SequenceChunk(start: 0, tokens: p, blockTable: h.pages(1), logits: .all)], pool: h.pool,
                               workspace: h.ws, integerScores: integer)
          let d = (0..<p.count).map { relL2(Array(got[($0 * V)..<(($0 + 1) * V)]), want[$0]) }
          let worst = d.max()!, exactScores = !(integer && kv == 4)
          let msg = "\(name) \(format) kv\(kv) int=\(integer): first \(d[0]) worst \(worst) last \(d.last!) quant error \(quantError)"
          #expect(worst < (exactScores ? 6e-2 : 1e-1) && d.last! < quantError / (exactScores ? 3 : 2), "\(msg)")
          if exactScores { #expect(d[0] < 1e-4, "\(msg)") }
        }
      }
    }
  }

  /// `qoq eval --kv-bits`: the KV4 checkpoint with its KV cache overridden to 8 bits computes exactly what a checkpoint
  /// written with KV8 from the same weights computes (fake-quantized and on the engine, bit for bit); overridden to
  /// 16 it equals the same weights without KV quantization to fp32 rounding (centering, scaling and rotation are exact
  /// in FP, on the engine too).
  @Test func kvBitsOverrideEqualsACheckpointWrittenWithThoseBits() throws {
    let p = Self.prompt
    let (name, c) = try engineConfigs().first { $0.0 == "qwen2-gqa-kbias-center-scale-rotate" }!
    let base = engineTempDir(name)
    let kv4 = try ModelCheckpoint.open(try writeQuantizedTiny(c, format: .progressive(group: 32, protective: 120), kvBits: 4, dir: base + "/a"))
    let kv8 = try ModelCheckpoint.open(try writeQuantizedTiny(c, format: .progressive(group: 32, protective: 120), kvBits: 8, dir: base + "/b"))
    let kv16 = try ModelCheckpoint.open(try writeQuantizedTiny(c, format: .progressive(group: 32, protective: 120), kvBits: nil, dir: base + "/c"))
    func fake(_ m: ModelCheckpoint) throws -> [Float] { try m.referenceModel().lastLogits([p], caches: [KVCache(config: c)])[0] }
    func engine(_ m: ModelCheckpoint) throws -> [Float] {
      let e = try EngineModel.load(m, lmHead: .fp32), h = try EngineHarness(e)
      return try e.step([SequenceChunk(start: 0, tokens: p, blockTable: h.pages(1), logits: .last)], pool: h.pool, workspace: h.ws)
    }
    let as8 = try kv4.withKVBits(8)
    #expect(as8.quantization?.kvBits == 8 && as8.quantization?.kvKeyRotation == true && as8.quantization?.kvKeyCenter == true
            && as8.quantization?.kvKeyScale == true)
    #expect(try EngineModel.load(as8).kvFormat.mode == .kv8)
    #expect(try fake(as8) == fake(kv8))
    #expect(try engine(as8) == engine(kv8))
    let as16 = try kv4.withKVBits(nil)
    #expect(try EngineModel.load(as16).kvFormat.mode == .fp16)
    #expect(relL2(try fake(as16), try fake(kv16)) < 1e-4)
    // The engine still centers, scales and rotates at KV16; key scaling is exact there: against the same weights with
    // centered, rotated but unscaled keys (both in fp16 pages; uncentered ±150 keys would lose 0.06 to fp16 rounding)
    // the logits agree to fp16 rounding. W4A16, so that no int8 activation code can flip between the two.
    let fmt = WeightFormat.asym(bits: 4, group: 32)
    let scaled = try ModelCheckpoint.open(try writeQuantizedTiny(c, format: fmt, actBits: nil, kvBits: 4, dir: base + "/e"))
    let unscaled = try ModelCheckpoint.open(try writeQuantizedTiny(c, format: fmt, actBits: nil, kvBits: 4,
                                                                  dir: engineTempDir("qwen2-gqa-kbias-center-rotate") + "/d"))
    #expect(scaled.quantization?.kvKeyScale == true && unscaled.quantization?.kvKeyScale == false)
    // The reference: the same weights' fake-quantized model at KV16 (fp32 keys; centering, scaling and rotation are
    // exact, so it ignores them). Each engine errs from it by its fp16 pages' rounding, which the large K biases make
    // visible; the scaled keys must err no more than the unscaled ones (wrong query scales would move every score).
    let ref = try fake(unscaled.withKVBits(nil))
    let eScaled = relL2(try engine(scaled.withKVBits(nil)), ref), eUnscaled = relL2(try engine(unscaled.withKVBits(nil)), ref)
    let e4 = relL2(try engine(scaled), ref)
    #expect(eScaled < 2 * eUnscaled + 1e-4 && eScaled < e4 / 10, "KV16 engine vs fp32 reference: scaled keys \(eScaled), unscaled \(eUnscaled); KV4 \(e4)")
    #expect(relL2(try fake(as16), try fake(kv4)) > 1e-4)  // KV4 itself moved the logits: the override is not a no-op
    #expect(throws: QoQError.self) { try kv4.withKVBits(5) }
    let fp = try ModelCheckpoint.open(base + "/a/fp")
    #expect(throws: QoQError.self) { try fp.withKVBits(8) }
  }

  /// `qoq eval --act-bits 16 --kv-bits 16`: a W4A8KV4 checkpoint with activations and KV unquantized computes what a
  /// checkpoint written from the same weights as W4A16 computes (the model that MLX, GGUF and compressed-tensors exports
  /// carry), to fp32 rounding; --act-bits 8 on that W4A16 checkpoint gives back the W4A8 model exactly.
  @Test func actBitsOverrideEqualsACheckpointWrittenWithoutActivations() throws {
    let p = Self.prompt
    let (name, c) = try engineConfigs().first { $0.0 == "qwen2-gqa-kbias-center-rotate" }!
    let base = engineTempDir(name + "-act")
    let fmt = WeightFormat.progressive(group: 32, protective: 120)
    let a8 = try ModelCheckpoint.open(try writeQuantizedTiny(c, format: fmt, actBits: 8, kvBits: 4, dir: base + "/a"))
    let a16 = try ModelCheckpoint.open(try writeQuantizedTiny(c, format: fmt, actBits: nil, kvBits: nil, dir: base + "/b"))
    let a8kv16 = try ModelCheckpoint.open(try writeQuantizedTiny(c, format: fmt, actBits: 8, kvBits: nil, dir: base + "/c"))
    func fake(_ m: ModelCheckpoint) throws -> [Float] { try m.referenceModel().lastLogits([p], caches: [KVCache(config: c)])[0] }
    let w4a16 = try a8.withActBits(nil).withKVBits(nil)
    #expect(w4a16.quantization?.actBits == nil && w4a16.quantization?.kvBits == nil)
    #expect(relL2(try fake(w4a16), try fake(a16)) < 1e-5)
    #expect(relL2(try fake(a8.withKVBits(nil)), try fake(a8kv16)) < 1e-5)
    #expect(relL2(try fake(a8.withKVBits(nil)), try fake(w4a16)) > 1e-5)  // int8 activations moved the logits
    #expect(try fake(a16.withActBits(8)) == fake(a8kv16))
    #expect(throws: QoQError.self) { try a8.withActBits(4) }
    #expect(throws: QoQError.self) { try ModelCheckpoint.open(base + "/a/fp").withActBits(nil) }
  }

  /// W4A16 (uint4 weights, fp32 activations; AWQ/GPTQ-style checkpoints): no activation codes to flip, so with
  /// fp16 KV pages the engine equals the fake-quantized model to fp32 rounding at every position (the kernel's
  /// s·Σq·x − z·Σx form cancels more than a dot product of dequantized weights: ~1e-5, not 1e-7).
  @Test(arguments: [WeightFormat.asym(bits: 4, group: 32), .asym(bits: 4, group: nil), .progressive(group: 32, protective: 120)])
  func weightOnlyEngineMatchesFakeQuant(_ format: WeightFormat) throws {
    let p = Self.prompt
    for (name, c) in try engineConfigs() {
      let path = try writeQuantizedTiny(c, format: format, actBits: nil, kvBits: nil, dir: engineTempDir(name))
      let (fake, _) = try AnyModelLoader.load(path: path)
      final class F16Round: KVTransform, @unchecked Sendable {
        func apply(_ x: UnsafeMutablePointer<Float>, rows: Int, width: Int) { for i in 0..<(rows * width) { x[i] = Float(Float16(x[i])) } }
      }
      fake.model.kvQuantizer = F16Round()
      let m = try EngineModel.load(quantized: path, lmHead: .fp32)
      #expect(m.kvFormat.mode == .fp16 && m.description.contains("fp32 activations"))
      let h = try EngineHarness(m)
      let got = try m.step([SequenceChunk(start: 0, tokens: p, blockTable: h.pages(1), logits: .all)], pool: h.pool, workspace: h.ws)
      let V = c.vocabSize
      for n in [1, 7, p.count] {
        let want = try fake.model.lastLogits([Array(p[0..<n])], caches: [KVCache(config: c)])[0]
        let d = relL2(Array(got[((n - 1) * V)..<(n * V)]), want)
        #expect(d < 3e-4, "\(name) \(format) position \(n): \(d)")
      }
    }
  }

  /// The FP engine equals the reference forward whose K/V are rounded to fp16 (what FP16 pages store).
  @Test func fpEngineMatchesReference() throws {
    final class F16Round: KVTransform, @unchecked Sendable {
      func apply(_ x: UnsafeMutablePointer<Float>, rows: Int, width: Int) { for i in 0..<(rows * width) { x[i] = Float(Float16(x[i])) } }
    }
    for (name, c) in try engineConfigs() {
      let dir = engineTempDir(name)
      try writeTinyCheckpoint(c, to: dir)
      let ref = try ModelLoader.load(path: dir).model
      ref.kvQuantizer = F16Round()
      let want = try ref.lastLogits([Self.prompt], caches: [KVCache(config: c)])[0]
      let m = try EngineModel(fp: ref)
      let h = try EngineHarness(m)
      let got = try m.step([SequenceChunk(start: 0, tokens: Self.prompt, blockTable: h.pages(1), logits: .last)], pool: h.pool, workspace: h.ws)
      #expect(relL2(got, want) < 3e-5, "\(name): \(relL2(got, want))")  // fp32 summation order differs per ISA
    }
  }

  /// Perplexity through the engine scores exactly the positions asked, in chunks of any size: llama.cpp's protocol
  /// (the second half of a window, so whole chunks score nothing; `qoq eval --engine --protocol llamacpp` crashed on
  /// them) and the GPTQ protocol, each equal to the reference forward's sum (fp16 K/V) on the same window.
  @Test func engineScorerScoresAnyRange() throws {
    final class F16Round: KVTransform, @unchecked Sendable {
      func apply(_ x: UnsafeMutablePointer<Float>, rows: Int, width: Int) { for i in 0..<(rows * width) { x[i] = Float(Float16(x[i])) } }
    }
    let (name, c) = try engineConfigs()[0]
    let dir = engineTempDir(name + "-scorer")
    try writeTinyCheckpoint(c, to: dir)
    let ref = try ModelLoader.load(path: dir).model
    ref.kvQuantizer = F16Round()
    let window: [Int32] = (0..<17).map { Int32(($0 * 37 + 5) % c.vocabSize) }
    let hidden = try ref.forward([window], caches: [KVCache(config: c)])
    let logits = hidden.withUnsafeBufferPointer { ref.logits($0.baseAddress!, rows: window.count) }
    for chunk in [1, 3, 4, 16] {
      let scorer = EngineScorer(model: try EngineModel(fp: ref), chunk: chunk)
      for (first, last) in [(8, 16), (0, 16), (13, 15), (16, 16)] {
        var want = 0.0
        for j in first..<last {
          let row = Array(logits[(j * c.vocabSize)..<((j + 1) * c.vocabSize)]), m = Double(row.max()!)
          want += m + log(row.reduce(0.0) { $0 + exp(Double($1) - m) }) - Double(row[Int(window[j + 1])])
        }
        let got = try scorer.windowNLL(window, from: first, to: last)
        #expect(abs(got - want) <= 1e-4 * max(1, abs(want)), "chunk \(chunk), positions \(first)..<\(last): \(got) vs \(want)")
      }
    }
  }

  /// Mixtral (FP): every position's logits of the engine's MoE layers equal the reference model's (fp16 KV), and a
  /// sequence decoded token by token beside another that prefills gives the same bits as its prefill.
  @Test func fpMixtralEngineMatchesReference() throws {
    final class F16Round: KVTransform, @unchecked Sendable {
      func apply(_ x: UnsafeMutablePointer<Float>, rows: Int, width: Int) { for i in 0..<(rows * width) { x[i] = Float(Float16(x[i])) } }
    }
    for (experts, topK) in [(4, 2), (8, 3), (3, 1)] {
      let c = try TinyMixtral.config(experts: experts, topK: topK, hidden: 64, intermediate: 64)
      let ref = try LlamaModel(config: c, weights: TinyMixtral.weights(c))
      ref.kvQuantizer = F16Round()
      let p = Array(Self.prompt.map { $0 % Int32(c.vocabSize) }.prefix(12))
      let hidden = try ref.forward([p], caches: [KVCache(config: c)])
      let want = hidden.withUnsafeBufferPointer { ref.logits($0.baseAddress!, rows: p.count) }
      let m = try EngineModel(fp: ref, pageSize: 16)
      let h = try EngineHarness(m)
      let all = try m.step([SequenceChunk(start: 0, tokens: p, blockTable: h.pages(1), logits: .all)], pool: h.pool, workspace: h.ws)
      #expect(relL2(all, want) < 3e-5, "\(experts)/\(topK): \(relL2(all, want))")
      let V = c.vocabSize, h2 = try EngineHarness(m), bt = h2.pages(1), other = h2.pages(1)
      for pos in 0..<p.count {
        let out = try m.step([SequenceChunk(start: 0, tokens: [3, 4, 5], blockTable: other, logits: .none),
                              SequenceChunk(start: pos, tokens: [p[pos]], blockTable: bt, logits: .last)], pool: h2.pool, workspace: h2.ws)
        #expect(out == Array(all[(pos * V)..<((pos + 1) * V)]), "\(experts)/\(topK) position \(pos)")
      }
    }
  }

  /// Mixtral quantized by the pipeline (RTN W4A8KV4 progressive g64, and W4A16 g64): the engine runs every expert on
  /// the integer (or W4A16) kernels and computes the fake-quantized model `qoq eval` measures, as the dense test above
  /// bounds it (fp32 scores: the first position within 1e-4, the last far below the quantization error); and a
  /// sequence decoded token by token beside another gives its prefill's bits (experts see different token groups).
  @Test func quantizedMixtralEngineMatchesFakeQuant() throws {
    let c = try TinyMixtral.config(experts: 4, topK: 2, hidden: 64, intermediate: 64, vocab: 300)
    let dir = engineTempDir("mixtral-q")
    try writeTinyCheckpoint(c, to: dir + "/fp")
    let recipes = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
      .appendingPathComponent("recipes").path
    let p = Self.prompt, V = c.vocabSize
    for (recipe, integer) in [("rtn-w4a8kv4-g64.yaml", true), ("rtn-w4a16-g64.yaml", false)] {
      let out = try QuantizationPipeline(modelPath: dir + "/fp", recipe: try Recipe.load(files: [recipes + "/" + recipe],
                                                                                         flags: ["--opts-group-shapes", "1,32"]), cacheRoot: nil).run()
      let ckpt = try ModelCheckpoint.open(try out.checkpoint())
      let fake = try ckpt.referenceModel()
      let want = try (1...p.count).map { try fake.lastLogits([Array(p[0..<$0])], caches: [KVCache(config: c)])[0] }
      let fp = try ModelLoader.load(path: dir + "/fp").model.lastLogits([p], caches: [KVCache(config: c)])[0]
      let quantError = relL2(want.last!, fp)
      let m = try EngineModel.load(ckpt, lmHead: .fp32)
      let moe = try #require(m.layers[0].moe)
      #expect(moe.experts.allSatisfy { ($0.w1 is IntKernelLinear) == integer && ($0.w2 is IntKernelLinear) == integer }, "\(recipe)")
      let h = try EngineHarness(m)
      let all = try m.step([SequenceChunk(start: 0, tokens: p, blockTable: h.pages(1), logits: .all)], pool: h.pool, workspace: h.ws)
      let d = (0..<p.count).map { relL2(Array(all[($0 * V)..<(($0 + 1) * V)]), want[$0]) }
      // W4A16 has no KV quantization: the engine's fp16 pages against the fake model's fp32 keys and values (~3e-4). A
      // rounding difference can also flip one token's routing (a jump of ~0.2 at that position, seen once in 20).
      #expect(d[0] < (integer ? 1e-4 : 2e-3) && d.filter { $0 > 6e-2 }.count <= 2 && d.last! < quantError / 3,
              "\(recipe): \(d), quantization error \(quantError)")
      let h2 = try EngineHarness(m), bt = h2.pages(1), other = h2.pages(1)
      for pos in 0..<p.count {
        let o = try m.step([SequenceChunk(start: 0, tokens: [3, 4, 5], blockTable: other, logits: .none),
                            SequenceChunk(start: pos, tokens: [p[pos]], blockTable: bt, logits: .last)], pool: h2.pool, workspace: h2.ws)
        #expect(o == Array(all[(pos * V)..<((pos + 1) * V)]), "\(recipe) position \(pos)")
      }
    }
  }

  /// A sequence's logits are bit-identical whether it is prefilled at once, in chunks, decoded token by token, or run
  /// in a batch with other sequences (pages smaller than the sequence, so page boundaries are crossed).
  @Test func resultsDoNotDependOnBatchingOrChunking() throws {
    let (_, c) = try engineConfigs()[0]
    let path = try writeQuantizedTiny(c, format: .progressive(group: 32, protective: 120), dir: engineTempDir("inv"))
    let m = try EngineModel.load(quantized: path, pageSize: 16)
    let p = Self.prompt
    // Whole prompt, all positions' logits.
    let h1 = try EngineHarness(m)
    let all = try m.step([SequenceChunk(start: 0, tokens: p, blockTable: h1.pages(2), logits: .all)], pool: h1.pool, workspace: h1.ws)
    let V = c.vocabSize
    // Chunks of 7, 1, 1, ... mixed into batches with two other sequences that are prefilling and decoding.
    let h2 = try EngineHarness(m)
    let bt = h2.pages(2), other1 = h2.pages(2), other2 = h2.pages(2)
    let o1: [Int32] = [3, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]
    var pos = 0, o1pos = 0
    while pos < p.count {
      let n = pos == 0 ? 7 : 1
      var chunks = [SequenceChunk(start: o1pos, tokens: Array(o1[o1pos..<(o1pos + 2)]), blockTable: other1, logits: .last),
                    SequenceChunk(start: pos, tokens: Array(p[pos..<(pos + n)]), blockTable: bt, logits: .all)]
      if pos % 2 == 1 { chunks.append(SequenceChunk(start: 0, tokens: [9, 8, 7], blockTable: other2, logits: .none)) }
      let out = try m.step(chunks, pool: h2.pool, workspace: h2.ws)
      let mine = Array(out[V..<(V + n * V)])
      #expect(mine == Array(all[(pos * V)..<((pos + n) * V)]), "position \(pos)")
      pos += n; o1pos = (o1pos + 2) % 18
    }
  }

  /// Formats the kernels cannot run are refused with a message naming the problem.
  @Test func unsupportedCheckpointsAreRefused() throws {
    let (_, c) = try engineConfigs()[0]
    let cases: [(WeightFormat, Int?, Int?, String)] = [
      (.asym(bits: 3, group: 32), 8, 4, "3-bit asymmetric weights"),
      (.sym(bits: 8), nil, nil, "weight-only int8 (W8A16)"),
      (.sym(bits: 4), 8, 4, "4-bit symmetric weights"),
      (.progressive(group: 32, protective: 120), 8, 2, "2-bit KV cache"),
    ]
    for (f, a, kv, msg) in cases {
      let path = try writeQuantizedTiny(c, format: f, actBits: a, kvBits: kv, dir: engineTempDir("bad"))
      do { _ = try EngineModel.load(quantized: path); Issue.record("\(f) loaded") } catch let e as QoQError {
        #expect(e.message.contains(msg), "\(e.message)")
      }
    }
    // An FP folder is not a quantized checkpoint.
    let dir = engineTempDir("fp")
    try writeTinyCheckpoint(c, to: dir)
    #expect(throws: QoQError.self) { _ = try EngineModel.load(quantized: dir) }
  }
}

/// The int4 LM head against a hand-written progressive round-to-nearest (deepcompressor.md §3.2: s1 = fp16(max|w|/120),
/// u = clamp(w/s1, ±120), per group s2 = max(1, rne((max u − min u)/15)), z = rne(−min u), q = clamp(rne((u+z)/s2), 0, 15),
/// ŵ = s1·(q·s2 − z)) and an fp64 product with the int8 activations, on awkward vocabulary sizes and each group width.
@Suite struct Int4HeadTests {
  @Test(arguments: [(37, 128), (17, 96), (1, 64), (129, 256)])
  func int4HeadMatchesHandWrittenProgressiveRTN(_ vocab: Int, _ hidden: Int) throws {
    var w = randomFloats(vocab * hidden, seed: UInt64(vocab * 1000 + hidden), scale: 0.05)
    for o in stride(from: 0, to: vocab, by: 5) { w[o * hidden + (o * 7) % hidden] = 0.9 }  // an outlier in some rows
    let rows = { (r: Range<Int>) in Array(w[(r.lowerBound * hidden)..<(r.upperBound * hidden)]) }
    guard case .int(let head) = try EngineModel.int4Head(vocab: vocab, hidden: hidden, rows: rows)
    else { Issue.record("the int4 head is not an integer kernel"); return }
    let g = hidden % 128 == 0 ? 128 : hidden % 64 == 0 ? 64 : 32
    var wHat = [Double](repeating: 0, count: vocab * hidden)
    for o in 0..<vocab {
      let row = w[(o * hidden)..<((o + 1) * hidden)]
      // Float arithmetic, as the format specifies it (fp16 s1, fp32 u), so rounding ties fall the same way.
      let s1 = Float(Float16(row.map { abs($0) }.max()! / 120))
      let u = row.map { min(max($0 / s1, -120), 120) }
      for j in 0..<(hidden / g) {
        let grp = u[(j * g)..<((j + 1) * g)]
        let s2 = max(1, ((grp.max()! - grp.min()!) / 15).rounded(.toNearestOrEven)), z = (-grp.min()!).rounded(.toNearestOrEven)
        for i in grp.indices {
          let q = min(max(((u[i] + z) / s2).rounded(.toNearestOrEven), 0), 15)
          wHat[o * hidden + i] = Double(s1) * Double(q * s2 - z)
          // Within half a step, plus what rounding s2 down (≤ 7.5 units over 15 steps) and z (½) may clip.
          #expect(abs(wHat[o * hidden + i] - Double(w[o * hidden + i])) <= Double(s1) * (Double(s2) * 0.5 + 8) + 1e-6, "row \(o) input \(i)")
        }
      }
    }
    let x = randomFloats(3 * hidden, seed: 99)
    let a = QuantizedRows(capacity: 3, k: hidden)
    x.withUnsafeBufferPointer { for r in 0..<3 { a.quantizeRow(r, $0.baseAddress! + r * hidden) } }
    a.m = 3
    var y = [Float](repeating: .nan, count: 3 * vocab)
    y.withUnsafeMutableBufferPointer { head.forward(a, $0.baseAddress!, ldy: vocab) }
    for r in 0..<3 {
      for o in 0..<vocab {
        var ref = 0.0
        for i in 0..<hidden { ref += wHat[o * hidden + i] * Double(a.codes[r * hidden + i]) }
        ref *= Double(a.scale[r])
        #expect(abs(Double(y[r * vocab + o]) - ref) <= 1e-5 * max(1, abs(ref)), "token \(r) output \(o): \(y[r * vocab + o]) vs \(ref)")
      }
    }
  }

  @Test func int4HeadRefusesNonFiniteWeights() {
    var w = randomFloats(3 * 64, seed: 5)
    w[70] = .nan
    #expect(throws: QoQError.self) { try EngineModel.int4Head(vocab: 3, hidden: 64) { Array(w[($0.lowerBound * 64)..<($0.upperBound * 64)]) } }
  }
}

// Export to GGUF for llama.cpp (issue #15): `qoq convert CKPT --to gguf -o DIR` writes DIR/model.gguf. Followed:
// llama.cpp's ggml-common.h (block_q4_1, block_q8_0), ggml-quants.c (dequantize_row_q4_1 / _q8_0), gguf-py's key
// names and convert_hf_to_gguf.py (Q/K row permutation for the llama architecture, rope_freqs for Llama 3 scaling).
//   4-bit weights (asymmetric per group of a multiple of 32, per channel, or QoQ progressive) → Q4_1 blocks of 32:
//     ŵ = d·q + m with d = s, m = −z (asym, ŵ = q·s − z) or d = s1·s2, m = −s1·z (progressive, ŵ = s1·(q·s2 − z));
//     the codes q are ours unchanged; d and m are fp16, so the export is exact where they are fp16 values (always for
//     PostScale asym weights; otherwise the rounding is measured and reported).
//     Block layout: d (fp16), m (fp16), qs[16] with element j in the low nibble of qs[j] and element j + 16 in the high.
//   symmetric int8 per channel (W8A8) → Q8_0 blocks: d = s (fp16), qs = q − 128.
//   embeddings, LM head: --dtype (f32 exact, f16, bf16), or each on its own with --token-embedding-type and
//     --output-tensor-type (llama-quantize's names) as f32, f16, bf16 or q8_0 (ggml's quantize_row_q8_0_ref);
//   FP linears (quant.wgts.skips): --dtype; norms and biases: F32.
// Activation and KV-cache quantization do not carry over (llama.cpp quantizes activations its own way); key centering
// and key rotation act on the KV cache only and are exact in FP, so they are dropped.
import Foundation
import QoQFormat
import QoQIO
import QoQModels
import QoQTokenizers

/// How the GGUF export stores the token embeddings and the LM head: as floats, or as Q8_0 blocks (8.5 bits per weight,
/// a quarter of f32; llama.cpp's own 8-bit type for these tables).
public enum GGUFTableType: String, Sendable, CaseIterable {
  case f32, f16, bf16, q8_0

  init(_ d: ConvertDType) { self = [.f32: .f32, .f16: .f16, .bf16: .bf16][d]! }
  var ggml: GGMLType { [.f32: .F32, .f16: .F16, .bf16: .BF16, .q8_0: .Q8_0][self]! }
}

extension Interop {
  /// Our quantized checkpoint → `dst`/model.gguf. Returns notes (what does not carry over, fp16 rounding).
  /// `embeddings` and `output` (the LM head) default to `dtype`.
  public static func exportGGUF(from src: String, to dst: String, dtype: ConvertDType, embeddings: GGUFTableType? = nil,
                                output: GGUFTableType? = nil, overwrite: Bool) throws -> [String] {
    try OutputFolder.check(dst, force: overwrite, inputs: [src])
    let (c, q, st) = try open(src, moe: true)
    guard let wf = q.weight else { throw QoQError("\(src): no quantized weights to export") }
    let family = try ModelRegistry.family(c.modelType)
    let arch = family.ggufArchitecture
    let type: GGMLType
    if case .sym = wf { type = .Q8_0 } else { type = .Q4_1 }
    switch wf {
    case .asym(let b, let g, _):
      guard b == 4 else { throw QoQError("\(src): GGUF export takes 4-bit asymmetric weights (Q4_1), not \(wf)") }
      if let g, g % 32 != 0 {
        throw QoQError("\(src): Q4_1 blocks hold 32 weights with one (d, m); groups of \(g) are not a multiple of 32, so they cannot be represented")
      }
    case .progressive(let g, _):
      guard g % 32 == 0 else { throw QoQError("\(src): Q4_1 blocks hold 32 weights; progressive groups of \(g) are not a multiple of 32") }
    case .sym(let b):
      guard b == 8 else { throw QoQError("\(src): GGUF export takes symmetric 8-bit weights (Q8_0), not \(wf)") }
    }
    for (name, n) in [("hidden_size", c.hiddenSize), ("intermediate_size", c.intermediateSize), ("q width", c.qDim)] where n % 32 != 0 {
      throw QoQError("\(src): \(name) \(n) is not a multiple of 32 (GGUF \(type) rows are whole blocks of 32)")
    }
    var notes: [String] = []
    if let a = q.actBits { notes.append("llama.cpp runs its own activation quantization: the \(a)-bit activations do not carry over") }
    if let kb = q.kvBits { notes.append("the \(kb)-bit KV cache does not carry over (llama.cpp picks its KV type with -ctk/-ctv)") }
    if let w = c.slidingWindow, w < c.maxPositionEmbeddings, c.numLocalExperts != nil {
      notes.append("llama.cpp runs Mixtral as its llama architecture, which attends over the whole context: the sliding window of \(w) "
                   + "tokens does not carry over (outputs agree up to \(w) tokens)")
    }
    if q.kvKeyCenter || q.kvKeyRotation || q.kvKeyScale {
      notes.append("key centering/scaling/rotation act on the KV cache only and are dropped (exact in FP)")
    }

    // The tokenizer, checked before any weight is written.
    let tokPath = src + "/tokenizer.json"
    guard FileManager.default.fileExists(atPath: tokPath) else { throw QoQError("\(src): no tokenizer.json to export with the model") }
    let tc = FileManager.default.fileExists(atPath: src + "/tokenizer_config.json") ? try JSON.parseFile(src + "/tokenizer_config.json") : nil
    var template = tc?["chat_template"]?.string
    if template == nil, let data = FileManager.default.contents(atPath: src + "/chat_template.jinja") {
      template = String(decoding: data, as: UTF8.self)
    }
    let tokMeta = try ggufTokenizerMetadata(tokenizerJSON: try JSON.parseFile(tokPath), tokenizerConfig: tc, vocabSize: c.vocabSize,
                                            configIds: GGUFSpecialIds(bos: c.bosTokenId, eos: c.eosTokenIds.first), chatTemplate: template,
                                            what: tokPath)
    var meta = modelMetadata(c, arch: arch, name: URL(fileURLWithPath: src).lastPathComponent, type: type)
    if let e = c.numLocalExperts {
      meta += [("\(arch).expert_count", .u32(UInt32(e))), ("\(arch).expert_used_count", .u32(UInt32(c.numExpertsPerTok)))]
    }
    meta += tokMeta
    meta.append(("qoq.source_quantization", .string(q.method + " " + wf.description)))

    var tensors: [GGUFTensorSpec] = []
    var rounding = FP16Rounding()
    // Linears left unquantized (quant.wgts.skips) keep an FP weight: exported like the embeddings, in --dtype.
    let names = Set(st.names)
    let experts = expertModules(c)
    let quantizedModules = modules(c).filter { names.contains($0 + ".qweight") }
    let quantized = Set(quantizedModules + experts)
    if output != nil && !names.contains("lm_head.weight") {
      notes.append("the LM head is tied to the embeddings (llama.cpp reads token_embd.weight for it): --output-tensor-type has no tensor")
    }
    if embeddings == .q8_0 || output == .q8_0 {
      notes.append("Q8_0 tables are rounded from the checkpoint's FP values (ggml's rounding: a block's error at most max|x|/254)")
    }
    // The stored type of each unquantized 2-D weight; everything else (norms, biases) stays F32.
    func tableType(_ n: String, _ shape: [Int]) -> GGUFTableType {
      if n == "model.embed_tokens.weight" { return embeddings ?? GGUFTableType(dtype) }
      if n == "lm_head.weight" { return output ?? GGUFTableType(dtype) }
      return n.hasSuffix("_proj.weight") && shape.count == 2 ? GGUFTableType(dtype) : .f32
    }
    if let s = c.ropeScaling, s.ropeType == "llama3" {
      let factors = llama3RopeFactors(c, s)
      tensors.append(GGUFTensorSpec(name: "rope_freqs.weight", dims: [factors.count], type: .F32) { floats(factors) })
    }
    for n in st.names {
      let m = n.components(separatedBy: ".").dropLast().joined(separator: ".")
      if quantized.contains(m) && !n.hasSuffix(".bias") { continue }
      if n.hasSuffix(".k_center") || n.hasSuffix(".k_scale") { continue }
      guard let g = ggufName(hfName: n) else { throw QoQError("\(src): tensor \(n) has no llama.cpp counterpart; not exporting a partial model") }
      let shape = try st.info(n).shape
      let t = tableType(n, shape)
      if t == .q8_0, shape.count != 2 || shape[1] % 32 != 0 {
        throw QoQError("\(src): \(n) has shape \(shape); Q8_0 rows are whole blocks of 32")
      }
      let rows = permutedRows(n, c, family)
      tensors.append(GGUFTensorSpec(name: g, dims: shape.reversed(), type: t.ggml) {
        var w = try st.floats(n)
        if let rows { w = permuteRows(w, rows) }
        switch t {
        case .f32: return floats(w)
        case .f16: return w.map { f32ToF16($0).littleEndian }.withUnsafeBytes { Data($0) }
        case .bf16: return w.map { f32ToBF16($0).littleEndian }.withUnsafeBytes { Data($0) }
        case .q8_0: return try w.withUnsafeBufferPointer { try quantizeQ8_0($0, what: "\(src): \(n)") }
        }
      })
    }
    for m in quantizedModules {
      let g = ggufName(hfName: m + ".weight")!
      let out = try st.info(m + ".qweight").shape[0], inp = tensorShape(m + ".weight", c)[1]
      let rows = permutedRows(m + ".weight", c, family)
      tensors.append(GGUFTensorSpec(name: g, dims: [inp, out], type: type) {
        let w = try QuantizedCheckpoint.readWeight(st, module: m, format: wf, out: out, inp: inp)
        return type == .Q4_1 ? q4_1Blocks(w, rowOrder: rows, rounding: &rounding) : q8_0Blocks(w, rowOrder: rows, rounding: &rounding)
      })
    }
    // Experts: llama.cpp's merged blk.{i}.ffn_{gate,up,down}_exps (dims in, out, experts), each expert's rows in turn.
    for l in 0..<(c.numLocalExperts == nil ? 0 : c.numHiddenLayers) {
      for (g, w) in [("ffn_gate_exps", "w1"), ("ffn_up_exps", "w3"), ("ffn_down_exps", "w2")] {
        let ms = layerExperts(c, layer: l, w)
        let out = try st.info(ms[0] + ".qweight").shape[0], inp = tensorShape(ms[0] + ".weight", c)[1]
        tensors.append(GGUFTensorSpec(name: "blk.\(l).\(g).weight", dims: [inp, out, ms.count], type: type) {
          var data = Data()
          for m in ms {
            let qw = try QuantizedCheckpoint.readWeight(st, module: m, format: wf, out: out, inp: inp)
            data += type == .Q4_1 ? q4_1Blocks(qw, rowOrder: nil, rounding: &rounding) : q8_0Blocks(qw, rowOrder: nil, rounding: &rounding)
          }
          return data
        })
      }
    }
    // llama.cpp's loaders expect the global tensors first, then each block's (gguf-py writes them in this order).
    tensors.sort { tensorRank($0.name) < tensorRank($1.name) }
    try OutputFolder.write(dst, force: overwrite, inputs: [src], command: "convert --to gguf") { tmp in
      try GGUFWriter.write(to: tmp + "/model.gguf", metadata: meta, tensors: tensors)
    }
    if rounding.blocks > 0 {
      notes.append(rounding.inexact == 0
        ? "every block's (d, m) is an exact fp16 value: the \(type) weights equal the checkpoint's"
        : "\(rounding.inexact) of \(rounding.blocks) blocks have (d, m) that are not fp16 values; rounding them moves a weight by "
          + "at most \(String(format: "%.3g", rounding.maxSteps)) of its quantization step")
    }
    return notes
  }

  /// Architecture keys as llama.cpp's converter writes them (u32 integers, f32 reals).
  static func modelMetadata(_ c: LlamaConfiguration, arch: String, name: String, type: GGMLType) -> [(String, GGUFValue)] {
    var m: [(String, GGUFValue)] = [
      ("general.architecture", .string(arch)), ("general.name", .string(name)),
      ("general.file_type", .u32(type == .Q4_1 ? 3 : 7)), ("general.quantization_version", .u32(2)),
      ("\(arch).vocab_size", .u32(UInt32(c.vocabSize))), ("\(arch).context_length", .u32(UInt32(c.maxPositionEmbeddings))),
      ("\(arch).embedding_length", .u32(UInt32(c.hiddenSize))), ("\(arch).block_count", .u32(UInt32(c.numHiddenLayers))),
      ("\(arch).feed_forward_length", .u32(UInt32(c.intermediateSize))),
      ("\(arch).attention.head_count", .u32(UInt32(c.numAttentionHeads))),
      ("\(arch).attention.head_count_kv", .u32(UInt32(c.numKeyValueHeads))),
      ("\(arch).rope.freq_base", .f32(Float(c.ropeTheta))), ("\(arch).rope.dimension_count", .u32(UInt32(c.headDim))),
      ("\(arch).attention.layer_norm_rms_epsilon", .f32(Float(c.rmsNormEps))),
    ]
    if c.headDim * c.numAttentionHeads != c.hiddenSize {
      m += [("\(arch).attention.key_length", .u32(UInt32(c.headDim))), ("\(arch).attention.value_length", .u32(UInt32(c.headDim)))]
    }
    return m
  }

  /// Llama 3 frequency factors as llama.cpp reads them from rope_freqs (θ_i divided by factor_i): 1 for short
  /// wavelengths, `factor` for long ones, the smooth blend between (convert_hf_to_gguf.py LlamaModel).
  static func llama3RopeFactors(_ c: LlamaConfiguration, _ s: RopeScaling) -> [Float] {
    let d = c.headDim, old = Double(s.originalMaxPositionEmbeddings)
    let low = old / s.lowFreqFactor, high = old / s.highFreqFactor
    return (0..<(d / 2)).map { i in
      let freq = 1 / pow(c.ropeTheta, Double(2 * i) / Double(d)), wavelen = 2 * Double.pi / freq
      if wavelen < high { return 1 }
      if wavelen > low { return Float(s.factor) }
      let smooth = (old / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor)
      return Float(1 / ((1 - smooth) / s.factor + smooth))
    }
  }

  /// The GGUF row order of a q/k weight or bias in the llama architecture (nil: rows unchanged).
  static func permutedRows(_ n: String, _ c: LlamaConfiguration, _ f: ModelFamily) -> [Int]? {
    guard f.ggufPermutesQK else { return nil }
    if n.hasSuffix("self_attn.q_proj.weight") || n.hasSuffix("self_attn.q_proj.bias") {
      return ggufPermutedRowOrder(rows: c.qDim, heads: c.numAttentionHeads)
    }
    if n.hasSuffix("self_attn.k_proj.weight") || n.hasSuffix("self_attn.k_proj.bias") {
      return ggufPermutedRowOrder(rows: c.kvDim, heads: c.numKeyValueHeads)
    }
    return nil
  }

  static func permuteRows(_ w: [Float], _ order: [Int]) -> [Float] {
    let cols = w.count / order.count
    var out = [Float](repeating: 0, count: w.count)
    for (r, s) in order.enumerated() { for j in 0..<cols { out[r * cols + j] = w[s * cols + j] } }
    return out
  }

  static func floats(_ w: [Float]) -> Data { w.withUnsafeBytes { Data($0) } }

  /// 0 for global tensors, then block index + 1 (stable within a rank).
  static func tensorRank(_ name: String) -> Int {
    let p = name.split(separator: ".")
    guard p.count > 2, p[0] == "blk", let i = Int(p[1]) else { return 0 }
    return i + 1
  }
}

/// How far fp16 storage of the block parameters moves the weights (in quantization steps).
struct FP16Rounding {
  var blocks = 0, inexact = 0
  var maxSteps = 0.0

  mutating func record(d: Float, m: Float, dh: Float, mh: Float, maxCode: Float) {
    blocks += 1
    guard dh != d || mh != m else { return }
    inexact += 1
    let err = Double(abs((dh - d) * maxCode) + abs(mh - m)) / Double(max(abs(d), .leastNormalMagnitude))
    maxSteps = max(maxSteps, err)
  }
}

/// ggml blocks of 32 inputs, `bytes` each, rows in `rowOrder` (GGUF row r = checkpoint row rowOrder[r]): `fill` writes
/// the block of checkpoint row o and input block b at byte offset p.
private func ggmlBlocks(_ w: QuantizedWeight, rowOrder: [Int]?, bytes: Int,
                        fill: (UnsafeMutableRawBufferPointer, _ p: Int, _ o: Int, _ b: Int) -> Void) -> Data {
  let blocks = w.inFeatures / 32
  var data = Data(count: w.outFeatures * blocks * bytes)
  data.withUnsafeMutableBytes { (buf: UnsafeMutableRawBufferPointer) in
    var p = 0
    for r in 0..<w.outFeatures {
      let o = rowOrder?[r] ?? r
      for b in 0..<blocks { fill(buf, p, o, b); p += bytes }
    }
  }
  return data
}

/// Q4_1 blocks of a 4-bit weight: fp16 d and m, then 16 bytes of codes (j and j + 16 share a byte).
func q4_1Blocks(_ w: QuantizedWeight, rowOrder: [Int]?, rounding: inout FP16Rounding) -> Data {
  let (inp, gs, ng) = (w.inFeatures, w.groupSize, w.groups)
  return ggmlBlocks(w, rowOrder: rowOrder, bytes: 20) { buf, p, o, b in
    let g = o * ng + (b * 32) / gs
    var d: Float, m: Float
    if case .progressive = w.format { d = w.rowScale[o] * w.scale[g]; m = -(w.rowScale[o] * w.zero[g]) } else { d = w.scale[g]; m = -w.zero[g] }
    let dh = f32ToF16(d), mh = f32ToF16(m)
    var maxCode: UInt8 = 0
    buf.storeBytes(of: dh.littleEndian, toByteOffset: p, as: UInt16.self)
    buf.storeBytes(of: mh.littleEndian, toByteOffset: p + 2, as: UInt16.self)
    let base = o * inp + b * 32
    for j in 0..<16 {
      let lo = w.codes[base + j] & 0xF, hi = w.codes[base + j + 16] & 0xF
      maxCode = max(maxCode, lo, hi)
      buf[p + 4 + j] = lo | (hi << 4)
    }
    rounding.record(d: d, m: m, dh: f16ToF32(dh), mh: f16ToF32(mh), maxCode: Float(maxCode))
  }
}

/// Q8_0 blocks of a symmetric 8-bit weight (codes offset by 128): fp16 d, then 32 signed codes.
func q8_0Blocks(_ w: QuantizedWeight, rowOrder: [Int]?, rounding: inout FP16Rounding) -> Data {
  let (inp, gs, ng) = (w.inFeatures, w.groupSize, w.groups)
  return ggmlBlocks(w, rowOrder: rowOrder, bytes: 34) { buf, p, o, b in
    let d = w.scale[o * ng + (b * 32) / gs], dh = f32ToF16(d)
    buf.storeBytes(of: dh.littleEndian, toByteOffset: p, as: UInt16.self)
    var maxAbs: Float = 0
    for j in 0..<32 {
      let v = Int(w.codes[o * inp + b * 32 + j]) - 128
      maxAbs = max(maxAbs, Float(abs(v)))
      buf[p + 2 + j] = UInt8(bitPattern: Int8(v))
    }
    rounding.record(d: d, m: 0, dh: f16ToF32(dh), mh: 0, maxCode: maxAbs)
  }
}

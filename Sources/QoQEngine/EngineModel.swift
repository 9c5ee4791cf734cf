// The engine's model: the checkpoint that `qoq quantize --save-model` writes, repacked once at load for the integer
// kernels (qserve.md §8.3 item 1), or an FP model. q/k/v and gate/up are fused along the output dimension (one
// activation quantization, one weight stream). Parameter names stay the checkpoint's (`model.layers.i.*`).
import Foundation
import QoQFormat
import QoQIO
import QoQKernels
import QoQModels
import QoQTokenizers

/// A linear layer of the engine: integer kernels read quantized rows, FP layers read floats.
public enum EngineLinear: @unchecked Sendable {
  case int(IntLinearKernel)
  case fp(LinearLayer)
  var n: Int { switch self { case .int(let k): k.n; case .fp(let l): l.outFeatures } }
  var quantizedInput: Bool { if case .int = self { return true } else { return false } }
}

/// An integer kernel as a LinearLayer, for the experts MoEBlock runs: each call quantizes its rows to int8 per token
/// (QuantizedRows.quantizeRow, as the dense layers' fused norm and SiLU quantizers do) and runs the kernel.
final class IntKernelLinear: LinearLayer, @unchecked Sendable {
  let kernel: IntLinearKernel
  var inFeatures: Int { kernel.k }
  var outFeatures: Int { kernel.n }
  init(_ k: IntLinearKernel) { kernel = k }
  func forward(_ x: UnsafePointer<Float>, rows: Int, _ y: UnsafeMutablePointer<Float>) {
    guard rows > 0 else { return }
    let a = QuantizedRows(capacity: rows, k: kernel.k)
    for r in 0..<rows { a.quantizeRow(r, x + r * kernel.k) }
    a.m = rows
    kernel.forward(a, y, ldy: kernel.n)
  }
}

public final class EngineLayer: @unchecked Sendable {
  public let inputLayernorm: [Float]          // (H)
  public let postAttentionLayernorm: [Float]  // (H)
  public let qkvProj: EngineLinear            // (Q + 2·KV) × H: q_proj, k_proj, v_proj rows
  public let oProj: EngineLinear              // H × Q
  public let gateUpProj: EngineLinear         // 2·I × H: gate_proj then up_proj rows
  public let downProj: EngineLinear           // H × I
  /// Attention scores in fp32 even where integer (int8 query) scores are asked for: the layer's K bias reaches
  /// `EngineLayer.largeKBias`. A query rounded to int8 errs by up to max|q|/254 per channel, and that error is
  /// multiplied by K; with Qwen2's K biases (up to ~±150 on a few channels) it moves scores by whole units, while the
  /// quantizer's fake-quantized model (and QServe) keep the query exact (issue #19: engine ≠ fake-quant with KV4).
  public let exactScores: Bool
  /// |b_k| from which a layer keeps exact scores (Llama and Mistral have no K bias; Qwen2.5 has up to ~145).
  public static let largeKBias: Float = 16
  /// Subtracted from post-RoPE keys before they enter the cache (kv_heads·head_dim; checkpoints with key_center).
  /// Softmax ignores the per-query shift q·c this causes, so scores need no correction.
  public let kCenter: [Float]?
  /// Each head of Q and of the (centered) K is rotated by the normalized Walsh–Hadamard matrix before scores and the
  /// cache (checkpoints with key_rotation): (H·q)·(H·k) = q·k, and the KV4 groups quantize the rotated keys.
  public let rotateKeys: Bool
  /// Post-RoPE (centered) K is multiplied by kScale (kv_heads·head_dim) and Q by qScale = 1/kScale of its KV head
  /// (heads·head_dim) before rotation (checkpoints with key_scale): (q/s)·(k·s) = q·k.
  public let kScale: [Float]?
  public let qScale: [Float]?
  /// Mixtral's sparse MoE block in place of gate/up/down (its experts on FP or integer kernels).
  public let moe: MoEBlock?
  init(_ a: [Float], _ b: [Float], _ qkv: EngineLinear, _ o: EngineLinear, _ gu: EngineLinear, _ d: EngineLinear, kBias: [Float]?,
       kCenter: [Float]? = nil, kScale: [Float]? = nil, heads: Int = 0, headDim: Int = 1, rotateKeys: Bool = false, moe: MoEBlock? = nil) {
    inputLayernorm = a; postAttentionLayernorm = b; qkvProj = qkv; oProj = o; gateUpProj = gu; downProj = d; self.moe = moe
    exactScores = (kBias ?? []).contains { abs($0) >= Self.largeKBias }
    self.kCenter = kCenter; self.rotateKeys = rotateKeys; self.kScale = kScale
    // Query head h reads KV head h / (heads / kv_heads), as HF's repeat_kv lays them out.
    qScale = kScale.map { s in
      let g = heads / max(1, s.count / headDim)
      return (0..<(heads * headDim)).map { i in 1 / s[(i / headDim / g) * headDim + i % headDim] }
    }
  }
}

/// How the LM head is stored: fp32 (exact), bf16 (half the bytes), int8 (W8A8 per output row, a quarter), int4
/// (W4A8 in QoQ's progressive format, round-to-nearest, groups of 128: an eighth — the decode step's largest read on
/// large-vocabulary models such as Qwen2's 151,936 tokens).
public enum LMHeadPrecision: String, Sendable, CaseIterable { case fp32, bf16, int8, int4 }

public final class EngineModel: @unchecked Sendable {
  public let config: LlamaConfiguration
  public let embedTokens: [Float]     // (vocab, H)
  public let layers: [EngineLayer]
  public let norm: [Float]            // (H)
  public let lmHead: EngineLinear     // vocab × H
  public let kvFormat: KVPageFormat
  public let description: String
  /// Per-phase step times, off unless `profile.enabled` (qoq bench --engine --profile).
  public let profile = StepProfile()
  let rope: RotaryEmbedding

  init(config: LlamaConfiguration, embed: [Float], layers: [EngineLayer], norm: [Float], lmHead: EngineLinear,
       kvMode: KVMode, pageSize: Int, description: String) throws {
    guard config.headDim % 32 == 0 else {
      throw QoQError("the engine needs head_dim to be a multiple of 32 (got \(config.headDim))")
    }
    guard config.numAttentionHeads % config.numKeyValueHeads == 0 else { throw QoQError("heads must be a multiple of kv heads") }
    guard pageSize >= 16 && pageSize % 16 == 0 && pageSize <= 1024 else {
      throw QoQError("--page-size must be a multiple of 16 between 16 and 1024 (got \(pageSize))")
    }
    self.config = config; embedTokens = embed; self.layers = layers; self.norm = norm; self.lmHead = lmHead
    kvFormat = KVPageFormat(mode: kvMode, heads: config.numKeyValueHeads, headDim: config.headDim, pageSize: pageSize)
    self.description = description
    rope = RotaryEmbedding(headDim: config.headDim, theta: config.ropeTheta, scaling: config.ropeScaling)
  }

  /// The context limit: max_position_embeddings (Mistral's sliding window is not implemented, so it caps it).
  public var maxContext: Int { min(config.maxPositionEmbeddings, config.slidingWindow ?? Int.max) }

  /// An FP model (W16A16 path of §2.6, fp32 here): the reference model's linears, FP16 KV pages unless `kvMode`.
  public convenience init(fp m: LlamaModel, kvMode: KVMode = .fp16, pageSize: Int = 64, lmHead: LMHeadPrecision = .fp32) throws {
    let c = m.config
    let layers = m.layers.map { l in
      EngineLayer(l.inputLayernorm, l.postAttentionLayernorm, .fp(StackedLinear([l.qProj, l.kProj, l.vProj])), .fp(l.oProj),
                  .fp(l.moe == nil ? StackedLinear([l.gateProj, l.upProj]) : l.gateProj), .fp(l.downProj),
                  kBias: (l.kProj as? DenseLinear)?.bias, moe: l.moe)
    }
    let head = c.tieWordEmbeddings ? m.embedTokens : nil
    try self.init(config: c, embed: m.embedTokens, layers: layers, norm: m.norm,
                  lmHead: try Self.makeHead(fp: head, layer: m.lmHead, c, lmHead), kvMode: kvMode, pageSize: pageSize,
                  description: "fp32 weights, \(kvMode.rawValue) KV")
  }

  /// Loads a quantized checkpoint folder for the integer kernels. Formats: progressive uint4 (QoQ, integer group
  /// rescale), asymmetric uint4 per group or per channel (fp group epilogue), symmetric int8 (W8A8), all with 8-bit
  /// per-token activations; or uint4 weights alone (W4A16, fp32 activations: AWQ/GPTQ checkpoints); KV 4 or 8 bits
  /// asymmetric per (token, head), or unquantized (fp16 pages).
  public static func load(quantized path: String, pageSize: Int = 64, lmHead: LMHeadPrecision = .int8,
                          kvOverride: KVMode? = nil) throws -> EngineModel {
    try load(quantized: try ModelCheckpoint.open(path), pageSize: pageSize, lmHead: lmHead, kvOverride: kvOverride)
  }

  /// Any opened checkpoint: a quantized one for the integer kernels (`lmHead` default int8), an FP one through the
  /// FP path (`fpKV` pages, `lmHead` default fp32).
  public static func load(_ ckpt: ModelCheckpoint, pageSize: Int = 64, lmHead: LMHeadPrecision? = nil,
                          fpKV: KVMode = .fp16) throws -> EngineModel {
    if ckpt.kind == .quantized { return try load(quantized: ckpt, pageSize: pageSize, lmHead: lmHead ?? .int8) }
    return try EngineModel(fp: try ckpt.referenceModel(), kvMode: fpKV, pageSize: pageSize, lmHead: lmHead ?? .fp32)
  }

  static func load(quantized ckpt: ModelCheckpoint, pageSize: Int, lmHead: LMHeadPrecision, kvOverride: KVMode? = nil) throws -> EngineModel {
    let path = ckpt.path
    guard let qc = ckpt.quantization, let st = ckpt.folder else {
      throw QoQError("\(path) is not a quantized checkpoint (config.json has no quantization_config)")
    }
    let c = ckpt.config
    _ = try ModelRegistry.family(c.modelType)
    guard let wf = qc.weight else { throw QoQError("\(path): the checkpoint has no quantized weights; load it as an FP model") }
    func unsupported(_ why: String) -> QoQError {
      QoQError("\(path): \(why) is not supported by the engine kernels (supported: progressive or asymmetric uint4 " +
               "and symmetric int8 weights with 8-bit per-token activations; 4/8-bit asymmetric per-head KV)")
    }
    switch wf {
    case .progressive(let g, _): guard g % 32 == 0 else { throw unsupported("weight group size \(g)") }
    case .asym(let b, let g, _): guard b == 4 else { throw unsupported("\(b)-bit asymmetric weights") }
      if let g { guard g % 32 == 0 else { throw unsupported("weight group size \(g)") } }
    case .sym(let b): guard b == 8 else { throw unsupported("\(b)-bit symmetric weights") }
    }
    // 8-bit per-token activations → integer kernels; none → W4A16 (uint4 weights, fp32 activations).
    let weightOnly = qc.actBits == nil
    guard qc.actBits == 8 || weightOnly else { throw unsupported("\(qc.actBits!)-bit activations") }
    if weightOnly, case .sym = wf { throw unsupported("weight-only int8 (W8A16)") }
    var kv = KVMode.fp16
    if let kb = qc.kvBits {
      guard kb == 4 || kb == 8 else { throw unsupported("\(kb)-bit KV cache") }
      guard qc.kvAsymmetric else { throw unsupported("symmetric KV quantization") }
      // nil = one group per token over every KV head: the same as per head only with a single KV head.
      let kg = qc.kvGroup ?? c.kvDim
      guard kg == c.headDim else { throw unsupported("KV group \(kg) ≠ head_dim \(c.headDim)") }
      kv = kb == 4 ? .kv4 : .kv8
    }
    if let o = kvOverride { kv = o }
    guard c.hiddenSize % 32 == 0 && c.intermediateSize % 32 == 0 && c.qDim % 32 == 0 else {
      throw unsupported("hidden/intermediate sizes not divisible by 32")
    }
    func fused(_ modules: [String], inp: Int) throws -> EngineLinear {
      var codes: [UInt8] = [], scale: [Float] = [], zero: [Float] = [], s1: [Float] = [], bias: [Float] = []
      var n = 0, hasBias = false
      for m in modules {
        guard st.contains(m + ".qweight") else { throw QoQError("\(path): \(m) is not quantized; mixed precision is not supported by the engine") }
        let out = try st.info(m + ".qweight").shape.first ?? 0
        let q = try QuantizedCheckpoint.readWeight(st, module: m, format: wf, out: out, inp: inp)
        codes += q.codes; scale += q.scale; zero += q.zero; s1 += q.rowScale
        if st.contains(m + ".bias") { hasBias = true; bias += try st.floats(m + ".bias") } else { bias += [Float](repeating: 0, count: out) }
        n += out
      }
      let b = hasBias ? bias : nil
      if weightOnly {
        // W4A16 over PackedW4A8's float layout; progressive weights become s = s1·s2, z = s1·z per group.
        var sc = scale, zr = zero, g = inp
        switch wf {
        case .progressive(let gg, _):
          g = gg
          let ng = inp / gg
          for o in 0..<n { for j in 0..<ng { sc[o * ng + j] = s1[o] * scale[o * ng + j]; zr[o * ng + j] = s1[o] * zero[o * ng + j] } }
        case .asym(_, let gg, _): g = gg ?? inp
        case .sym: break
        }
        return .fp(W4A16Linear(PackedW4A8(asymCodes: codes, scale: sc, zero: zr, n: n, k: inp, group: g, bias: b)))
      }
      switch wf {
      case .progressive(let g, _):
        return .int(PackedW4A8(progressiveCodes: codes, s2: scale, z: zero, s1: s1, n: n, k: inp, group: g, bias: b))
      case .asym(_, let g, _):
        return .int(PackedW4A8(asymCodes: codes, scale: scale, zero: zero, n: n, k: inp, group: g ?? inp, bias: b))
      case .sym:
        return .int(PackedW8A8(codes: codes, scale: scale, n: n, k: inp, bias: b))
      }
    }
    if qc.kvKeyRotation { try qc.checkKeyRotation(c) }
    var layers: [EngineLayer] = []
    for i in 0..<c.numHiddenLayers {
      let p = "model.layers.\(i)."
      // Mixtral: the router in fp32 and each expert's w1/w3/w2 on the integer (or W4A16) kernels, run by MoEBlock
      // over the tokens routed to it; decode at batch 1 reads only the chosen experts' weights.
      var moe: MoEBlock?
      if let e = c.numLocalExperts {
        let m = MoEBlock.prefix(layer: i), H = c.hiddenSize
        let router = try st.floats(m + "gate.weight")
        guard router.count == e * H else { throw QoQError("\(path): \(m)gate.weight holds \(router.count) values, expected \(e) × \(H)") }
        func expertLinear(_ name: String, inp: Int) throws -> LinearLayer {
          switch try fused([m + name], inp: inp) { case .fp(let f): return f; case .int(let k): return IntKernelLinear(k) }
        }
        moe = MoEBlock(gate: DenseLinear(weight: router, outFeatures: e, inFeatures: H), experts: try (0..<e).map { x in
          Expert(w1: try expertLinear("experts.\(x).w1", inp: H), w2: try expertLinear("experts.\(x).w2", inp: c.intermediateSize),
                 w3: try expertLinear("experts.\(x).w3", inp: H))
        }, topK: c.numExpertsPerTok)
      }
      layers.append(EngineLayer(
        try st.floats(p + "input_layernorm.weight"), try st.floats(p + "post_attention_layernorm.weight"),
        try fused([p + "self_attn.q_proj", p + "self_attn.k_proj", p + "self_attn.v_proj"], inp: c.hiddenSize),
        try fused([p + "self_attn.o_proj"], inp: c.qDim),
        moe != nil ? .fp(NoDenseMLP()) : try fused([p + "mlp.gate_proj", p + "mlp.up_proj"], inp: c.hiddenSize),
        moe != nil ? .fp(NoDenseMLP()) : try fused([p + "mlp.down_proj"], inp: c.intermediateSize),
        kBias: st.contains(p + "self_attn.k_proj.bias") ? try st.floats(p + "self_attn.k_proj.bias") : nil,
        kCenter: qc.kvKeyCenter ? try qc.keyCenter(st, layer: i, c) : nil,
        kScale: qc.kvKeyScale ? try qc.keyScale(st, layer: i, c) : nil, heads: c.numAttentionHeads, headDim: c.headDim,
        rotateKeys: qc.kvKeyRotation, moe: moe))
    }
    let embed = try st.floats("model.embed_tokens.weight")
    guard embed.count == c.vocabSize * c.hiddenSize else { throw QoQError("\(path): model.embed_tokens.weight has the wrong size") }
    let headName = c.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight"
    guard try st.info(headName).shape == [c.vocabSize, c.hiddenSize] else { throw QoQError("\(path): \(headName) has the wrong shape") }
    // The int8 head is quantized from the checkpoint a block of rows at a time: no fp32 copy of the whole table.
    let head = lmHead == .int8 ? try int8Head(c) { try st.floats(headName, rows: $0) }
      : lmHead == .int4 ? try int4Head(vocab: c.vocabSize, hidden: c.hiddenSize) { try st.floats(headName, rows: $0) }
      : try makeHead(fp: c.tieWordEmbeddings ? embed : try st.floats(headName), layer: nil, c, lmHead)
    return try EngineModel(config: c, embed: embed, layers: layers, norm: try st.floats("model.norm.weight"),
                           lmHead: head, kvMode: kv, pageSize: pageSize,
                           description: "\(wf) weights, \(weightOnly ? "fp32" : "int8") activations, \(kv.rawValue) KV, \(lmHead.rawValue) lm_head"
                             + (layers.contains { $0.exactScores } ? ", fp32 attention scores in layers with large K biases" : "")
                             + (qc.kvKeyCenter ? ", centered keys" : "") + (qc.kvKeyScale ? ", scaled keys" : "")
                             + (qc.kvKeyRotation ? ", Hadamard-rotated keys" : ""))
  }

  /// The LM head in the chosen precision; int8 quantizes each output row symmetrically (s = max|w|/127).
  static func makeHead(fp w: [Float]?, layer: LinearLayer?, _ c: LlamaConfiguration, _ p: LMHeadPrecision) throws -> EngineLinear {
    let V = c.vocabSize, H = c.hiddenSize
    guard let w else {
      guard p == .fp32, let layer else { throw QoQError("lm_head precision \(p.rawValue) needs the head weights") }
      return .fp(layer)
    }
    switch p {
    case .fp32: return .fp(DenseLinear(weight: w, outFeatures: V, inFeatures: H))
    case .bf16: return .fp(BF16Linear(weight: w, outFeatures: V, inFeatures: H))
    case .int8: return try int8Head(c) { r in Array(w[(r.lowerBound * H)..<(r.upperBound * H)]) }
    case .int4: return try int4Head(vocab: V, hidden: H) { r in Array(w[(r.lowerBound * H)..<(r.upperBound * H)]) }
    }
  }

  /// The int8 LM head (W8A8, each output row symmetric: s = max|w|/127) from the fp32 rows `rows(range)` gives,
  /// read 1024 rows at a time.
  static func int8Head(_ c: LlamaConfiguration, rows: (Range<Int>) throws -> [Float]) throws -> EngineLinear {
    let V = c.vocabSize, H = c.hiddenSize
    guard H % 32 == 0 else { throw QoQError("an int8 lm_head needs hidden_size divisible by 32") }
    var codes = [UInt8](repeating: 128, count: V * H), scale = [Float](repeating: 1, count: V)
    for block in stride(from: 0, to: V, by: 1024) {
      let r = block..<min(V, block + 1024)
      let w = try rows(r)
      try checkHeadRows(w, r, H)
      for (t, o) in r.enumerated() {
        var m: Float = 0
        for i in 0..<H { m = max(m, abs(w[t * H + i])) }
        let s: Float = m == 0 ? 1 : m / 127
        scale[o] = s
        for i in 0..<H { codes[o * H + i] = UInt8(Int(min(max((w[t * H + i] / s).rounded(.toNearestOrEven), -127), 127)) + 128) }
      }
    }
    return .int(PackedW8A8(codes: codes, scale: scale, n: V, k: H))
  }

  static func checkHeadRows(_ w: [Float], _ r: Range<Int>, _ H: Int) throws {
    guard w.count == r.count * H else { throw QoQError("lm_head rows \(r): \(w.count) values, expected \(r.count) × \(H)") }
    guard w.allSatisfy(\.isFinite) else { throw QoQError("lm_head rows \(r) hold NaN or infinite values") }
  }

  /// The int4 LM head: each output row quantized as QoQ's progressive weights (deepcompressor.md §3.2) by
  /// round-to-nearest — s1 = fp16(max|w|/P) with the protective range P, u = clamp(w/s1, ±P), then per group of 128
  /// (64 or 32 where hidden_size needs it) integer s2 and z, q = clamp(rne((u+z)/s2), 0, 15) — run by the W4A8
  /// kernels. Read 1024 rows at a time: no fp32 copy of the whole table.
  static func int4Head(vocab V: Int, hidden H: Int, rows: (Range<Int>) throws -> [Float]) throws -> EngineLinear {
    guard let g = [128, 64, 32].first(where: { H % $0 == 0 }) else { throw QoQError("an int4 lm_head needs hidden_size divisible by 32") }
    let ng = H / g, P = Float(protectiveRange())
    var codes = [UInt8](repeating: 0, count: V * H), s1 = [Float](repeating: 1, count: V)
    var s2 = [Float](repeating: 1, count: V * ng), z = [Float](repeating: 0, count: V * ng)
    var u = [Float](repeating: 0, count: H)
    for block in stride(from: 0, to: V, by: 1024) {
      let r = block..<min(V, block + 1024)
      let w = try rows(r)
      try checkHeadRows(w, r, H)
      w.withUnsafeBufferPointer { wp in
        for (t, o) in r.enumerated() {
          let row = UnsafeBufferPointer(rebasing: wp[(t * H)..<((t + 1) * H)])
          let a = ProgressiveRowQuant.levelOne(row: row, protective: P)
          s1[o] = a
          for i in 0..<H { u[i] = min(max(row[i] / a, -P), P) }
          for j in 0..<ng {
            let (s, zz) = u.withUnsafeBufferPointer { ProgressiveRowQuant.group(UnsafeBufferPointer(rebasing: $0[(j * g)..<((j + 1) * g)])) }
            s2[o * ng + j] = s; z[o * ng + j] = zz
            for i in (j * g)..<((j + 1) * g) { codes[o * H + i] = UInt8(min(max(rne((u[i] + zz) / s), 0), 15)) }
          }
        }
      }
    }
    return .int(PackedW4A8(progressiveCodes: codes, s2: s2, z: z, s1: s1, n: V, k: H, group: g))
  }
}

/// W4A16 behind the FP linear protocol: uint4 weights in the streaming layout, fp32 activations.
final class W4A16Linear: LinearLayer, @unchecked Sendable {
  let w: PackedW4A8
  var inFeatures: Int { w.k }
  var outFeatures: Int { w.n }
  init(_ w: PackedW4A8) { self.w = w }
  func forward(_ x: UnsafePointer<Float>, rows: Int, _ y: UnsafeMutablePointer<Float>) { w.forwardFP(x, rows: rows, y, ldy: w.n) }
}

/// Several FP linears over the same input, their outputs side by side (fused q/k/v or gate/up for the FP path).
final class StackedLinear: LinearLayer, @unchecked Sendable {
  let parts: [LinearLayer]
  let inFeatures: Int
  let outFeatures: Int
  init(_ parts: [LinearLayer]) {
    self.parts = parts; inFeatures = parts[0].inFeatures; outFeatures = parts.reduce(0) { $0 + $1.outFeatures }
  }
  func forward(_ x: UnsafePointer<Float>, rows: Int, _ y: UnsafeMutablePointer<Float>) {
    let tmp = UnsafeMutablePointer<Float>.allocate(capacity: rows * parts.map(\.outFeatures).max()!); defer { tmp.deallocate() }
    var off = 0
    for p in parts {
      p.forward(x, rows: rows, tmp)
      for r in 0..<rows { (y + r * outFeatures + off).update(from: tmp + r * p.outFeatures, count: p.outFeatures) }
      off += p.outFeatures
    }
  }
}

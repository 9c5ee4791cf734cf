// Llama-family decoder (Llama 1/2/3/3.1, Mistral, Qwen2 via ModelFamily), FP32 reference forward with a KV cache
// and batched prefill. Ported from transformers' modeling_llama.py (LlamaForCausalLM) and mlx-lm models/llama.py.
// Shapes: N = total new tokens in the batch, H = hidden_size, Q = heads·head_dim, KV = kv_heads·head_dim.
import QoQIO
import QoQKernels

enum LlamaFamily {
  static let family = ModelFamily(modelType: "llama", architecture: "LlamaForCausalLM", ggufArchitecture: "llama",
                                  ggufPermutesQK: true, qkvBias: false)
}

/// One decoder layer's parameters; names follow `model.layers.{i}.*`.
public final class DecoderLayer: @unchecked Sendable {
  public let inputLayernorm: [Float]          // (H)
  public let postAttentionLayernorm: [Float]  // (H)
  public let qProj: LinearLayer, kProj: LinearLayer, vProj: LinearLayer, oProj: LinearLayer
  /// The dense MLP (`mlp.*`); in an MoE layer these are `NoDenseMLP` (they fail loudly if called) and `moe` holds
  /// the experts. Quantizer stages and the engine refuse MoE models before they reach a layer (MixtralFamily).
  public let gateProj: LinearLayer, upProj: LinearLayer, downProj: LinearLayer
  /// Mixtral's sparse MoE block (`block_sparse_moe`), nil for dense layers.
  public let moe: MoEBlock?

  public init(inputLayernorm: [Float], postAttentionLayernorm: [Float], qProj: LinearLayer, kProj: LinearLayer,
              vProj: LinearLayer, oProj: LinearLayer, gateProj: LinearLayer, upProj: LinearLayer, downProj: LinearLayer) {
    self.inputLayernorm = inputLayernorm; self.postAttentionLayernorm = postAttentionLayernorm
    self.qProj = qProj; self.kProj = kProj; self.vProj = vProj; self.oProj = oProj
    self.gateProj = gateProj; self.upProj = upProj; self.downProj = downProj
    moe = nil
  }

  /// An MoE layer: attention as in every family, the MLP replaced by `moe`.
  public init(inputLayernorm: [Float], postAttentionLayernorm: [Float], qProj: LinearLayer, kProj: LinearLayer,
              vProj: LinearLayer, oProj: LinearLayer, moe: MoEBlock) {
    self.inputLayernorm = inputLayernorm; self.postAttentionLayernorm = postAttentionLayernorm
    self.qProj = qProj; self.kProj = kProj; self.vProj = vProj; self.oProj = oProj
    let none = NoDenseMLP(); gateProj = none; upProj = none; downProj = none
    self.moe = moe
  }

  /// Builds layer `i` from FP weights by their HF names (`model.layers.{i}.*`); `linearFactory` decides how each
  /// linear is built (default: dense FP32).
  public convenience init(config c: LlamaConfiguration, layer i: Int, weights src: WeightSource,
                          linearFactory: LlamaModel.LinearFactory? = nil) throws {
    let make: LlamaModel.LinearFactory = linearFactory
      ?? { _, w, out, inp, b in DenseLinear(weight: w, outFeatures: out, inFeatures: inp, bias: b) }
    func linear(_ p: String, out: Int, inp: Int, bias: Bool) throws -> LinearLayer {
      try make(p, try src.floats(p + ".weight"), out, inp, bias ? try src.floats(p + ".bias") : nil)
    }
    let p = "model.layers.\(i).", ab = c.attentionBias
    if let experts = c.numLocalExperts {
      let m = MoEBlock.prefix(layer: i), H = c.hiddenSize, I = c.intermediateSize
      // The router stays dense FP32 whatever the factory builds (deepcompressor's QServe target keeps it FP16).
      let router = DenseLinear(weight: try src.floats(m + "gate.weight"), outFeatures: experts, inFeatures: H)
      let ex = try (0..<experts).map { e in
        Expert(w1: try linear(m + "experts.\(e).w1", out: I, inp: H, bias: false),
               w2: try linear(m + "experts.\(e).w2", out: H, inp: I, bias: false),
               w3: try linear(m + "experts.\(e).w3", out: I, inp: H, bias: false))
      }
      self.init(
        inputLayernorm: try src.floats(p + "input_layernorm.weight"),
        postAttentionLayernorm: try src.floats(p + "post_attention_layernorm.weight"),
        qProj: try linear(p + "self_attn.q_proj", out: c.qDim, inp: H, bias: ab),
        kProj: try linear(p + "self_attn.k_proj", out: c.kvDim, inp: H, bias: ab),
        vProj: try linear(p + "self_attn.v_proj", out: c.kvDim, inp: H, bias: ab),
        oProj: try linear(p + "self_attn.o_proj", out: H, inp: c.qDim, bias: false),
        moe: MoEBlock(gate: router, experts: ex, topK: c.numExpertsPerTok))
      return
    }
    self.init(
      inputLayernorm: try src.floats(p + "input_layernorm.weight"),
      postAttentionLayernorm: try src.floats(p + "post_attention_layernorm.weight"),
      qProj: try linear(p + "self_attn.q_proj", out: c.qDim, inp: c.hiddenSize, bias: ab),
      kProj: try linear(p + "self_attn.k_proj", out: c.kvDim, inp: c.hiddenSize, bias: ab),
      vProj: try linear(p + "self_attn.v_proj", out: c.kvDim, inp: c.hiddenSize, bias: ab),
      oProj: try linear(p + "self_attn.o_proj", out: c.hiddenSize, inp: c.qDim, bias: ab && c.modelType == "llama"),
      gateProj: try linear(p + "mlp.gate_proj", out: c.intermediateSize, inp: c.hiddenSize, bias: c.mlpBias),
      upProj: try linear(p + "mlp.up_proj", out: c.intermediateSize, inp: c.hiddenSize, bias: c.mlpBias),
      downProj: try linear(p + "mlp.down_proj", out: c.hiddenSize, inp: c.intermediateSize, bias: c.mlpBias))
  }
}

public final class LlamaModel: @unchecked Sendable {
  public let config: LlamaConfiguration
  public let family: ModelFamily
  public let embedTokens: [Float]  // (vocab, H)
  public let layers: [DecoderLayer]
  public let norm: [Float]         // (H)
  public let lmHead: LinearLayer   // (vocab × H); the embedding itself when tied
  let rope: RotaryEmbedding
  /// Fake quantization of post-RoPE K and of V before they enter the cache (KV4/KV8 simulation); nil = FP.
  public var kvQuantizer: KVTransform?
  /// Per-layer (K, V) quantizers (static KV8 ranges, centered keys); overrides kvQuantizer.
  public var kvLayerQuantizers: [(k: KVTransform, v: KVTransform)]?
  /// runLayer's activation buffers, kept between calls and freed with the model.
  let scratch = ScratchBuffers()

  public init(config: LlamaConfiguration, embedTokens: [Float], layers: [DecoderLayer], norm: [Float],
              lmHead: LinearLayer) throws {
    self.config = config
    family = try ModelRegistry.family(config.modelType)
    self.embedTokens = embedTokens
    self.layers = layers
    self.norm = norm
    self.lmHead = lmHead
    rope = RotaryEmbedding(headDim: config.headDim, theta: config.ropeTheta, scaling: config.ropeScaling)
  }

  /// Builds a linear layer from its HF module name (`model.layers.3.mlp.down_proj`), weight (out × in) and bias.
  public typealias LinearFactory = (_ name: String, _ weight: [Float], _ out: Int, _ inp: Int, _ bias: [Float]?) throws -> LinearLayer

  /// Loads FP weights by their HF names; fails on missing or unexpected tensors and wrong shapes.
  /// `linearFactory` decides how each decoder linear is built (default: dense FP32); lm_head is always dense.
  public convenience init(config c: LlamaConfiguration, weights src: WeightSource, linearFactory: LinearFactory? = nil) throws {
    try verifyTensors(src, c)
    let layers = try (0..<c.numHiddenLayers).map { try DecoderLayer(config: c, layer: $0, weights: src, linearFactory: linearFactory) }
    let embed = try src.floats("model.embed_tokens.weight")
    let head = c.tieWordEmbeddings ? embed : try src.floats("lm_head.weight")
    try self.init(config: c, embedTokens: embed, layers: layers, norm: try src.floats("model.norm.weight"),
                  lmHead: DenseLinear(weight: head, outFeatures: c.vocabSize, inFeatures: c.hiddenSize))
  }

  /// A model that can run decoder layer `index` only (`runLayer`, `attentionOutput`), for layer-at-a-time
  /// calibration: the layers below `index` are the same object (references, no copies) and the embedding, final
  /// norm and head are empty, so it holds one layer's weights whatever the depth. KV caches made for it allocate
  /// every layer's rows but touch only layer `index`'s.
  public static func layerView(config c: LlamaConfiguration, index: Int, layer: DecoderLayer) throws -> LlamaModel {
    precondition(index >= 0 && index < c.numHiddenLayers)
    return try LlamaModel(config: c, embedTokens: [], layers: Array(repeating: layer, count: index + 1), norm: [],
                          lmHead: DenseLinear(weight: [], outFeatures: 0, inFeatures: c.hiddenSize))
  }

  /// The longest context this model accepts (Mistral's sliding window is not implemented, so it caps the context).
  public var maxContext: Int { config.slidingWindow ?? Int.max }

  /// Runs new tokens of several sequences through the model, appending to each sequence's cache.
  /// Returns the final-norm hidden states, (N, H), rows in batch order.
  public func forward(_ batch: [[Int32]], caches: [KVCache]) throws -> [Float] {
    var x = try embed(batch, caches: caches)
    if x.isEmpty { return [] }
    let lengths = batch.map(\.count)
    for li in 0..<layers.count { try runLayer(li, x: &x, lengths: lengths, caches: caches) }
    finalNorm(&x)
    for (s, n) in lengths.enumerated() { caches[s].length += n }
    return x
  }

  /// Checks token ids and context lengths, and returns the embeddings (N, H) of the new tokens.
  public func embed(_ batch: [[Int32]], caches: [KVCache]) throws -> [Float] {
    precondition(batch.count == caches.count)
    let c = config, H = c.hiddenSize
    for (s, toks) in batch.enumerated() {
      for t in toks where t < 0 || Int(t) >= c.vocabSize {
        throw QoQError("token id \(t) is outside the vocabulary (0..<\(c.vocabSize))")
      }
      let need = caches[s].length + toks.count
      if need > maxContext { throw QoQError("sequence of \(need) tokens exceeds the model's context of \(maxContext)") }
    }
    let n = batch.reduce(0) { $0 + $1.count }
    var x = [Float](repeating: 0, count: n * H)  // residual stream (N, H)
    x.withUnsafeMutableBufferPointer { xb in
      embedTokens.withUnsafeBufferPointer { e in
        var r = 0
        for toks in batch { for t in toks { (xb.baseAddress! + r * H).update(from: e.baseAddress! + Int(t) * H, count: H); r += 1 } }
      }
    }
    return x
  }

  /// The final RMSNorm, in place on (N, H) rows.
  public func finalNorm(_ x: inout [Float]) {
    let H = config.hiddenSize, n = x.count / H, eps = Float(config.rmsNormEps)
    x.withUnsafeMutableBufferPointer { xb in
      norm.withUnsafeBufferPointer { w in
        for r in 0..<n { rmsNorm(xb.baseAddress! + r * H, w.baseAddress!, eps: eps, n: H, xb.baseAddress! + r * H) }
      }
    }
  }

  /// Runs decoder layer `li` on the residual stream x (N, H) of sequences with `lengths` new tokens each, whose
  /// caches hold their past (cache lengths are advanced by the caller after the last layer). `capture`, when given,
  /// receives the layer's module inputs and post-RoPE Q/K and V (calibration).
  public func runLayer(_ li: Int, x: inout [Float], lengths: [Int], caches: [KVCache], capture: LayerCapture? = nil) throws {
    let c = config, layer = layers[li]
    let H = c.hiddenSize, Q = c.qDim, KV = c.kvDim, hd = c.headDim, I = c.intermediateSize
    let n = lengths.reduce(0, +)
    if n == 0 { return }
    // Scratch from the model's own buffers: calibration runs this chunk after chunk with the same sizes.
    let bufs = [n * max(H, Q), n * Q, n * KV, n * KV, n * Q, n * I, n * I].map { scratch.take($0) }
    defer { bufs.forEach(scratch.give) }
    let h = bufs[0].pointer, q = bufs[1].pointer, k = bufs[2].pointer, v = bufs[3].pointer, attn = bufs[4].pointer
    let g = bufs[5].pointer, u = bufs[6].pointer
    let maxLen = zip(lengths, caches).map { $0 + $1.length }.max() ?? 0
    rope.ensure(maxLen)
    for (s, t) in lengths.enumerated() { caches[s].reserve(caches[s].length + t) }
    let eps = Float(c.rmsNormEps)
    let scale = 1 / Float(hd).squareRoot()
    // Row-wise work (norms, RoPE, SiLU·up, residual adds) split over the pool by rows for calibration-sized chunks;
    // each row's arithmetic is the same on any thread.
    func byRows(_ count: Int, _ body: (Range<Int>) -> Void) { ThreadPool.shared.parts(count, parallel: count >= 64, body) }
    try x.withUnsafeMutableBufferPointer { xb in
      let xp = xb.baseAddress!
      // Attention block.
      layer.inputLayernorm.withUnsafeBufferPointer { w in
        byRows(n) { rs in for r in rs { rmsNorm(xp + r * H, w.baseAddress!, eps: eps, n: H, h + r * H) } }
      }
      capture?.record(.attnInput, h, n * H)
      layer.qProj.forward(h, rows: n, q)
      layer.kProj.forward(h, rows: n, k)
      layer.vProj.forward(h, rows: n, v)
      var r0 = 0
      for (s, t) in lengths.enumerated() {
        let cache = caches[s], past = cache.length
        byRows(t) { rs in
          for i in rs {
            rope.apply(q + (r0 + i) * Q, heads: c.numAttentionHeads, pos: past + i)
            rope.apply(k + (r0 + i) * KV, heads: c.numKeyValueHeads, pos: past + i)
          }
        }
        r0 += t
      }
      capture?.record(.qRope, q, n * Q)
      capture?.record(.kRope, k, n * KV)
      capture?.record(.vOutput, v, n * KV)
      if let per = kvLayerQuantizers { per[li].k.apply(k, rows: n, width: KV); per[li].v.apply(v, rows: n, width: KV) }
      else if let kvq = kvQuantizer { kvq.apply(k, rows: n, width: KV); kvq.apply(v, rows: n, width: KV) }
      r0 = 0
      for (s, t) in lengths.enumerated() {
        let cache = caches[s], past = cache.length
        (cache.keys[li] + past * KV).update(from: k + r0 * KV, count: t * KV)
        (cache.values[li] + past * KV).update(from: v + r0 * KV, count: t * KV)
        try attention(q: q + r0 * Q, t: t, past: past, keys: cache.keys[li], values: cache.values[li],
                      out: attn + r0 * Q, scale: scale)
        r0 += t
      }
      capture?.record(.oProjInput, attn, n * Q)
      layer.oProj.forward(attn, rows: n, h)
      capture?.record(.attnOutput, h, n * H)
      byRows(n) { rs in addInPlace(xp + rs.lowerBound * H, h + rs.lowerBound * H, rs.count * H) }
      // MLP block.
      layer.postAttentionLayernorm.withUnsafeBufferPointer { w in
        byRows(n) { rs in for r in rs { rmsNorm(xp + r * H, w.baseAddress!, eps: eps, n: H, h + r * H) } }
      }
      capture?.record(.mlpInput, h, n * H)
      if let moe = layer.moe {
        let y = UnsafeMutablePointer<Float>.allocate(capacity: n * H); defer { y.deallocate() }
        let observe: ((Int, UnsafePointer<Float>, UnsafePointer<Float>, Int) -> Void)? = capture.map { cap in
          { e, inp, down, m in cap.recordExpert(e, input: inp, down: down, rows: m, hidden: H, intermediate: I) }
        }
        moe.forward(h, rows: n, hidden: H, intermediate: I, y, observe: observe)
        addInPlace(xp, y, n * H)
        return
      }
      layer.gateProj.forward(h, rows: n, g)
      layer.upProj.forward(h, rows: n, u)
      byRows(n) { rs in for r in rs { siluMul(g + r * I, u + r * I, g + r * I, I) } }  // per row: SIMD/tail split independent of the batch
      capture?.record(.downInput, g, n * I)
      layer.downProj.forward(g, rows: n, h)
      byRows(n) { rs in addInPlace(xp + rs.lowerBound * H, h + rs.lowerBound * H, rs.count * H) }
    }
  }

  /// The attention sublayer alone (q/k/v projections, RoPE, optional KV transform, causal attention, o_proj) of
  /// `layer` on already-normalized inputs h (N, H) of fresh sequences with the given lengths. Returns (N, H).
  /// Used by calibration searches that try candidate q/k weights.
  public func attentionOutput(_ layer: DecoderLayer, h: [Float], lengths: [Int], kvTransform: KVTransform? = nil,
                              keysOnly: Bool = false) throws -> [Float] {
    let c = config, H = c.hiddenSize, Q = c.qDim, KV = c.kvDim
    let n = lengths.reduce(0, +)
    precondition(h.count == n * H)
    var q = [Float](repeating: 0, count: n * Q), k = [Float](repeating: 0, count: n * KV), v = [Float](repeating: 0, count: n * KV)
    var attn = [Float](repeating: 0, count: n * Q), out = [Float](repeating: 0, count: n * H)
    rope.ensure(lengths.max() ?? 0)
    try h.withUnsafeBufferPointer { hb in
      try q.withUnsafeMutableBufferPointer { qb in
        try k.withUnsafeMutableBufferPointer { kb in
          try v.withUnsafeMutableBufferPointer { vb in
            try attn.withUnsafeMutableBufferPointer { ab in
              layer.qProj.forward(hb.baseAddress!, rows: n, qb.baseAddress!)
              layer.kProj.forward(hb.baseAddress!, rows: n, kb.baseAddress!)
              layer.vProj.forward(hb.baseAddress!, rows: n, vb.baseAddress!)
              var r0 = 0
              for t in lengths {
                for i in 0..<t {
                  rope.apply(qb.baseAddress! + (r0 + i) * Q, heads: c.numAttentionHeads, pos: i)
                  rope.apply(kb.baseAddress! + (r0 + i) * KV, heads: c.numKeyValueHeads, pos: i)
                }
                r0 += t
              }
              if let kv = kvTransform {
                kv.apply(kb.baseAddress!, rows: n, width: KV); if !keysOnly { kv.apply(vb.baseAddress!, rows: n, width: KV) }
              }
              r0 = 0
              for t in lengths {
                try attention(q: qb.baseAddress! + r0 * Q, t: t, past: 0, keys: kb.baseAddress! + r0 * KV,
                              values: vb.baseAddress! + r0 * KV, out: ab.baseAddress! + r0 * Q, scale: 1 / Float(c.headDim).squareRoot())
                r0 += t
              }
            }
          }
        }
      }
    }
    attn.withUnsafeBufferPointer { ab in out.withUnsafeMutableBufferPointer { layer.oProj.forward(ab.baseAddress!, rows: n, $0.baseAddress!) } }
    return out
  }

  /// Causal attention of t new queries against past + t cached positions, per head, GQA-aware.
  /// q: (t, Q) with row stride Q; keys/values: (past+t, KV); out: (t, Q) with row stride Q.
  /// Queries go in blocks of 128 rows; a block only computes the columns up to its last row's position, so the
  /// masked upper triangle costs nothing.
  func attention(q: UnsafeMutablePointer<Float>, t: Int, past: Int, keys: UnsafePointer<Float>,
                 values: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, scale: Float) throws {
    let c = config, hd = c.headDim, Q = c.qDim, KV = c.kvDim
    let len = past + t
    let group = c.numAttentionHeads / c.numKeyValueHeads
    let block = 128
    // Heads are split over the pool (each head's GEMMs then run on one thread; the arithmetic is the same), so the
    // small early blocks and the softmax run in parallel too.
    let heads = c.numAttentionHeads
    let big = Double(t) * Double(len) * Double(hd) * Double(heads) >= 4e6
    ThreadPool.shared.parts(heads, parallel: big) { hs in
      let scores = UnsafeMutablePointer<Float>.allocate(capacity: min(t, block) * len); defer { scores.deallocate() }
      for head in hs {
        let kvh = head / group
        let kp = PackedMatrix(nk: keys + kvh * hd, n: len, k: hd, ldw: KV)
        let vp = PackedMatrix(kn: values + kvh * hd, k: len, n: hd, ldb: KV)
        var i0 = 0
        while i0 < t {
          let rows = min(block, t - i0), width = past + i0 + rows  // keys visible to the block's last row
          sgemm(m: rows, a: q + i0 * Q + head * hd, lda: Q, b: kp, c: scores, ldc: width, columns: width)
          for r in 0..<rows {
            let row = scores + r * width, valid = past + i0 + r + 1
            for j in 0..<valid { row[j] *= scale }
            softmaxInPlace(row, valid)
            for j in valid..<width { row[j] = 0 }
          }
          sgemm(m: rows, a: scores, lda: width, b: vp, c: out + i0 * Q + head * hd, ldc: Q, depth: width)
          i0 += rows
        }
      }
    }
  }

  /// Logits (rows, vocab) for final hidden states (rows, H).
  public func logits(_ hidden: UnsafePointer<Float>, rows: Int) -> [Float] {
    var out = [Float](repeating: 0, count: rows * config.vocabSize)
    out.withUnsafeMutableBufferPointer { lmHead.forward(hidden, rows: rows, $0.baseAddress!) }
    return out
  }

  /// Convenience: logits of the last position of each sequence.
  public func lastLogits(_ batch: [[Int32]], caches: [KVCache]) throws -> [[Float]] {
    let hidden = try forward(batch, caches: caches)
    let H = config.hiddenSize
    var out: [[Float]] = []
    var r = 0
    try hidden.withUnsafeBufferPointer { hb in
      for toks in batch {
        r += toks.count
        guard !toks.isEmpty else { throw QoQError("empty sequence in batch") }
        out.append(logits(hb.baseAddress! + (r - 1) * H, rows: 1))
      }
    }
    return out
  }
}

// Rotation stage (deepcompressor.md §1.2): fold RMSNorm weights into the linears that consume them, rotate the
// residual stream by an orthonormal Hadamard R (embedding and consumers W·R, producers Rᵀ·W), and rotate V/O per
// head. Computed in Double on fp32 weights; exact up to rounding, so FP logits are unchanged.
import QoQFormat
import QoQIO
import QoQKernels
import QoQModels

public struct RotationOptions: Sendable, Equatable {
  /// Random ±1 diagonal times the Hadamard (`rotation.random`); seeded.
  public var random = false
  public var seed: UInt64 = 12345
  /// `rotation.transforms`: "out_proj" rotates V/O per head (QoQ); "down_proj" (online) is not supported.
  public var transforms: [String] = ["out_proj"]
  public init() {}
}

/// Column j of a row-major (rows, cols) matrix is transformed by f (for Rᵀ·W on the output side). Columns are split
/// over the pool (each column's arithmetic is the same on any thread); f must only touch the vector it is given.
func transformColumns(_ w: inout [Float], rows: Int, cols: Int, range: Range<Int>? = nil, _ f: (UnsafeMutablePointer<Double>) -> Void) {
  let r = range ?? 0..<rows
  w.withUnsafeMutableBufferPointer { wb in
    let p = wb.baseAddress!
    ThreadPool.shared.parts(cols) { js in
      let buf = UnsafeMutablePointer<Double>.allocate(capacity: max(1, r.count)); defer { buf.deallocate() }
      for j in js {
        for (t, i) in r.enumerated() { buf[t] = Double(p[i * cols + j]) }
        f(buf)
        for (t, i) in r.enumerated() { p[i * cols + j] = Float(buf[t]) }
      }
    }
  }
}

/// Each row's segment [c0, c0+len) is transformed by f (for W·R on the input side). Rows are split over the pool, as
/// in transformColumns.
func transformRows(_ w: inout [Float], rows: Int, cols: Int, c0: Int = 0, len: Int? = nil, _ f: (UnsafeMutablePointer<Double>) -> Void) {
  let l = len ?? cols
  w.withUnsafeMutableBufferPointer { wb in
    let p = wb.baseAddress!
    ThreadPool.shared.parts(rows) { rs in
      let buf = UnsafeMutablePointer<Double>.allocate(capacity: max(1, l)); defer { buf.deallocate() }
      for i in rs {
        for t in 0..<l { buf[t] = Double(p[i * cols + c0 + t]) }
        f(buf)
        for t in 0..<l { p[i * cols + c0 + t] = Float(buf[t]) }
      }
    }
  }
}

public enum RotationStage {
  /// Folds norms and rotates a whole (eager) store. Returns the residual rotation's description for logs.
  @discardableResult
  public static func apply(_ s: WeightStore, options: RotationOptions = RotationOptions()) throws -> String {
    let r = try Rotator(config: s.config, options: options)
    s.untie()
    for l in 0..<s.config.numHiddenLayers { r.rotateLayer(s, layer: l) }
    var head = s["lm_head.weight"]
    r.foldAndRotateHead(&head, norm: s["model.norm.weight"])
    s["lm_head.weight"] = head
    s["model.norm.weight"] = [Float](repeating: 1, count: s.config.hiddenSize)
    var e = s["model.embed_tokens.weight"]
    r.rotateRows(&e)
    s["model.embed_tokens.weight"] = e
    return r.description
  }
}

/// The rotation of one model, applied a tensor at a time so a streaming run can rotate each layer as it loads it,
/// embedding rows as calibration looks them up, and the head on its own. Every tensor gets exactly the arithmetic the
/// whole-model `RotationStage.apply` gives it.
public struct Rotator: Sendable {
  let config: LlamaConfiguration
  let options: RotationOptions
  let rot: HadamardRotation
  let signs: [Double]?
  let headRot: HadamardRotation?

  public init(config c: LlamaConfiguration, options: RotationOptions) throws {
    if options.transforms.contains("down_proj") {
      throw QoQError("rotation.transforms down_proj (online Hadamard) is not supported; QoQ uses [out_proj]")
    }
    for t in options.transforms where t != "out_proj" && t != "down_proj" {
      throw QoQError("unknown rotation transform \(t) (supported: out_proj)")
    }
    config = c; self.options = options
    rot = try HadamardRotation(size: c.hiddenSize)
    if options.random {
      var rng = SplitMix64(seed: options.seed)
      signs = (0..<c.hiddenSize).map { _ in rng.next() & 1 == 0 ? 1 : -1 }
    } else { signs = nil }
    headRot = options.transforms.contains("out_proj") ? try HadamardRotation(size: c.headDim) : nil
  }

  public var description: String { "Hadamard \(config.hiddenSize) = \(rot.k)·\(rot.p)\(options.random ? " with random signs" : "")" }

  /// x·R' with R' = D·R (random signs D, a diagonal ±1) or R, on one H-long vector.
  func applyR(_ x: UnsafeMutablePointer<Double>) {
    if let d = signs { for i in 0..<d.count { x[i] *= d[i] } }
    rot.apply(x)
  }

  /// Rotates every H-wide row of a row-major matrix (embedding rows, lm_head rows, hidden states): row·R'.
  public func rotateRows(_ w: inout [Float]) {
    let H = config.hiddenSize
    transformRows(&w, rows: w.count / H, cols: H) { applyR($0) }
  }

  /// lm_head: the final norm folded into its columns, then its rows rotated.
  public func foldAndRotateHead(_ w: inout [Float], norm g: [Float]) {
    let cols = g.count, rows = w.count / cols
    for i in 0..<rows { for j in 0..<cols { w[i * cols + j] *= g[j] } }
    rotateRows(&w)
  }

  /// Layer l: norm folding (W[:, j] *= g[j] for the norms' consumers; g = 1), residual rotation (consumers W·R',
  /// producers R'ᵀ·W and their biases), then per-head V/O rotation with a head_dim Hadamard.
  public func rotateLayer(_ s: WeightStore, layer l: Int) {
    let c = config, H = c.hiddenSize, p = "model.layers.\(l)."
    func fold(_ norm: String, into modules: [String]) {
      let g = s[norm]
      for m in modules {
        var w = s[m + ".weight"]
        let cols = g.count, rows = w.count / cols
        for i in 0..<rows { for j in 0..<cols { w[i * cols + j] *= g[j] } }
        s[m + ".weight"] = w
      }
      s[norm] = [Float](repeating: 1, count: g.count)
    }
    // The MLP's readers of the residual stream (gate/up; in an MoE layer the router and every expert's w1/w3) and its
    // writers (down; every expert's w2).
    let (mlpIn, mlpOut): ([String], [String])
    if let e = c.numLocalExperts {
      let m = MoEBlock.prefix(layer: l)
      mlpIn = [m + "gate"] + (0..<e).flatMap { x in ["w1", "w3"].map { m + "experts.\(x).\($0)" } }
      mlpOut = (0..<e).map { m + "experts.\($0).w2" }
    } else {
      (mlpIn, mlpOut) = (["gate_proj", "up_proj"].map { p + "mlp." + $0 }, [p + "mlp.down_proj"])
    }
    fold(p + "input_layernorm.weight", into: ["q_proj", "k_proj", "v_proj"].map { p + "self_attn." + $0 })
    fold(p + "post_attention_layernorm.weight", into: mlpIn)
    for m in ["q_proj", "k_proj", "v_proj"].map({ p + "self_attn." + $0 }) + mlpIn {
      var w = s[m + ".weight"]
      rotateRows(&w)
      s[m + ".weight"] = w
    }
    for m in [p + "self_attn.o_proj"] + mlpOut {
      var w = s[m + ".weight"]
      transformColumns(&w, rows: H, cols: w.count / H) { applyR($0) }
      s[m + ".weight"] = w
      if var b = s.tensors[m + ".bias"] {
        var d = b.map(Double.init)
        d.withUnsafeMutableBufferPointer { applyR($0.baseAddress!) }
        for i in 0..<H { b[i] = Float(d[i]) }
        s[m + ".bias"] = b
      }
    }
    // Per-head V/O: W_v,h ← Hᵀ·W_v,h (bias too), W_o[:, h] ← W_o[:, h]·H.
    guard let hrot = headRot else { return }
    let hd = c.headDim, q = p + "self_attn."
    let apply: (UnsafeMutablePointer<Double>) -> Void = { hrot.apply($0) }
    var wv = s[q + "v_proj.weight"]
    for h in 0..<c.numKeyValueHeads { transformColumns(&wv, rows: c.kvDim, cols: H, range: (h * hd)..<((h + 1) * hd), apply) }
    s[q + "v_proj.weight"] = wv
    if var bv = s.tensors[q + "v_proj.bias"] {
      for h in 0..<c.numKeyValueHeads { transformRows(&bv, rows: 1, cols: c.kvDim, c0: h * hd, len: hd, apply) }
      s[q + "v_proj.bias"] = bv
    }
    var wo = s[q + "o_proj.weight"]
    for h in 0..<c.numAttentionHeads { transformRows(&wo, rows: H, cols: c.qDim, c0: h * hd, len: hd, apply) }
    s[q + "o_proj.weight"] = wo
  }
}

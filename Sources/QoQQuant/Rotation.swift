// Rotation stage (deepcompressor.md §1.2): fold RMSNorm weights into the linears that consume them, rotate the
// residual stream by an orthonormal Hadamard R (embedding and consumers W·R, producers Rᵀ·W), and rotate V/O per
// head. Computed in Double on fp32 weights; exact up to rounding, so FP logits are unchanged.
import QoQFormat
import QoQIO
import QoQModels

public struct RotationOptions: Sendable, Equatable {
  /// Random ±1 diagonal times the Hadamard (`rotation.random`); seeded.
  public var random = false
  public var seed: UInt64 = 12345
  /// `rotation.transforms`: "out_proj" rotates V/O per head (QoQ); "down_proj" (online) is not supported.
  public var transforms: [String] = ["out_proj"]
  public init() {}
}

/// Column j of a row-major (rows, cols) matrix is transformed by f (for Rᵀ·W on the output side).
func transformColumns(_ w: inout [Float], rows: Int, cols: Int, range: Range<Int>? = nil, _ f: (UnsafeMutablePointer<Double>) -> Void) {
  let r = range ?? 0..<rows
  let buf = UnsafeMutablePointer<Double>.allocate(capacity: r.count); defer { buf.deallocate() }
  for j in 0..<cols {
    for (t, i) in r.enumerated() { buf[t] = Double(w[i * cols + j]) }
    f(buf)
    for (t, i) in r.enumerated() { w[i * cols + j] = Float(buf[t]) }
  }
}

/// Each row's segment [c0, c0+len) is transformed by f (for W·R on the input side).
func transformRows(_ w: inout [Float], rows: Int, cols: Int, c0: Int = 0, len: Int? = nil, _ f: (UnsafeMutablePointer<Double>) -> Void) {
  let l = len ?? cols
  let buf = UnsafeMutablePointer<Double>.allocate(capacity: l); defer { buf.deallocate() }
  for i in 0..<rows {
    for t in 0..<l { buf[t] = Double(w[i * cols + c0 + t]) }
    f(buf)
    for t in 0..<l { w[i * cols + c0 + t] = Float(buf[t]) }
  }
}

public enum RotationStage {
  /// Folds norms and rotates. Returns the residual rotation's description for logs.
  @discardableResult
  public static func apply(_ s: WeightStore, options: RotationOptions = RotationOptions()) throws -> String {
    if options.transforms.contains("down_proj") {
      throw QoQError("rotation.transforms down_proj (online Hadamard) is not supported; QoQ uses [out_proj]")
    }
    for t in options.transforms where t != "out_proj" && t != "down_proj" {
      throw QoQError("unknown rotation transform \(t) (supported: out_proj)")
    }
    let c = s.config
    let H = c.hiddenSize
    s.untie()
    // 1. Norm folding: W[:, j] *= g[j] for the consumers; g = 1.
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
    for l in 0..<c.numHiddenLayers {
      let p = "model.layers.\(l)."
      fold(p + "input_layernorm.weight", into: ["q_proj", "k_proj", "v_proj"].map { p + "self_attn." + $0 })
      fold(p + "post_attention_layernorm.weight", into: ["gate_proj", "up_proj"].map { p + "mlp." + $0 })
    }
    fold("model.norm.weight", into: ["lm_head"])
    // 2. Residual rotation R.
    let rot = try HadamardRotation(size: H)
    var signs: [Double]? = nil
    if options.random {
      var rng = SplitMix64(seed: options.seed)
      signs = (0..<H).map { _ in rng.next() & 1 == 0 ? 1 : -1 }
    }
    // x·R' with R' = D·R (random signs D, a diagonal ±1) or R.
    let applyR: (UnsafeMutablePointer<Double>) -> Void = { x in
      if let d = signs { for i in 0..<H { x[i] *= d[i] } }
      rot.apply(x)
    }
    func rotateInputs(_ name: String) {
      var w = s[name]
      transformRows(&w, rows: w.count / H, cols: H, applyR)
      s[name] = w
    }
    func rotateOutputs(_ module: String) {
      var w = s[module + ".weight"]
      transformColumns(&w, rows: H, cols: w.count / H, applyR)
      s[module + ".weight"] = w
      if var b = s.tensors[module + ".bias"] {
        b.withUnsafeMutableBufferPointer { bb in
          var d = bb.map(Double.init)
          d.withUnsafeMutableBufferPointer { applyR($0.baseAddress!) }
          for i in 0..<H { bb[i] = Float(d[i]) }
        }
        s[module + ".bias"] = b
      }
    }
    rotateInputs("model.embed_tokens.weight")
    rotateInputs("lm_head.weight")
    for l in 0..<c.numHiddenLayers {
      let p = "model.layers.\(l)."
      for m in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"] {
        rotateInputs(p + m + ".weight")
      }
      rotateOutputs(p + "self_attn.o_proj")
      rotateOutputs(p + "mlp.down_proj")
    }
    // 3. Per-head V/O rotation with a head_dim Hadamard: W_v,h ← Hᵀ·W_v,h (bias too), W_o[:, h] ← W_o[:, h]·H.
    if options.transforms.contains("out_proj") {
      let hd = c.headDim
      let hrot = try HadamardRotation(size: hd)
      let apply: (UnsafeMutablePointer<Double>) -> Void = { hrot.apply($0) }
      for l in 0..<c.numHiddenLayers {
        let p = "model.layers.\(l).self_attn."
        var wv = s[p + "v_proj.weight"]
        for h in 0..<c.numKeyValueHeads { transformColumns(&wv, rows: c.kvDim, cols: H, range: (h * hd)..<((h + 1) * hd), apply) }
        s[p + "v_proj.weight"] = wv
        if var bv = s.tensors[p + "v_proj.bias"] {
          for h in 0..<c.numKeyValueHeads { transformRows(&bv, rows: 1, cols: c.kvDim, c0: h * hd, len: hd, apply) }
          s[p + "v_proj.bias"] = bv
        }
        var wo = s[p + "o_proj.weight"]
        for h in 0..<c.numAttentionHeads { transformRows(&wo, rows: H, cols: c.qDim, c0: h * hd, len: hd, apply) }
        s[p + "o_proj.weight"] = wo
      }
    }
    return "Hadamard \(H) = \(rot.k)·\(rot.p)\(options.random ? " with random signs" : "")"
  }
}

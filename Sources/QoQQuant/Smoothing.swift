// Channel reordering of down_proj inputs and smoothing (deepcompressor.md §1.2 steps 2–4). All are exact
// transforms of the FP model; they move activation outliers into weights (smoothing) or sort channels so each
// weight group holds channels of similar magnitude (reordering).
import Foundation
import QoQFormat
import QoQIO
import QoQModels

/// λ = a^α / b^β elementwise; α = 0 → b^(−β); zeros → 1; any NaN/Inf → all ones (deepcompressor's rule).
func smoothScale(_ a: [Float], _ b: [Float], alpha: Double, beta: Double) -> [Float] {
  var lam = [Float](repeating: 1, count: a.count)
  for i in 0..<a.count {
    let num = alpha == 0 ? 1.0 : pow(Double(a[i]), alpha)
    let den = beta == 0 ? 1.0 : pow(Double(b[i]), beta)
    var v = Float(num / den)
    if v == 0 { v = 1 }
    lam[i] = v
  }
  if lam.contains(where: { !$0.isFinite }) { return [Float](repeating: 1, count: a.count) }
  return lam
}

/// The three linears of one SwiGLU MLP by HF name (weight tensor prefixes): a dense layer's mlp.gate/up/down_proj,
/// or one Mixtral expert's w1 (gate), w3 (up) and w2 (down).
public struct MLPNames: Sendable, Equatable {
  public let gate: String, up: String, down: String
  /// Layer l's MLPs: the dense one, or every expert in order.
  public static func of(_ c: LlamaConfiguration, layer l: Int) -> [MLPNames] {
    guard let e = c.numLocalExperts else {
      let p = "model.layers.\(l).mlp."
      return [MLPNames(gate: p + "gate_proj", up: p + "up_proj", down: p + "down_proj")]
    }
    return (0..<e).map { x in
      let p = MoEBlock.prefix(layer: l) + "experts.\(x)."
      return MLPNames(gate: p + "w1", up: p + "w3", down: p + "w2")
    }
  }
}

public enum ReorderStage {
  /// Ascending argsort of the down_proj input absmax; permutes down_proj columns and gate/up rows (and biases).
  @discardableResult
  public static func apply(_ s: WeightStore, layer l: Int, downInputAbsMax m: [Float]) -> [Int] {
    apply(s, mlp: MLPNames.of(s.config, layer: l)[0], downInputAbsMax: m)
  }

  /// The same for one MLP (a dense layer's, or one expert's).
  @discardableResult
  public static func apply(_ s: WeightStore, mlp: MLPNames, downInputAbsMax m: [Float]) -> [Int] {
    let perm = (0..<m.count).sorted { m[$0] != m[$1] ? m[$0] < m[$1] : $0 < $1 }
    let I = s.config.intermediateSize, H = s.config.hiddenSize
    var down = s[mlp.down + ".weight"]
    let old = down
    for r in 0..<H { for i in 0..<I { down[r * I + i] = old[r * I + perm[i]] } }
    s[mlp.down + ".weight"] = down
    for m in [mlp.gate, mlp.up] {
      let w = s[m + ".weight"]
      var nw = w
      for i in 0..<I { for c in 0..<H { nw[i * H + c] = w[perm[i] * H + c] } }
      s[m + ".weight"] = nw
      if let b = s.tensors[m + ".bias"] { s[m + ".bias"] = perm.map { b[$0] } }
    }
    return perm
  }
}

public enum SmoothStage {
  /// SmoothAttention scales: λ = kspan^α / qspan^β on post-RoPE spans; rotary pairs (i, i + d/2) share a span; GQA
  /// reduces query spans over each KV group. Returns (λ per query channel, λ per key channel).
  public static func attentionScales(_ c: LlamaConfiguration, qAbsMax q: [Float], kAbsMax k: [Float],
                                     alpha: Double, beta: Double) -> (q: [Float], kv: [Float]) {
    let hd = c.headDim, half = hd / 2, group = c.numAttentionHeads / c.numKeyValueHeads
    func paired(_ x: [Float], heads: Int) -> [Float] {
      var y = x
      for h in 0..<heads { for i in 0..<half { let m = max(x[h * hd + i], x[h * hd + i + half]); y[h * hd + i] = m; y[h * hd + i + half] = m } }
      return y
    }
    let qp = paired(q, heads: c.numAttentionHeads), kp = paired(k, heads: c.numKeyValueHeads)
    var qg = [Float](repeating: 0, count: c.kvDim)
    for h in 0..<c.numAttentionHeads { let g = h / group; for d in 0..<hd { qg[g * hd + d] = max(qg[g * hd + d], qp[h * hd + d]) } }
    let lamKV = smoothScale(kp, qg, alpha: alpha, beta: beta)
    var lamQ = [Float](repeating: 1, count: c.qDim)
    for h in 0..<c.numAttentionHeads { for d in 0..<hd { lamQ[h * hd + d] = lamKV[(h / group) * hd + d] } }
    return (lamQ, lamKV)
  }

  /// Key scales (quant.opts.scale_keys, issue #19) from post-RoPE moments of the model before SmoothAttention:
  /// s_j = (E[q_j²] / E[(k_j − c_j)²])^¼ per KV channel j, E[q_j²] averaged over the query heads that share the KV head,
  /// c the key center (0 without centering). Why: a KV4 group's step grows with Σ s_j²·E[(k_j − c_j)²] (after rotation
  /// every channel shares it) and the score error a channel carries is E[q_j²]/s_j² times that step², so the score
  /// error ∝ (Σ_j E[q_j²]/s_j²)(Σ_j s_j² E[(k_j − c_j)²]), smallest (Cauchy–Schwarz) at s_j² ∝ sqrt(E[q_j²]/E[(k_j − c_j)²]).
  /// Each head's scales are normalised to geometric mean 1 and kept within [2⁻⁸, 2⁸] of it; a channel with no energy on
  /// either side gets 1. `lamKV`: SmoothAttention's λ (keys were divided by it), so the cache holds k·s either way.
  /// `exponent`: ¼ by this model; the exponent GridSearch (quant.opts.scale_keys_strategy) tries others.
  public static func keyScales(_ c: LlamaConfiguration, q: MomentAccumulator, k: MomentAccumulator, center: [Float]?,
                               exponent: Double = 0.25, lamKV: [Float]) -> [Float] {
    let hd = c.headDim, group = c.numAttentionHeads / c.numKeyValueHeads
    let q2 = q.meanSquare, km = k.mean, k2 = k.meanSquare
    var s = [Float](repeating: 1, count: c.kvDim)
    for kvh in 0..<c.numKeyValueHeads {
      var logs: [Double] = []
      for d in 0..<hd {
        let j = kvh * hd + d, cj = Double(center?[j] ?? 0)
        var eq = 0.0
        for h in (kvh * group)..<((kvh + 1) * group) { eq += q2[h * hd + d] }
        eq /= Double(group)
        let ek = k2[j] - 2 * cj * km[j] + cj * cj
        logs.append(eq > 0 && ek > 0 && eq.isFinite && ek.isFinite ? exponent * log(eq / ek) : .nan)
      }
      let valid = logs.filter { !$0.isNaN }
      let mid = valid.isEmpty ? 0 : valid.reduce(0, +) / Double(valid.count)
      for d in 0..<hd where !logs[d].isNaN {
        s[kvh * hd + d] = Float(exp(min(max(logs[d] - mid, -8 * log(2.0)), 8 * log(2.0))))
      }
    }
    return zip(s, lamKV).map { $0 * $1 }
  }

  /// Scaled q/k weights and biases: W_q rows ×= λ_q, W_k rows ÷= λ_kv (biases too; deepcompressor leaves the biases,
  /// which breaks exactness for Qwen2).
  static func scaledQK(_ s: WeightStore, layer l: Int, lamQ: [Float], lamKV: [Float])
    -> (wq: [Float], bq: [Float]?, wk: [Float], bk: [Float]?) {
    let c = s.config, H = c.hiddenSize, p = "model.layers.\(l).self_attn."
    var wq = s[p + "q_proj.weight"], wk = s[p + "k_proj.weight"]
    for r in 0..<c.qDim { for j in 0..<H { wq[r * H + j] *= lamQ[r] } }
    for r in 0..<c.kvDim { for j in 0..<H { wk[r * H + j] /= lamKV[r] } }
    let bq = s.tensors[p + "q_proj.bias"].map { b in (0..<c.qDim).map { b[$0] * lamQ[$0] } }
    let bk = s.tensors[p + "k_proj.bias"].map { b in (0..<c.kvDim).map { b[$0] / lamKV[$0] } }
    return (wq, bq, wk, bk)
  }

  /// SmoothAttention: Q·diag(λ), K·diag(λ)⁻¹ fused into q/k. Returns λ per query and per key channel.
  @discardableResult
  public static func attention(_ s: WeightStore, layer l: Int, qAbsMax q: [Float], kAbsMax k: [Float],
                               alpha: Double, beta: Double) -> (q: [Float], kv: [Float]) {
    let (lamQ, lamKV) = attentionScales(s.config, qAbsMax: q, kAbsMax: k, alpha: alpha, beta: beta)
    let t = scaledQK(s, layer: l, lamQ: lamQ, lamKV: lamKV)
    let p = "model.layers.\(l).self_attn."
    s[p + "q_proj.weight"] = t.wq; s[p + "k_proj.weight"] = t.wk
    if let b = t.bq { s[p + "q_proj.bias"] = b }
    if let b = t.bk { s[p + "k_proj.bias"] = b }
    return (lamQ, lamKV)
  }

  /// deepcompressor's (α, β) candidates for SmoothAttention/SmoothLinear grid searches
  /// (calib/config/smooth.py get_alpha_beta_pairs), a ∈ {1/G, …, (G−1)/G}; (0, 0) means λ ≡ 1.
  public static func alphaBetaCandidates(alpha: Double, beta: Double, grids g: Int) -> [(Double, Double)] {
    let a = (1..<g).map { Double($0) / Double(g) }
    var c: [(Double, Double)] = [(0, 0)]
    if alpha > 0 && beta == 0 { c += a.map { ($0, 0) } }
    else if alpha > 0 && beta == -1 { c += a.map { ($0, 1 - $0) } }
    else if alpha > 0 && beta == -2 { c += a.map { ($0, 0) } + a.map { ($0, 1 - $0) } }
    else if alpha > 0 && beta > 0 { c += a.map { ($0, $0) } }
    else { c += a.map { (0, $0) } + a.map { ($0, 0) } + a.flatMap { x in a.map { (x, $0) } } }
    return c
  }

  /// SmoothLinear on down_proj: λ = xspan^α / wspan^β (x = down input absmax, w = column absmax of W_down);
  /// W_down[:, j] ×= λ_j, W_up[j, :] ÷= λ_j (and up's bias). Returns λ.
  @discardableResult
  public static func down(_ s: WeightStore, layer l: Int, inputAbsMax x: [Float], alpha: Double, beta: Double) -> [Float] {
    down(s, mlp: MLPNames.of(s.config, layer: l)[0], inputAbsMax: x, alpha: alpha, beta: beta)
  }

  /// The same for one MLP (a dense layer's, or one expert's: its w2 and w3).
  @discardableResult
  public static func down(_ s: WeightStore, mlp: MLPNames, inputAbsMax x: [Float], alpha: Double, beta: Double) -> [Float] {
    let c = s.config, I = c.intermediateSize, H = c.hiddenSize
    let wd = s[mlp.down + ".weight"]
    var ws = [Float](repeating: 0, count: I)
    for r in 0..<H { for j in 0..<I { ws[j] = max(ws[j], abs(wd[r * I + j])) } }
    let lam = smoothScale(x, ws, alpha: alpha, beta: beta)
    applyDown(s, mlp: mlp, lambda: lam)
    return lam
  }
}

extension SmoothStage {
  /// SmoothLinear between an RMSNorm and the linears that read it (SmoothQuant's qkv_proj and up_proj):
  /// λ = xspan^α / wspan^β with x the norm output absmax and wspan_j = max over the rows of every consumer of
  /// |W[:, j]|; the consumers' columns ×= λ_j and the norm weight ÷= λ_j — exact, as RMSNorm is per channel.
  /// `key` is qkv_proj (input_layernorm → q, k, v) or up_proj (post_attention_layernorm → gate, up). Returns λ.
  @discardableResult
  public static func normLinear(_ s: WeightStore, layer l: Int, key: String, inputAbsMax x: [Float], alpha: Double, beta: Double) -> [Float] {
    let H = s.config.hiddenSize
    let consumers = normConsumers(s.config, layer: l, key: key).linears
    var ws = [Float](repeating: 0, count: H)
    for n in consumers {
      let w = s[n]
      for r in 0..<(w.count / H) { for j in 0..<H { ws[j] = max(ws[j], abs(w[r * H + j])) } }
    }
    let lam = smoothScale(x, ws, alpha: alpha, beta: beta)
    applyNormLinear(s, layer: l, key: key, lambda: lam)
    return lam
  }
}

extension SmoothStage {
  /// The RMSNorm and the linears reading it: qkv_proj → input_layernorm and q/k/v; up_proj → post_attention_layernorm
  /// and gate/up, or in an MoE layer the router and every expert's w1/w3 (one λ shared by all of them, as
  /// deepcompressor smooths a Mixtral block) (weight tensor names).
  static func normConsumers(_ c: LlamaConfiguration, layer l: Int, key: String) -> (norm: String, linears: [String]) {
    let p = "model.layers.\(l)."
    if key == "qkv_proj" {
      return (p + "input_layernorm.weight", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"].map { p + $0 + ".weight" })
    }
    let mlp = MLPNames.of(c, layer: l)
    let router = c.numLocalExperts == nil ? [] : [MoEBlock.prefix(layer: l) + "gate.weight"]
    return (p + "post_attention_layernorm.weight", router + mlp.flatMap { [$0.gate + ".weight", $0.up + ".weight"] })
  }
}

// AWQ's activation-aware smoothing as deepcompressor runs it (deepcompressor.md §1.6, awq recipe): for each
// smoothing group of a layer — input_layernorm → q/k/v (evaluated on the attention block's output), v_proj → o_proj
// (o_proj's output), post_attention_layernorm → gate/up (the MLP's output), up_proj → down_proj (down_proj's
// output) — try λ = span(x)^α for α ∈ {0, 1/20, …, 19/20} (β = 0, no normalisation; span = max|x|, AbsMax, or
// sqrt(mean x²) with `spans: [[RootMeanSquare, AbsMax]]`), fake-quantize the
// scaled weights W·diag(λ) with the weight quantizer (round to nearest), undo the scale, and keep the α whose
// module output has the smallest squared error against the FP output. The chosen λ is then folded exactly.
// MoE layers (issue #14), as deepcompressor's smooth_llm_layer runs them: post_attention_layernorm → the router and every
// expert's w1/w3 share one λ, judged on the whole sparse block's output (the experts' w1/w3 quantized, the router and w2
// at full precision, so the routing does not move; the router's columns then take λ exactly); each expert's w3 → w2
// has its own λ, judged on its w2's output over the rows routed to it (an expert no search token reaches keeps λ = 1).
import Foundation
import QoQFormat
import QoQIO
import QoQKernels
import QoQModels

public enum AWQSearch {
  /// W·diag(λ) quantized (RTN) then ·diag(λ)⁻¹: the weight the model effectively uses after smoothing + quantizing.
  public static func quantizedScaled(_ w: [Float], out: Int, inp: Int, lambda: [Float], format: WeightFormat) -> [Float] {
    var s = w
    for o in 0..<out { for i in 0..<inp { s[o * inp + i] *= lambda[i] } }
    var q = WeightQuantizer(weight: s, out: out, inp: inp, format: format).rtn(s).dequantized()
    for o in 0..<out { for i in 0..<inp { q[o * inp + i] /= lambda[i] } }
    return q
  }

  /// λ = xspan^α (β = 0; α = 0 → all ones; zeros → 1; NaN/Inf → all ones).
  public static func lambda(_ xspan: [Float], alpha: Double) -> [Float] {
    alpha == 0 ? [Float](repeating: 1, count: xspan.count) : smoothScale(xspan, xspan, alpha: alpha, beta: 0)
  }

  /// The α (and its λ) minimising `error(λ)` over the candidates; ties keep the earlier candidate.
  public static func search(xspan: [Float], candidates: [Double], error: ([Float]) throws -> Double) rethrows -> (alpha: Double, lambda: [Float]) {
    var best = (candidates[0], lambda(xspan, alpha: candidates[0])), bestErr = Double.infinity
    for a in candidates {
      let lam = lambda(xspan, alpha: a)
      let e = try error(lam)
      if e < bestErr { bestErr = e; best = (a, lam) }
    }
    return best
  }

  /// Σ (y − ref)² in Double.
  static func sse(_ y: [Float], _ ref: [Float]) -> Double {
    var e = 0.0
    for i in 0..<y.count { let d = Double(y[i] - ref[i]); e += d * d }
    return e
  }

  /// Output of a plain linear x (rows, inp) · Wᵀ (bias-free; the smoothing searches compare outputs of the same bias).
  static func linear(_ x: [Float], _ w: [Float], out: Int, inp: Int) -> [Float] {
    let rows = x.count / inp
    var y = [Float](repeating: 0, count: rows * out)
    let l = DenseLinear(weight: w, outFeatures: out, inFeatures: inp)
    x.withUnsafeBufferPointer { xb in y.withUnsafeMutableBufferPointer { l.forward(xb.baseAddress!, rows: rows, $0.baseAddress!) } }
    return y
  }

  /// The best α for a single linear evaluated on its own output (o_proj, down_proj): inputs x (rows, inp).
  public static func linearGroup(weight w: [Float], out: Int, inp: Int, inputs x: [Float], xspan: [Float], format: WeightFormat,
                                 candidates: [Double]) -> (alpha: Double, lambda: [Float]) {
    let ref = linear(x, w, out: out, inp: inp)
    return search(xspan: xspan, candidates: candidates) { lam in
      sse(linear(x, quantizedScaled(w, out: out, inp: inp, lambda: lam, format: format), out: out, inp: inp), ref)
    }
  }
}

extension QuantizationPipeline {
  /// AWQ smoothing of layer l from its captured FP inputs: attention input h (normalized), o_proj input, MLP input,
  /// down_proj input (all (rows, width) of the first search sequences, whose lengths are `lengths`) and the absmax
  /// spans over all calibration tokens. Folds the chosen λ into the store; returns the chosen α per group.
  func awqLayer(_ store: WeightStore, model: LlamaModel, layer l: Int, format: WeightFormat, keys: Set<String>,
                attnIn: [Float], oIn: [Float], mlpIn: [Float], downIn: [Float], lengths: [Int],
                spans: (attn: [Float], o: [Float], mlp: [Float], down: [[Float]]), candidates: [Double]) throws -> [String: Double] {
    let c = store.config, H = c.hiddenSize, Q = c.qDim, KV = c.kvDim, I = c.intermediateSize, D = c.headDim
    let g = c.numAttentionHeads / c.numKeyValueHeads
    let p = "model.layers.\(l)."
    var chosen: [String: Double] = [:]
    // The layer's MLPs by names relative to p: the dense one, or every expert (w1 = gate, w3 = up, w2 = down).
    let mlps = MLPNames.of(c, layer: l).map { m in [m.gate, m.up, m.down].map { String($0.dropFirst(p.count)) } }
    func dense(_ n: String, _ w: [Float]) -> DenseLinear {
      let (o, i) = store.linearShape(p + n)
      return DenseLinear(weight: w, outFeatures: o, inFeatures: i, bias: store.tensors[p + n + ".bias"])
    }
    func layerWith(_ repl: [String: [Float]]) -> DecoderLayer {
      func lin(_ n: String) -> LinearLayer { dense(n, repl[n] ?? store[p + n + ".weight"]) }
      let (n1, n2) = (store[p + "input_layernorm.weight"], store[p + "post_attention_layernorm.weight"])
      if c.numLocalExperts != nil {
        let router = String(MoEBlock.prefix(layer: l).dropFirst(p.count)) + "gate"
        let block = MoEBlock(gate: lin(router), experts: mlps.map { Expert(w1: lin($0[0]), w2: lin($0[2]), w3: lin($0[1])) },
                             topK: c.numExpertsPerTok)
        return DecoderLayer(inputLayernorm: n1, postAttentionLayernorm: n2, qProj: lin("self_attn.q_proj"), kProj: lin("self_attn.k_proj"),
                            vProj: lin("self_attn.v_proj"), oProj: lin("self_attn.o_proj"), moe: block)
      }
      return DecoderLayer(inputLayernorm: n1, postAttentionLayernorm: n2,
                          qProj: lin("self_attn.q_proj"), kProj: lin("self_attn.k_proj"), vProj: lin("self_attn.v_proj"),
                          oProj: lin("self_attn.o_proj"), gateProj: lin("mlp.gate_proj"), upProj: lin("mlp.up_proj"), downProj: lin("mlp.down_proj"))
    }
    // Each MLP's w2/down_proj input on the search rows: the captured one of a dense layer; per expert, the rows the
    // router sends it, taken from the FP layer before any fold (the folds are exact, so they would not change them).
    var downInputs: [[Float]] = [downIn]
    if let e = c.numLocalExperts {
      downInputs = [[Float]](repeating: [], count: e)
      let rows = mlpIn.count / H
      var y = [Float](repeating: 0, count: rows * H)
      mlpIn.withUnsafeBufferPointer { xb in y.withUnsafeMutableBufferPointer { yb in
        layerWith([:]).moe!.forward(xb.baseAddress!, rows: rows, hidden: H, intermediate: I, yb.baseAddress!) { x, _, down, m in
          downInputs[x] += UnsafeBufferPointer(start: down, count: m * I)
        }
      } }
    }
    // 1. input_layernorm → q/k/v, judged on the attention block's output.
    if keys.contains("qkv_proj") {
      let base = layerWith([:])
      let ref = try RangeSearch.chunkedOutputs(h: attnIn, lengths: lengths, width: H) { try model.attentionOutput(base, h: $0, lengths: $1) }
      let best = try AWQSearch.search(xspan: spans.attn, candidates: candidates) { lam in
        var repl: [String: [Float]] = [:]
        for (n, o) in [("self_attn.q_proj", Q), ("self_attn.k_proj", KV), ("self_attn.v_proj", KV)] {
          repl[n] = AWQSearch.quantizedScaled(store[p + n + ".weight"], out: o, inp: H, lambda: lam, format: format)
        }
        let layer = layerWith(repl)
        return try RangeSearch.outputError(h: attnIn, lengths: lengths, width: H, reference: ref) {
          try model.attentionOutput(layer, h: $0, lengths: $1)
        }
      }
      chosen["qkv_proj"] = best.alpha
      if best.alpha != 0 { SmoothStage.applyNormLinear(store, layer: l, key: "qkv_proj", lambda: best.lambda) }
    }
    // 2. v_proj → o_proj, judged on o_proj's output. o's input channels of the heads sharing a KV head share λ
    //    (max over the repeats), so v's rows can take it.
    if keys.contains("out_proj") {
      var kvSpan = [Float](repeating: 0, count: KV)
      for h in 0..<c.numAttentionHeads { for d in 0..<D { kvSpan[(h / g) * D + d] = max(kvSpan[(h / g) * D + d], spans.o[h * D + d]) } }
      let expand: ([Float]) -> [Float] = { lk in (0..<Q).map { lk[(($0 / D) / g) * D + $0 % D] } }
      let wo = store[p + "self_attn.o_proj.weight"]
      let ref = AWQSearch.linear(oIn, wo, out: H, inp: Q)
      let best = AWQSearch.search(xspan: kvSpan, candidates: candidates) { lk in
        AWQSearch.sse(AWQSearch.linear(oIn, AWQSearch.quantizedScaled(wo, out: H, inp: Q, lambda: expand(lk), format: format), out: H, inp: Q), ref)
      }
      chosen["out_proj"] = best.alpha
      if best.alpha != 0 {
        let lq = expand(best.lambda)
        var o = wo
        for r in 0..<H { for j in 0..<Q { o[r * Q + j] *= lq[j] } }
        store[p + "self_attn.o_proj.weight"] = o
        var v = store[p + "self_attn.v_proj.weight"]
        for r in 0..<KV { for j in 0..<H { v[r * H + j] /= best.lambda[r] } }
        store[p + "self_attn.v_proj.weight"] = v
        if let b = store.tensors[p + "self_attn.v_proj.bias"] { store[p + "self_attn.v_proj.bias"] = (0..<KV).map { b[$0] / best.lambda[$0] } }
      }
    }
    // 3. post_attention_layernorm → gate/up (every expert's w1/w3, and the router), judged on the MLP's output.
    if keys.contains("up_proj") {
      let base = layerWith([:])
      let ref = mlpOutput(base, mlpIn, H: H, I: I)
      let best = AWQSearch.search(xspan: spans.mlp, candidates: candidates) { lam in
        var repl: [String: [Float]] = [:]
        for n in mlps.flatMap({ $0.prefix(2) }) {
          repl[n] = AWQSearch.quantizedScaled(store[p + n + ".weight"], out: I, inp: H, lambda: lam, format: format)
        }
        return AWQSearch.sse(mlpOutput(layerWith(repl), mlpIn, H: H, I: I), ref)
      }
      chosen["up_proj"] = best.alpha
      if best.alpha != 0 { SmoothStage.applyNormLinear(store, layer: l, key: "up_proj", lambda: best.lambda) }
    }
    // 4. up_proj → down_proj (each expert's w3 → w2), judged on down_proj's output.
    if keys.contains("down_proj") {
      for (i, mlp) in MLPNames.of(c, layer: l).enumerated() {
        let name = c.numLocalExperts == nil ? "down_proj" : "e\(i).down_proj"
        guard !downInputs[i].isEmpty else { chosen[name] = 0; continue }  // no search row routed here: λ = 1
        let best = AWQSearch.linearGroup(weight: store[mlp.down + ".weight"], out: H, inp: I, inputs: downInputs[i], xspan: spans.down[i],
                                         format: format, candidates: candidates)
        chosen[name] = best.alpha
        if best.alpha != 0 { SmoothStage.applyDown(store, mlp: mlp, lambda: best.lambda) }
      }
    }
    return chosen
  }

  /// down(silu(gate(x))·up(x)) for normalized MLP inputs x (rows, H); an MoE layer's sparse block output.
  func mlpOutput(_ layer: DecoderLayer, _ x: [Float], H: Int, I: Int) -> [Float] {
    let rows = x.count / H
    if let moe = layer.moe {
      var y = [Float](repeating: 0, count: rows * H)
      x.withUnsafeBufferPointer { xb in
        y.withUnsafeMutableBufferPointer { moe.forward(xb.baseAddress!, rows: rows, hidden: H, intermediate: I, $0.baseAddress!) }
      }
      return y
    }
    var gt = [Float](repeating: 0, count: rows * I), up = gt, y = [Float](repeating: 0, count: rows * H)
    x.withUnsafeBufferPointer { xb in
      gt.withUnsafeMutableBufferPointer { layer.gateProj.forward(xb.baseAddress!, rows: rows, $0.baseAddress!) }
      up.withUnsafeMutableBufferPointer { layer.upProj.forward(xb.baseAddress!, rows: rows, $0.baseAddress!) }
    }
    gt.withUnsafeMutableBufferPointer { g in up.withUnsafeBufferPointer { u in siluMul(g.baseAddress!, u.baseAddress!, g.baseAddress!, rows * I) } }
    gt.withUnsafeBufferPointer { g in y.withUnsafeMutableBufferPointer { layer.downProj.forward(g.baseAddress!, rows: rows, $0.baseAddress!) } }
    return y
  }
}

extension SmoothStage {
  /// Folds a given λ between an RMSNorm and its consumers (columns ×= λ, norm ÷= λ).
  public static func applyNormLinear(_ s: WeightStore, layer l: Int, key: String, lambda lam: [Float]) {
    let H = s.config.hiddenSize
    let (norm, consumers) = normConsumers(s.config, layer: l, key: key)
    for n in consumers {
      var w = s[n]
      for r in 0..<(w.count / H) { for j in 0..<H { w[r * H + j] *= lam[j] } }
      s[n] = w
    }
    s[norm] = zip(s[norm], lam).map { $0 / $1 }
  }

  /// Folds a given λ between up_proj and down_proj (down columns ×= λ, up rows and bias ÷= λ).
  public static func applyDown(_ s: WeightStore, layer l: Int, lambda lam: [Float]) {
    applyDown(s, mlp: MLPNames.of(s.config, layer: l)[0], lambda: lam)
  }

  /// W_down[:, j] ×= λ_j, W_up[j, :] ÷= λ_j (and up's bias) for one MLP (a dense layer's, or one expert's w2/w3).
  public static func applyDown(_ s: WeightStore, mlp: MLPNames, lambda lam: [Float]) {
    let c = s.config, I = c.intermediateSize, H = c.hiddenSize
    var wd = s[mlp.down + ".weight"]
    for r in 0..<H { for j in 0..<I { wd[r * I + j] *= lam[j] } }
    s[mlp.down + ".weight"] = wd
    var wu = s[mlp.up + ".weight"]
    for j in 0..<I { for cc in 0..<H { wu[j * H + cc] /= lam[j] } }
    s[mlp.up + ".weight"] = wu
    if let b = s.tensors[mlp.up + ".bias"] { s[mlp.up + ".bias"] = (0..<I).map { b[$0] / lam[$0] } }
  }
}

import Foundation
import QoQModels

/// A deliberately plain Double-precision transcription of transformers' LlamaForCausalLM (and MixtralForCausalLM)
/// forward (no cache, no packing, no SIMD): the independent scalar twin the fast model is checked against.
public func referenceLogits(_ w: MemoryWeights, _ c: LlamaConfiguration, tokens: [Int32]) throws -> [[Double]] {
  let H = c.hiddenSize, hd = c.headDim, nH = c.numAttentionHeads, nKV = c.numKeyValueHeads, T = tokens.count
  func W(_ n: String) throws -> [Double] { try w.floats(n).map(Double.init) }
  func linear(_ x: [Double], _ name: String, out: Int, inp: Int, bias: Bool) throws -> [Double] {
    let wt = try W(name + ".weight")
    let b = bias ? try W(name + ".bias") : [Double](repeating: 0, count: out)
    return (0..<out).map { j in (0..<inp).reduce(b[j]) { $0 + wt[j * inp + $1] * x[$1] } }
  }
  func rms(_ x: [Double], _ g: [Double]) -> [Double] {
    let ms = x.reduce(0) { $0 + $1 * $1 } / Double(x.count)
    return x.indices.map { g[$0] * x[$0] / (ms + c.rmsNormEps).squareRoot() }
  }
  // inv_freq (with llama3 scaling) in Double.
  var inv = (0..<(hd / 2)).map { 1 / pow(c.ropeTheta, Double(2 * $0) / Double(hd)) }
  if let s = c.ropeScaling {
    let old = Double(s.originalMaxPositionEmbeddings)
    inv = inv.map { f in
      let wl = 2 * Double.pi / f
      if wl < old / s.highFreqFactor { return f }
      if wl > old / s.lowFreqFactor { return f / s.factor }
      let sm = (old / wl - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor)
      return (1 - sm) * f / s.factor + sm * f
    }
  }
  func rope(_ v: inout [Double], heads: Int, pos: Int) {
    for h in 0..<heads {
      for i in 0..<(hd / 2) {
        let a = v[h * hd + i], b = v[h * hd + i + hd / 2], ang = Double(pos) * inv[i]
        v[h * hd + i] = a * cos(ang) - b * sin(ang)
        v[h * hd + i + hd / 2] = b * cos(ang) + a * sin(ang)
      }
    }
  }
  let emb = try W("model.embed_tokens.weight")
  var x = tokens.map { t in Array(emb[(Int(t) * H)..<(Int(t) * H + H)]) }
  for l in 0..<c.numHiddenLayers {
    let p = "model.layers.\(l)."
    let g1 = try W(p + "input_layernorm.weight")
    var qs: [[Double]] = [], ks: [[Double]] = [], vs: [[Double]] = []
    for i in 0..<T {
      let h = rms(x[i], g1)
      var q = try linear(h, p + "self_attn.q_proj", out: c.qDim, inp: H, bias: c.attentionBias)
      var k = try linear(h, p + "self_attn.k_proj", out: c.kvDim, inp: H, bias: c.attentionBias)
      rope(&q, heads: nH, pos: i); rope(&k, heads: nKV, pos: i)
      qs.append(q); ks.append(k); vs.append(try linear(h, p + "self_attn.v_proj", out: c.kvDim, inp: H, bias: c.attentionBias))
    }
    let g2 = try W(p + "post_attention_layernorm.weight")
    for i in 0..<T {
      var att = [Double](repeating: 0, count: c.qDim)
      for h in 0..<nH {
        let g = h / (nH / nKV)
        var sc = (0...i).map { j in (0..<hd).reduce(0.0) { $0 + qs[i][h * hd + $1] * ks[j][g * hd + $1] } / Double(hd).squareRoot() }
        let m = sc.max()!
        sc = sc.map { exp($0 - m) }
        let z = sc.reduce(0, +)
        for j in 0...i { for d in 0..<hd { att[h * hd + d] += sc[j] / z * vs[j][g * hd + d] } }
      }
      let o = try linear(att, p + "self_attn.o_proj", out: H, inp: c.qDim, bias: c.attentionBias && c.modelType == "llama")
      x[i] = x[i].indices.map { x[i][$0] + o[$0] }
    }
    for i in 0..<T {
      let h = rms(x[i], g2)
      if let E = c.numLocalExperts {
        // Mixtral: softmax over the router's E logits, the top k (ties → lower index), weights renormalised.
        let m = p + "block_sparse_moe."
        let logits = try linear(h, m + "gate", out: E, inp: H, bias: false)
        let mx = logits.max()!, ex = logits.map { exp($0 - mx) }, z = ex.reduce(0, +)
        let prob = ex.map { $0 / z }
        let top = (0..<E).sorted { prob[$0] != prob[$1] ? prob[$0] > prob[$1] : $0 < $1 }.prefix(c.numExpertsPerTok)
        let norm = top.reduce(0.0) { $0 + prob[$1] }
        var y = [Double](repeating: 0, count: H)
        for e in top {
          let q = m + "experts.\(e)."
          let gt = try linear(h, q + "w1", out: c.intermediateSize, inp: H, bias: false)
          let up = try linear(h, q + "w3", out: c.intermediateSize, inp: H, bias: false)
          let d = try linear(gt.indices.map { gt[$0] / (1 + exp(-gt[$0])) * up[$0] }, q + "w2", out: H, inp: c.intermediateSize, bias: false)
          for j in 0..<H { y[j] += prob[e] / norm * d[j] }
        }
        x[i] = x[i].indices.map { x[i][$0] + y[$0] }
        continue
      }
      let gt = try linear(h, p + "mlp.gate_proj", out: c.intermediateSize, inp: H, bias: c.mlpBias)
      let up = try linear(h, p + "mlp.up_proj", out: c.intermediateSize, inp: H, bias: c.mlpBias)
      let a = gt.indices.map { gt[$0] / (1 + exp(-gt[$0])) * up[$0] }
      let d = try linear(a, p + "mlp.down_proj", out: H, inp: c.intermediateSize, bias: c.mlpBias)
      x[i] = x[i].indices.map { x[i][$0] + d[$0] }
    }
  }
  let gn = try W("model.norm.weight")
  let head = c.tieWordEmbeddings ? emb : try W("lm_head.weight")
  return x.map { row in
    let h = rms(row, gn)
    return (0..<c.vocabSize).map { v in (0..<H).reduce(0.0) { $0 + head[v * H + $1] * h[$1] } }
  }
}

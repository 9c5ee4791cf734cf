import Foundation
import Testing
@testable import QoQFormat
@testable import QoQIO
@testable import QoQModels
@testable import QoQQuant
import QoQTestSupport

/// The key scales' exponent GridSearch (quant.opts.scale_keys_strategy, issue #19): per layer, the exponent p of
/// s_j = (E[q_j²] / E[(k_j − c_j)²])^p whose keys, centered, scaled, rotated and quantized as the cache holds them,
/// give the smallest attention-output error.
@Suite(.serialized) struct KeyScaleSearchTests {
  /// keyScales at other exponents, by hand: the keyScalesByHand case (E[q²] = (16, 1, 1, 1), centered E[(k − c)²] =
  /// (1, 1, 16, 1)) gives (4, 1, ¼, 1) at p = ½ (geometric mean 1) and all ones at p = 0.
  @Test func exponentsByHand() throws {
    let c = try LlamaConfiguration(modelType: "llama", hiddenSize: 8, intermediateSize: 8, numHiddenLayers: 1,
                                   numAttentionHeads: 2, numKeyValueHeads: 1, headDim: 4, rmsNormEps: 1e-6, ropeTheta: 1e4, vocabSize: 10)
    var q = MomentAccumulator(width: 8), k = MomentAccumulator(width: 4)
    q.add([4, 1, 1, 1, 4, 1, 1, 1, -4, 1, -1, 1, -4, -1, 1, -1])
    k.add([11, 1, 1, 1, 9, -1, -7, -1])
    let center: [Float] = [10, 0, -3, 0], ones: [Float] = [1, 1, 1, 1]
    let half = SmoothStage.keyScales(c, q: q, k: k, center: center, exponent: 0.5, lamKV: ones)
    for (got, want) in zip(half, [Float(4), 1, 0.25, 1]) { #expect(abs(got - want) < 1e-5, "\(half)") }
    #expect(SmoothStage.keyScales(c, q: q, k: k, center: center, exponent: 0, lamKV: ones).allSatisfy { abs($0 - 1) < 1e-6 })
  }

  /// Pipeline with the search (no SmoothAttention, so the saved k_scale is the chosen exponent's scales as they are;
  /// the residual rotation leaves q, k and the attention-output error's norm as they are):
  /// every layer's k_scale equals keyScales at one of the candidate exponents, recomputed from the FP model's own
  /// post-RoPE Q and K on the calibration samples; and that exponent is the argmin of the attention-output error
  /// computed here independently (projections, rotate-half RoPE, causal GQA softmax attention and o_proj in Double),
  /// with K fake-quantized the way the cache holds it. The default (Manual) keeps ¼ and the run key.
  @Test func searchPicksTheSmallestAttentionError() throws {
    let dir = tempDir("kscale-grid")
    let c = try KeyCenterTests.kBiasModel(dir + "/model")
    try writeTinyText(to: dir + "/calib.txt")
    let flags = ["--opts-dtype", "uint4", "--opts-zero-point", "PostScale", "--opts-group-shapes", "1,32", "--opts-skips", "attn_q",
                 "--calib-path", dir + "/calib.txt", "--calib-num-samples", "4", "--calib-seq-length", "32",
                 "--opts-center-keys", "always", "--opts-rotate-keys", "always", "--opts-scale-keys", "always",
                 "--enable-rotation", "--rotation-transforms", "out_proj"]
    let manual = try QuantizationPipeline(modelPath: dir + "/model", recipe: try Recipe.load(files: [], flags: flags), cacheRoot: nil)
    let manualExplicit = try QuantizationPipeline(modelPath: dir + "/model", recipe: try Recipe.load(files: [], flags: flags
      + ["--opts-scale-keys-strategy", "Manual", "--opts-scale-keys-sample-size", "3"]), cacheRoot: nil)
    #expect(manual.runKey == manualExplicit.runKey)
    let p = try QuantizationPipeline(modelPath: dir + "/model", recipe: try Recipe.load(files: [], flags: flags
      + ["--opts-scale-keys-strategy", "GridSearch"]), cacheRoot: nil)
    #expect(p.plan.scaleKeysSearch && p.runKey != manual.runKey)
    let out = try p.run()  // kept alive: its temporary checkpoint folder goes with it
    let st = try CheckpointWeights(folder: try out.checkpoint())
    // The FP model's layer inputs, post-RoPE Q and K on the calibration samples.
    let fp = try ModelLoader.load(path: dir + "/model").model
    let samples = try CalibrationData.samples(p.plan.calib, tokenizer: try ModelLoader.load(path: dir + "/model").tokenizer)
    let lengths = samples.map(\.count)
    var x = try fp.embed(samples, caches: samples.map { _ in KVCache(config: c, capacity: 1) })
    let caches = samples.map { _ in KVCache(config: c, capacity: 32) }
    let weights = try SafeTensorsFile(path: dir + "/model/model.safetensors")
    let kq = KVFakeQuant(bits: 4, group: 32, asymmetric: true)
    var chosen: [Double] = []
    for l in 0..<c.numHiddenLayers {
      let cap = LayerCapture([.attnInput, .qRope, .kRope])
      try fp.runLayer(l, x: &x, lengths: lengths, caches: caches, capture: cap)
      var qm = MomentAccumulator(width: c.qDim), km = MomentAccumulator(width: c.kvDim)
      qm.add(cap[.qRope]); km.add(cap[.kRope])
      let center = km.mean.map { Float($0) }
      let got = try st.floats("model.layers.\(l).self_attn.k_scale")
      let ones = [Float](repeating: 1, count: c.kvDim)
      let match = QuantPlan.keyScaleExponents.first { e in
        let want = SmoothStage.keyScales(c, q: qm, k: km, center: center, exponent: e, lamKV: ones)
        return zip(got, want).allSatisfy { abs($0 / $1 - 1) < 1e-3 }
      }
      guard let e = match else { Issue.record("layer \(l): k_scale matches no candidate exponent: \(got)"); continue }
      chosen.append(e)
      // The reference error of every candidate.
      let ref = try ReferenceAttention(c, layer: l, weights: weights, h: cap[.attnInput], lengths: lengths)
      #expect(relL2(ref.q, cap[.qRope]) < 1e-5 && relL2(ref.k, cap[.kRope]) < 1e-5, "layer \(l): the reference's RoPE")
      let exact = ref.output(keys: ref.k)
      let errors = QuantPlan.keyScaleExponents.map { e -> Double in
        let s = SmoothStage.keyScales(c, q: qm, k: km, center: center, exponent: e, lamKV: ones)
        var keys = ref.k
        keyTransform(kq, headDim: c.headDim, rotate: true, scale: s, center: center).apply(&keys, rows: keys.count / c.kvDim, width: c.kvDim)
        return zip(ref.output(keys: keys), exact).reduce(0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) }
      }
      let best = errors.min()!, mine = errors[QuantPlan.keyScaleExponents.firstIndex(of: e)!]
      #expect(mine <= best * 1.001, "layer \(l): exponent \(e) errs \(mine), the best candidate \(best) (\(errors))")
      #expect(errors.max()! > best * 1.01, "layer \(l): the candidates must differ for the test to mean something (\(errors))")
    }
    #expect(chosen.count == c.numHiddenLayers)
  }
}

/// One attention sublayer in Double from the checkpoint's tensors: q/k/v projections with biases, rotate-half RoPE
/// (inv_freq = θ^(−2i/d)), causal GQA softmax attention per sequence, o_proj. `q`, `k`: post-RoPE, as Float rows.
struct ReferenceAttention {
  let c: LlamaConfiguration, lengths: [Int], q: [Float], k: [Float], v: [Double], wo: [Float]

  init(_ c: LlamaConfiguration, layer l: Int, weights: SafeTensorsFile, h: [Float], lengths: [Int]) throws {
    let p = "model.layers.\(l).self_attn.", H = c.hiddenSize, n = h.count / H
    func project(_ name: String, _ out: Int) throws -> [Double] {
      let w = try weights.floats(p + name + ".weight")
      let b = weights.names.contains(p + name + ".bias") ? try weights.floats(p + name + ".bias") : nil
      var y = [Double](repeating: 0, count: n * out)
      for r in 0..<n { for o in 0..<out {
        var s = Double(b?[o] ?? 0)
        for j in 0..<H { s += Double(w[o * H + j]) * Double(h[r * H + j]) }
        y[r * out + o] = s
      } }
      return y
    }
    func rope(_ x: [Double], heads: Int) -> [Float] {
      let d = c.headDim, half = d / 2, width = heads * d
      var y = x, r0 = 0
      for t in lengths {
        for pos in 0..<t { for hd in 0..<heads { for i in 0..<half {
          let a = Double(pos) * pow(c.ropeTheta, -2 * Double(i) / Double(d))
          let at = (r0 + pos) * width + hd * d
          y[at + i] = x[at + i] * cos(a) - x[at + i + half] * sin(a)
          y[at + i + half] = x[at + i + half] * cos(a) + x[at + i] * sin(a)
        } } }
        r0 += t
      }
      return y.map { Float($0) }
    }
    self.c = c; self.lengths = lengths
    q = rope(try project("q_proj", c.qDim), heads: c.numAttentionHeads)
    k = rope(try project("k_proj", c.kvDim), heads: c.numKeyValueHeads)
    v = try project("v_proj", c.kvDim)
    wo = try weights.floats(p + "o_proj.weight")
  }

  /// The sublayer's output (N, H) with these post-RoPE keys.
  func output(keys: [Float]) -> [Double] {
    let d = c.headDim, Q = c.qDim, KV = c.kvDim, H = c.hiddenSize, group = c.numAttentionHeads / c.numKeyValueHeads
    let n = keys.count / KV
    var attn = [Double](repeating: 0, count: n * Q), r0 = 0
    for t in lengths {
      for i in 0..<t { for hd in 0..<c.numAttentionHeads {
        let g = hd / group
        let scores = (0...i).map { j in
          (0..<d).reduce(0.0) { $0 + Double(q[(r0 + i) * Q + hd * d + $1]) * Double(keys[(r0 + j) * KV + g * d + $1]) } / Double(d).squareRoot()
        }
        let m = scores.max()!, e = scores.map { exp($0 - m) }, z = e.reduce(0, +)
        for j in 0...i { for x in 0..<d { attn[(r0 + i) * Q + hd * d + x] += e[j] / z * v[(r0 + j) * KV + g * d + x] } }
      } }
      r0 += t
    }
    var y = [Double](repeating: 0, count: n * H)
    for r in 0..<n { for o in 0..<H { y[r * H + o] = (0..<Q).reduce(0.0) { $0 + Double(wo[o * Q + $1]) * attn[r * Q + $1] } } }
    return y
  }
}

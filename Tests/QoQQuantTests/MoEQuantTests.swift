import Foundation
import Testing
@testable import QoQFormat
@testable import QoQIO
@testable import QoQModels
@testable import QoQQuant
import QoQTestSupport

/// Mixture-of-experts through the quantizer (issue #14): RTN, GPTQ and QoQ (with or without the rotation), every
/// expert's w1/w3/w2 quantized from the tokens routed to it, the router kept at full precision.
@Suite(.serialized) struct MoEQuantTests {
  static let tokens: [Int32] = [3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 9, 32, 38, 46, 26, 43]

  /// RTN W4A16 g64 on a tiny Mixtral (4 experts, top 2, 2 layers): each expert's quantized weight equals the RTN of
  /// its source tensor quantized on its own (so names, shapes and order are right), the router is saved bit for bit,
  /// and the fake-quantized model routes and runs: its logits are near the FP model's, not equal, and the saved
  /// checkpoint reloads to the same logits.
  @Test func rtnQuantizesEveryExpert() throws {
    let dir = tempDir("moe-rtn")
    let c = try TinyMixtral.config(hidden: 64, intermediate: 64)
    try writeTinyCheckpoint(c, to: dir + "/model")
    let p = try QuantizationPipeline(modelPath: dir + "/model", recipe: try Recipe.load(files: [recipesDir + "/rtn-w4a16-g64.yaml"], flags: []),
                                     cacheRoot: nil)
    let out = try p.run()
    let q = try out.quantizedWeights()
    #expect(q.count == c.numHiddenLayers * (4 + 3 * c.numLocalExperts!), "\(q.keys.sorted())")
    let src = try SafeTensorsFile(path: dir + "/model/model.safetensors")
    let format = try #require(p.plan.weightFormat)
    for l in 0..<c.numHiddenLayers {
      for e in 0..<c.numLocalExperts! {
        for w in ["w1", "w2", "w3"] {
          let m = MoEBlock.prefix(layer: l) + "experts.\(e).\(w)"
          let s = tensorShape(m + ".weight", c), original = try src.floats(m + ".weight")
          let want = WeightQuantizer(weight: original, out: s[0], inp: s[1], format: format).rtn(original).dequantized()
          #expect(try #require(q[m]).dequantized() == want, "\(m)")
        }
      }
      let router = MoEBlock.prefix(layer: l) + "gate"
      #expect(q[router] == nil)
      #expect(try CheckpointWeights(folder: try out.checkpoint()).floats(router + ".weight") == (try src.floats(router + ".weight")))
    }
    let fp = try lastLogits(try ModelLoader.load(path: dir + "/model").model, Self.tokens)
    let fake = try lastLogits(try out.fakeQuantModel(), Self.tokens)
    let reloaded = try lastLogits(try AnyModelLoader.load(path: try out.checkpoint()).0.model, Self.tokens)
    #expect(relL2(fake, fp) > 1e-4 && relL2(fake, fp) < 0.3, "\(relL2(fake, fp))")
    #expect(reloaded == fake)
  }

  /// The residual rotation covers the router and every expert (norm folded into the router and w1/w3, their rows
  /// rotated; w2's columns rotated back) and the V/O head rotation, so the FP logits do not move, with and without
  /// random signs; through the pipeline, RTN with `--enable-rotation` quantizes the rotated experts.
  @Test func rotationCoversExperts() throws {
    let c = try TinyMixtral.config(hidden: 64, intermediate: 64)
    let before = try logitsAll(try WeightStore(config: c, source: TinyMixtral.weights(c)).model(), Self.tokens)
    for random in [false, true] {
      let s = try WeightStore(config: c, source: TinyMixtral.weights(c))
      var o = RotationOptions(); o.random = random
      try RotationStage.apply(s, options: o)
      #expect(s["model.layers.1.post_attention_layernorm.weight"].allSatisfy { $0 == 1 })
      let router = MoEBlock.prefix(layer: 1) + "gate.weight"
      #expect(s[router] != (try TinyMixtral.weights(c).floats(router)))
      let after = try logitsAll(try s.model(), Self.tokens)
      #expect(relDiff(after, before) < 1e-5, "random=\(random): \(relDiff(after, before))")
    }
    let dir = tempDir("moe-rot")
    try writeTinyCheckpoint(c, to: dir + "/model")
    let r = try Recipe.load(files: [recipesDir + "/rtn-w4a16-g64.yaml"], flags: ["--enable-rotation", "--rotation-transforms", "out_proj"])
    try Self.quantizeAndCompare(dir + "/model", c, r, tokens: Self.tokens, within: 1e-4..<0.3)
  }

  /// Runs the recipe on the model: every attention linear and every expert's w1/w3/w2 quantized, and the fake-quantized
  /// model's last logits at a relative L2 from the FP model's in `within` (quantized, but not broken).
  static func quantizeAndCompare(_ model: String, _ c: LlamaConfiguration, _ r: Recipe, tokens: [Int32], within: Range<Double>) throws {
    let out = try QuantizationPipeline(modelPath: model, recipe: r, cacheRoot: nil).run()
    #expect(try out.quantizedWeights().count == c.numHiddenLayers * (4 + 3 * c.numLocalExperts!))
    let fp = try lastLogits(try ModelLoader.load(path: model).model, tokens)
    let d = relL2(try lastLogits(try out.fakeQuantModel(), tokens), fp)
    #expect(within.contains(d), "quantized vs FP: \(d)")
  }

  /// GPTQ per expert, on a tiny Mixtral (4 experts, top 1) whose expert 3 is never chosen (its router row equals
  /// expert 0's, and ties go to the lower index): experts 0–2 equal GPTQ with the Hessian of the calibration tokens
  /// the router sends them, recomputed here from the FP layer's MLP input and MoEBlock.route (layer 0); expert 3, with no
  /// token, is round-to-nearest of its weights, and the log says so.
  /// A tiny Mixtral (4 experts, top 1, vocabulary 300) in dir/model whose expert 3 is never chosen: its router row
  /// equals expert 0's, and ties go to the lower index. Also writes dir/calib.txt.
  static func deadExpertModel(_ dir: String) throws -> (LlamaConfiguration, SafeTensorsFile) {
    let c = try TinyMixtral.config(experts: 4, topK: 1, hidden: 64, intermediate: 64, vocab: 300)
    try writeTinyCheckpoint(c, to: dir + "/model")
    let st = try SafeTensorsFile(path: dir + "/model/model.safetensors")
    var blobs: [TensorBlob] = []
    for n in st.names {
      var v = try st.floats(n)
      if n.hasSuffix("block_sparse_moe.gate.weight") { for j in 0..<c.hiddenSize { v[3 * c.hiddenSize + j] = v[j] } }
      blobs.append(TensorBlob(name: n, shape: try st.info(n).shape, floats: v))
    }
    try SafeTensorsWriter.write(blobs, to: dir + "/model/model.safetensors")
    try writeTinyText(to: dir + "/calib.txt")
    return (c, try SafeTensorsFile(path: dir + "/model/model.safetensors"))
  }

  /// Layer 0's MLP input (rows, H) for the pipeline's calibration samples (one chunk of 4), and per expert the rows
  /// the model's own router sends it, in token order.
  static func routedRows(_ dir: String, plan: QuantPlan, _ c: LlamaConfiguration) throws -> (h: [Float], rows: [[Int]], samples: Int) {
    let loaded = try ModelLoader.load(path: dir + "/model")
    let model = loaded.model
    let samples = try CalibrationData.samples(plan.calib, tokenizer: loaded.tokenizer)
    var x = try model.embed(samples, caches: samples.map { _ in KVCache(config: c, capacity: 1) })
    let cap = LayerCapture([.mlpInput])
    try model.runLayer(0, x: &x, lengths: samples.map(\.count), caches: samples.map { _ in KVCache(config: c, capacity: 32) }, capture: cap)
    let h = cap[.mlpInput], moe = try #require(model.layers[0].moe)
    let routes = h.withUnsafeBufferPointer { moe.route($0.baseAddress!, rows: h.count / c.hiddenSize) }
    let rows = (0..<c.numLocalExperts!).map { e in routes.enumerated().filter { $0.element.expert == Int32(e) }.map(\.offset) }
    return (h, rows, samples.count)
  }

  @Test func gptqPerExpertFromRoutedTokens() throws {
    let dir = tempDir("moe-gptq")
    let (c, st) = try Self.deadExpertModel(dir)
    let flags = ["--calib-path", dir + "/calib.txt", "--calib-num-samples", "4", "--calib-seq-length", "32", "--calib-min-seq-length", "0"]
    let p = try QuantizationPipeline(modelPath: dir + "/model", recipe: try Recipe.load(files: [recipesDir + "/gptq-g64.yaml"], flags: flags),
                                     cacheRoot: nil)
    var lines: [String] = []
    p.log = { lines.append($0) }
    let q = try p.run().quantizedWeights()
    #expect(q.count == c.numHiddenLayers * (4 + 3 * c.numLocalExperts!))
    // The reference: layer 0's MLP input for the same samples, routed by the model's own router.
    let format = try #require(p.plan.weightFormat), gopts = try #require(p.plan.gptq), H = c.hiddenSize
    let (h, routed, sequences) = try Self.routedRows(dir, plan: p.plan, c)
    #expect(routed[3].isEmpty)
    for e in 0..<3 {
      let rows = routed[e]
      #expect(!rows.isEmpty, "expert \(e) got no token")
      var xe: [Float] = []
      for r in rows { xe += h[(r * H)..<((r + 1) * H)] }
      let acc = HessianAccumulator(size: H)
      xe.withUnsafeBufferPointer { acc.add($0.baseAddress!, rows: rows.count) }
      let inv = try GPTQInverse(hessian: acc.hessian(sequences: sequences), size: H, options: gopts)
      for w in ["w1", "w3"] {
        let m = MoEBlock.prefix(layer: 0) + "experts.\(e).\(w)", s = tensorShape(m + ".weight", c), orig = try st.floats(m + ".weight")
        let want = try gptq(weight: orig, inverse: inv, quantizer: WeightQuantizer(weight: orig, out: s[0], inp: s[1], format: format),
                            options: gopts).weight
        #expect(try #require(q[m]).codes == want.codes, "\(m)")
      }
    }
    for w in ["w1", "w2", "w3"] {
      let m = MoEBlock.prefix(layer: 0) + "experts.3.\(w)", s = tensorShape(m + ".weight", c), orig = try st.floats(m + ".weight")
      #expect(try #require(q[m]).dequantized() == WeightQuantizer(weight: orig, out: s[0], inp: s[1], format: format).rtn(orig).dequantized())
      #expect(lines.contains { $0.contains("experts.3.\(w): no calibration token") }, "\(lines)")
    }
  }

  /// A Mixtral layer whose every expert is reordered and down-smoothed (each with its own random down_proj input
  /// absmax) computes what it did: the transforms are exact per expert, and they change every expert's weights.
  @Test func expertTransformsAreExact() throws {
    let c = try TinyMixtral.config(hidden: 64, intermediate: 64)
    let s = try WeightStore(config: c, source: TinyMixtral.weights(c))
    let before = try logitsAll(try s.model(), Self.tokens)
    for l in 0..<c.numHiddenLayers {
      for (e, mlp) in MLPNames.of(c, layer: l).enumerated() {
        let span = randomFloats(c.intermediateSize, seed: UInt64(100 + 10 * l + e), scale: 4).map { abs($0) + 0.01 }
        let old = s[mlp.down + ".weight"]
        let perm = ReorderStage.apply(s, mlp: mlp, downInputAbsMax: span)
        SmoothStage.down(s, mlp: mlp, inputAbsMax: perm.map { span[$0] }, alpha: 0.3, beta: 0.7)
        #expect(s[mlp.down + ".weight"] != old)
      }
    }
    let after = try logitsAll(try s.model(), Self.tokens)
    #expect(relDiff(after, before) < 1e-5, "\(relDiff(after, before))")
  }

  /// SmoothQuant on a Mixtral layer: one λ for post_attention_layernorm → the router and every expert's w1/w3 is
  /// exact (logits unchanged, the router's and the experts' columns scaled); the SmoothQuant recipe (W8A8, its
  /// qkv_proj and up_proj smoothing) runs through the pipeline and its fake-quantized model stays near the FP one.
  @Test func smoothQuantSharesOneLambda() throws {
    let c = try TinyMixtral.config(hidden: 64, intermediate: 64, vocab: 300)
    let s = try WeightStore(config: c, source: TinyMixtral.weights(c))
    let before = try logitsAll(try s.model(), Self.tokens)
    let router = MoEBlock.prefix(layer: 0) + "gate.weight", w1 = MoEBlock.prefix(layer: 0) + "experts.2.w1.weight"
    let (r0, e0) = (s[router], s[w1])
    let span = randomFloats(c.hiddenSize, seed: 5, scale: 4).map { abs($0) + 0.01 }
    let lam = SmoothStage.normLinear(s, layer: 0, key: "up_proj", inputAbsMax: span, alpha: 0.5, beta: 0.5)
    let H = c.hiddenSize
    // Row 0 of the router and row 1 of expert 2's w1: column j scaled by λ_j.
    let (r1, e1) = (s[router], s[w1])
    for j in 0..<H {
      let wantR: Float = r0[j] * lam[j], wantE: Float = e0[H + j] * lam[j]
      #expect(abs(r1[j] - wantR) <= 1e-6 * max(1, abs(wantR)) && abs(e1[H + j] - wantE) <= 1e-6 * max(1, abs(wantE)), "column \(j)")
    }
    let after = try logitsAll(try s.model(), Self.tokens)
    #expect(relDiff(after, before) < 1e-5, "\(relDiff(after, before))")
    let dir = tempDir("moe-sq")
    try writeTinyCheckpoint(c, to: dir + "/model")
    try writeTinyText(to: dir + "/calib.txt")
    let r = try Recipe.load(files: [recipesDir + "/smoothquant-dynamic.yaml"],
                           flags: ["--calib-path", dir + "/calib.txt", "--calib-num-samples", "4", "--calib-seq-length", "32"])
    try Self.quantizeAndCompare(dir + "/model", c, r, tokens: PipelineTests.probe, within: 1e-5..<0.2)
  }

  /// QoQ W4A8KV4 g64 on a tiny Mixtral: every expert is reordered, smoothed and GPTQ'd from its routed tokens in one
  /// fused calibration pass, and that equals the two-pass pipeline (transforms first, then Hessians captured after
  /// them), so each expert's Hessian took its own permutation and λ; the fake-quantized model runs near the FP one.
  @Test func qoqRunsFusedEqualsTwoPasses() throws {
    let dir = tempDir("moe-qoq")
    let c = try TinyMixtral.config(experts: 4, topK: 2, hidden: 64, intermediate: 64, vocab: 300)
    try writeTinyCheckpoint(c, to: dir + "/model")
    try writeTinyText(to: dir + "/calib.txt")
    let r = try Recipe.load(files: [recipesDir + "/qoq-g64.yaml"], flags: ["--calib-path", dir + "/calib.txt", "--calib-num-samples", "4",
                                                                          "--calib-seq-length", "32", "--opts-group-shapes", "1,32"])
    let (fused, separate) = try fusedAndTwoPasses(dir + "/model", r)
    #expect(try fused.quantizedWeights().count == c.numHiddenLayers * (4 + 3 * c.numLocalExperts!))
    // Layer 0 sees the same inputs either way; layer 1's come from layer 0's transformed FP outputs, which the two
    // orders round differently (SmoothAttention's λ then differs in the last bits).
    try expectFusedEqualsTwoPasses(fused, separate) { $0.hasPrefix("model.layers.0.") }
    let fp = try lastLogits(try ModelLoader.load(path: dir + "/model").model, PipelineTests.probe)
    let a = try lastLogits(try fused.fakeQuantModel(), PipelineTests.probe)
    #expect(relL2(a, fp) > 1e-4 && relL2(a, fp) < 0.5, "QoQ vs FP: \(relL2(a, fp))")
  }

  /// RTN W4A8KV4 (dynamic KV, no calibration) and QoQ's per-channel recipe (SmoothAttention and weight range
  /// GridSearch, GPTQ) run on experts too.
  @Test func w4a8kv4AndGchnRun() throws {
    let dir = tempDir("moe-kv4")
    let c = try TinyMixtral.config(hidden: 64, intermediate: 64, vocab: 300)
    try writeTinyCheckpoint(c, to: dir + "/model")
    try writeTinyText(to: dir + "/calib.txt")
    let rtn = try QuantizationPipeline(modelPath: dir + "/model", recipe: try Recipe.load(files: [recipesDir + "/rtn-w4a8kv4-g64.yaml"],
                                                                                                         flags: ["--opts-group-shapes", "1,32"]),
                                       cacheRoot: nil).run()
    #expect(rtn.quantization.kvBits == 4 && rtn.quantization.actBits == 8)
    #expect(try lastLogits(try rtn.fakeQuantModel(), Self.tokens).allSatisfy(\.isFinite))
    let gchn = try QuantizationPipeline(modelPath: dir + "/model", recipe: try Recipe.load(files: [recipesDir + "/qoq-gchn.yaml"], flags: [
      "--opts-group-shapes", "1,32", "--calib-path", dir + "/calib.txt", "--calib-num-samples", "4", "--calib-seq-length", "32",
      "--wgts-calib-range-num-grids", "8", "--smooth-attn-num-grids", "4"]), cacheRoot: nil).run()
    #expect(try gchn.quantizedWeights().count == c.numHiddenLayers * (4 + 3 * c.numLocalExperts!))
    let fp = try lastLogits(try ModelLoader.load(path: dir + "/model").model, Self.tokens)
    let d = relL2(try lastLogits(try gchn.fakeQuantModel(), Self.tokens), fp)
    #expect(d > 1e-4 && d < 0.5, "qoq-gchn vs FP: \(d)")
  }

  /// SmoothLinear on down_proj with RootMeanSquare spans on a Mixtral layer (issue #14): each expert's span is
  /// sqrt(mean x²) of its w2 input over the rows routed to it, computed here in Double from layer 0's MLP input and the
  /// model's own router; each w2 takes λ = span^α / max|w2 column|^β on its columns (w3's rows ÷ λ), the FP logits do
  /// not move, and expert 3, which no token reaches (span 0), keeps λ = 1.
  @Test func rmsSpansPerExpert() throws {
    let dir = tempDir("moe-rms")
    let (c, st) = try Self.deadExpertModel(dir)
    let p = try QuantizationPipeline(modelPath: dir + "/model", recipe: try Recipe.load(files: [], flags: [
      "--enable-smooth", "--smooth-enable-proj", "--smooth-proj-strategy", "Manual", "--smooth-proj-alpha", "0.3", "--smooth-proj-beta", "0.7",
      "--smooth-proj-skips", "qkv_proj", "up_proj", "out_proj", "--smooth-proj-spans", "RootMeanSquare,AbsMax",
      "--calib-path", dir + "/calib.txt", "--calib-num-samples", "4", "--calib-seq-length", "32"]), cacheRoot: nil)
    let store = try p.run().store()
    let (h, routed, _) = try Self.routedRows(dir, plan: p.plan, c)
    let (H, I) = (c.hiddenSize, c.intermediateSize)
    for e in 0..<4 {
      let pre = MoEBlock.prefix(layer: 0) + "experts.\(e)."
      let w1 = try st.floats(pre + "w1.weight"), w3 = try st.floats(pre + "w3.weight"), w2 = try st.floats(pre + "w2.weight")
      var sq = [Double](repeating: 0, count: I)
      for r in routed[e] {
        for o in 0..<I {
          var g = 0.0, u = 0.0
          for j in 0..<H { g += Double(w1[o * H + j]) * Double(h[r * H + j]); u += Double(w3[o * H + j]) * Double(h[r * H + j]) }
          sq[o] += (g / (1 + exp(-g)) * u) * (g / (1 + exp(-g)) * u)
        }
      }
      var lam = [Double](repeating: 1, count: I)
      for j in 0..<I where !routed[e].isEmpty {
        let span = (sq[j] / Double(routed[e].count)).squareRoot(), ws = (0..<H).map { abs(Double(w2[$0 * I + j])) }.max()!
        lam[j] = pow(span, 0.3) / pow(ws, 0.7)
      }
      let got = store[pre + "w2.weight"]
      var worst = 0.0
      for r in 0..<H { for j in 0..<I { worst = max(worst, abs(Double(got[r * I + j]) - Double(w2[r * I + j]) * lam[j]) / (abs(Double(w2[r * I + j]) * lam[j]) + 1e-6)) } }
      #expect(worst < 1e-4, "expert \(e): w2 differs from w2·diag(λ) by \(worst)")
      #expect(e == 3 ? got == w2 : got != w2, "expert \(e)")
    }
    let fp = try lastLogits(try ModelLoader.load(path: dir + "/model").model, Self.tokens)
    #expect(relL2(try lastLogits(try store.model(), Self.tokens), fp) < 1e-5)
  }

  /// The weight range search on experts (issue #14), as deepcompressor runs it: each expert's w1/w3 and w2 are judged
  /// (ProductsError per group) on a subsample of the rows routed to it, cut into element_batch_size chunks and thinned
  /// to element_size like any module input. Reference: layer 0's routed rows recomputed with the model's own router,
  /// w2's input computed by hand (SiLU(w1·x)·(w3·x)), deepcompressor's subsample, the search and RTN with its ratios;
  /// expert 3, which no token reaches, keeps its full range and the log says so.
  @Test func rangeSearchPerExpertFromRoutedTokens() throws {
    let dir = tempDir("moe-range")
    let (c, st) = try Self.deadExpertModel(dir)
    let flags = ["--calib-path", dir + "/calib.txt", "--calib-num-samples", "4", "--calib-seq-length", "32", "--calib-min-seq-length", "0",
                 "--wgts-enable-calib-range", "--wgts-calib-range-strategy", "GridSearch", "--wgts-calib-range-objective", "ProductsError",
                 "--wgts-calib-range-granularity", "Group", "--wgts-calib-range-num-grids", "10", "--wgts-calib-range-max-shrink", "0.5",
                 "--wgts-calib-range-element-batch-size", "8", "--wgts-calib-range-element-size", "16"]
    let p = try QuantizationPipeline(modelPath: dir + "/model", recipe: try Recipe.load(files: [recipesDir + "/rtn-w4a16-g64.yaml"], flags: flags),
                                     cacheRoot: nil)
    var lines: [String] = []
    p.log = { lines.append($0) }
    let q = try p.run().quantizedWeights()
    let format = try #require(p.plan.weightFormat), (H, I) = (c.hiddenSize, c.intermediateSize)
    let cands = RangeSearch.ratios(maxShrink: 0.5, numGrids: 10)
    let (h, routed, _) = try Self.routedRows(dir, plan: p.plan, c)
    var clipped = 0
    for e in 0..<3 {
      let keep = RangeSearch.subsampleRows(lengths: [routed[e].count], batch: 8, size: 16)
      #expect(keep.count >= 16 && keep.count < routed[e].count, "expert \(e): \(keep.count) of \(routed[e].count) rows")  // thinned
      let pre = MoEBlock.prefix(layer: 0) + "experts.\(e)."
      let w1 = try st.floats(pre + "w1.weight"), w3 = try st.floats(pre + "w3.weight")
      var xin: [Float] = [], xdown: [Float] = []
      for r in keep.map({ routed[e][$0] }) {
        let x = Array(h[(r * H)..<((r + 1) * H)])
        xin += x
        for o in 0..<I {
          var g = 0.0, u = 0.0
          for j in 0..<H { g += Double(w1[o * H + j]) * Double(x[j]); u += Double(w3[o * H + j]) * Double(x[j]) }
          xdown.append(Float(g / (1 + exp(-g)) * u))
        }
      }
      for (w, x, inp) in [("w1", xin, H), ("w3", xin, H), ("w2", xdown, I)] {
        let m = pre + w, orig = try st.floats(m + ".weight"), out = orig.count / inp
        let ratios = RangeSearch.productsError(weight: orig, out: out, inp: inp, format: format, inputs: x, candidates: cands)
        let want = WeightQuantizer(weight: orig, out: out, inp: inp, format: format, ratios: ratios).rtn(orig).dequantized()
        let got = try #require(q[m]).dequantized()
        if w == "w2" {
          // w2's input is recomputed in Double here: a ratio may flip where two candidates' errors tie within rounding.
          let same = zip(got, want).filter { $0 == $1 }.count
          #expect(same >= orig.count * 95 / 100, "\(m): \(same) of \(orig.count) weights equal the reference")
        } else {
          let equal = got == want
          #expect(equal, "\(m): differs from the reference")
        }
        clipped += ratios.filter { $0 < 1 }.count
      }
    }
    #expect(clipped > 0, "the search must clip some groups for this test to mean something")
    for w in ["w1", "w2", "w3"] {
      let m = MoEBlock.prefix(layer: 0) + "experts.3.\(w)", orig = try st.floats(m + ".weight"), s = tensorShape(m + ".weight", c)
      #expect(try #require(q[m]).dequantized() == WeightQuantizer(weight: orig, out: s[0], inp: s[1], format: format).rtn(orig).dequantized())
      #expect(lines.contains { $0.contains("experts.3.\(w): no calibration token") && $0.contains("range") }, "\(lines)")
    }
  }

  /// AWQ on a Mixtral layer (issue #14), as deepcompressor's smooth_llm_layer runs it: one λ for the router and every
  /// expert's w1/w3, its α the argmin over the candidates of the sparse block's output error with the experts' w1/w3
  /// quantized (router and w2 FP); each expert's w2 its own α, the argmin of its output error over the rows routed to
  /// it. Reference: layer 0's MLP input from the FP model, the errors summed here in Double over every candidate
  /// (the block's forward is checked against transformers in MixtralTests); the pipeline's logged α must be the
  /// argmin, and the folds leave the FP model's logits unchanged.
  @Test func awqSearchesExperts() throws {
    let dir = tempDir("moe-awq")
    let (c, st) = try Self.deadExpertModel(dir)
    let flags = ["--calib-path", dir + "/calib.txt", "--calib-num-samples", "4", "--calib-seq-length", "32", "--smooth-proj-num-grids", "8",
                 "--no-wgts-enable-calib-range"]
    let p = try QuantizationPipeline(modelPath: dir + "/model", recipe: try Recipe.load(files: [recipesDir + "/awq-g64.yaml"], flags: flags),
                                     cacheRoot: nil)
    var lines: [String] = []
    p.log = { lines.append($0) }
    let out = try p.run()
    let line = try #require(lines.first { $0.hasPrefix("layer 0: AWQ α") }, "\(lines)")
    var logged: [String: Double] = [:]
    for part in line.dropFirst("layer 0: AWQ α ".count).split(separator: ",") {
      let kv = part.split(separator: " ")
      logged[String(kv[0])] = Double(kv[1])
    }
    let format = try #require(p.plan.weightFormat), alphas = try #require(p.plan.smoothProjAlphas), (H, I) = (c.hiddenSize, c.intermediateSize)
    let (h, routed, _) = try Self.routedRows(dir, plan: p.plan, c)
    let loaded = try ModelLoader.load(path: dir + "/model").model, block = try #require(loaded.layers[0].moe)
    func weight(_ e: Int, _ w: String) throws -> [Float] { try st.floats(MoEBlock.prefix(layer: 0) + "experts.\(e).\(w).weight") }
    func run(_ b: MoEBlock) -> [Float] {
      var y = [Float](repeating: 0, count: h.count)
      h.withUnsafeBufferPointer { xb in y.withUnsafeMutableBufferPointer { b.forward(xb.baseAddress!, rows: h.count / H, hidden: H, intermediate: I, $0.baseAddress!) } }
      return y
    }
    func sse(_ a: [Float], _ b: [Float]) -> Double { zip(a, b).reduce(0) { $0 + Double($1.0 - $1.1) * Double($1.0 - $1.1) } }
    // w1/w3: the span is max|x| over every calibration token (the 4 sequences, which are also the search rows).
    var span = [Float](repeating: 0, count: H)
    for r in 0..<(h.count / H) { for j in 0..<H { span[j] = max(span[j], abs(h[r * H + j])) } }
    let ref = run(block)
    let upErrors = try alphas.map { a -> Double in
      let lam = AWQSearch.lambda(span, alpha: a)
      let experts = try (0..<4).map { e in
        Expert(w1: DenseLinear(weight: AWQSearch.quantizedScaled(try weight(e, "w1"), out: I, inp: H, lambda: lam, format: format), outFeatures: I, inFeatures: H),
               w2: block.experts[e].w2,
               w3: DenseLinear(weight: AWQSearch.quantizedScaled(try weight(e, "w3"), out: I, inp: H, lambda: lam, format: format), outFeatures: I, inFeatures: H))
      }
      return sse(run(MoEBlock(gate: block.gate, experts: experts, topK: c.numExpertsPerTok)), ref)
    }
    let upBest = upErrors.min()!
    let upChosen = try #require(logged["up_proj"]).self
    #expect(upErrors[try #require(alphas.firstIndex(of: upChosen))] <= upBest * (1 + 1e-9), "up_proj α \(upChosen): \(upErrors)")
    #expect(upErrors.max()! > upBest * 1.001, "the candidates must differ: \(upErrors)")
    // w2 per expert, on the rows routed to it: SiLU(w1·x)·(w3·x) in Double, spans over the same rows.
    for e in 0..<3 {
      let w1 = try weight(e, "w1"), w3 = try weight(e, "w3"), w2 = try weight(e, "w2")
      var xd: [Float] = [], dspan = [Float](repeating: 0, count: I)
      for r in routed[e] {
        for o in 0..<I {
          var g = 0.0, u = 0.0
          for j in 0..<H { g += Double(w1[o * H + j]) * Double(h[r * H + j]); u += Double(w3[o * H + j]) * Double(h[r * H + j]) }
          let v = Float(g / (1 + exp(-g)) * u)
          xd.append(v); dspan[o] = max(dspan[o], abs(v))
        }
      }
      func out(_ w: [Float]) -> [Double] {
        (0..<(xd.count / I)).flatMap { r in (0..<H).map { o in (0..<I).reduce(0.0) { $0 + Double(w[o * I + $1]) * Double(xd[r * I + $1]) } } }
      }
      let exact = out(w2)
      let errors = alphas.map { a in
        zip(out(AWQSearch.quantizedScaled(w2, out: H, inp: I, lambda: AWQSearch.lambda(dspan, alpha: a), format: format)), exact)
          .reduce(0.0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) }
      }
      let chosen = try #require(logged["e\(e).down_proj"], "\(line)")
      let best = errors.min()!
      // The pipeline's w2 input is Float (ours Double here): allow the argmin to differ within rounding.
      #expect(errors[try #require(alphas.firstIndex(of: chosen))] <= best * 1.0001, "expert \(e) w2 α \(chosen): \(errors)")
    }
    #expect(logged["e3.down_proj"] == 0, "expert 3 gets no row: λ = 1")
    // The folds are exact: the smoothed FP weights (before quantization) give the model's logits.
    let fp = try lastLogits(loaded, Self.tokens)
    #expect(relL2(try lastLogits(try out.fakeQuantModel(), Self.tokens), fp) < 0.5)
  }
}

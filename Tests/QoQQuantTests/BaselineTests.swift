import Foundation
import Testing
@testable import QoQQuant
import QoQFormat
import QoQIO
import QoQModels
import QoQTestSupport

@Suite(.serialized) struct BaselineTests {
  static let recipesDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("recipes").path

  /// SmoothQuant's SmoothLinear (RMSNorm → q/k/v and → gate/up) is exact: FP logits unchanged; and λ on sample
  /// channels equals span(x)^α / max|W[:, j]|^β computed by hand from the norm outputs and the original weights, with
  /// span = max|x| (AbsMax) or sqrt(mean x²) (RootMeanSquare, `--smooth-proj-spans RootMeanSquare,AbsMax`).
  @Test(arguments: ["AbsMax", "RootMeanSquare"])
  func smoothQuantSmoothingIsExactAndMatchesFormula(_ spanMode: String) throws {
    for (name, c) in try tinyPipelineConfigs() {
      let dir = tempDir("sq-\(name)")
      try writeTinyCheckpoint(c, to: dir + "/model")
      try writeTinyText(to: dir + "/calib.txt")
      let fp = try ModelLoader.load(path: dir + "/model").model
      let before = try lastLogits(fp, PipelineTests.probe)
      let r = try Recipe.load(files: [], flags: ["--enable-smooth", "--smooth-enable-proj", "--smooth-proj-strategy", "Manual",
                                                  "--smooth-proj-alpha", "0.85", "--smooth-proj-beta", "0.15",
                                                  "--smooth-proj-skips", "out_proj", "down_proj",
                                                  "--smooth-proj-spans", spanMode + ",AbsMax",
                                                  "--calib-path", dir + "/calib.txt", "--calib-num-samples", "4", "--calib-seq-length", "32"])
      let p = try QuantizationPipeline(modelPath: dir + "/model", recipe: r, cacheRoot: nil)
      #expect(p.plan.smoothProjKeys == ["qkv_proj", "up_proj"])
      #expect(p.plan.smoothProjRMS == (spanMode == "RootMeanSquare"))
      let out = try p.run()
      let store = try out.store()
      let after = try lastLogits(try store.model(), PipelineTests.probe)
      #expect(relL2(after, before) < 1e-5, "\(name): \(relL2(after, before))")
      // Hand check of λ for layer 0, q/k/v: x = input_layernorm output over the same calibration samples.
      let samples = try CalibrationData.samples(p.plan.calib, tokenizer: try ModelLoader.load(path: dir + "/model").tokenizer)
      var xmax = [Float](repeating: 0, count: c.hiddenSize), sq = [Double](repeating: 0, count: c.hiddenSize), rows = 0
      for s in samples {
        let cap = LayerCapture([.attnInput])
        var x = try fp.embed([s], caches: [KVCache(config: c, capacity: s.count)])
        try fp.runLayer(0, x: &x, lengths: [s.count], caches: [KVCache(config: c, capacity: s.count)], capture: cap)
        let a = cap[.attnInput]
        for r in 0..<(a.count / c.hiddenSize) {
          rows += 1
          for j in 0..<c.hiddenSize { let v = a[r * c.hiddenSize + j]; xmax[j] = max(xmax[j], abs(v)); sq[j] += Double(v) * Double(v) }
        }
      }
      let span = spanMode == "AbsMax" ? xmax.map(Double.init) : sq.map { ($0 / Double(rows)).squareRoot() }
      let orig = try CheckpointWeights(folder: dir + "/model")
      for j in [0, 5, c.hiddenSize - 1] {
        var wmax: Float = 0
        for m in ["q_proj", "k_proj", "v_proj"] {
          let w = try orig.floats("model.layers.0.self_attn.\(m).weight")
          for r in 0..<(w.count / c.hiddenSize) { wmax = max(wmax, abs(w[r * c.hiddenSize + j])) }
        }
        let lam = pow(span[j], 0.85) / pow(Double(wmax), 0.15)
        let g0 = Double(try orig.floats("model.layers.0.input_layernorm.weight")[j]), g1 = Double(store["model.layers.0.input_layernorm.weight"][j])
        #expect(abs(g0 / g1 - lam) < 1e-4 * lam, "\(name) channel \(j): λ \(g0 / g1) vs \(lam)")
      }
    }
  }

  /// Smoothing spans: proj takes [[AbsMax, AbsMax]] or [[RootMeanSquare, AbsMax]]; anything else is refused by name
  /// rather than ignored, and SmoothAttention only takes AbsMax.
  @Test func smoothingSpansAreValidated() throws {
    func plan(_ flags: [String]) throws -> QuantPlan {
      try QuantPlan(try Recipe.load(files: [Self.recipesDir + "/awq.yaml"], flags: flags))
    }
    #expect(try plan([]).smoothProjRMS == false)
    #expect(try plan(["--smooth-proj-spans", "RootMeanSquare,AbsMax"]).smoothProjRMS == true)
    for bad in ["AbsMax,RootMeanSquare", "Mean,AbsMax"] {
      #expect(throws: QoQError.self, "\(bad)") { try plan(["--smooth-proj-spans", bad]) }
    }
    do {
      _ = try plan(["--smooth-proj-spans", "AbsMax,RootMeanSquare"])
    } catch let e as QoQError {
      #expect(e.description.contains("quant.smooth.proj.spans"), "\(e)")
    }
    let qoq = Self.recipesDir + "/qoq-g128.yaml"
    #expect(throws: QoQError.self) {
      try QuantPlan(try Recipe.load(files: [qoq], flags: ["--smooth-attn-spans", "RootMeanSquare,AbsMax"]))
    }
  }

  /// Every baseline recipe loads and plans (precisions as the paper's table names them).
  @Test func baselineRecipesPlan() throws {
    let cases: [(String, WeightFormat?, Int?, Int?)] = [
      ("gptq.yaml", .asym(bits: 4, group: 128), nil, nil), ("gptq-g64.yaml", .asym(bits: 4, group: 64), nil, nil),
      ("smoothquant-dynamic.yaml", .sym(bits: 8), 8, 8), ("smoothquant-static.yaml", .sym(bits: 8), 8, 8), ("rtn-w4a16-g128.yaml", .asym(bits: 4, group: 128), nil, nil),
      ("rtn-w4a16-g64.yaml", .asym(bits: 4, group: 64), nil, nil), ("rtn-w8a8kv8.yaml", .sym(bits: 8), 8, 8),
      ("rtn-w4a4kv4.yaml", .sym(bits: 4), 4, 4), ("quarot-w4a4kv4.yaml", .sym(bits: 4), 4, 4),
    ]
    for (file, w, a, kv) in cases {
      let plan = try QuantPlan(try Recipe.load(files: [Self.recipesDir + "/" + file], flags: []))
      #expect(plan.weightFormat == w && plan.actBits == a && plan.kvBits == kv, "\(file)")
    }
    let gptq = try QuantPlan(try Recipe.load(files: [Self.recipesDir + "/gptq.yaml"], flags: []))
    #expect(gptq.gptq != nil && gptq.calib.seqLength == 2048 && gptq.calib.minSeqLength == 2048)
    let q = try QuantPlan(try Recipe.load(files: [Self.recipesDir + "/quarot-w4a4kv4.yaml"], flags: []))
    #expect(q.rotation != nil && q.gptq != nil && q.kvAsymmetric)
  }

  /// A baseline run end to end on a tiny model: SmoothQuant W8A8 with dynamic KV8 quantizes, and the method is named.
  @Test func smoothQuantRunsAndIsNamed() throws {
    let (_, c) = try tinyPipelineConfigs()[0]
    let dir = tempDir("sqrun")
    try writeTinyCheckpoint(c, to: dir + "/model")
    try writeTinyText(to: dir + "/calib.txt")
    let r = try Recipe.load(files: [Self.recipesDir + "/smoothquant-dynamic.yaml"],
                            flags: ["--calib-path", dir + "/calib.txt", "--calib-num-samples", "4", "--calib-seq-length", "32"])
    let out = try QuantizationPipeline(modelPath: dir + "/model", recipe: r, cacheRoot: nil).run()
    #expect(out.quantization.method == "smoothquant" && out.quantization.weight == .sym(bits: 8) && out.quantization.kvAsymmetric == false)
    let a = try lastLogits(try out.fakeQuantModel(), PipelineTests.probe)
    let b = try lastLogits(try ModelLoader.load(path: dir + "/model").model, PipelineTests.probe)
    #expect(relL2(a, b) < 0.1 && relL2(a, b) > 1e-6, "W8A8KV8 vs FP: \(relL2(a, b))")
  }
}

extension BaselineTests {
  /// AWQ's searches on one small layer equal an independent numpy implementation (scripts/fixtures/make_awq_fixtures.py):
  /// the chosen smoothing exponent and λ, and every per-group clipping ratio.
  @Test func awqSearchesMatchNumpy() throws {
    let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures/awq/down.json").path
    let f = try JSON.parseFile(path)
    let T = f["T"]!.int!, out = f["out"]!.int!, inp = f["inp"]!.int!, g = f["group"]!.int!
    let x = f["x"]!.array!.map { Float($0.double!) }, w = f["w"]!.array!.map { Float($0.double!) }
    #expect(x.count == T * inp && w.count == out * inp)
    var span = [Float](repeating: 0, count: inp)
    for t in 0..<T { for i in 0..<inp { span[i] = max(span[i], abs(x[t * inp + i])) } }
    let format = WeightFormat.asym(bits: 4, group: g)
    let alphas = SmoothStage.alphaBetaCandidates(alpha: 0.5, beta: 0, grids: 20).map(\.0)
    #expect(alphas == [0] + (1..<20).map { Double($0) / 20 })
    let best = AWQSearch.linearGroup(weight: w, out: out, inp: inp, inputs: x, xspan: span, format: format, candidates: alphas)
    #expect(best.alpha == f["alpha"]!.double!)
    let want = f["lambda"]!.array!.map { Float($0.double!) }
    for i in 0..<inp { #expect(abs(best.lambda[i] - want[i]) <= 1e-6 * want[i], "λ[\(i)]") }
    let ratios = RangeSearch.productsError(weight: w, out: out, inp: inp, format: format, inputs: x,
                                           candidates: RangeSearch.ratios(maxShrink: 0.8, numGrids: 20))
    #expect(ratios == f["clip_ratios"]!.array!.map { Float($0.double!) })
  }

  /// The AWQ recipe runs end to end on a tiny model: smoothing searched per group, clipping searched, W4A16 result.
  @Test func awqRecipeRuns() throws {
    let (_, c) = try tinyPipelineConfigs()[0]
    let dir = tempDir("awq")
    try writeTinyCheckpoint(c, to: dir + "/model")
    try writeTinyText(to: dir + "/calib.txt")
    let r = try Recipe.load(files: [Self.recipesDir + "/awq.yaml"],
                            flags: ["--wgts-group-shapes", "1,16", "--calib-path", dir + "/calib.txt", "--calib-num-samples", "4",
                                    "--calib-seq-length", "32", "--calib-max-seq-length", "0"])
    let p = try QuantizationPipeline(modelPath: dir + "/model", recipe: r, cacheRoot: nil)
    var lines: [String] = []
    p.log = { lines.append($0) }
    let out = try p.run()
    #expect(out.quantization.method == "awq" && out.quantization.actBits == nil && out.quantization.weight == .asym(bits: 4, group: 16))
    #expect(lines.filter { $0.contains("AWQ α") }.count == c.numHiddenLayers)
    let a = try lastLogits(try out.fakeQuantModel(), PipelineTests.probe)
    let rtn = try QuantizationPipeline(modelPath: dir + "/model", recipe: try Recipe.load(files: [Self.recipesDir + "/rtn-w4a16-g64.yaml"],
                                                                                        flags: ["--wgts-group-shapes", "1,16"]), cacheRoot: nil).run()
    let b = try lastLogits(try rtn.fakeQuantModel(), PipelineTests.probe)
    let fp = try lastLogits(try ModelLoader.load(path: dir + "/model").model, PipelineTests.probe)
    #expect(relL2(a, fp) < 0.2 && relL2(b, fp) < 0.2, "AWQ \(relL2(a, fp)), RTN \(relL2(b, fp))")
  }
}

extension BaselineTests {
  /// SmoothQuant-static: one KV scale per tensor and layer, equal to fp16(absmax/127) of post-RoPE K and of V over
  /// the calibration set (recomputed here by an independent pass of the saved-and-reloaded model without KV
  /// quantization); the scales survive the checkpoint round trip and drive the fake-quantized model.
  @Test func smoothQuantStaticKVScales() throws {
    let (_, c) = try tinyPipelineConfigs()[0]
    let dir = tempDir("sqs")
    try writeTinyCheckpoint(c, to: dir + "/model")
    try writeTinyText(to: dir + "/calib.txt")
    let r = try Recipe.load(files: [Self.recipesDir + "/smoothquant-static.yaml"],
                            flags: ["--calib-path", dir + "/calib.txt", "--calib-num-samples", "4", "--calib-seq-length", "32"])
    let p = try QuantizationPipeline(modelPath: dir + "/model", recipe: r, cacheRoot: nil)
    #expect(p.plan.kvStatic)
    let out = try p.run()
    let scales = try #require(out.quantization.kvStaticScales)
    #expect(scales.count == 2 * c.numHiddenLayers)
    // Independent recomputation: the fake model with its KV quantization removed, run sample by sample.
    var noKV = out.quantization
    noKV.kvStaticScales = nil; noKV.kvBits = nil
    let store = try out.store()
    let m = try noKV.fakeQuantModel(config: c, weights: store)
    let samples = try CalibrationData.samples(p.plan.calib, tokenizer: out.tokenizer)
    var km = [Float](repeating: 0, count: c.numHiddenLayers), vm = km
    for s in samples {
      var x = try m.embed([s], caches: [KVCache(config: c, capacity: s.count)])
      for l in 0..<c.numHiddenLayers {
        let cap = LayerCapture([.kRope, .vOutput])
        try m.runLayer(l, x: &x, lengths: [s.count], caches: [KVCache(config: c, capacity: s.count)], capture: cap)
        km[l] = max(km[l], cap[.kRope].map(abs).max()!); vm[l] = max(vm[l], cap[.vOutput].map(abs).max()!)
      }
    }
    for l in 0..<c.numHiddenLayers {
      #expect(scales[2 * l] == Float(Float16(km[l] / 127)) && scales[2 * l + 1] == Float(Float16(vm[l] / 127)), "layer \(l)")
    }
    let cfg = try QuantizationConfig(json: out.quantization.json, what: "roundtrip")
    #expect(cfg.kvStaticScales == scales && !cfg.kvAsymmetric)
    let staticModel = try out.quantization.fakeQuantModel(config: c, weights: store)
    #expect(staticModel.kvLayerQuantizers?.count == c.numHiddenLayers)
    let a = try lastLogits(staticModel, PipelineTests.probe), b = try lastLogits(m, PipelineTests.probe)
    #expect(relL2(a, b) > 0 && relL2(a, b) < 0.1)
  }
}

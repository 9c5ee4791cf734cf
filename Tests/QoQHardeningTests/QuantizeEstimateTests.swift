// `qoq quantize` says what a run will cost before it starts, and refuses a run whose memory estimate exceeds what is
// free (issue #12, item 6): a Llama-3-70B-shaped config with evaluation is refused at once, before any weight is read.
import Foundation
import Testing
import QoQIO
import QoQModels
import QoQQuant
import QoQTestSupport

@Suite struct QuantizeEstimateTests {
  /// The parameter count equals the elements of a real checkpoint's linear and embedding tensors (norms aside).
  @Test func parametersMatchACheckpoint() throws {
    let c = try LlamaConfiguration(modelType: "llama", hiddenSize: 64, intermediateSize: 128, numHiddenLayers: 2,
                                   numAttentionHeads: 4, numKeyValueHeads: 2, rmsNormEps: 1e-5, vocabSize: 300)
    let dir = scratch("estimate") + "/model"
    try writeTinyCheckpoint(c, to: dir)
    let st = try SafeTensorsFile(path: dir + "/model.safetensors")
    let counted = try st.names.filter { !$0.hasSuffix("norm.weight") }.reduce(0) { $0 + (try st.info($1).count) }
    let plan = try QuantPlan(try Recipe.load(files: [repoRoot + "/recipes/rtn-w4a16-g64.yaml"], flags: []))
    let e = plan.estimate(c, evaluate: false, cores: 2)
    #expect(e.parameters == counted)
    #expect(e.parameters == 2 * (64 * (64 + 2 * 32) + 64 * 64 + 3 * 64 * 128) + 2 * 300 * 64)  // by hand
    // Streamed RTN: no calibration activations; the larger of one layer (6 B/parameter) and the fp32 embedding.
    let perLayer = 64 * (64 + 2 * 32) + 64 * 64 + 3 * 64 * 128
    #expect(e.peakBytes == max(6 * perLayer, 300 * 64 * 4) + (256 << 20))
    #expect(plan.estimate(c, evaluate: true, cores: 2).peakBytes == 4 * e.parameters + (256 << 20), "evaluation holds the fp32 model")
    // A Mixtral layer counts every expert and the router (issue #14): against its checkpoint, and by hand.
    let mc = try TinyMixtral.config(experts: 3, topK: 1, hidden: 64, intermediate: 64)
    try writeTinyCheckpoint(mc, to: dir + "-moe")
    let mst = try SafeTensorsFile(path: dir + "-moe/model.safetensors")
    let moeCounted = try mst.names.filter { !$0.hasSuffix("norm.weight") }.reduce(0) { $0 + (try mst.info($1).count) }
    let me = plan.estimate(mc, evaluate: false, cores: 2)
    #expect(me.parameters == moeCounted)
    #expect(me.parameters == 2 * (64 * (128 + 2 * 64) + 128 * 64 + 3 * (3 * 64 * 64) + 3 * 64) + 2 * 70 * 64)
    // GPTQ on experts holds each expert's two fp32 input Hessians (64² + 64²) beside the dense terms.
    let gptq = try QuantPlan(try Recipe.load(files: [repoRoot + "/recipes/gptq-g64.yaml"], flags: []))
    let dense = try LlamaConfiguration(modelType: "mistral", hiddenSize: 64, intermediateSize: 64, numHiddenLayers: 2, numAttentionHeads: 4,
                                       numKeyValueHeads: 2, headDim: 32, rmsNormEps: 1e-5, ropeTheta: 1e6, vocabSize: 70)
    let layerDiff = QuantPlan.layerBytesPerParameter * (3 * (3 * 64 * 64) + 3 * 64 - 3 * 64 * 64)
    #expect(gptq.estimate(mc, evaluate: false, cores: 2).peakBytes - gptq.estimate(dense, evaluate: false, cores: 2).peakBytes
            == layerDiff + 3 * (64 * 64 + 64 * 64) * 4)
  }

  /// The time model against runs measured on a 2-core Zen 4 (BENCHMARKS.md): QoQ g128 on Qwen2.5-Coder-1.5B with
  /// 64 × 1024 calibration tokens (122 s per layer, ~58 min for 28 layers and the head). The first time model left
  /// out GPTQ's n³ Hessian inverses (it printed 43 min for a 2.1 h run); the next one counted them at the unblocked
  /// scalar rate (it printed 3.5 h for this run). The estimate must land within a factor of 1.6.
  @Test func timeEstimateFollowsMeasuredRuns() throws {
    let qwen = try LlamaConfiguration(modelType: "qwen2", hiddenSize: 1536, intermediateSize: 8960, numHiddenLayers: 28,
                                      numAttentionHeads: 12, numKeyValueHeads: 2, rmsNormEps: 1e-6, vocabSize: 151_936)
    // AWQ g128 (search-4seq) on the same model: 156 s per layer at 128 × 512 (Xeon, AVX-512) and 138 s per layer at
    // 32 × 512 (Zen 3, AVX2), where the FLOP model alone printed 41 and 25 min.
    let awq: [String] = ["/recipes/awq.yaml", "/recipes/search-4seq.yaml"], qoq: [String] = ["/recipes/qoq-g128.yaml"]
    let runs: [(LlamaConfiguration, [String], Int, Double)] = [(qwen, qoq, 64, 28 * 122.0 + 60), (qwen, awq, 128, 28 * 156.0 + 60),
                                                               (qwen, awq, 32, 28 * 138.0 + 60)]
    for (c, recipe, samples, measured) in runs {
      let plan = try QuantPlan(try Recipe.load(files: recipe.map { repoRoot + $0 }, flags: ["--calib-num-samples", "\(samples)"]))
      let s = plan.estimate(c, evaluate: false, cores: 2).seconds
      #expect(s > measured / 1.6 && s < measured * 1.6, "\(recipe) \(samples): estimate \(Int(s)) s, measured \(Int(measured)) s")
    }
  }

  /// The plan line printed before any work (issue #16): the stages of a recipe in order, written out by hand here.
  @Test func planLineNamesTheStages() throws {
    let qoq = try QuantPlan(try Recipe.load(files: [repoRoot + "/recipes/qoq-g64.yaml"], flags: []))
    #expect(qoq.stagesSummary == "plan: Hadamard rotation + V/O per head → reorder → SmoothAttention Manual α 0.5 → "
            + "SmoothLinear Manual α 0.3 β 0.7 on down_proj → GPTQ weights progressive-uint4-g64-P120 → "
            + "activations int8 per token → KV4 g64, keys centered: auto, scaled: never, rotated: auto")
    let rtn = try QuantPlan(try Recipe.load(files: [repoRoot + "/recipes/rtn-w4a16-g64.yaml"], flags: []))
    #expect(rtn.stagesSummary == "plan: RTN weights uint4-asym-g64 → activations fp → KV fp")
  }

  /// sample_size -1 (deepcompressor's default) means every calibration sequence for the OutputsError searches
  /// (issue #20); a positive value keeps the first n, and the plan line says which. The time estimate grows with the
  /// sequences searched: per layer, (grids + 1) candidates for q and for k, plus SmoothAttention's candidates, each one
  /// attention pass of 2·(h·(q + 2kv) + q·h) + 2·q·seqLength FLOPs per token, at 70 GFLOPS per core.
  @Test func sampleSizeMinusOneMeansAllSequences() throws {
    let all = try QuantPlan(try Recipe.load(files: [repoRoot + "/recipes/qoq-gchn.yaml"], flags: []))
    #expect(all.clipSamples == 0 && all.smoothAttnSamples == 0 && all.sequences(all.clipSamples) == 128)
    #expect(all.stagesSummary.contains("SmoothAttention GridSearch (all 128 seq)"), "\(all.stagesSummary)")
    #expect(all.stagesSummary.contains("weight range GridSearch (80 grids, all 128 seq)"), "\(all.stagesSummary)")
    let four = try QuantPlan(try Recipe.load(files: [repoRoot + "/recipes/qoq-gchn.yaml"],
                                             flags: ["--wgts-calib-range-sample-size", "4", "--smooth-attn-sample-size", "4"]))
    #expect(four.sequences(four.clipSamples) == 4)
    #expect(four.stagesSummary.contains("SmoothAttention GridSearch (4 of 128 seq)"), "\(four.stagesSummary)")
    #expect(four.stagesSummary.contains("(80 grids, 4 of 128 seq)"), "\(four.stagesSummary)")
    for bad in ["0", "-2"] {
      #expect(throws: (any Error).self) { try QuantPlan(try Recipe.load(files: [repoRoot + "/recipes/qoq-gchn.yaml"],
                                                                        flags: ["--wgts-calib-range-sample-size", bad])) }
    }
    let c = try LlamaConfiguration(modelType: "llama", hiddenSize: 64, intermediateSize: 128, numHiddenLayers: 2,
                                   numAttentionHeads: 4, numKeyValueHeads: 2, rmsNormEps: 1e-5, vocabSize: 300)
    let perToken = 2.0 * Double(64 * (64 + 2 * 32) + 64 * 64) + 2 * 64 * 1024
    let candidates = 2.0 * 81 + 39  // q and k over 1 + 80 ratios; SmoothAttention β = -2: (0, 0) + 19 + 19
    let extra = 2 * candidates * Double(128 - 4) * 1024 * perToken / 70e9 / 2
    let grown = all.estimate(c, evaluate: false, cores: 2).seconds - four.estimate(c, evaluate: false, cores: 2).seconds
    #expect(abs(grown - extra) < 1e-6 * extra, "\(grown) vs \(extra)")
  }

  @Test func oversizedRunIsRefusedBeforeLoading() async throws {
    let dir = scratch("seventy") + "/llama3-70b-shape"
    let c = try LlamaConfiguration(modelType: "llama", hiddenSize: 8192, intermediateSize: 28672, numHiddenLayers: 80,
                                   numAttentionHeads: 64, numKeyValueHeads: 8, rmsNormEps: 1e-5, vocabSize: 128_256)
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    try c.jsonData().write(to: URL(fileURLWithPath: dir + "/config.json"))
    try Data(#"{"model":{"type":"BPE","vocab":{"a":0},"merges":[]}}"#.utf8).write(to: URL(fileURLWithPath: dir + "/tokenizer.json"))
    // The weights: a valid safetensors header over 141 GB of holes (a sparse file). Opening maps it; nothing is read.
    var header = JSONObject(), offset = 0
    for name in expectedTensorNames(c) {
      let shape = tensorShape(name, c), bytes = shape.reduce(2, *)
      header[name] = .object(JSONObject([("dtype", .string("BF16")), ("shape", .array(shape.map { .int($0) })),
                                         ("data_offsets", .array([.int(offset), .int(offset + bytes)]))]))
      offset += bytes
    }
    var h = Array(JSON.serialize(.object(header)).utf8)
    while h.count % 8 != 0 { h.append(0x20) }
    var file = withUnsafeBytes(of: UInt64(h.count).littleEndian) { Data($0) } + Data(h)
    let path = dir + "/model.safetensors"
    try file.write(to: URL(fileURLWithPath: path))
    file = Data()
    #expect(truncate(path, off_t(8 + h.count + offset)) == 0)
    // Streaming quantizes it a layer at a time, but evaluating it inside `quantize` would hold the whole fp32 model.
    let r = try await runQoQ(["quantize", repoRoot + "/recipes/rtn-w4a16-g128.yaml", "--model-path", dir,
                              "--eval-dataset", dir + "/config.json", "--cache-root", "none"])
    #expect(!r.crashed && r.status == 1, "\(r.status) \(r.stderr)")
    #expect(r.stderr.contains("estimate: 70.55 B parameters"), "\(r.stderr)")
    #expect(r.stderr.contains("GB is free; pass --force to run anyway"), "\(r.stderr)")
  }
}

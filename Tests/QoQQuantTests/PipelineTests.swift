import Foundation
import Testing
@testable import QoQFormat
@testable import QoQIO
@testable import QoQModels
@testable import QoQQuant
import QoQTestSupport

/// Tiny checkpoints of each family, with widths that have Hadamard matrices and divide group 16.
func tinyPipelineConfigs() throws -> [(String, LlamaConfiguration)] {
  [
    ("llama-gqa", try LlamaConfiguration(modelType: "llama", hiddenSize: 64, intermediateSize: 128, numHiddenLayers: 2,
                                         numAttentionHeads: 4, numKeyValueHeads: 2, rmsNormEps: 1e-5, vocabSize: 300)),
    ("mistral", try LlamaConfiguration(modelType: "mistral", hiddenSize: 64, intermediateSize: 96, numHiddenLayers: 2,
                                       numAttentionHeads: 4, numKeyValueHeads: 1, rmsNormEps: 1e-5, vocabSize: 300)),
    ("qwen2-tied-bias", try LlamaConfiguration(modelType: "qwen2", hiddenSize: 48, intermediateSize: 64, numHiddenLayers: 2,
                                               numAttentionHeads: 3, numKeyValueHeads: 3, rmsNormEps: 1e-6, vocabSize: 300,
                                               tieWordEmbeddings: true)),
  ]
}

func tempDir(_ name: String) -> String {
  let d = NSTemporaryDirectory() + "qoq-pipe-\(getpid())-\(name)"
  try? FileManager.default.removeItem(atPath: d)
  try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
  return d
}

func lastLogits(_ m: LlamaModel, _ t: [Int32]) throws -> [Float] { try m.lastLogits([t], caches: [KVCache(config: m.config)])[0] }

/// Every tensor of a checkpoint folder as raw bytes with its dtype and shape (bit-for-bit comparisons).
func checkpointBytes(_ dir: String) throws -> [String: String] {
  let st = try CheckpointWeights(folder: dir)
  var out: [String: String] = [:]
  for n in st.names {
    let i = try st.info(n)
    out[n] = "\(i.dtype) \(i.shape) " + sha256Hex(Array(try st.raw(n)))
  }
  return out
}

/// The recipe run with its transforms and GPTQ fused into one calibration pass, and in two passes.
func fusedAndTwoPasses(_ model: String, _ r: Recipe) throws -> (QuantizationPipeline.Output, QuantizationPipeline.Output) {
  let one = try QuantizationPipeline(modelPath: model, recipe: r, cacheRoot: nil)
  let fused = try one.run()
  #expect(one.timings.contains { $0.0 == "reorder+smooth+weights" })
  let two = try QuantizationPipeline(modelPath: model, recipe: r, cacheRoot: nil)
  two.fuseCalibrationPasses = false
  let separate = try two.run()
  #expect(two.timings.contains { $0.0 == "reorder+smooth" } && two.timings.contains { $0.0 == "weights" })
  return (fused, separate)
}

/// The fused and the two-pass pipelines' checkpoints agree: the same static parameters for the modules `exactStatic`
/// accepts, > 99% of the codes, and the fake-quantized models' last logits within 2e-2.
func expectFusedEqualsTwoPasses(_ fused: QuantizationPipeline.Output, _ separate: QuantizationPipeline.Output,
                                exactStatic: (String) -> Bool = { _ in true }) throws {
  var same = 0, total = 0
  let fq = try fused.quantizedWeights()
  for (m, q) in try separate.quantizedWeights() {
    let f = try #require(fq[m])
    if exactStatic(m) { #expect(f.scale == q.scale && f.rowScale == q.rowScale, "\(m): static parameters differ") }
    for i in q.codes.indices { total += 1; if f.codes[i] == q.codes[i] { same += 1 } }
  }
  #expect(Double(same) / Double(total) > 0.99, "codes equal: \(same)/\(total)")
  let a = try lastLogits(try fused.fakeQuantModel(), PipelineTests.probe)
  let b = try lastLogits(try separate.fakeQuantModel(), PipelineTests.probe)
  #expect(relL2(a, b) < 2e-2, "fused vs two passes: \(relL2(a, b))")
}

func relL2(_ a: [Float], _ b: [Float]) -> Double {
  var n = 0.0, d = 0.0
  for i in 0..<a.count { n += Double(a[i] - b[i]) * Double(a[i] - b[i]); d += Double(b[i]) * Double(b[i]) }
  return (n / d).squareRoot()
}

@Suite(.serialized) struct PipelineTests {
  static let probe: [Int32] = [116, 104, 101, 32, 102, 111, 120, 32, 106, 117, 109, 112, 115]
  /// A QoQ recipe for the tiny models: progressive g16, GPTQ, rotation, reorder, both smoothings, KV4.
  static let qoqTinyFlags = ["--wgts-dtype", "uint4", "--wgts-zero-point", "PostScale", "--wgts-group-shapes", "1,-1", "1,16",
                                    "--wgts-scale-dtypes", "torch.float16", "sint8", "--wgts-intermediate-dtypes", "sint8",
                                    "--wgts-intermediate-levels", "0", "--wgts-enable-kernel-gptq", "--ipts-dtype", "sint8",
                                    "--opts-dtype", "uint4", "--opts-zero-point", "PostScale", "--opts-group-shapes", "1,16", "--opts-skips", "attn_q",
                                    "--enable-rotation", "--rotation-transforms", "out_proj", "--enable-reorder", "--enable-smooth",
                                    "--smooth-enable-proj", "--smooth-proj-strategy", "Manual", "--smooth-proj-skips", "qkv_proj", "up_proj", "out_proj",
                                    "--smooth-enable-attn"]

  func recipe(_ flags: [String], calib: String) throws -> Recipe {
    try Recipe.load(files: [], flags: flags + ["--calib-path", calib, "--calib-num-samples", "4", "--calib-seq-length", "32"])
  }

  /// Rotation, reordering and both smoothings leave the FP logits unchanged (exact transforms).
  @Test func transformsPreserveLogits() throws {
    for (name, c) in try tinyPipelineConfigs() {
      let dir = tempDir("t-\(name)")
      try writeTinyCheckpoint(c, to: dir + "/model")
      try writeTinyText(to: dir + "/calib.txt")
      let before = try lastLogits(try ModelLoader.load(path: dir + "/model").model, Self.probe)
      let r = try recipe(["--enable-rotation", "--rotation-transforms", "out_proj", "--enable-reorder", "--enable-smooth",
                          "--smooth-enable-proj", "--smooth-proj-strategy", "Manual", "--smooth-proj-alpha", "0.3",
                          "--smooth-proj-beta", "0.7", "--smooth-proj-skips", "qkv_proj", "up_proj", "out_proj",
                          "--smooth-enable-attn"], calib: dir + "/calib.txt")
      let out = try QuantizationPipeline(modelPath: dir + "/model", recipe: r, cacheRoot: nil).run()
      let store = try out.store()
      let after = try lastLogits(try store.model(), Self.probe)
      #expect(relL2(after, before) < 1e-5, "\(name): \(relL2(after, before))")
      // The transforms really changed the weights.
      let orig = try CheckpointWeights(folder: dir + "/model")
      #expect(try orig.floats("model.layers.0.mlp.down_proj.weight") != store["model.layers.0.mlp.down_proj.weight"])
    }
  }

  /// One calibration pass for the transforms and GPTQ (the default when the recipe has GPTQ and no weight range
  /// search) gives the model the two-pass pipeline gives: the down_proj Hessian transformed by the layer's own
  /// reorder and SmoothLinear equals the one captured after them, so GPTQ picks the same codes up to rounding ties.
  @Test func fusedPassEqualsTwoPasses() throws {
    let (_, c) = try tinyPipelineConfigs()[0]
    let dir = tempDir("fuse")
    try writeTinyCheckpoint(c, to: dir + "/model")
    try writeTinyText(to: dir + "/calib.txt")
    let flags = Self.qoqTinyFlags + ["--smooth-proj-alpha", "0.3", "--smooth-proj-beta", "0.7"]
    let r = try recipe(flags, calib: dir + "/calib.txt")
    let (fused, separate) = try fusedAndTwoPasses(dir + "/model", r)
    try expectFusedEqualsTwoPasses(fused, separate)
  }

  /// A full QoQ run, streamed: a run stopped after layer 0 resumes at layer 1 and writes the same checkpoint bit for
  /// bit as an uninterrupted run; a third run finds every layer saved; the saved checkpoint, read back, is the
  /// run's fake-quantized model.
  @Test func quantizeSaveLoadAndResume() throws {
    let (_, c) = try tinyPipelineConfigs()[0]
    let dir = tempDir("q")
    try writeTinyCheckpoint(c, to: dir + "/model")
    try writeTinyText(to: dir + "/calib.txt")
    let r = try recipe(Self.qoqTinyFlags, calib: dir + "/calib.txt")
    // Uninterrupted reference run without a cache.
    let ref = try QuantizationPipeline(modelPath: dir + "/model", recipe: r, cacheRoot: nil).run()
    #expect(try ref.quantizedWeights().count == 2 * 7)
    let refTensors = try checkpointBytes(try ref.checkpoint())
    // A run "killed" after layer 0, then rerun: layer 0 comes from the work folder.
    let cache = dir + "/cache"
    let p1 = try QuantizationPipeline(modelPath: dir + "/model", recipe: r, cacheRoot: cache)
    p1.stopAfterLayer = 0
    #expect(throws: QoQError.self) { _ = try p1.run() }
    let p2 = try QuantizationPipeline(modelPath: dir + "/model", recipe: r, cacheRoot: cache)
    let resumed = try p2.run()
    #expect(p2.resumedLayers == 1)
    #expect(try checkpointBytes(try resumed.checkpoint()) == refTensors, "resumed run differs from the uninterrupted one")
    // A third run finds every layer saved.
    let p3 = try QuantizationPipeline(modelPath: dir + "/model", recipe: r, cacheRoot: cache)
    let again = try p3.run()
    #expect(p3.resumedLayers == c.numHiddenLayers)
    #expect(try checkpointBytes(try again.checkpoint()) == refTensors)
    // Save, reload through the checkpoint reader, compare with the run's fake-quant model.
    try OutputFolder.write(dir + "/out", force: false, command: "quantize") { try ref.write(into: $0, recipeYAML: try r.yaml()) }
    let (loaded, qc) = try AnyModelLoader.load(path: dir + "/out")
    #expect(qc == ref.quantization)
    let a = try lastLogits(loaded.model, Self.probe), b = try lastLogits(try ref.fakeQuantModel(), Self.probe)
    #expect(a == b)
    #expect(FileManager.default.fileExists(atPath: dir + "/out/recipe.yaml"))
    // Quantization changed the model, but not beyond recognition.
    let fpLogits = try lastLogits(try ModelLoader.load(path: dir + "/model").model, Self.probe)
    let d = relL2(a, fpLogits)
    #expect(d > 1e-4 && d.isFinite, "quantized vs FP: \(d)")
    // Writing over an existing folder without --force fails and leaves it intact.
    #expect(throws: QoQError.self) {
      try OutputFolder.write(dir + "/out", force: false, command: "quantize") { try ref.write(into: $0, recipeYAML: "") }
    }
    #expect(FileManager.default.fileExists(atPath: dir + "/out/model.safetensors"))
    let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".tmp-") }
    #expect(leftovers.isEmpty)
  }

  /// Unsupported models and missing inputs are refused before work starts.
  @Test func badInputsAreRefused() throws {
    let dir = tempDir("bad")
    let c = try LlamaConfiguration(modelType: "llama", hiddenSize: 40, intermediateSize: 96, numHiddenLayers: 1,
                                   numAttentionHeads: 5, numKeyValueHeads: 5, vocabSize: 300)
    try writeTinyCheckpoint(c, to: dir + "/model")
    try writeTinyText(to: dir + "/calib.txt")
    // Group 16 does not divide hidden 40.
    let r = try recipe(["--wgts-dtype", "uint4", "--wgts-zero-point", "PostScale", "--wgts-group-shapes", "1,16"], calib: dir + "/calib.txt")
    #expect(throws: QoQError.self) { _ = try QuantizationPipeline(modelPath: dir + "/model", recipe: r, cacheRoot: nil).run() }
    // No Hadamard of order 100 (hidden 100 = 25·4).
    let c2 = try LlamaConfiguration(modelType: "llama", hiddenSize: 100, intermediateSize: 96, numHiddenLayers: 1,
                                    numAttentionHeads: 5, numKeyValueHeads: 5, vocabSize: 300)
    try writeTinyCheckpoint(c2, to: dir + "/model100")
    let r2 = try recipe(["--enable-rotation", "--rotation-transforms", "out_proj"], calib: dir + "/calib.txt")
    do { _ = try QuantizationPipeline(modelPath: dir + "/model100", recipe: r2, cacheRoot: nil).run(); Issue.record("accepted") }
    catch let e as QoQError { #expect(e.message.contains("Hadamard")) }
    // Missing calibration file.
    let r3 = try recipe(["--enable-reorder"], calib: dir + "/missing.txt")
    do { _ = try QuantizationPipeline(modelPath: dir + "/model", recipe: r3, cacheRoot: nil).run(); Issue.record("accepted") }
    catch let e as QoQError { #expect(e.message.contains("does not exist")) }
    // Asymmetric KV groups wider than one head (head_dim 16, 2 KV heads) are refused before any work (issue #19):
    // 32-wide groups, and one group per token over both heads.
    let (_, gqa) = try tinyPipelineConfigs()[0]
    try writeTinyCheckpoint(gqa, to: dir + "/gqa")
    for g in ["1,32", "1,-1"] {
      let rk = try recipe(["--opts-dtype", "uint4", "--opts-zero-point", "PostScale", "--opts-group-shapes", g, "--opts-skips", "attn_q"],
                          calib: dir + "/calib.txt")
      do { _ = try QuantizationPipeline(modelPath: dir + "/gqa", recipe: rk, cacheRoot: nil).run(); Issue.record("KV groups \(g) accepted") }
      catch let e as QoQError { #expect(e.message.contains("span 2 heads") && e.message.contains("--opts-group-shapes 1,16"), "\(e.message)") }
    }
    // Unsupported architecture in config.json.
    try Data(#"{"model_type":"gpt2","hidden_size":64}"#.utf8).write(to: URL(fileURLWithPath: dir + "/model/config.json"))
    do { _ = try QuantizationPipeline(modelPath: dir + "/model", recipe: r3, cacheRoot: nil).run(); Issue.record("accepted") }
    catch let e as QoQError { #expect(e.message.contains("unsupported model_type")) }
  }
}

@Suite(.serialized) struct GridSearchPipelineTests {
  /// The per-channel recipe with both grid searches runs end to end on a tiny model and is no worse than the same
  /// recipe with Manual settings on the probe's output error.
  @Test func gchnGridSearchesRun() throws {
    let (_, c) = try tinyPipelineConfigs()[0]
    let dir = tempDir("grid")
    try writeTinyCheckpoint(c, to: dir + "/model")
    try writeTinyText(to: dir + "/calib.txt")
    let common = ["--calib-path", dir + "/calib.txt", "--calib-num-samples", "4", "--calib-seq-length", "32",
                  "--opts-group-shapes", "1,16"]
    let grid = try Recipe.load(files: [recipesDir + "/qoq-gchn.yaml"], flags: common + ["--smooth-attn-num-grids", "4", "--wgts-calib-range-num-grids", "8"])
    let p = try QuantizationPipeline(modelPath: dir + "/model", recipe: grid, cacheRoot: nil)
    var lines: [String] = []
    p.log = { lines.append($0) }
    let out = try p.run()
    #expect(lines.contains { $0.contains("SmoothAttention α") })
    #expect(try out.quantizedWeights().count == 14)
    let fp = try lastLogits(try ModelLoader.load(path: dir + "/model").model, PipelineTests.probe)
    let q = try lastLogits(try out.fakeQuantModel(), PipelineTests.probe)
    #expect(relL2(q, fp).isFinite && relL2(q, fp) > 1e-4)
  }
}

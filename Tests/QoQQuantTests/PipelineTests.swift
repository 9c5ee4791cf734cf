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
      let after = try lastLogits(try out.store.model(), Self.probe)
      #expect(relL2(after, before) < 1e-5, "\(name): \(relL2(after, before))")
      // The transforms really changed the weights.
      let orig = try CheckpointWeights(folder: dir + "/model")
      #expect(try orig.floats("model.layers.0.mlp.down_proj.weight") != out.store["model.layers.0.mlp.down_proj.weight"])
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
    let one = try QuantizationPipeline(modelPath: dir + "/model", recipe: r, cacheRoot: nil)
    var lines: [String] = []
    one.log = { lines.append($0) }
    let fused = try one.run()
    #expect(lines.contains { $0.contains("one calibration pass") })
    let two = try QuantizationPipeline(modelPath: dir + "/model", recipe: r, cacheRoot: nil)
    two.fuseCalibrationPasses = false
    let separate = try two.run()
    var same = 0, total = 0
    for (m, q) in separate.quantized {
      let f = try #require(fused.quantized[m])
      #expect(f.scale == q.scale && f.rowScale == q.rowScale, "\(m): static parameters differ")
      for i in q.codes.indices { total += 1; if f.codes[i] == q.codes[i] { same += 1 } }
    }
    #expect(Double(same) / Double(total) > 0.99, "codes equal: \(same)/\(total)")
    let a = try lastLogits(try QuantizationPipeline.fakeQuantModel(fused), Self.probe)
    let b = try lastLogits(try QuantizationPipeline.fakeQuantModel(separate), Self.probe)
    #expect(relL2(a, b) < 2e-2, "fused vs two passes: \(relL2(a, b))")
  }

  /// A full QoQ run: the saved checkpoint, read back, is the same fake-quantized model as the in-memory one, and a
  /// run stopped midway resumes from its cached stages with the same result.
  @Test func quantizeSaveLoadAndResume() throws {
    let (_, c) = try tinyPipelineConfigs()[0]
    let dir = tempDir("q")
    try writeTinyCheckpoint(c, to: dir + "/model")
    try writeTinyText(to: dir + "/calib.txt")
    let flags = Self.qoqTinyFlags
    let r = try recipe(flags, calib: dir + "/calib.txt")
    // Uninterrupted reference run without a cache.
    let ref = try QuantizationPipeline(modelPath: dir + "/model", recipe: r, cacheRoot: nil).run()
    #expect(ref.quantized.count == 2 * 7)
    // A run "killed" after the smoothing stage, then rerun: finished stages come from the cache.
    let cache = dir + "/cache"
    let p1 = try QuantizationPipeline(modelPath: dir + "/model", recipe: r, cacheRoot: cache)
    p1.stopAfter = "reorder+smooth"
    #expect(throws: QoQError.self) { _ = try p1.run() }
    let p2 = try QuantizationPipeline(modelPath: dir + "/model", recipe: r, cacheRoot: cache)
    var lines: [String] = []
    p2.log = { lines.append($0) }
    let resumed = try p2.run()
    #expect(lines.contains { $0.hasPrefix("rotation: cached") } && lines.contains { $0.hasPrefix("reorder+smooth: cached") })
    #expect(!lines.contains { $0.hasPrefix("weights: cached") })
    for (m, q) in ref.quantized { #expect(resumed.quantized[m]?.codes == q.codes, "\(m) codes differ after resume") }
    // A third run is entirely cached.
    let p3 = try QuantizationPipeline(modelPath: dir + "/model", recipe: r, cacheRoot: cache)
    var lines3: [String] = []
    p3.log = { lines3.append($0) }
    let again = try p3.run()
    #expect(lines3.contains { $0.hasPrefix("weights: cached") })
    for (m, q) in ref.quantized { #expect(again.quantized[m]?.scale == q.scale) }
    // Save, reload through the checkpoint reader, compare with the in-memory fake-quant model.
    var fp: [String: [Float]] = [:], biases: [String: [Float]] = [:]
    for (n, v) in ref.store.tensors {
      let module = n.hasSuffix(".weight") ? String(n.dropLast(7)) : String(n.dropLast(5))
      if ref.quantized[module] == nil { fp[n] = v } else if n.hasSuffix(".bias") { biases[module] = v }
    }
    try QuantizedCheckpoint.write(to: dir + "/out", config: ref.store.config, quantization: ref.quantization, fp: fp,
                                  quantized: ref.quantized, biases: biases, recipeYAML: try r.yaml(),
                                  tokenizerFrom: dir + "/model", overwrite: false)
    let (loaded, qc) = try AnyModelLoader.load(path: dir + "/out")
    #expect(qc == ref.quantization)
    let a = try lastLogits(loaded.model, Self.probe), b = try lastLogits(try QuantizationPipeline.fakeQuantModel(ref), Self.probe)
    #expect(a == b)
    #expect(FileManager.default.fileExists(atPath: dir + "/out/recipe.yaml"))
    // Quantization changed the model, but not beyond recognition.
    let fpLogits = try lastLogits(try ModelLoader.load(path: dir + "/model").model, Self.probe)
    let d = relL2(a, fpLogits)
    #expect(d > 1e-4 && d.isFinite, "quantized vs FP: \(d)")
    // Writing over an existing folder without overwrite fails and leaves it intact.
    #expect(throws: QoQError.self) {
      try QuantizedCheckpoint.write(to: dir + "/out", config: ref.store.config, quantization: ref.quantization, fp: fp,
                                    quantized: ref.quantized, biases: biases, recipeYAML: "", tokenizerFrom: nil, overwrite: false)
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
    #expect(out.quantized.count == 14)
    let fp = try lastLogits(try ModelLoader.load(path: dir + "/model").model, PipelineTests.probe)
    let q = try lastLogits(try QuantizationPipeline.fakeQuantModel(out), PipelineTests.probe)
    #expect(relL2(q, fp).isFinite && relL2(q, fp) > 1e-4)
  }
}

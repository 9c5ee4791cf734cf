import Foundation
import Testing
@testable import QoQFormat
@testable import QoQIO
@testable import QoQModels
@testable import QoQQuant
import QoQTestSupport

/// The streaming quantizer (issue #12) against whole-model, in-memory references computed here.
@Suite(.serialized) struct StreamingTests {
  /// The activations after a layer are saved under a cache root (a killed run resumes from them) and not in a
  /// temporary work folder, which no run can resume from.
  @Test func activationsSavedOnlyWhereResumable() throws {
    let pass = LayerwisePass(samples: [[1, 2, 3]], hidden: [randomFloats(3 * 4, seed: 3)])
    let root = tempDir("work-root")
    for r in [root, nil] as [String?] {
      let w = try WorkFolder(root: r, key: "k")
      try w.saveActivations(after: 0, ["fp": pass], hiddenSize: 4)
      #expect((w.unit("activations") != nil) == (r != nil), "root \(r ?? "none")")
      if r != nil { #expect(try w.loadActivations(streams: ["fp"], samples: pass.samples, bf16: false)?.1["fp"]?.hidden(0) == pass.hidden(0)) }
    }
  }

  /// A layerwise pass reuses its chunk rows, its capture and the model's scratch from chunk to chunk and writes the
  /// outputs back in place. Against each sample run alone through the layer (fresh caches, capture and rows): the
  /// advanced rows and every captured point are the same bits, for chunks of 1, 2 and 3 over samples of unequal
  /// lengths (so chunks differ in size), fp32 and bf16 rows.
  @Test(arguments: [1, 2, 3])
  func chunkedPassEqualsSamplesAlone(_ chunk: Int) throws {
    let model = try TinyFamily.qwen2Tied.model()
    let c = model.config, H = c.hiddenSize
    let samples: [[Int32]] = [3, 7, 1, 5, 4].enumerated().map { i, n in (0..<n).map { Int32((i * 13 + $0 * 5) % c.vocabSize) } }
    let points: Set<LayerCapture.Point> = [.attnInput, .kRope, .downInput]
    for bf16 in [false, true] {
      let table = model.embedTokens
      let pass = try LayerwisePass.embedded(samples: samples, table: table, hiddenSize: H, bf16: bf16)
      pass.chunk = chunk
      var seen: [LayerCapture.Point: [Float]] = [:]
      try pass.run(model: model, layer: 0, points: points) { cap in for p in points { seen[p, default: []] += cap[p] } }
      var want: [LayerCapture.Point: [Float]] = [:]
      for (i, s) in samples.enumerated() {
        var x = try LayerwisePass.embed(samples: [s], table: table, hiddenSize: H)[0]
        if bf16 { x = x.map { bf16ToF32(f32ToBF16($0)) } }
        let cap = LayerCapture(points)
        try model.runLayer(0, x: &x, lengths: [s.count], caches: [KVCache(config: c, capacity: s.count)], capture: cap)
        for p in points { want[p, default: []] += cap[p] }
        let expected = bf16 ? x.map { bf16ToF32(f32ToBF16($0)) } : x
        #expect(pass.hidden(i) == expected, "sample \(i), chunk \(chunk), bf16 \(bf16)")
      }
      for p in points { #expect(seen[p] == want[p], "\(p), chunk \(chunk), bf16 \(bf16)") }
    }
  }

  /// Rotation + RTN, streamed a layer at a time into a sharded checkpoint, equals bit for bit the whole model held in
  /// memory, rotated by RotationStage.apply and quantized weight by weight: every tensor, on every family.
  @Test func streamedRTNEqualsWholeModel() throws {
    for (name, c) in try tinyPipelineConfigs() {
      let dir = tempDir("stream-\(name)")
      try writeTinyCheckpoint(c, to: dir + "/model")
      let flags = ["--wgts-dtype", "uint4", "--wgts-zero-point", "PostScale", "--wgts-group-shapes", "1,16",
                   "--wgts-scale-dtypes", "torch.float16", "--enable-rotation", "--rotation-transforms", "out_proj"]
      let p = try QuantizationPipeline(modelPath: dir + "/model", recipe: try Recipe.load(files: [], flags: flags), cacheRoot: nil)
      let out = try p.run()
      // Shards of at most 40 kB (a unit larger than that is a shard of its own).
      let limit = 40_000
      let ckpt = try out.checkpoint(maxShardBytes: limit)
      let files = try FileManager.default.contentsOfDirectory(atPath: ckpt).filter { $0.hasSuffix(".safetensors") }
      #expect(files.count > 2 && FileManager.default.fileExists(atPath: ckpt + "/model.safetensors.index.json"), "\(name): \(files)")
      for f in files {
        let st = try SafeTensorsFile(path: ckpt + "/" + f)
        let bytes = try st.names.reduce(0) { $0 + (try st.info($1).byteCount) }
        let units = Set(st.names.map { $0.hasPrefix("model.layers.") ? String($0.split(separator: ".")[2])
                                       : $0 == "model.embed_tokens.weight" ? "embed" : "head" })
        #expect(bytes <= limit || units.count == 1, "\(name): \(f) holds \(bytes) bytes in \(units.count) units")
      }
      // The reference: the whole model in memory.
      let ref = try WeightStore(config: c, source: try CheckpointWeights(folder: dir + "/model"))
      try RotationStage.apply(ref, options: try #require(p.plan.rotation))
      let format = try #require(p.plan.weightFormat)
      var want: [String: [TensorBlob]] = [:]
      for l in 0..<c.numHiddenLayers {
        for m in ref.linearNames(layer: l) {
          let (o, i) = ref.linearShape(m)
          let w = ref[m + ".weight"]
          want[m] = QuantizedCheckpoint.tensors(module: m, WeightQuantizer(weight: w, out: o, inp: i, format: format).rtn(w))
        }
      }
      let st = try CheckpointWeights(folder: ckpt)
      var seen = 0
      for n in st.names {
        let module = String(n[..<(n.lastIndex(of: ".") ?? n.endIndex)])
        if let blobs = want[module], let b = blobs.first(where: { $0.name == n }) {
          #expect(Data(try st.raw(n)) == b.data, "\(name): \(n)")
        } else {
          #expect(try st.floats(n) == ref[n], "\(name): \(n)")
        }
        seen += 1
      }
      #expect(seen == ref.tensors.count + want.values.reduce(0) { $0 + $1.count } - 7 * c.numHiddenLayers, "\(name): tensor count")
    }
  }

  /// The calibration activations a streamed QoQ run saves after layer k equal, bit for bit, the residual stream of
  /// the whole rotated FP model held in memory run to layer k on the same samples (the next layer sees FP outputs).
  @Test func savedActivationsEqualWholeModel() throws {
    let (_, c) = try tinyPipelineConfigs()[0]
    let dir = tempDir("stream-act")
    try writeTinyCheckpoint(c, to: dir + "/model")
    try writeTinyText(to: dir + "/calib.txt")
    let r = try Recipe.load(files: [], flags: PipelineTests.qoqTinyFlags + ["--calib-path", dir + "/calib.txt",
                                                                             "--calib-num-samples", "4", "--calib-seq-length", "32"])
    for stop in 0..<c.numHiddenLayers {
      let (p, act) = try activationsAfterStopping(dir: dir, recipe: r, at: stop)
      #expect(act.metadata["layer"] == String(stop))
      // Whole model, rotated in memory, run layer by layer on the same batch.
      let ref = try WeightStore(config: c, source: try CheckpointWeights(folder: dir + "/model"))
      try RotationStage.apply(ref, options: try #require(p.plan.rotation))
      let model = try ref.model()
      let samples = try CalibrationData.samples(p.plan.calib, tokenizer: try ModelLoader.load(path: dir + "/model").tokenizer)
      var x = try model.embed(samples, caches: samples.map { _ in KVCache(config: c, capacity: 1) })
      let caches = samples.map { _ in KVCache(config: c, capacity: 32) }
      for l in 0...stop { try model.runLayer(l, x: &x, lengths: samples.map(\.count), caches: caches) }
      let got = try (0..<samples.count).flatMap { try act.floats("fp.\($0)") }
      #expect(got == x, "activations after layer \(stop)")
    }
  }

  /// `quant.calib.activations_dtype: torch.bfloat16`: the activations saved after layer k are bf16 tensors equal to a
  /// reference computed here (each layer in fp32 from bf16-rounded inputs, its outputs rounded to nearest even by the
  /// formula below, not by the library's converter); a bf16 run stopped after layer 0 resumes to the checkpoint of an
  /// uninterrupted bf16 run, byte for byte; the fp32 default's run key is unchanged by the new field; the estimate
  /// counts 2 bytes per activation.
  @Test func bf16ActivationsAreRoundedSavedAndResumed() throws {
    let (_, c) = try tinyPipelineConfigs()[0]
    let dir = tempDir("stream-bf16")
    try writeTinyCheckpoint(c, to: dir + "/model")
    try writeTinyText(to: dir + "/calib.txt")
    let base = PipelineTests.qoqTinyFlags + ["--calib-path", dir + "/calib.txt", "--calib-num-samples", "4", "--calib-seq-length", "32"]
    let r = try Recipe.load(files: [], flags: base + ["--calib-activations-dtype", "torch.bfloat16"])
    // Round to nearest even by hand: add half an ulp of bf16 (0x7FFF + the kept lowest bit) and truncate.
    func round16(_ x: [Float]) -> [Float] {
      x.map { v in
        let u = v.bitPattern, keep = (u >> 16) & 1
        return Float(bitPattern: ((u + 0x7FFF + keep) >> 16) << 16)
      }
    }
    let ref = try WeightStore(config: c, source: try CheckpointWeights(folder: dir + "/model"))
    let probe = try QuantizationPipeline(modelPath: dir + "/model", recipe: r, cacheRoot: nil)
    #expect(probe.plan.calibActivationsBF16)
    try RotationStage.apply(ref, options: try #require(probe.plan.rotation))
    let model = try ref.model()
    let samples = try CalibrationData.samples(probe.plan.calib, tokenizer: try ModelLoader.load(path: dir + "/model").tokenizer)
    var x = round16(try model.embed(samples, caches: samples.map { _ in KVCache(config: c, capacity: 1) }))
    let caches = samples.map { _ in KVCache(config: c, capacity: 32) }
    for stop in 0..<c.numHiddenLayers {
      // The pass runs 4 samples per chunk: all 4 here, as one batch.
      try model.runLayer(stop, x: &x, lengths: samples.map(\.count), caches: caches)
      x = round16(x)
      let (_, act) = try activationsAfterStopping(dir: dir, recipe: r, at: stop)
      #expect(try act.info("fp.0").dtype == .BF16)
      let got = try (0..<samples.count).flatMap { try act.floats("fp.\($0)") }
      #expect(got == x, "bf16 activations after layer \(stop) (\(relL2(got, x)) relative)")
    }
    // Resume from the saved bf16 activations (cache-0 stopped after layer 0) = an uninterrupted bf16 run.
    let whole = try QuantizationPipeline(modelPath: dir + "/model", recipe: r, cacheRoot: nil).run()
    let resumedRun = try QuantizationPipeline(modelPath: dir + "/model", recipe: r, cacheRoot: dir + "/cache-0")
    let resumed = try resumedRun.run()
    #expect(resumedRun.resumedLayers == 1)
    let wholeBytes = try checkpointBytes(try whole.checkpoint())
    #expect(try checkpointBytes(try resumed.checkpoint()) == wholeBytes)
    // fp32 (the default, or named) keeps the key earlier runs had; bf16 changes it.
    let fp = try QuantizationPipeline(modelPath: dir + "/model", recipe: try Recipe.load(files: [], flags: base), cacheRoot: nil)
    let named = try QuantizationPipeline(modelPath: dir + "/model",
                                         recipe: try Recipe.load(files: [], flags: base + ["--calib-activations-dtype", "torch.float32"]),
                                         cacheRoot: nil)
    #expect(fp.runKey == named.runKey && fp.runKey != probe.runKey)
    #expect(!fp.quantKeySection.contains("activations_dtype"))
    // The estimate: the same run at a 4096-wide shape holds 128 × 1024 × 4096 activations at 4 or 2 bytes.
    var big = c
    big.hiddenSize = 4096; big.intermediateSize = 14336; big.numAttentionHeads = 32; big.numKeyValueHeads = 8; big.headDim = 128
    var p32 = fp.plan, p16 = probe.plan
    p32.calib.numSamples = 128; p32.calib.seqLength = 1024; p16.calib.numSamples = 128; p16.calib.seqLength = 1024
    let d = p32.estimate(big, evaluate: false).peakBytes - p16.estimate(big, evaluate: false).peakBytes
    #expect(d == 128 * 1024 * 4096 * 2)
    #expect(throws: QoQError.self) { _ = try QuantizationPipeline(modelPath: dir + "/model",
      recipe: try Recipe.load(files: [], flags: base + ["--calib-activations-dtype", "torch.float16"]), cacheRoot: nil) }
  }
}

/// Runs the pipeline on dir/model until it stops after layer `stop` (a deliberate QoQError) with its own stage cache,
/// and opens the activations that run left for the next layer; returns the pipeline too (its plan).
private func activationsAfterStopping(dir: String, recipe r: Recipe, at stop: Int) throws -> (QuantizationPipeline, SafeTensorsFile) {
  let cache = dir + "/cache-\(stop)"
  let p = try QuantizationPipeline(modelPath: dir + "/model", recipe: r, cacheRoot: cache)
  p.stopAfterLayer = stop
  #expect(throws: QoQError.self) { _ = try p.run() }
  let folder = try #require(try FileManager.default.contentsOfDirectory(atPath: cache).first { $0.hasPrefix("stream-") })
  return (p, try SafeTensorsFile(path: cache + "/" + folder + "/activations.safetensors"))
}

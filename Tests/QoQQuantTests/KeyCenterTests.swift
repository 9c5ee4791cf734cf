import Foundation
import Testing
@testable import QoQFormat
@testable import QoQIO
@testable import QoQModels
@testable import QoQQuant
import QoQTestSupport

/// Key centering (issue #19): post-RoPE keys minus a calibrated per-channel midrange before KV quantization.
@Suite(.serialized) struct KeyCenterTests {
  /// Leaves keys alone: the FP model seen through CenteredKeys.
  final class Identity: KVTransform, @unchecked Sendable {
    func apply(_ x: UnsafeMutablePointer<Float>, rows: Int, width: Int) {}
  }

  /// A tiny Qwen2 model (GQA, head_dim 32, θ = 1e6) whose K biases are ±150 on the slowest rotary pairs (channels
  /// 13–15 of each half), where Qwen2.5-Coder-1.5B's are (±350 on channels 58–63 and 122–127 of layer 0).
  static func kBiasModel(_ dir: String) throws -> LlamaConfiguration {
    let c = try LlamaConfiguration(modelType: "qwen2", hiddenSize: 64, intermediateSize: 96, numHiddenLayers: 2,
                                   numAttentionHeads: 4, numKeyValueHeads: 2, headDim: 32, rmsNormEps: 1e-6,
                                   ropeTheta: 1e6, vocabSize: 300)
    try writeTinyCheckpoint(c, to: dir)
    let st = try SafeTensorsFile(path: dir + "/model.safetensors")
    var blobs: [TensorBlob] = []
    for n in st.names {
      var v = try st.floats(n)
      if n.hasSuffix("k_proj.bias") {
        for h in 0..<c.numKeyValueHeads { for j in [13, 14, 15, 29, 30, 31] { v[h * 32 + j] += (j + h) % 2 == 0 ? 150 : -150 } }
      }
      blobs.append(TensorBlob(name: n, shape: try st.info(n).shape, floats: v))
    }
    try SafeTensorsWriter.write(blobs, to: dir + "/model.safetensors")
    return c
  }

  /// QoQ's KV side with FP weights: rotation, SmoothAttention, UINT4 KV per head of 32, 4 × 32 calibration tokens.
  static func kvRecipeFlags(_ dir: String) -> [String] {
    ["--opts-dtype", "uint4", "--opts-zero-point", "PostScale", "--opts-group-shapes", "1,32", "--opts-skips", "attn_q",
     "--enable-rotation", "--rotation-transforms", "out_proj", "--enable-smooth", "--smooth-enable-attn",
     "--calib-path", dir + "/calib.txt", "--calib-num-samples", "4", "--calib-seq-length", "32"]
  }

  /// The saved checkpoint without KV quantization run on the pipeline's calibration samples: each layer's post-RoPE
  /// Q and K.
  static func replay(_ ckpt: String, pipeline p: QuantizationPipeline, _ c: LlamaConfiguration, _ dir: String) throws -> [LayerCapture] {
    let plain = try AnyModelLoader.load(path: ckpt).0.model
    plain.kvQuantizer = nil; plain.kvLayerQuantizers = nil
    let samples = try CalibrationData.samples(p.plan.calib, tokenizer: try ModelLoader.load(path: dir + "/model").tokenizer)
    var x = try plain.embed(samples, caches: samples.map { _ in KVCache(config: c, capacity: 1) })
    let caches = samples.map { _ in KVCache(config: c, capacity: 32) }
    return try (0..<c.numHiddenLayers).map { l in
      let cap = LayerCapture([.qRope, .kRope])
      try plain.runLayer(l, x: &x, lengths: samples.map(\.count), caches: caches, capture: cap)
      return cap
    }
  }

  /// Hand-computed statistics, and CenteredKeys = subtract, quantize, add back.
  @Test func statisticsAndTransform() {
    var acc = MinMaxAccumulator(width: 4)
    acc.add([300, 300.5, 1, -1, 299.5, 300, -1, 1])
    #expect(acc.center == [299.75, 300.25, 0, 0])
    #expect(acc.centeredSpan == [0.25, 0.25, 1, 1])
    #expect(acc.absMax == [300, 300.5, 1, 1])
    #expect(MinMaxAccumulator(width: 2).center == [0, 0])  // nothing seen: no shift
    // About a given center (the mean, under key scaling): max(max − c, c − min), by hand.
    #expect(acc.span(about: [300, 300, 0.5, -2]) == [0.5, 0.5, 1.5, 3])
    #expect(acc.span(about: acc.center) == acc.centeredSpan)
    #expect(MinMaxAccumulator(width: 2).span(about: [1, -1]) == [0, 0])
    var x: [Float] = [300, 300.5, 1, -1, 299.5, 300, -1, 1]
    CenteredKeys(Identity(), center: acc.center).apply(&x, rows: 2, width: 4)
    #expect(x == [300, 300.5, 1, -1, 299.5, 300, -1, 1])
    // KV4 over one group of 4: uncentered, the ±300 channels set a step of ~20 and the ±1 channels round to 0 or
    // ±20; centered, every channel spans ≤ 2 and the error is at most half a step of 2/15.
    var plain = x, centered = x
    KVFakeQuant(bits: 4, group: 4).apply(&plain, rows: 2, width: 4)
    CenteredKeys(KVFakeQuant(bits: 4, group: 4), center: acc.center).apply(&centered, rows: 2, width: 4)
    let errPlain = zip(plain, x).map { abs($0 - $1) }.max()!, errCentered = zip(centered, x).map { abs($0 - $1) }.max()!
    #expect(errPlain > 0.5 && errCentered <= 1.0 / 15 + 1e-4, "plain \(errPlain) centered \(errCentered)")
  }

  /// RotatedKeys by hand on one head of 4 channels, KV4 over the head: in k = (100, 1, −2, 3) the outlier sets a step of
  /// 102/15 = 6.8, so the small channels err by up to 3; rotated, H·k = (51, 47, 50, 52) has a step of 1/3, each rotated
  /// channel errs by ≤ 1/6 and, back through H (entries ±½), each channel of k by ≤ 4 · ½ · 1/6 = 1/3.
  @Test func rotatedKeysByHand() {
    let k: [Float] = [100, 1, -2, 3]
    var plain = k, rotated = k
    KVFakeQuant(bits: 4, group: 4).apply(&plain, rows: 1, width: 4)
    RotatedKeys(KVFakeQuant(bits: 4, group: 4), headDim: 4).apply(&rotated, rows: 1, width: 4)
    // H·k by hand: rows (+,+,+,+), (+,−,+,−), (+,+,−,−), (+,−,−,+) over 2.
    let hk: [Float] = [51, 47, 50, 52]
    var q = hk
    KVFakeQuant(bits: 4, group: 4).apply(&q, rows: 1, width: 4)
    let back: [Float] = [(q[0] + q[1] + q[2] + q[3]) / 2, (q[0] - q[1] + q[2] - q[3]) / 2, (q[0] + q[1] - q[2] - q[3]) / 2,
                         (q[0] - q[1] - q[2] + q[3]) / 2]
    for i in 0..<4 { #expect(abs(rotated[i] - back[i]) < 1e-4, "channel \(i): \(rotated[i]) vs \(back[i])") }
    #expect(zip(rotated, k).map { abs($0 - $1) }.max()! <= 1.0 / 3 + 1e-3)
    #expect(zip(plain, k).map { abs($0 - $1) }.max()! > 2)
  }

  /// Key scales by hand (quant.opts.scale_keys): one KV head of 4 channels shared by 2 query heads. E[q²] per channel
  /// (over rows and both heads) is (16, 1, 1, 1); the keys are c ± (1, 1, 4, 1) around c = (10, 0, −3, 0), so the centered
  /// E[(k − c)²] is (1, 1, 16, 1). s = (E[q²]/E[(k − c)²])^¼ = (2, 1, ½, 1), whose geometric mean is already 1; λ
  /// multiplies it. A channel with no key energy keeps 1 and is left out of the mean.
  @Test func keyScalesByHand() throws {
    let c = try LlamaConfiguration(modelType: "llama", hiddenSize: 8, intermediateSize: 8, numHiddenLayers: 1,
                                   numAttentionHeads: 2, numKeyValueHeads: 1, headDim: 4, rmsNormEps: 1e-6, ropeTheta: 1e4, vocabSize: 10)
    var q = MomentAccumulator(width: 8), k = MomentAccumulator(width: 4), mm = MinMaxAccumulator(width: 4)
    q.add([4, 1, 1, 1, 4, 1, 1, 1, -4, 1, -1, 1, -4, -1, 1, -1])
    let keys: [Float] = [11, 1, 1, 1, 9, -1, -7, -1]
    k.add(keys); mm.add(keys)
    #expect(mm.center == [10, 0, -3, 0])
    let s = SmoothStage.keyScales(c, q: q, k: k, center: mm.center, lamKV: [1, 1, 1, 1])
    for (got, want) in zip(s, [Float(2), 1, 0.5, 1]) { #expect(abs(got - want) < 1e-5, "\(s)") }
    let sl = SmoothStage.keyScales(c, q: q, k: k, center: mm.center, lamKV: [1, 2, 1, 0.5])
    for (got, want) in zip(sl, [Float(2), 2, 0.5, 0.5]) { #expect(abs(got - want) < 1e-5, "\(sl)") }
    // Channel 3's keys constant at its center: no energy, scale 1; the others (2, 1, ½) have geometric mean 1 already.
    var k3 = MomentAccumulator(width: 4)
    k3.add([11, 1, 1, 0, 9, -1, -7, 0])
    let s3 = SmoothStage.keyScales(c, q: q, k: k3, center: mm.center, lamKV: [1, 1, 1, 1])
    for (got, want) in zip(s3, [Float(2), 1, 0.5, 1]) { #expect(abs(got - want) < 1e-5, "\(s3)") }
    // ScaledKeys: exact around an identity (power-of-two scales), and multiply → quantize → divide around KV4: keys
    // (8, 0.5, −0.25, 0.125) quantized over one group of 4 err by up to a step/2 = 8.25/30 in every channel; scaled by
    // (1/16, 1, 1, 1) the group spans (0.5, 0.5, −0.25, 0.125), the step is 0.05, and channel j errs ≤ 0.025 / s_j.
    var x: [Float] = [8, 0.5, -0.25, 0.125]
    ScaledKeys(Identity(), scale: [0.0625, 1, 2, 4]).apply(&x, rows: 1, width: 4)
    #expect(x == [8, 0.5, -0.25, 0.125])
    var plain = x, scaled = x
    KVFakeQuant(bits: 4, group: 4).apply(&plain, rows: 1, width: 4)
    ScaledKeys(KVFakeQuant(bits: 4, group: 4), scale: [0.0625, 1, 1, 1]).apply(&scaled, rows: 1, width: 4)
    let bound: [Float] = [0.025 * 16, 0.025, 0.025, 0.025]
    for j in 0..<4 { #expect(abs(scaled[j] - x[j]) <= bound[j] * 1.1, "channel \(j): \(scaled[j]) vs \(x[j])") }
    #expect(zip(plain, x).dropFirst().map { abs($0 - $1) }.max()! > 0.1)  // unscaled, the small channels err by ~a step
  }

  /// Centering is exact in FP: any constant subtracted from post-RoPE keys leaves the logits unchanged (softmax
  /// ignores a per-query shift), checked against the model without it at every prompt position.
  @Test func centeringIsExactInFP() throws {
    let dir = tempDir("kcenter-exact")
    let c = try Self.kBiasModel(dir + "/model")
    let fp = try ModelLoader.load(path: dir + "/model").model
    let prompt: [Int32] = [3, 17, 250, 9, 41, 120, 7, 7, 88, 199, 5, 64]
    let want = try (1...prompt.count).map { try fp.lastLogits([Array(prompt[0..<$0])], caches: [KVCache(config: c)])[0] }
    var rng = SplitMix64(seed: 7)
    fp.kvLayerQuantizers = (0..<c.numHiddenLayers).map { _ in
      (CenteredKeys(Identity(), center: (0..<c.kvDim).map { _ in Float.random(in: -200...200, using: &rng) }), Identity())
    }
    for t in 1...prompt.count {
      let got = try fp.lastLogits([Array(prompt[0..<t])], caches: [KVCache(config: c)])[0]
      #expect(relL2(got, want[t - 1]) < 1e-5, "position \(t)")
    }
  }

  /// QoQ's KV-side recipe (rotation, SmoothAttention, UINT4 KV per head, weights FP) on the K-bias model: `auto`
  /// centers keys on this Qwen2 model and saves k_center; the center is the midrange of the saved (smoothed) model's
  /// own post-RoPE keys on the calibration data, recomputed here from a forward pass; and the KV4 error against FP
  /// shrinks well below the uncentered run's.
  @Test func pipelineCentersKeys() throws {
    let dir = tempDir("kcenter-pipe")
    let c = try Self.kBiasModel(dir + "/model")
    try writeTinyText(to: dir + "/calib.txt")
    let flags = Self.kvRecipeFlags(dir)
    let fp = try ModelLoader.load(path: dir + "/model").model
    let prompt: [Int32] = [3, 17, 250, 9, 41, 120, 7, 7, 88, 199, 5, 64, 12, 230, 77, 31]
    let fpLogits = try fp.lastLogits([prompt], caches: [KVCache(config: c)])[0]
    var errors: [String: Double] = [:]
    for mode in ["never", "auto"] {
      let p = try QuantizationPipeline(modelPath: dir + "/model", recipe: try Recipe.load(files: [], flags: flags + ["--opts-center-keys", mode]),
                                       cacheRoot: nil)
      let out = try p.run()
      #expect(out.quantization.kvKeyCenter == (mode == "auto"))
      // rotate_keys auto follows centering (issue #19); config.json says so and reads back.
      #expect(out.quantization.kvKeyRotation == (mode == "auto"))
      let ckpt = try out.checkpoint()
      let st = try CheckpointWeights(folder: ckpt)
      #expect(st.names.filter { $0.hasSuffix("k_center") }.count == (mode == "auto" ? c.numHiddenLayers : 0))
      let cfg = try JSON.parse(try String(contentsOfFile: ckpt + "/config.json", encoding: .utf8), what: "config.json")
      let back = try QuantizationConfig(json: cfg["quantization_config"]!, what: "config.json")
      #expect(back.kvKeyRotation == (mode == "auto"))
      let loaded = try AnyModelLoader.load(path: ckpt).0.model
      errors[mode] = relL2(try loaded.lastLogits([prompt], caches: [KVCache(config: c)])[0], fpLogits)
      guard mode == "auto" else { continue }
      // The saved model without KV quantization, its post-RoPE keys captured on the calibration samples.
      for (l, cap) in try Self.replay(ckpt, pipeline: p, c, dir).enumerated() {
        let k = cap[.kRope]
        var lo = [Float](repeating: .infinity, count: c.kvDim), hi = [Float](repeating: -.infinity, count: c.kvDim)
        for r in 0..<(k.count / c.kvDim) { for j in 0..<c.kvDim { lo[j] = min(lo[j], k[r * c.kvDim + j]); hi[j] = max(hi[j], k[r * c.kvDim + j]) } }
        let center = try st.floats("model.layers.\(l).self_attn.k_center")
        var worst: Float = 0
        for j in 0..<c.kvDim {
          let mid = (lo[j] + hi[j]) / 2
          worst = max(worst, abs(center[j] - mid) / max(1, abs(hi[j]) + abs(lo[j])))
        }
        #expect(worst < 1e-4, "layer \(l): center differs from the keys' midrange by \(worst)")
        #expect(center.map(abs).max()! > 20, "layer \(l): the bias channels' center")
      }
    }
    #expect(errors["auto"]! < errors["never"]! / 2, "KV4 error vs FP: \(errors)")
  }

  /// `--opts-scale-keys always` with centering and rotation: every layer saves k_scale (positive, finite), config.json
  /// says key_scale and reads back, k_center is the mean of the saved model's own post-RoPE keys on the calibration
  /// data, the scales equal keyScales recomputed from its post-RoPE Q and K up to one constant per head
  /// (SmoothAttention's λ moves the normalisation, not the shape), and the run key is unchanged by `scale_keys: never`
  /// (earlier stage caches stay valid).
  @Test func pipelineScalesKeys() throws {
    let dir = tempDir("kscale-pipe")
    let c = try Self.kBiasModel(dir + "/model")
    try writeTinyText(to: dir + "/calib.txt")
    let flags = Self.kvRecipeFlags(dir) + ["--opts-center-keys", "always", "--opts-rotate-keys", "always"]
    let never = try QuantizationPipeline(modelPath: dir + "/model", recipe: try Recipe.load(files: [], flags: flags), cacheRoot: nil)
    let neverExplicit = try QuantizationPipeline(modelPath: dir + "/model", recipe: try Recipe.load(files: [], flags: flags
      + ["--opts-scale-keys", "never"]), cacheRoot: nil)
    let p = try QuantizationPipeline(modelPath: dir + "/model", recipe: try Recipe.load(files: [], flags: flags + ["--opts-scale-keys", "always"]),
                                     cacheRoot: nil)
    #expect(never.runKey == neverExplicit.runKey && never.runKey != p.runKey)
    let out = try p.run()
    #expect(out.quantization.kvKeyScale && out.quantization.kvKeyCenter && out.quantization.kvKeyRotation)
    let ckpt = try out.checkpoint()
    let cfg = try JSON.parse(try String(contentsOfFile: ckpt + "/config.json", encoding: .utf8), what: "config.json")
    #expect(try QuantizationConfig(json: cfg["quantization_config"]!, what: "config.json").kvKeyScale)
    let st = try CheckpointWeights(folder: ckpt)
    for (l, cap) in try Self.replay(ckpt, pipeline: p, c, dir).enumerated() {
      var qm = MomentAccumulator(width: c.qDim), km = MomentAccumulator(width: c.kvDim)
      qm.add(cap[.qRope]); km.add(cap[.kRope])
      // With scaling, the center is the keys' mean (the midrange without it: pipelineCentersKeys).
      let mean = km.mean.map { Float($0) }, center = try st.floats("model.layers.\(l).self_attn.k_center")
      for j in 0..<c.kvDim { #expect(abs(center[j] - mean[j]) <= 1e-4 * max(1, abs(mean[j])), "layer \(l) channel \(j)") }
      let want = SmoothStage.keyScales(c, q: qm, k: km, center: mean, lamKV: [Float](repeating: 1, count: c.kvDim))
      let got = try st.floats("model.layers.\(l).self_attn.k_scale")
      #expect(got.count == c.kvDim && got.allSatisfy { $0 > 0 && $0.isFinite })
      for h in 0..<c.numKeyValueHeads {
        let r = (0..<c.headDim).map { got[h * c.headDim + $0] / want[h * c.headDim + $0] }
        #expect(r.allSatisfy { abs($0 / r[0] - 1) < 1e-3 }, "layer \(l) head \(h): k_scale / recomputed = \(r)")
      }
      #expect(got.max()! / got.min()! > 1.5, "layer \(l): the scales are not all equal")
    }
  }
}

// `qoq quantize` (issue #12: any size in bounded memory): deepcompressor's stages (rotate → reorder → smooth →
// weights; activations and KV are quantized at run time) streamed one decoder layer at a time. The source is opened
// lazily (safetensors memory-mapped, GGUF dequantized tensor by tensor); for each layer the pipeline reads it, rotates
// it, runs its calibration pass(es) on the activations the previous layer left, transforms and quantizes it, saves it
// as a unit of the work folder with the activations entering the next layer, and releases it. The embedding and head
// are units of their own. Memory holds one layer, the calibration activations and, briefly, the embedding or head.
// Each layer sees the FP outputs of the layer before (rotated, before that layer's own transforms), as in
// deepcompressor. A killed run resumes at the first layer it had not saved; the output is the same bit for bit.
import Foundation
import QoQFormat
import QoQIO
import QoQModels
import QoQTokenizers

public final class QuantizationPipeline {
  public let plan: QuantPlan
  public let recipe: Recipe
  public let modelPath: String
  public let cacheRoot: String?
  public var log: (String) -> Void = { _ in }
  public var progress: (String, Int, Int) -> Void = { _, _, _ in }
  /// Stops with an error right after layer k has been saved (simulates a run killed midway; tests).
  public var stopAfterLayer: Int?
  /// Seconds per stage, summed over layers, for reports.
  public private(set) var timings: [(String, Double)] = []
  /// One calibration pass for the transforms and GPTQ when the recipe allows it (see `processLayer`); false = two.
  public var fuseCalibrationPasses = true
  /// Layers the last run found saved in the work folder and did not recompute.
  public private(set) var resumedLayers = 0
  /// Each layer's key center (kv_heads·head_dim, in the smoothed key space) while it is processed; saved with the layer.
  var keyCenters: [Int: [Float]] = [:]
  /// Per-layer key scales (quant.opts.scale_keys) until the layer is saved.
  var keyScales: [Int: [Float]] = [:]

  public init(modelPath: String, recipe: Recipe, cacheRoot: String?) throws {
    self.modelPath = modelPath
    self.recipe = recipe
    plan = try QuantPlan(recipe)
    self.cacheRoot = cacheRoot
  }

  func time<T>(_ stage: String, _ body: () throws -> T) rethrows -> T {
    let t0 = Date()
    let r = try body()
    let dt = Date().timeIntervalSince(t0)
    if let i = timings.firstIndex(where: { $0.0 == stage }) { timings[i].1 += dt } else { timings.append((stage, dt)) }
    return r
  }

  var opened: ModelCheckpoint?

  /// The FP source (HF folder or GGUF) through ModelCheckpoint.open, opened once (the command reads its
  /// configuration for the estimate before the run); nothing is read but headers, config and tokenizer.
  public func open() throws -> ModelCheckpoint {
    if let o = opened { return o }
    let o = try ModelCheckpoint.open(modelPath)
    if o.kind == .quantized { throw QoQError("\(modelPath) is already a quantized checkpoint; quantize its FP source instead") }
    opened = o
    return o
  }

  /// Identity of the input model for the work folder's key: path, file sizes and modification times.
  func modelIdentity() -> String {
    var parts = [URL(fileURLWithPath: modelPath).standardizedFileURL.path]
    let fm = FileManager.default
    let files = modelPath.hasSuffix(".gguf") ? [modelPath]
      : ((try? fm.contentsOfDirectory(atPath: modelPath))?.sorted().map { modelPath + "/" + $0 } ?? [])
    for f in files where f.hasSuffix(".safetensors") || f.hasSuffix(".gguf") || f.hasSuffix("config.json") {
      if let a = try? fm.attributesOfItem(atPath: f) {
        parts.append("\(f):\((a[.size] as? NSNumber)?.intValue ?? 0):\((a[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0)")
      }
    }
    return parts.joined(separator: "|")
  }

  func section(_ path: String) -> String {
    var v: JSONValue? = recipe.tree
    for k in path.split(separator: ".") { v = v?[String(k)] }
    return JSON.serialize(v ?? .null)
  }

  /// The quant section as the key sees it. rotate_keys acts on the KV cache only (the engine and the fake-quantized
  /// model), so the layer units do not depend on it, except where SmoothAttention's GridSearch judges α (or the key
  /// scales' GridSearch their exponent) with the keys quantized: there it stays in the key. calib.activations_dtype
  /// enters the key as "|acts:bf16" (so adding the field left the keys of earlier fp32 runs unchanged).
  var quantKeySection: String {
    guard var q = recipe.tree["quant"]?.object else { return section("quant") }
    if var cal = q["calib"]?.object { cal["activations_dtype"] = nil; q["calib"] = .object(cal) }
    if plan.smoothAttn?.strategy != .gridSearch, !plan.scaleKeysSearch, var o = q["opts"]?.object { o["rotate_keys"] = nil; q["opts"] = .object(o) }
    // scale_keys entered the recipe later: at never it leaves the key as it was (k_scale tensors are in the layer units).
    if var o = q["opts"]?.object, o["scale_keys"]?.string == "never" { o["scale_keys"] = nil; q["opts"] = .object(o) }
    // So did its strategy: at Manual (the exponent ¼) neither it nor its sample size changes a layer.
    if var o = q["opts"]?.object, o["scale_keys_strategy"]?.string ?? "Manual" == "Manual" {
      o["scale_keys_strategy"] = nil; o["scale_keys_sample_size"] = nil; q["opts"] = .object(o)
    }
    return JSON.serialize(.object(q))
  }

  /// The run's key: the model, every quant field that shapes a layer, the seed, the calibration precision and the
  /// pass structure.
  var runKey: String {
    sha256Hex(Array(("stream-v1|" + modelIdentity() + "|quant:" + quantKeySection + "|seed:\(plan.seed)"
                     + (plan.calibBF16 ? "|dtype:bf16" : "") + (plan.calibFP16 ? "|dtype:fp16" : "") + (plan.calibActivationsBF16 ? "|acts:bf16" : "")
                     + (fuseCalibrationPasses ? "" : "|two-pass")).utf8))
  }

  /// What the checkpoint's quantization_config says (static KV scales are filled in after the layers).
  var quantizationConfig: QuantizationConfig {
    let p = plan
    let method = p.smoothProjAlphas != nil ? "awq" : p.rotation != nil && p.actBits == 4 ? "quarot"
      : p.rotation != nil || p.smoothAttn != nil ? "qoq"
      : p.smoothProj != nil ? (p.smoothProjKeys.contains("down_proj") ? "qoq" : "smoothquant") : (p.gptq != nil ? "gptq" : "rtn")
    var qc = QuantizationConfig(method: method, weight: p.weightFormat, actBits: p.actBits, kvBits: p.kvBits, kvGroup: p.kvGroup,
                                kvAsymmetric: p.kvAsymmetric)
    qc.notQuantized = Array(p.weightSkips).sorted()
    return qc
  }

  public func run() throws -> Output {
    let ckpt = try open()
    let (config, source, tokenizer) = (ckpt.config, ckpt.weights, ckpt.tokenizer)
    try plan.check(config)
    let store = try WeightStore(config: config, source: source, lazy: true)
    let rotator = try plan.rotation.map { try Rotator(config: config, options: $0) }
    if rotator != nil { store.untie() }  // the head gets the final norm folded in; the embedding does not
    let L = config.numHiddenLayers, H = config.hiddenSize
    let work = try WorkFolder(root: cacheRoot, key: runKey)
    var qc = quantizationConfig
    qc.kvKeyCenter = plan.centersKeys(config)
    qc.kvKeyRotation = plan.rotatesKeys(config)
    qc.kvKeyScale = plan.scalesKeys(config)
    // The passes: the FP stream for transforms and weight calibration, the quantized stream for static KV ranges.
    let transforms = plan.reorder || plan.smoothAttn != nil || plan.smoothProj != nil || qc.kvKeyCenter || qc.kvKeyScale
    let weightCalib = plan.weightFormat != nil && (plan.gptq != nil || plan.clipStrategy == .gridSearch)
    var streams: [String] = []
    if transforms || weightCalib { streams.append("fp") }
    if plan.kvStatic { streams.append("kv") }
    var start = work.resumePoint(layers: L, calibrated: false, activationsLayer: nil)  // layers saved
    var passes: [String: LayerwisePass] = [:]
    if !streams.isEmpty && start < L {
      let samples = try time("calibration data") { () throws -> [[Int32]] in
        log("calibration: \(plan.calib.numSamples) × \(plan.calib.seqLength) tokens from \(plan.calib.path)")
        return try CalibrationData.samples(plan.calib, tokenizer: tokenizer)
      }
      let bf16 = plan.calibActivationsBF16
      let saved = start > 0 ? try work.loadActivations(streams: streams, samples: samples, bf16: bf16) : nil
      start = work.resumePoint(layers: L, calibrated: true, activationsLayer: saved?.layer)
      if start > 0, let s = saved, s.layer == start - 1 {
        passes = s.1
      } else {
        start = 0
        let first = try embeddingUnit(work, source: source, config: config, rotator: rotator, samples: samples, bf16: bf16)!
        for n in streams { passes[n] = passes.isEmpty ? first : LayerwisePass(copying: first) }
      }
    }
    if work.unit("embed") == nil {
      _ = try embeddingUnit(work, source: source, config: config, rotator: rotator, samples: nil, bf16: false)
    }
    resumedLayers = start
    if start > 0 { log("resuming at layer \(start) of \(L) (\(work.path))") }
    else if !work.temporary { log("finished layers are kept in \(work.path): a killed run resumes there") }
    for l in start..<L {
      try time("load") { try store.load(layer: l) }
      if let r = rotator { time("rotation") { r.rotateLayer(store, layer: l) } }
      let quantized = try processLayer(store, layer: l, pass: passes["fp"], transforms: transforms, weightCalib: weightCalib)
      var meta: [String: String] = [:]
      if let kv = passes["kv"] {
        let s = try time("kv ranges") { try staticKVScales(store, layer: l, quantization: qc, pass: kv) }
        meta["kv_scales"] = s.map { String($0.bitPattern) }.joined(separator: ",")
      }
      try time("save") {
        try work.save(WorkFolder.layerUnit(l), layerTensors(store, layer: l, quantized: quantized), metadata: meta)
        if !passes.isEmpty { try work.saveActivations(after: l, passes, hiddenSize: H) }
      }
      store.drop(layer: l)
      keyCenters[l] = nil
      keyScales[l] = nil
      progress("layers", l + 1, L)
      if stopAfterLayer == l { throw QoQError("stopped after layer \(l)") }
    }
    passes = [:]
    if work.unit("head") == nil { try time("head") { try headUnit(work, source: source, config: config, rotator: rotator) } }
    if plan.kvStatic {
      qc.kvStaticScales = try (0..<L).flatMap { l -> [Float] in
        let v = (work.unit(WorkFolder.layerUnit(l))?.metadata["kv_scales"] ?? "").split(separator: ",").compactMap { UInt32($0) }
        guard v.count == 2 else { throw QoQError("\(work.path): layer \(l) has no static KV scales; rerun the quantization") }
        return v.map { Float(bitPattern: $0) }
      }
    }
    return Output(work: work, config: store.config, quantization: qc, tokenizer: tokenizer, modelPath: modelPath)
  }

  /// The stages of one layer. Fusion: with GPTQ and no weight range search, the transform statistics and the GPTQ
  /// Hessians come from one calibration pass instead of two. Both passes see the same layer inputs (the transforms
  /// are exact), and the one input a layer's own transform changes — down_proj's, permuted and divided by λ —
  /// enters its Hessian as H' = P H Pᵀ / (λλᵀ).
  func processLayer(_ store: WeightStore, layer l: Int, pass: LayerwisePass?, transforms: Bool,
                    weightCalib: Bool) throws -> [String: QuantizedWeight] {
    let fuse = fuseCalibrationPasses && transforms && plan.weightFormat != nil && plan.gptq != nil && plan.clipStrategy != .gridSearch
    var quantized: [String: QuantizedWeight] = [:]
    if transforms, let p = pass {
      quantized = try time(fuse ? "reorder+smooth+weights" : "reorder+smooth") {
        try transformLayer(store, layer: l, pass: p, fused: fuse, advance: fuse || !weightCalib)
      }
    }
    if let format = plan.weightFormat, !fuse {
      quantized = try time("weights") {
        if weightCalib, let p = pass { return try weightLayer(store, layer: l, format: format, pass: p) }
        return try quantizeLayer(store, layer: l, format: format, hessians: nil, sequences: 1)
      }
    }
    return quantized
  }

  /// Layer l's tensors in the checkpoint format: quantized linears (codes, scales; biases F32), every other tensor
  /// (norms, linears left in FP) F32.
  func layerTensors(_ store: WeightStore, layer l: Int, quantized: [String: QuantizedWeight]) -> [StreamedTensor] {
    var out: [StreamedTensor] = []
    for (m, q) in quantized {
      out += QuantizedCheckpoint.tensors(module: m, q).map { b in
        StreamedTensor(name: b.name, dtype: b.dtype, shape: b.shape, byteCount: b.data.count) { try $0.write(contentsOf: b.data) }
      }
    }
    for n in store.layerTensorNames(l) where !(n.hasSuffix(".weight") && quantized[String(n.dropLast(7))] != nil) {
      out.append(StreamedTensor(name: n, shape: tensorShape(n, store.config), floats: store[n]))
    }
    if let kc = keyCenters[l] { out.append(StreamedTensor(name: "model.layers.\(l).self_attn.k_center", shape: [kc.count], floats: kc)) }
    if let ks = keyScales[l] { out.append(StreamedTensor(name: "model.layers.\(l).self_attn.k_scale", shape: [ks.count], floats: ks)) }
    return out
  }

  /// The embedding unit (rotated rows when the recipe rotates), and the calibration samples' embeddings when asked.
  func embeddingUnit(_ work: WorkFolder, source: WeightSource, config c: LlamaConfiguration, rotator: Rotator?,
                     samples: [[Int32]]?, bf16: Bool) throws -> LayerwisePass? {
    try time("embedding") {
      var e = try source.floats("model.embed_tokens.weight")
      rotator?.rotateRows(&e)
      if work.unit("embed") == nil {
        try work.save("embed", [StreamedTensor(name: "model.embed_tokens.weight", shape: [c.vocabSize, c.hiddenSize], floats: e)])
      }
      return try samples.map { try LayerwisePass.embedded(samples: $0, table: e, hiddenSize: c.hiddenSize, bf16: bf16) }
    }
  }

  /// The head unit: the final norm and lm_head (the norm folded into it and its rows rotated when rotating; the
  /// embedding's rows when the source ties them).
  func headUnit(_ work: WorkFolder, source: WeightSource, config c: LlamaConfiguration, rotator: Rotator?) throws {
    var norm = try source.floats("model.norm.weight")
    var t: [StreamedTensor] = []
    if let r = rotator {
      var head = try source.floats(c.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight")
      r.foldAndRotateHead(&head, norm: norm)
      norm = [Float](repeating: 1, count: c.hiddenSize)
      t.append(StreamedTensor(name: "lm_head.weight", shape: [c.vocabSize, c.hiddenSize], floats: head))
    } else if !c.tieWordEmbeddings {
      t.append(StreamedTensor(name: "lm_head.weight", shape: [c.vocabSize, c.hiddenSize], floats: try source.floats("lm_head.weight")))
    }
    t.append(StreamedTensor(name: "model.norm.weight", shape: [c.hiddenSize], floats: norm))
    try work.save("head", t)
  }
}

// `qoq quantize`: the stages in deepcompressor's order (rotate → reorder → smooth → weights; activations and KV
// are quantized at run time), each with progress, each cached on disk so a rerun skips finished stages
// (a stage's cache key hashes the model, the calibration and every recipe field that stage depends on).
// Reorder and smoothing share one calibration pass: both are exact transforms whose statistics (down_proj input
// absmax, post-RoPE Q/K absmax) are permuted, not changed, by reordering — the same result as two passes.
import Foundation
import QoQEval
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
  /// Seconds per stage, for reports.
  public private(set) var timings: [(String, Double)] = []

  public init(modelPath: String, recipe: Recipe, cacheRoot: String?) throws {
    self.modelPath = modelPath
    self.recipe = recipe
    plan = try QuantPlan(recipe)
    self.cacheRoot = cacheRoot
  }

  public struct Output {
    public let store: WeightStore
    public let quantized: [String: QuantizedWeight]
    public let tokenizer: Tokenizer
    public let quantization: QuantizationConfig
  }

  /// Loads the FP model as a weight store plus its tokenizer (HF folder or GGUF).
  func loadSource() throws -> (WeightStore, Tokenizer, String) {
    if modelPath.hasSuffix(".gguf") {
      let g = try GGUFFile(path: modelPath)
      let src = try GGUFWeights(g)
      return (try WeightStore(config: src.config, source: src), try Tokenizer.load(gguf: g), modelPath)
    }
    let config = try LlamaConfiguration.load(path: modelPath + "/config.json")
    let w = try CheckpointWeights(folder: modelPath)
    return (try WeightStore(config: config, source: w), try Tokenizer.load(folder: modelPath), modelPath)
  }

  /// Identity of the input model for cache keys: path, file sizes and modification times.
  func modelIdentity() -> String {
    var parts = [URL(fileURLWithPath: modelPath).standardizedFileURL.path]
    let fm = FileManager.default
    let files = modelPath.hasSuffix(".gguf") ? [modelPath] : ((try? fm.contentsOfDirectory(atPath: modelPath))?.sorted().map { modelPath + "/" + $0 } ?? [])
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

  public func run() throws -> Output {
    let (store, tokenizer, source) = try loadSource()
    try plan.check(store.config)
    var samples: [[Int32]]? = nil
    func calibration() throws -> [[Int32]] {
      if let s = samples { return s }
      let t0 = Date()
      log("calibration: \(plan.calib.numSamples) × \(plan.calib.seqLength) tokens from \(plan.calib.path)")
      let s = try CalibrationData.samples(plan.calib, tokenizer: tokenizer)
      samples = s
      timings.append(("calibration data", Date().timeIntervalSince(t0)))
      return s
    }
    let cache = cacheRoot.map { StageCache(root: $0) }
    var key = sha256Hex(Array((modelIdentity() + "|calib:" + section("quant.calib") + "|seed:\(plan.seed)").utf8))
    var quantized: [String: QuantizedWeight] = [:]

    func stage(_ name: String, deps: String, _ body: () throws -> Void) throws {
      key = sha256Hex(Array((key + "|" + name + ":" + deps).utf8))
      if let c = cache, try c.load(key: key, into: store, quantized: &quantized) {
        log("\(name): cached (\(c.root)/\(key.prefix(16)))")
        return
      }
      let t0 = Date()
      try body()
      let dt = Date().timeIntervalSince(t0)
      timings.append((name, dt))
      log(String(format: "%@: done in %.1f s", name, dt))
      try cache?.save(key: key, stage: name, store: store, quantized: quantized)
    }

    if let ro = plan.rotation {
      try stage("rotation", deps: section("quant.enable_rotation") + section("quant.rotation")) {
        let d = try RotationStage.apply(store, options: ro)
        log("rotation: \(d)")
      }
    }
    if plan.reorder || plan.smoothAttn != nil || plan.smoothProj != nil {
      try stage("reorder+smooth", deps: section("quant.enable_reorder") + section("quant.reorder") + section("quant.enable_smooth") + section("quant.smooth")) {
        try transformPass(store, samples: try calibration())
      }
    }
    if plan.weightFormat != nil {
      try stage("weights", deps: section("quant.wgts")) {
        quantized = try weightPass(store, samples: plan.gptq != nil ? try calibration() : nil)
      }
    }
    var qc = QuantizationConfig(method: plan.rotation != nil || plan.smoothProj != nil ? "qoq" : (plan.gptq != nil ? "gptq" : "rtn"),
                                weight: plan.weightFormat, actBits: plan.actBits, kvBits: plan.kvBits, kvGroup: plan.kvGroup,
                                kvAsymmetric: plan.kvAsymmetric)
    qc.notQuantized = Array(plan.weightSkips).sorted()
    _ = source
    return Output(store: store, quantized: quantized, tokenizer: tokenizer, quantization: qc)
  }

  /// One calibration pass: down_proj input, post-RoPE Q/K absmax per layer → reorder, SmoothAttention, SmoothLinear.
  func transformPass(_ store: WeightStore, samples: [[Int32]]) throws {
    let model = try store.model()
    let c = store.config
    var down = AbsMaxAccumulator(width: c.intermediateSize), q = AbsMaxAccumulator(width: c.qDim), k = AbsMaxAccumulator(width: c.kvDim)
    try LayerwisePass(samples: samples).run(model: model, points: [.downInput, .qRope, .kRope]) { _, cap in
      down.add(cap[.downInput]); q.add(cap[.qRope]); k.add(cap[.kRope])
    } finish: { l in
      var dmax = down.values
      if plan.reorder {
        let perm = ReorderStage.apply(store, layer: l, downInputAbsMax: dmax)
        dmax = perm.map { dmax[$0] }
      }
      if let sa = plan.smoothAttn {
        SmoothStage.attention(store, layer: l, qAbsMax: q.values, kAbsMax: k.values, alpha: sa.alpha, beta: sa.beta)
      }
      if let sp = plan.smoothProj {
        SmoothStage.down(store, layer: l, inputAbsMax: dmax, alpha: sp.alpha, beta: sp.beta)
      }
      down = AbsMaxAccumulator(width: c.intermediateSize); q = AbsMaxAccumulator(width: c.qDim); k = AbsMaxAccumulator(width: c.kvDim)
    } progress: { l, n in self.progress("reorder+smooth", l, n) }
  }

  /// Weight quantization of every decoder linear: static parameters from the (clipped) range, then GPTQ (with
  /// Hessians from FP-propagated calibration inputs) or round-to-nearest. The store gets the dequantized weights.
  func weightPass(_ store: WeightStore, samples: [[Int32]]?) throws -> [String: QuantizedWeight] {
    guard let format = plan.weightFormat else { return [:] }
    let c = store.config
    var out: [String: QuantizedWeight] = [:]
    func key(_ module: String) -> String {
      if module.hasSuffix("q_proj") || module.hasSuffix("k_proj") || module.hasSuffix("v_proj") { return "qkv_proj" }
      if module.hasSuffix("o_proj") { return "out_proj" }
      if module.hasSuffix("gate_proj") || module.hasSuffix("up_proj") { return "up_proj" }
      return "down_proj"
    }
    func quantizeLayer(_ l: Int, hessians: [String: HessianAccumulator]?) throws {
      var inverses: [String: GPTQInverse] = [:]  // one per distinct input: q/k/v share, gate/up share
      for m in store.linearNames(layer: l) where !plan.weightSkips.contains(key(m)) {
        let (o, i) = store.linearShape(m)
        let w = store[m + ".weight"]
        let ratios: [Float]? = plan.clipRatio < 1 && !plan.clipSkips.contains(key(m)) ? [Float(plan.clipRatio)] : nil
        let qz = WeightQuantizer(weight: w, out: o, inp: i, format: format, ratios: ratios)
        let q: QuantizedWeight
        if let hs = hessians, let gopts = plan.gptq {
          let hk = m.hasSuffix("o_proj") ? "o" : m.hasSuffix("down_proj") ? "down" : (key(m) == "qkv_proj" ? "attn" : "mlp")
          if inverses[hk] == nil {
            inverses[hk] = try GPTQInverse(hessian: hs[hk]!.hessian(sequences: samples?.count ?? 1), size: i, options: gopts)
          }
          q = try gptq(weight: w, inverse: inverses[hk]!, quantizer: qz, options: gopts).weight
        } else {
          q = qz.rtn(w)
        }
        store[m + ".weight"] = q.dequantized()
        out[m] = q
      }
    }
    if let s = samples, plan.gptq != nil {
      let model = try store.model()
      var hs: [String: HessianAccumulator] = [:]
      func reset() {
        hs = ["attn": HessianAccumulator(size: c.hiddenSize), "o": HessianAccumulator(size: c.qDim),
              "mlp": HessianAccumulator(size: c.hiddenSize), "down": HessianAccumulator(size: c.intermediateSize)]
      }
      reset()
      try LayerwisePass(samples: s).run(model: model, points: [.attnInput, .oProjInput, .mlpInput, .downInput]) { _, cap in
        for (k, p) in [("attn", LayerCapture.Point.attnInput), ("o", .oProjInput), ("mlp", .mlpInput), ("down", .downInput)] {
          let x = cap[p]
          x.withUnsafeBufferPointer { hs[k]!.add($0.baseAddress!, rows: x.count / hs[k]!.size) }
        }
      } finish: { l in
        try quantizeLayer(l, hessians: hs)
        reset()
      } progress: { l, n in self.progress("weights (GPTQ)", l, n) }
    } else {
      for l in 0..<c.numHiddenLayers {
        try quantizeLayer(l, hessians: nil)
        progress("weights (RTN)", l + 1, c.numHiddenLayers)
      }
    }
    return out
  }

  /// The fake-quantized model of a finished run (weights already dequantized in the store).
  public static func fakeQuantModel(_ o: Output) throws -> LlamaModel {
    let q = o.quantization
    let model = try o.store.model { _, w, out, inp, b in
      let dense = DenseLinear(weight: w, outFeatures: out, inFeatures: inp, bias: b)
      if let ab = q.actBits { return ActQuantLinear(dense, bits: ab) }
      return dense
    }
    if let kb = q.kvBits { model.kvQuantizer = KVFakeQuant(bits: kb, group: q.kvGroup ?? o.store.config.kvDim, asymmetric: q.kvAsymmetric) }
    return model
  }
}

/// Stage snapshots: the whole weight store (and quantized weights) after a stage, keyed by the chained hash.
final class StageCache {
  let root: String
  init(root: String) { self.root = root }

  func path(_ key: String) -> String { root + "/" + String(key.prefix(32)) }

  func save(key: String, stage: String, store: WeightStore, quantized: [String: QuantizedWeight]) throws {
    let dir = path(key)
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    var blobs: [TensorBlob] = store.tensors.map { TensorBlob(name: $0.key, shape: [$0.value.count], floats: $0.value) }
    for (m, q) in quantized {
      blobs += QuantizedCheckpoint.tensorsForCache(module: m, q)
    }
    try SafeTensorsWriter.write(blobs, metadata: ["stage": stage, "key": key, "tied": store.config.tieWordEmbeddings ? "1" : "0"],
                                to: dir + "/snapshot.safetensors")
  }

  func load(key: String, into store: WeightStore, quantized: inout [String: QuantizedWeight]) throws -> Bool {
    let p = path(key) + "/snapshot.safetensors"
    guard FileManager.default.fileExists(atPath: p), let st = try? SafeTensorsFile(path: p), st.metadata["key"] == key else { return false }
    if st.metadata["tied"] == "0" { store.untie() }
    for name in store.tensorNames { store[name] = try st.floats(name) }
    quantized = try QuantizedCheckpoint.quantizedFromCache(st)
    return true
  }
}

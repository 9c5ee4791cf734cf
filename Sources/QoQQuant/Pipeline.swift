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
  /// Stops with an error right after this stage has been cached (simulates a run killed midway; tests).
  public var stopAfter: String?
  /// Seconds per stage, for reports.
  public private(set) var timings: [(String, Double)] = []
  /// One calibration pass for the transforms and GPTQ when the recipe allows it (see `run`); false = two passes.
  public var fuseCalibrationPasses = true

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
  func loadSource() throws -> (WeightStore, Tokenizer) {
    if modelPath.hasSuffix(".gguf") {
      let g = try GGUFFile(path: modelPath)
      let src = try GGUFWeights(g)
      return (try WeightStore(config: src.config, source: src), try Tokenizer.load(gguf: g))
    }
    let config = try LlamaConfiguration.load(path: modelPath + "/config.json")
    let w = try CheckpointWeights(folder: modelPath)
    return (try WeightStore(config: config, source: w), try Tokenizer.load(folder: modelPath))
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
    let (store, tokenizer) = try loadSource()
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
    // model.dtype decides the precision of every calibration pass (bf16 or fp32), so it is part of every stage's key.
    var key = sha256Hex(Array((modelIdentity() + "|calib:" + section("quant.calib") + "|seed:\(plan.seed)" +
                               (plan.calibBF16 ? "|dtype:bf16" : "")).utf8))
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
      if stopAfter == name { throw QoQError("stopped after stage \(name)") }
    }

    if let ro = plan.rotation {
      try stage("rotation", deps: section("quant.enable_rotation") + section("quant.rotation")) {
        let d = try RotationStage.apply(store, options: ro)
        log("rotation: \(d)")
      }
    }
    let transforms = plan.reorder || plan.smoothAttn != nil || plan.smoothProj != nil
    let transformDeps = section("quant.enable_reorder") + section("quant.reorder") + section("quant.enable_smooth") + section("quant.smooth")
    // Fusion: with GPTQ and no weight range search, the transform statistics and the GPTQ Hessians come from one
    // calibration pass instead of two. Both passes see the same layer inputs (the transforms are exact; the next
    // layer always gets FP outputs), and the one input a layer's own transform changes — down_proj's, permuted and
    // divided by λ — enters its Hessian as H' = P H Pᵀ / (λλᵀ). Both stages are still cached separately.
    let fuse = fuseCalibrationPasses && transforms && plan.weightFormat != nil && plan.gptq != nil && plan.clipStrategy != .gridSearch
    if fuse {
      let k1 = sha256Hex(Array((key + "|reorder+smooth:" + transformDeps).utf8))
      let k2 = sha256Hex(Array((k1 + "|weights:" + section("quant.wgts")).utf8))
      if let c = cache, try c.load(key: k2, into: store, quantized: &quantized) {
        log("reorder+smooth: cached (\(c.root)/\(k1.prefix(16)))")
        log("weights: cached (\(c.root)/\(k2.prefix(16)))")
        key = k2
      } else if let c = cache, try c.load(key: k1, into: store, quantized: &quantized) {
        log("reorder+smooth: cached (\(c.root)/\(k1.prefix(16)))")
        key = k1
        try stage("weights", deps: section("quant.wgts")) { quantized = try weightPass(store, samples: try calibration()) }
      } else {
        let t0 = Date()
        let transformed = try transformPass(store, samples: try calibration(), fusedQuantization: &quantized)
        let dt = Date().timeIntervalSince(t0)
        timings.append(("reorder+smooth+weights", dt))
        log(String(format: "reorder+smooth+weights (one calibration pass): done in %.1f s", dt))
        // Snapshot 1: the transformed FP weights, as the separate transform stage would have left them.
        var current: [String: [Float]] = [:]
        for (n, v) in transformed { current[n] = store[n]; store[n] = v }
        try cache?.save(key: k1, stage: "reorder+smooth", store: store, quantized: [:])
        for (n, v) in current { store[n] = v }
        if stopAfter == "reorder+smooth" { throw QoQError("stopped after stage reorder+smooth") }
        try cache?.save(key: k2, stage: "weights", store: store, quantized: quantized)
        key = k2
        if stopAfter == "weights" { throw QoQError("stopped after stage weights") }
      }
    } else if transforms {
      try stage("reorder+smooth", deps: transformDeps) {
        var none: [String: QuantizedWeight] = [:]
        _ = try transformPass(store, samples: try calibration(), fusedQuantization: &none, fused: false)
      }
    }
    if plan.weightFormat != nil && !fuse {
      try stage("weights", deps: section("quant.wgts")) {
        quantized = try weightPass(store, samples: plan.gptq != nil || plan.clipStrategy == .gridSearch ? try calibration() : nil)
      }
    }
    let method = plan.smoothProjAlphas != nil ? "awq" : plan.rotation != nil && plan.actBits == 4 ? "quarot" : plan.rotation != nil || plan.smoothAttn != nil ? "qoq"
      : plan.smoothProj != nil ? (plan.smoothProjKeys.contains("down_proj") ? "qoq" : "smoothquant") : (plan.gptq != nil ? "gptq" : "rtn")
    var qc = QuantizationConfig(method: method,
                                weight: plan.weightFormat, actBits: plan.actBits, kvBits: plan.kvBits, kvGroup: plan.kvGroup,
                                kvAsymmetric: plan.kvAsymmetric)
    qc.notQuantized = Array(plan.weightSkips).sorted()
    if plan.kvStatic {
      let t0 = Date()
      qc.kvStaticScales = try staticKVScales(store, quantization: qc, samples: try calibration())
      timings.append(("kv ranges", Date().timeIntervalSince(t0)))
      log(String(format: "kv ranges (static, per tensor): done in %.1f s", Date().timeIntervalSince(t0)))
    }
    return Output(store: store, quantized: quantized, tokenizer: tokenizer, quantization: qc)
  }

  /// One calibration pass: down_proj input, post-RoPE Q/K absmax per layer → reorder, SmoothAttention (Manual, or
  /// GridSearch over deepcompressor's (α, β) candidates minimising the attention output error with K quantized),
  /// SmoothLinear.
  /// The model the calibration passes run: fp32, or bf16 linears when model.dtype is torch.bfloat16.
  func calibrationModel(_ store: WeightStore) throws -> LlamaModel {
    guard plan.calibBF16 else { return try store.model() }
    return try store.model { _, w, out, inp, b in BF16Linear(weight: w, outFeatures: out, inFeatures: inp, bias: b) }
  }

  /// `fused`: also accumulates the GPTQ Hessians and quantizes each layer right after its transforms (into
  /// `fusedQuantization`); returns the transformed FP tensors of every layer (for the transform stage's snapshot).
  @discardableResult
  func transformPass(_ store: WeightStore, samples: [[Int32]], fusedQuantization: inout [String: QuantizedWeight],
                     fused: Bool = true) throws -> [String: [Float]] {
    let model = try calibrationModel(store)
    let c = store.config
    var down = AbsMaxAccumulator(width: c.intermediateSize), q = AbsMaxAccumulator(width: c.qDim), k = AbsMaxAccumulator(width: c.kvDim)
    let grid = plan.smoothAttn?.strategy == .gridSearch
    let searchSeqs = min(samples.count, plan.smoothAttnSamples)
    var searchInput: [Float] = []  // attention inputs (normed) of the first `searchSeqs` sequences
    var transformed: [String: [Float]] = [:]
    func newHessians() -> [String: HessianAccumulator] {
      fused ? ["attn": HessianAccumulator(size: c.hiddenSize), "o": HessianAccumulator(size: c.qDim),
               "mlp": HessianAccumulator(size: c.hiddenSize), "down": HessianAccumulator(size: c.intermediateSize)] : [:]
    }
    var hs = newHessians()
    let hessianPoints: [(String, LayerCapture.Point)] = [("attn", .attnInput), ("o", .oProjInput), ("mlp", .mlpInput), ("down", .downInput)]
    let smoothKeys = plan.smoothProj == nil ? [] : plan.smoothProjKeys
    var attnIn = AbsMaxAccumulator(width: c.hiddenSize), mlpIn = AbsMaxAccumulator(width: c.hiddenSize)
    var points: Set<LayerCapture.Point> = [.downInput, .qRope, .kRope]
    if smoothKeys.contains("qkv_proj") { points.insert(.attnInput) }
    if smoothKeys.contains("up_proj") { points.insert(.mlpInput) }
    // AWQ: spans over every token, module inputs of the first sequences for the output-error searches.
    let awq = plan.smoothProjAlphas != nil
    let awqSeqs = min(samples.count, plan.smoothProjSamples)
    var awqIn: [LayerCapture.Point: [Float]] = [:]
    var oSpan = AbsMaxAccumulator(width: c.qDim)
    var seen = 0
    if awq { points.formUnion([.attnInput, .oProjInput, .mlpInput]) }
    if grid || fused { points.insert(.attnInput) }
    if fused { points.formUnion([.oProjInput, .mlpInput]) }
    let pass = LayerwisePass(samples: samples)
    try pass.run(model: model, points: points) { _, cap in
      down.add(cap[.downInput]); q.add(cap[.qRope]); k.add(cap[.kRope])
      if smoothKeys.contains("qkv_proj") || awq { attnIn.add(cap[.attnInput]) }
      if smoothKeys.contains("up_proj") || awq { mlpIn.add(cap[.mlpInput]) }
      if awq {
        oSpan.add(cap[.oProjInput])
        let rows = cap[.attnInput].count / c.hiddenSize, per = rows / max(1, samples[0].count)
        if seen < awqSeqs {
          let take = min(per, awqSeqs - seen) * samples[0].count
          for (pt, w) in [(LayerCapture.Point.attnInput, c.hiddenSize), (.oProjInput, c.qDim), (.mlpInput, c.hiddenSize), (.downInput, c.intermediateSize)] {
            awqIn[pt, default: []] += cap[pt].prefix(take * w)
          }
        }
        seen += per
      }
      for (name, p) in hessianPoints {
        guard let acc = hs[name] else { continue }
        let x = cap[p]
        x.withUnsafeBufferPointer { acc.add($0.baseAddress!, rows: x.count / acc.size) }
      }
      if grid && searchInput.count < searchSeqs * samples[0].count * c.hiddenSize {
        let need = searchSeqs * samples[0].count * c.hiddenSize - searchInput.count
        searchInput += cap[.attnInput].prefix(need)
      }
    } finish: { l in
      var dmax = down.values
      if plan.reorder {
        let perm = ReorderStage.apply(store, layer: l, downInputAbsMax: dmax)
        dmax = perm.map { dmax[$0] }
        hs["down"]?.inputPermutation = perm
      }
      if let sa = plan.smoothAttn {
        var (alpha, beta) = (sa.alpha, sa.beta)
        if sa.strategy == .gridSearch {
          (alpha, beta) = try searchSmoothAttention(store, model: model, layer: l, qAbsMax: q.values, kAbsMax: k.values,
                                                    h: searchInput, lengths: Array(samples.prefix(searchSeqs).map(\.count)))
          log("layer \(l): SmoothAttention α = \(alpha), β = \(beta)")
        }
        if alpha != 0 || beta != 0 {
          SmoothStage.attention(store, layer: l, qAbsMax: q.values, kAbsMax: k.values, alpha: alpha, beta: beta)
        }
      }
      if let alphas = plan.smoothProjAlphas, let format = plan.weightFormat {
        let chosen = try awqLayer(store, model: model, layer: l, format: format, keys: smoothKeys,
                                  attnIn: awqIn[.attnInput] ?? [], oIn: awqIn[.oProjInput] ?? [], mlpIn: awqIn[.mlpInput] ?? [],
                                  downIn: awqIn[.downInput] ?? [], lengths: Array(samples.prefix(awqSeqs).map(\.count)),
                                  spans: (attnIn.values, oSpan.values, mlpIn.values, dmax), candidates: alphas)
        log("layer \(l): AWQ α " + chosen.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
      } else if let sp = plan.smoothProj {
        if smoothKeys.contains("down_proj") {
          // (Evaluated before the assignment: `hs["down"]?.x = f()` would skip f() when there is no Hessian.)
          let lam = SmoothStage.down(store, layer: l, inputAbsMax: dmax, alpha: sp.alpha, beta: sp.beta)
          hs["down"]?.inputDivisor = lam
        }
        // SmoothQuant: norm → linears. The captured attention/MLP inputs are divided by λ; their Hessians too.
        for (key, acc, h) in [("qkv_proj", attnIn, "attn"), ("up_proj", mlpIn, "mlp")] where smoothKeys.contains(key) {
          let lam = SmoothStage.normLinear(store, layer: l, key: key, inputAbsMax: acc.values, alpha: sp.alpha, beta: sp.beta)
          hs[h]?.inputDivisor = lam
        }
      }
      if fused, let format = plan.weightFormat {
        let prefix = "model.layers.\(l)."
        for n in store.tensorNames where n.hasPrefix(prefix) { transformed[n] = store[n] }
        fusedQuantization.merge(try quantizeLayer(store, layer: l, format: format, hessians: hs, sequences: samples.count)) { $1 }
      }
      hs = newHessians()
      attnIn = AbsMaxAccumulator(width: c.hiddenSize); mlpIn = AbsMaxAccumulator(width: c.hiddenSize)
      oSpan = AbsMaxAccumulator(width: c.qDim); awqIn = [:]; seen = 0
      down = AbsMaxAccumulator(width: c.intermediateSize); q = AbsMaxAccumulator(width: c.qDim); k = AbsMaxAccumulator(width: c.kvDim)
      searchInput = []
    } progress: { l, n in self.progress(fused ? "reorder+smooth+weights (GPTQ)" : "reorder+smooth", l, n) }
    return transformed
  }

  /// The (α, β) whose SmoothAttention gives the smallest attention-output error with K fake-quantized.
  func searchSmoothAttention(_ store: WeightStore, model: LlamaModel, layer l: Int, qAbsMax: [Float], kAbsMax: [Float],
                             h: [Float], lengths: [Int]) throws -> (Double, Double) {
    guard let sa = plan.smoothAttn, let kb = plan.kvBits else { return (0, 0) }
    let c = store.config, base = model.layers[l]
    let kq = KVFakeQuant(bits: kb, group: plan.kvGroup ?? c.kvDim, asymmetric: plan.kvAsymmetric)
    let reference = try model.attentionOutput(base, h: h, lengths: lengths)
    var best = (0.0, 0.0), bestErr = Double.infinity
    for (a, b) in SmoothStage.alphaBetaCandidates(alpha: sa.alpha, beta: sa.beta, grids: sa.grids) {
      let (lq, lk) = (a == 0 && b == 0) ? ([Float](repeating: 1, count: c.qDim), [Float](repeating: 1, count: c.kvDim))
        : SmoothStage.attentionScales(c, qAbsMax: qAbsMax, kAbsMax: kAbsMax, alpha: a, beta: b)
      let t = SmoothStage.scaledQK(store, layer: l, lamQ: lq, lamKV: lk)
      let layer = DecoderLayer(inputLayernorm: base.inputLayernorm, postAttentionLayernorm: base.postAttentionLayernorm,
                               qProj: DenseLinear(weight: t.wq, outFeatures: c.qDim, inFeatures: c.hiddenSize, bias: t.bq),
                               kProj: DenseLinear(weight: t.wk, outFeatures: c.kvDim, inFeatures: c.hiddenSize, bias: t.bk),
                               vProj: base.vProj, oProj: base.oProj, gateProj: base.gateProj, upProj: base.upProj, downProj: base.downProj)
      let y = try model.attentionOutput(layer, h: h, lengths: lengths, kvTransform: kq, keysOnly: true)
      var e = 0.0
      for i in 0..<y.count { let d = Double(y[i] - reference[i]); e += d * d }
      if e < bestErr { bestErr = e; best = (a, b) }
    }
    return best
  }

  /// Weight quantization of every decoder linear: static parameters from the (clipped) range, then GPTQ (with
  /// Hessians from FP-propagated calibration inputs) or round-to-nearest. The store gets the dequantized weights.
  func weightPass(_ store: WeightStore, samples: [[Int32]]?) throws -> [String: QuantizedWeight] {
    guard let format = plan.weightFormat else { return [:] }
    let c = store.config
    var out: [String: QuantizedWeight] = [:]
    func quantizeLayer(_ l: Int, hessians: [String: HessianAccumulator]?, searched: [String: [Float]] = [:]) throws {
      out.merge(try self.quantizeLayer(store, layer: l, format: format, hessians: hessians, sequences: samples?.count ?? 1,
                                       searched: searched)) { $1 }
    }
    let grid = plan.clipStrategy == .gridSearch
    if let s = samples, plan.gptq != nil || grid {
      let model = try calibrationModel(store)
      var hs: [String: HessianAccumulator] = [:]
      // Grid search inputs: the 512-token subsample of each module input, and whole attention inputs of the first
      // sequences for the q/k attention-output objective.
      let totalRows = s.reduce(0) { $0 + $1.count }
      let wanted = Set(RangeSearch.subsampleRows(total: totalRows))
      let qkSeqs = min(s.count, plan.clipSamples)
      var sub: [String: [Float]] = [:], qkInput: [Float] = []
      var rowBase = 0
      func reset() {
        hs = plan.gptq == nil ? [:] : ["attn": HessianAccumulator(size: c.hiddenSize), "o": HessianAccumulator(size: c.qDim),
                                       "mlp": HessianAccumulator(size: c.hiddenSize), "down": HessianAccumulator(size: c.intermediateSize)]
        sub = [:]; qkInput = []; rowBase = 0
      }
      reset()
      let points: [(String, LayerCapture.Point)] = [("attn", .attnInput), ("o", .oProjInput), ("mlp", .mlpInput), ("down", .downInput)]
      try LayerwisePass(samples: s).run(model: model, points: [.attnInput, .oProjInput, .mlpInput, .downInput]) { _, cap in
        var rows = 0
        for (k, p) in points {
          let x = cap[p]
          let width = k == "o" ? c.qDim : k == "down" ? c.intermediateSize : c.hiddenSize
          rows = x.count / width
          if let acc = hs[k] { x.withUnsafeBufferPointer { acc.add($0.baseAddress!, rows: rows) } }
          if grid {
            for r in 0..<rows where wanted.contains(rowBase + r) { sub[k, default: []] += x[(r * width)..<((r + 1) * width)] }
            if k == "attn" && qkInput.count < qkSeqs * s[0].count * width {
              qkInput += x.prefix(qkSeqs * s[0].count * width - qkInput.count)
            }
          }
        }
        rowBase += rows
      } finish: { l in
        var searched: [String: [Float]] = [:]
        if grid {
          let cands = RangeSearch.ratios(maxShrink: plan.clipMaxShrink, numGrids: plan.clipNumGrids)
          let lengths = Array(s.prefix(qkSeqs).map(\.count))
          let reference = try model.attentionOutput(model.layers[l], h: qkInput, lengths: lengths)
          for m in store.linearNames(layer: l) where !plan.weightSkips.contains(key(m)) && !plan.clipSkips.contains(key(m)) {
            let (o, i) = store.linearShape(m)
            if (m.hasSuffix("q_proj") || m.hasSuffix("k_proj")) && !plan.clipProducts {
              searched[m] = [try RangeSearch.attentionOutputs(model: model, layer: l, store: store, module: m, format: format,
                                                              h: qkInput, lengths: lengths, reference: reference, candidates: cands)]
            } else {
              let k = m.hasSuffix("o_proj") ? "o" : m.hasSuffix("down_proj") ? "down" : key(m) == "qkv_proj" ? "attn" : "mlp"
              searched[m] = RangeSearch.productsError(weight: store[m + ".weight"], out: o, inp: i, format: format,
                                                      inputs: sub[k] ?? [], candidates: cands)
            }
          }
        }
        try quantizeLayer(l, hessians: plan.gptq == nil ? nil : hs, searched: searched)
        reset()
      } progress: { l, n in self.progress(self.plan.gptq != nil ? "weights (GPTQ)" : "weights (range search)", l, n) }
    } else {
      for l in 0..<c.numHiddenLayers {
        try quantizeLayer(l, hessians: nil)
        progress("weights (RTN)", l + 1, c.numHiddenLayers)
      }
    }
    return out
  }

  /// deepcompressor's module key of a linear (for skips).
  func key(_ module: String) -> String {
    if module.hasSuffix("q_proj") || module.hasSuffix("k_proj") || module.hasSuffix("v_proj") { return "qkv_proj" }
    if module.hasSuffix("o_proj") { return "out_proj" }
    if module.hasSuffix("gate_proj") || module.hasSuffix("up_proj") { return "up_proj" }
    return "down_proj"
  }

  /// Quantizes the linears of layer l: static parameters from the (clipped) range, then GPTQ with the layer's
  /// Hessians (keys attn, o, mlp, down) or round-to-nearest. The store gets the dequantized weights.
  func quantizeLayer(_ store: WeightStore, layer l: Int, format: WeightFormat, hessians: [String: HessianAccumulator]?,
                     sequences: Int, searched: [String: [Float]] = [:]) throws -> [String: QuantizedWeight] {
    var out: [String: QuantizedWeight] = [:]
    var inverses: [String: GPTQInverse] = [:]  // one per distinct input: q/k/v share, gate/up share
    for m in store.linearNames(layer: l) where !plan.weightSkips.contains(key(m)) {
      let (o, i) = store.linearShape(m)
      let w = store[m + ".weight"]
      let ratios: [Float]? = searched[m] ?? (plan.clipRatio < 1 && !plan.clipSkips.contains(key(m)) ? [Float(plan.clipRatio)] : nil)
      let qz = WeightQuantizer(weight: w, out: o, inp: i, format: format, ratios: ratios)
      let q: QuantizedWeight
      if let hs = hessians, let gopts = plan.gptq {
        let hk = m.hasSuffix("o_proj") ? "o" : m.hasSuffix("down_proj") ? "down" : (key(m) == "qkv_proj" ? "attn" : "mlp")
        if inverses[hk] == nil {
          inverses[hk] = try GPTQInverse(hessian: hs[hk]!.hessian(sequences: sequences), size: i, options: gopts)
        }
        q = try gptq(weight: w, inverse: inverses[hk]!, quantizer: qz, options: gopts).weight
      } else {
        q = qz.rtn(w)
      }
      store[m + ".weight"] = q.dequantized()
      out[m] = q
    }
    return out
  }

  /// SmoothQuant-static KV ranges: absmax of post-RoPE K and of V per layer over the calibration set, through the
  /// model with quantized weights and activations (KV still FP), as deepcompressor calibrates activation ranges after
  /// the weights. Scale = fp16(absmax / qmax) (0 → 1); (K, V) per layer.
  func staticKVScales(_ store: WeightStore, quantization qc: QuantizationConfig, samples: [[Int32]]) throws -> [Float] {
    var noKV = qc
    noKV.kvBits = nil
    let model = try noKV.fakeQuantModel(config: store.config, weights: store)
    let qmax = Float((1 << ((qc.kvBits ?? 8) - 1)) - 1)
    var scales: [Float] = []
    var km: Float = 0, vm: Float = 0
    try LayerwisePass(samples: samples).run(model: model, points: [.kRope, .vOutput]) { _, cap in
      for x in cap[.kRope] { km = max(km, abs(x)) }
      for x in cap[.vOutput] { vm = max(vm, abs(x)) }
    } finish: { _ in
      for m in [km, vm] { var sc = fp16Round(m / qmax); if sc == 0 { sc = 1 }; scales.append(sc) }
      km = 0; vm = 0
    } progress: { l, n in self.progress("kv ranges", l, n) }
    return scales
  }

  /// The fake-quantized model of a finished run (weights already dequantized in the store).
  public static func fakeQuantModel(_ o: Output) throws -> LlamaModel {
    try o.quantization.fakeQuantModel(config: o.store.config, weights: o.store)
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

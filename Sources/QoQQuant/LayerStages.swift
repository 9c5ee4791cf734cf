// The per-layer stages of the streaming quantizer (deepcompressor.md §2): each runs on one decoder layer held in the
// (lazy) weight store, with that layer's calibration inputs from a LayerwisePass, and leaves the layer transformed
// and/or quantized in the store. Reorder and smoothing share one calibration pass: both are exact transforms whose
// statistics (down_proj input absmax, post-RoPE Q/K absmax) are permuted, not changed, by reordering.
import Foundation
import QoQFormat
import QoQIO
import QoQModels

extension QuantizationPipeline {
  /// The model the calibration passes run for layer l: fp32, bf16 linears when model.dtype is torch.bfloat16, or
  /// fp16-emulated linears when it is torch.float16.
  func calibrationModel(_ store: WeightStore, layer l: Int) throws -> LlamaModel {
    if plan.calibFP16 {
      return try store.layerModel(l) { _, w, out, inp, b in FP16EmulatedLinear(weight: w, outFeatures: out, inFeatures: inp, bias: b) }
    }
    guard plan.calibBF16 else { return try store.layerModel(l) }
    return try store.layerModel(l) { _, w, out, inp, b in BF16Linear(weight: w, outFeatures: out, inFeatures: inp, bias: b) }
  }

  /// One calibration pass over layer l: down_proj input, post-RoPE Q/K absmax → reorder, SmoothAttention (Manual, or
  /// GridSearch over deepcompressor's (α, β) candidates minimising the attention output error with K quantized),
  /// SmoothLinear. `fused`: also accumulates the GPTQ Hessians and quantizes the layer right after its transforms
  /// (returned). `advance`: the layer's FP outputs become the pass's inputs for the next layer.
  func transformLayer(_ store: WeightStore, layer l: Int, pass: LayerwisePass, fused: Bool, advance: Bool) throws -> [String: QuantizedWeight] {
    // Released before GPTQ: its packed fp32 copy of the layer is not needed to quantize.
    var calibration: LlamaModel? = try calibrationModel(store, layer: l)
    let samples = pass.samples
    let c = store.config
    // The layer's MLPs (the dense one, or every expert) with their down_proj input absmax and Hessian keys.
    let mlps = MLPNames.of(c, layer: l), moe = c.numLocalExperts != nil
    let mlpKeys = mlpHessianKeys(c)
    var downs = [AbsMaxAccumulator](repeating: AbsMaxAccumulator(width: c.intermediateSize), count: mlps.count)
    var q = AbsMaxAccumulator(width: c.qDim), k = MinMaxAccumulator(width: c.kvDim)
    let centering = plan.centersKeys(c), scaling = plan.scalesKeys(c)
    var qMoments = MomentAccumulator(width: scaling ? c.qDim : 0), kMoments = MomentAccumulator(width: scaling ? c.kvDim : 0)
    let grid = plan.smoothAttn?.strategy == .gridSearch, keyGrid = scaling && plan.scaleKeysSearch
    let searchSeqs = min(samples.count, plan.sequences(plan.smoothAttnSamples))
    let keySeqs = min(samples.count, plan.sequences(plan.scaleKeysSamples))
    let inputSeqs = max(grid ? searchSeqs : 0, keyGrid ? keySeqs : 0)
    var searchInput: [Float] = []  // attention inputs (normed) of the first `inputSeqs` sequences
    var quantized: [String: QuantizedWeight] = [:]
    let hs = fused ? gptqHessians(c) : [:]
    let hessianPoints: [(String, LayerCapture.Point)] = [("attn", .attnInput), ("o", .oProjInput), ("mlp", .mlpInput), ("down", .downInput)]
    let smoothKeys = plan.smoothProj == nil ? [] : plan.smoothProjKeys
    var attnIn = AbsMaxAccumulator(width: c.hiddenSize), mlpIn = AbsMaxAccumulator(width: c.hiddenSize)
    var points: Set<LayerCapture.Point> = [.downInput, .qRope, .kRope]
    if smoothKeys.contains("qkv_proj") { points.insert(.attnInput) }
    if smoothKeys.contains("up_proj") { points.insert(.mlpInput) }
    // AWQ: spans over every token, module inputs of the first sequences for the output-error searches.
    let awq = plan.smoothProjAlphas != nil
    let awqSeqs = min(samples.count, plan.sequences(plan.smoothProjSamples))
    var awqIn: [LayerCapture.Point: [Float]] = [:]
    var oSpan = AbsMaxAccumulator(width: c.qDim)
    // RootMeanSquare spans (quant.smooth.proj.spans): the same four inputs as sqrt(mean x²); reorder keeps AbsMax.
    let rms = plan.smoothProjRMS && plan.smoothProj != nil
    var rmsIn: [LayerCapture.Point: RMSAccumulator] = !rms ? [:]
      : [.attnInput: RMSAccumulator(width: c.hiddenSize), .oProjInput: RMSAccumulator(width: c.qDim),
         .mlpInput: RMSAccumulator(width: c.hiddenSize), .downInput: RMSAccumulator(width: c.intermediateSize)]
    // An MoE layer's w2 spans come from each expert's routed rows.
    var expertRMS = [RMSAccumulator](repeating: RMSAccumulator(width: c.intermediateSize), count: rms && moe ? mlps.count : 0)
    var seen = 0
    if awq || rms { points.formUnion([.attnInput, .oProjInput, .mlpInput]) }
    if grid || keyGrid || fused { points.insert(.attnInput) }
    if fused { points.formUnion([.oProjInput, .mlpInput]) }
    try pass.run(model: calibration!, layer: l, points: points, advance: advance) { cap in
      q.add(cap[.qRope]); k.add(cap[.kRope])
      if moe {
        // Each expert's statistics and Hessians from the tokens routed to it.
        for (e, x) in cap.expertDownInputs { downs[e].add(x); if rms { expertRMS[e].add(x) } }
        accumulateExperts(cap, hs)
      } else {
        downs[0].add(cap[.downInput])
      }
      if scaling { qMoments.add(cap[.qRope]); kMoments.add(cap[.kRope]) }
      if smoothKeys.contains("qkv_proj") || awq { attnIn.add(cap[.attnInput]) }
      if smoothKeys.contains("up_proj") || awq { mlpIn.add(cap[.mlpInput]) }
      if rms { for pt in Array(rmsIn.keys) { rmsIn[pt]!.add(cap[pt]) } }
      if awq {
        oSpan.add(cap[.oProjInput])
        let rows = cap[.attnInput].count / c.hiddenSize, per = rows / max(1, samples[0].count)
        if seen < awqSeqs {
          let take = min(per, awqSeqs - seen) * samples[0].count
          for (pt, w) in [(LayerCapture.Point.attnInput, c.hiddenSize), (.oProjInput, c.qDim), (.mlpInput, c.hiddenSize),
                          (.downInput, c.intermediateSize)] {
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
      if searchInput.count < inputSeqs * samples[0].count * c.hiddenSize {
        let need = inputSeqs * samples[0].count * c.hiddenSize - searchInput.count
        searchInput += cap[.attnInput].prefix(need)
      }
    }
    // The activation spans smoothing uses per MLP (the dense one, or each expert over its routed rows): AbsMax, or
    // RootMeanSquare where the recipe asks, in reordered order.
    var dspans: [[Float]] = mlps.indices.map { !rms ? downs[$0].values : moe ? expertRMS[$0].values : rmsIn[.downInput]!.values }
    if plan.reorder {
      for (i, mlp) in mlps.enumerated() {
        let perm = ReorderStage.apply(store, mlp: mlp, downInputAbsMax: downs[i].values)
        dspans[i] = perm.map { dspans[i][$0] }
        hs[mlpKeys[i].down]?.inputPermutation = perm
      }
    }
    let dspan = dspans[0]
    let attnSpan = rms ? rmsIn[.attnInput]!.values : attnIn.values, mlpSpan = rms ? rmsIn[.mlpInput]!.values : mlpIn.values
    // Key centering: the midrange c of each post-RoPE key channel is what the cache subtracts; smoothing then sees the
    // centered span max|k − c| instead of max|k|, and c is divided by the same λ as the keys.
    // With key scaling the center is the mean, which makes E[(k − c)²] (what the scales and, after rotation, the KV4
    // range follow) smallest; the span is then max|k − c| about it.
    let meanCenter: [Float]? = centering && scaling ? kMoments.mean.map { Float($0) } : nil
    let center: [Float]? = centering ? meanCenter ?? k.center : nil
    let kSpan: [Float] = centering ? meanCenter.map { k.span(about: $0) } ?? k.centeredSpan : k.absMax
    // Key scales of the unsmoothed keys; SmoothAttention's λ then multiplies them (the cache holds the same k·s, so
    // the exponent's search needs no λ).
    var exponent = 0.25
    if keyGrid {
      let tokens = samples.prefix(keySeqs).reduce(0) { $0 + $1.count } * c.hiddenSize
      exponent = try searchKeyScaleExponent(c, model: calibration!, layer: l, q: qMoments, k: kMoments, center: center,
                                            h: Array(searchInput.prefix(tokens)), lengths: Array(samples.prefix(keySeqs).map(\.count)))
      log("layer \(l): key scale exponent \(exponent)")
    }
    let baseScale = scaling ? SmoothStage.keyScales(c, q: qMoments, k: kMoments, center: center, exponent: exponent,
                                                    lamKV: [Float](repeating: 1, count: c.kvDim)) : nil
    var lamKV = [Float](repeating: 1, count: c.kvDim)
    if let sa = plan.smoothAttn {
      var (alpha, beta) = (sa.alpha, sa.beta)
      if sa.strategy == .gridSearch {
        let tokens = samples.prefix(searchSeqs).reduce(0) { $0 + $1.count } * c.hiddenSize
        (alpha, beta) = try searchSmoothAttention(store, model: calibration!, layer: l, qAbsMax: q.values, kAbsMax: kSpan,
                                                  keyCenter: center, keyScale: baseScale, h: Array(searchInput.prefix(tokens)),
                                                  lengths: Array(samples.prefix(searchSeqs).map(\.count)))
        log("layer \(l): SmoothAttention α = \(alpha), β = \(beta)")
      }
      if alpha != 0 || beta != 0 {
        lamKV = SmoothStage.attention(store, layer: l, qAbsMax: q.values, kAbsMax: kSpan, alpha: alpha, beta: beta).kv
      }
    }
    if let center { keyCenters[l] = zip(center, lamKV).map { $0 / $1 } }
    if let baseScale { keyScales[l] = zip(baseScale, lamKV).map { $0 * $1 } }
    if let alphas = plan.smoothProjAlphas, let format = plan.weightFormat {
      let chosen = try awqLayer(store, model: calibration!, layer: l, format: format, keys: smoothKeys,
                                attnIn: awqIn[.attnInput] ?? [], oIn: awqIn[.oProjInput] ?? [], mlpIn: awqIn[.mlpInput] ?? [],
                                downIn: awqIn[.downInput] ?? [], lengths: Array(samples.prefix(awqSeqs).map(\.count)),
                                spans: (attnSpan, rms ? rmsIn[.oProjInput]!.values : oSpan.values, mlpSpan, dspans), candidates: alphas)
      log("layer \(l): AWQ α " + chosen.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
    } else if let sp = plan.smoothProj {
      if smoothKeys.contains("down_proj") {
        // (Evaluated before the assignment: `hs["down"]?.x = f()` would skip f() when there is no Hessian.)
        for (i, mlp) in mlps.enumerated() {
          let lam = SmoothStage.down(store, mlp: mlp, inputAbsMax: dspans[i], alpha: sp.alpha, beta: sp.beta)
          hs[mlpKeys[i].down]?.inputDivisor = lam
        }
      }
      // SmoothQuant: norm → linears. The captured attention/MLP inputs are divided by λ; their Hessians too.
      // In an MoE layer up_proj's λ is shared by the router and every expert, whose input Hessians all take it.
      for (key, span, h) in [("qkv_proj", attnSpan, ["attn"]), ("up_proj", mlpSpan, mlpKeys.map(\.input))] where smoothKeys.contains(key) {
        let lam = SmoothStage.normLinear(store, layer: l, key: key, inputAbsMax: span, alpha: sp.alpha, beta: sp.beta)
        for k in h { hs[k]?.inputDivisor = lam }
      }
    }
    calibration = nil
    if fused, let format = plan.weightFormat {
      quantized = try quantizeLayer(store, layer: l, format: format, hessians: hs, sequences: samples.count)
    }
    return quantized
  }

  /// The (α, β) whose SmoothAttention gives the smallest attention-output error with K fake-quantized.
  func searchSmoothAttention(_ store: WeightStore, model: LlamaModel, layer l: Int, qAbsMax: [Float], kAbsMax: [Float],
                             keyCenter: [Float]?, keyScale: [Float]?, h: [Float], lengths: [Int]) throws -> (Double, Double) {
    guard let sa = plan.smoothAttn, let kb = plan.kvBits else { return (0, 0) }
    let c = store.config, base = model.layers[l]
    let kq = KVFakeQuant(bits: kb, group: plan.kvGroup ?? c.kvDim, asymmetric: plan.kvAsymmetric)
    let reference = try RangeSearch.chunkedOutputs(h: h, lengths: lengths, width: c.hiddenSize) {
      try model.attentionOutput(base, h: $0, lengths: $1)
    }
    var best = (0.0, 0.0), bestErr = Double.infinity
    for (a, b) in SmoothStage.alphaBetaCandidates(alpha: sa.alpha, beta: sa.beta, grids: sa.grids) {
      let (lq, lk) = (a == 0 && b == 0) ? ([Float](repeating: 1, count: c.qDim), [Float](repeating: 1, count: c.kvDim))
        : SmoothStage.attentionScales(c, qAbsMax: qAbsMax, kAbsMax: kAbsMax, alpha: a, beta: b)
      let t = SmoothStage.scaledQK(store, layer: l, lamQ: lq, lamKV: lk)
      let layer = DecoderLayer(inputLayernorm: base.inputLayernorm, postAttentionLayernorm: base.postAttentionLayernorm,
                               qProj: DenseLinear(weight: t.wq, outFeatures: c.qDim, inFeatures: c.hiddenSize, bias: t.bq),
                               kProj: DenseLinear(weight: t.wk, outFeatures: c.kvDim, inFeatures: c.hiddenSize, bias: t.bk),
                               vProj: base.vProj, oProj: base.oProj, gateProj: base.gateProj, upProj: base.upProj, downProj: base.downProj)
      let kt = keyTransform(kq, headDim: c.headDim, rotate: plan.rotatesKeys(c), scale: keyScale.map { zip($0, lk).map { $0 * $1 } },
                            center: keyCenter.map { zip($0, lk).map { $0 / $1 } })
      let e = try RangeSearch.outputError(h: h, lengths: lengths, width: c.hiddenSize, reference: reference) {
        try model.attentionOutput(layer, h: $0, lengths: $1, kvTransform: kt, keysOnly: true)
      }
      if e < bestErr { bestErr = e; best = (a, b) }
    }
    return best
  }

  /// The key scales' exponent (quant.opts.scale_keys_strategy GridSearch): the candidate whose scales give the smallest
  /// attention-output error with K fake-quantized (centered, scaled, rotated as the cache will hold it) on h.
  func searchKeyScaleExponent(_ c: LlamaConfiguration, model: LlamaModel, layer l: Int, q: MomentAccumulator,
                              k: MomentAccumulator, center: [Float]?, h: [Float], lengths: [Int]) throws -> Double {
    guard let kb = plan.kvBits else { return 0.25 }
    let base = model.layers[l], ones = [Float](repeating: 1, count: c.kvDim)
    let kq = KVFakeQuant(bits: kb, group: plan.kvGroup ?? c.kvDim, asymmetric: plan.kvAsymmetric)
    let reference = try RangeSearch.chunkedOutputs(h: h, lengths: lengths, width: c.hiddenSize) {
      try model.attentionOutput(base, h: $0, lengths: $1)
    }
    var best = 0.25, bestErr = Double.infinity
    for p in QuantPlan.keyScaleExponents {
      let s = SmoothStage.keyScales(c, q: q, k: k, center: center, exponent: p, lamKV: ones)
      let kt = keyTransform(kq, headDim: c.headDim, rotate: plan.rotatesKeys(c), scale: s, center: center)
      let e = try RangeSearch.outputError(h: h, lengths: lengths, width: c.hiddenSize, reference: reference) {
        try model.attentionOutput(base, h: $0, lengths: $1, kvTransform: kt, keysOnly: true)
      }
      if e < bestErr { bestErr = e; best = p }
    }
    return best
  }

  /// Weight quantization of layer l with calibration (GPTQ Hessians and/or the weight range search) from the inputs
  /// the pass holds for it, which then advance through the (transformed) FP layer. The store gets the dequantized
  /// weights.
  func weightLayer(_ store: WeightStore, layer l: Int, format: WeightFormat, pass: LayerwisePass) throws -> [String: QuantizedWeight] {
    let c = store.config, s = pass.samples
    let grid = plan.clipStrategy == .gridSearch
    let model = try calibrationModel(store, layer: l)
    // Grid search inputs: the 512-token subsample of each module input, and whole attention inputs of the first
    // sequences for the q/k attention-output objective.
    let wanted = Set(RangeSearch.subsampleRows(lengths: s.map(\.count), batch: plan.clipElementBatch, size: plan.clipElementSize))
    let qkSeqs = min(s.count, plan.sequences(plan.clipSamples))
    var sub: [String: [Float]] = [:], qkInput: [Float] = []
    var rowBase = 0
    let hs = plan.gptq == nil ? [:] : gptqHessians(c)
    let points: [(String, LayerCapture.Point)] = [("attn", .attnInput), ("o", .oProjInput), ("mlp", .mlpInput), ("down", .downInput)]
    // MoE: deepcompressor caches each expert's routed rows as that expert's input and subsamples them like any module
    // input, so the subsample follows the expert's routed-row count: a routing pass counts them first (the layer and
    // its inputs do not change between the passes, so the routing is the same).
    let experts = grid ? c.numLocalExperts ?? 0 : 0
    var expertWanted: [Set<Int>] = [], expertSeen = [Int](repeating: 0, count: experts)
    if experts > 0 {
      var counts = [Int](repeating: 0, count: experts)
      try pass.run(model: model, layer: l, points: [.downInput], advance: false) { cap in
        for (e, x) in cap.expertInputs { counts[e] += x.count / c.hiddenSize }
      }
      expertWanted = counts.map { Set(RangeSearch.subsampleRows(lengths: [$0], batch: plan.clipElementBatch, size: plan.clipElementSize)) }
    }
    try pass.run(model: model, layer: l, points: [.attnInput, .oProjInput, .mlpInput, .downInput]) { cap in
      accumulateExperts(cap, hs)
      let rows = cap[.attnInput].count / c.hiddenSize
      for (k, p) in points {
        let x = cap[p]
        let width = k == "o" ? c.qDim : k == "down" ? c.intermediateSize : c.hiddenSize
        if let acc = hs[k] { x.withUnsafeBufferPointer { acc.add($0.baseAddress!, rows: x.count / width) } }
        if grid {
          for r in 0..<(x.count / width) where wanted.contains(rowBase + r) { sub[k, default: []] += x[(r * width)..<((r + 1) * width)] }
          if k == "attn" && qkInput.count < qkSeqs * s[0].count * width {
            qkInput += x.prefix(qkSeqs * s[0].count * width - qkInput.count)
          }
        }
      }
      for (e, x) in cap.expertInputs where experts > 0 {
        let (H, I) = (c.hiddenSize, c.intermediateSize), m = x.count / H, down = cap.expertDownInputs[e] ?? []
        for r in 0..<m where expertWanted[e].contains(expertSeen[e] + r) {
          sub["e\(e).in", default: []] += x[(r * H)..<((r + 1) * H)]
          sub["e\(e).down", default: []] += down[(r * I)..<((r + 1) * I)]
        }
        expertSeen[e] += m
      }
      rowBase += rows
    }
    var searched: [String: [Float]] = [:]
    if grid {
      let cands = RangeSearch.ratios(maxShrink: plan.clipMaxShrink, numGrids: plan.clipNumGrids)
      let lengths = Array(s.prefix(qkSeqs).map(\.count))
      let reference = try RangeSearch.chunkedOutputs(h: qkInput, lengths: lengths, width: c.hiddenSize) {
        try model.attentionOutput(model.layers[l], h: $0, lengths: $1)
      }
      for m in store.linearNames(layer: l) where !plan.weightSkips.contains(key(m)) && !plan.clipSkips.contains(key(m)) {
        let (o, i) = store.linearShape(m)
        if (m.hasSuffix("q_proj") || m.hasSuffix("k_proj")) && !plan.clipProducts {
          searched[m] = [try RangeSearch.attentionOutputs(model: model, layer: l, store: store, module: m, format: format,
                                                          h: qkInput, lengths: lengths, reference: reference, candidates: cands)]
        } else if let k = hessianKey(m), let x = sub[k] {
          searched[m] = RangeSearch.productsError(weight: store[m + ".weight"], out: o, inp: i, format: format,
                                                  inputs: x, candidates: cands)
        } else {
          // An expert no calibration token was routed to has nothing to judge a range by: its full range (ratio 1).
          log("\(m): no calibration token was routed to this expert; weight range not searched")
        }
      }
    }
    return try quantizeLayer(store, layer: l, format: format, hessians: plan.gptq == nil ? nil : hs, sequences: s.count,
                             searched: searched)
  }

  /// The Hessian keys of a layer's MLP inputs: (mlp, down) for the dense MLP, (e{x}.in, e{x}.down) per expert of an
  /// MoE layer (w1/w3 share one input, w2 has its own).
  func mlpHessianKeys(_ c: LlamaConfiguration) -> [(input: String, down: String)] {
    guard let e = c.numLocalExperts else { return [(input: "mlp", down: "down")] }
    return (0..<e).map { (input: "e\($0).in", down: "e\($0).down") }
  }

  /// Empty GPTQ Hessian accumulators for every linear input of a layer: attn (q/k/v), o, and each MLP's two inputs.
  func gptqHessians(_ c: LlamaConfiguration) -> [String: HessianAccumulator] {
    var h = ["attn": HessianAccumulator(size: c.hiddenSize), "o": HessianAccumulator(size: c.qDim)]
    for key in mlpHessianKeys(c) { h[key.input] = HessianAccumulator(size: c.hiddenSize); h[key.down] = HessianAccumulator(size: c.intermediateSize) }
    return h
  }

  /// An MoE layer's captures into its per-expert Hessians (e{x}.in: the w1/w3 input, e{x}.down: the w2 input).
  func accumulateExperts(_ cap: LayerCapture, _ hs: [String: HessianAccumulator]) {
    for (rows, suffix) in [(cap.expertInputs, "in"), (cap.expertDownInputs, "down")] {
      for (e, x) in rows {
        if let acc = hs["e\(e).\(suffix)"] { x.withUnsafeBufferPointer { acc.add($0.baseAddress!, rows: x.count / acc.size) } }
      }
    }
  }

  /// The GPTQ Hessian a linear's input accumulates into: attn (q/k/v), o, mlp (gate/up), down; in an MoE layer
  /// e{x}.in (expert x's w1/w3) and e{x}.down (its w2).
  func hessianKey(_ m: String) -> String? {
    if let r = m.range(of: ".experts.") {
      let rest = m[r.upperBound...]
      guard let dot = rest.firstIndex(of: "."), let x = Int(rest[..<dot]) else { return nil }
      return "e\(x)." + (rest.hasSuffix(".w2") ? "down" : "in")
    }
    return m.hasSuffix("o_proj") ? "o" : m.hasSuffix("down_proj") ? "down" : (key(m) == "qkv_proj" ? "attn" : "mlp")
  }

  /// deepcompressor's module key of a linear (for skips); an expert's w1/w3 are its gate/up, w2 its down.
  func key(_ module: String) -> String {
    if module.hasSuffix("q_proj") || module.hasSuffix("k_proj") || module.hasSuffix("v_proj") { return "qkv_proj" }
    if module.hasSuffix("o_proj") { return "out_proj" }
    if module.hasSuffix("gate_proj") || module.hasSuffix("up_proj") || module.hasSuffix(".w1") || module.hasSuffix(".w3") { return "up_proj" }
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
        guard let hk = hessianKey(m), let acc = hs[hk] else { throw QoQError("GPTQ: no Hessian was accumulated for \(m)") }
        if acc.rows == 0 {
          // An expert no calibration token was routed to has no Hessian: round-to-nearest.
          log("\(m): no calibration token was routed to this expert; round-to-nearest")
          q = qz.rtn(w)
        } else {
          if inverses[hk] == nil {
            // Modules come grouped by input (q/k/v, o, gate/up, down; an expert's w1/w3, its w2): the previous input's
            // factor and accumulator are done, so one input's matrices are held at a time.
            inverses = [:]
            inverses[hk] = try GPTQInverse(hessian: acc.hessian(sequences: sequences), size: i, options: gopts)
            acc.release()
          }
          q = try gptq(weight: w, inverse: inverses[hk]!, quantizer: qz, options: gopts).weight
        }
      } else {
        q = qz.rtn(w)
      }
      store[m + ".weight"] = q.dequantized()
      out[m] = q
    }
    return out
  }

  /// SmoothQuant-static KV ranges of layer l: absmax of post-RoPE K and of V over the calibration set, through the
  /// layer with quantized weights and activations (KV still FP), whose own stream (`pass`) carries the quantized
  /// model's activations, as deepcompressor calibrates activation ranges after the weights. Scale =
  /// fp16(absmax / qmax) (0 → 1); returns (K, V).
  func staticKVScales(_ store: WeightStore, layer l: Int, quantization qc: QuantizationConfig, pass: LayerwisePass) throws -> [Float] {
    var noKV = qc
    noKV.kvBits = nil
    let model = try store.layerModel(l, linearFactory: noKV.fakeQuantLinearFactory)
    let qmax = Float((1 << ((qc.kvBits ?? 8) - 1)) - 1)
    var km: Float = 0, vm: Float = 0
    try pass.run(model: model, layer: l, points: [.kRope, .vOutput]) { cap in
      for x in cap[.kRope] { km = max(km, abs(x)) }
      for x in cap[.vOutput] { vm = max(vm, abs(x)) }
    }
    return [km, vm].map { m in let sc = fp16Round(m / qmax); return sc == 0 ? 1 : sc }
  }
}

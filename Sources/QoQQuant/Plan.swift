// What a resolved recipe asks for, checked for what this implementation supports. Everything unsupported is
// refused here, before calibration or any other work starts.
import QoQFormat
import QoQIO
import QoQModels

public struct QuantPlan: Sendable {
  public enum Strategy: String, Sendable { case manual = "Manual", gridSearch = "GridSearch" }

  public var weightFormat: WeightFormat?
  /// Module keys left unquantized: qkv_proj, out_proj, up_proj, down_proj.
  public var weightSkips: Set<String> = []
  public var gptq: GPTQOptions?
  public var clipStrategy: Strategy = .manual
  public var clipRatio: Double = 1
  public var clipMaxShrink: Double = 0.2
  public var clipNumGrids = 80
  public var clipSkips: Set<String> = []
  /// Calibration sequences used by the OutputsError objectives (q/k clipping, SmoothAttention and AWQ grid searches):
  /// a recipe's sample_size, 0 when it is -1 (deepcompressor: all of them). `sequences(_:)` resolves it.
  public var clipSamples = 0
  /// ProductsError token sample (deepcompressor's element_batch_size / element_size): tokens in contiguous batches of
  /// `clipElementBatch` rows, every k-th batch kept so that `clipElementSize` rows remain.
  public var clipElementBatch = 64
  public var clipElementSize = 512
  public var smoothAttnSamples = 0
  public var actBits: Int?
  public var actSkips: Set<String> = []
  public var kvBits: Int?
  public var kvGroup: Int?
  public var kvAsymmetric = true
  /// Static per-tensor KV ranges calibrated once (SmoothQuant-static).
  public var kvStatic = false
  /// Key centering (quant.opts.center_keys, not a deepcompressor field): auto, always, never.
  public enum KeyCentering: String, Sendable { case auto, always, never }
  public var centerKeys = KeyCentering.never
  /// quant.opts.rotate_keys (issue #19): Walsh–Hadamard rotation of each head of post-RoPE Q and K before the KV cache.
  public var rotateKeys = KeyCentering.never
  /// quant.opts.scale_keys (issue #19): a calibrated per-channel scale of post-RoPE K (Q divided by it) before the cache.
  public var scaleKeys = KeyCentering.never
  /// quant.opts.scale_keys_strategy (issue #19): Manual keeps the key scales' exponent at ¼ (their error model's
  /// optimum); GridSearch picks it per layer from `keyScaleExponents`, judged on the attention output with K quantized
  /// over the first `scaleKeysSamples` calibration sequences (0: all).
  public var scaleKeysSearch = false
  public var scaleKeysSamples = 8
  public static let keyScaleExponents: [Double] = [0, 0.125, 0.1875, 0.25, 0.3125, 0.375, 0.5]
  public var rotation: RotationOptions?
  public var reorder = false
  public var smoothAttn: (strategy: Strategy, alpha: Double, beta: Double, grids: Int)?
  public var smoothProj: (alpha: Double, beta: Double)?
  /// Module keys smoothed by SmoothLinear: down_proj (QoQ), qkv_proj and up_proj (SmoothQuant: norm → linears),
  /// all four with out_proj (AWQ's GridSearch).
  public var smoothProjKeys: Set<String> = []
  /// AWQ: SmoothLinear GridSearch over λ = max|x|^α, α from these candidates, objective the output error.
  public var smoothProjAlphas: [Double]?
  public var smoothProjSamples = 0
  /// Activation spans of SmoothLinear / AWQ as `sqrt(mean x²)` over the calibration tokens (deepcompressor's
  /// `RootMeanSquare` span mode) instead of `max|x|` (`AbsMax`, the recipes' default).
  public var smoothProjRMS = false
  /// Weight range search objective: OutputsError (QoQ: products per group, attention outputs for q/k) or
  /// ProductsError (AWQ: products per group for every module).
  public var clipProducts = false
  public var calib = CalibrationOptions()
  /// Calibration passes run their linears in bf16 (model.dtype torch.bfloat16) instead of fp32.
  public var calibBF16 = false
  /// Calibration passes emulate fp16 linears (model.dtype torch.float16, deepcompressor's default): weights, inputs and
  /// outputs rounded to fp16. For measuring what deepcompressor's dtype changes, not for speed (it is slower than fp32).
  public var calibFP16 = false
  /// The calibration activations between layers are kept in bf16 (quant.calib.activations_dtype, not in deepcompressor).
  public var calibActivationsBF16 = false
  public var seed: UInt64 = 12345
  public var evalSeqLen = 2048
  public var evalWindows = 0
  public var evalDataset = ""

  static let moduleKeys: Set<String> = ["qkv_proj", "out_proj", "up_proj", "down_proj"]

  /// The calibration sequences an objective with sample size `chosen` uses: all of them for 0 (-1 in the recipe).
  public func sequences(_ chosen: Int) -> Int { chosen > 0 ? min(chosen, calib.numSamples) : calib.numSamples }

  public init(_ r: Recipe) throws {
    func bad(_ m: String) -> QoQError { QoQError("recipe: \(m)") }
    // deepcompressor's sample_size: -1 = every calibration sequence, n > 0 = the first n.
    func sampleSize(_ v: Int, _ field: String) throws -> Int {
      guard v == -1 || v > 0 else { throw bad("\(field) must be -1 (all calibration sequences) or positive, not \(v)") }
      return max(v, 0)
    }
    func bits(_ dtype: String, field: String) throws -> (signed: Bool, bits: Int) {
      let d = dtype.lowercased()
      for (p, signed) in [("uint", false), ("sint", true), ("int", true)] where d.hasPrefix(p) {
        if let b = Int(d.dropFirst(p.count)), b >= 2 && b <= 8 { return (signed, b) }
      }
      throw bad("\(field) \"\(dtype)\" is not supported (uint2…uint8, sint2…sint8)")
    }
    func dtypeName(_ s: String?) -> String? { s.map { $0.replacingOccurrences(of: "torch.", with: "") } }
    seed = UInt64(max(0, try r.int("seed")))
    // Weights.
    if let wd = try r.string("quant.wgts.dtype") {
      let (signed, b) = try bits(wd, field: "quant.wgts.dtype")
      let shapes = try r.groupShapes("quant.wgts.group_shapes")
      let scales = try r.strings("quant.wgts.scale_dtypes").map { dtypeName($0) ?? "null" }
      let zp = try r.string("quant.wgts.zero_point")
      let inter = try r.strings("quant.wgts.intermediate_dtypes")
      for s in shapes where s[0] != 1 { throw bad("quant.wgts.group_shapes \(shapes): rows must be 1 (per output channel)") }
      if shapes.count == 1 {
        guard inter.isEmpty else { throw bad("quant.wgts.intermediate_dtypes needs two group levels") }
        let g = shapes[0][1]
        guard g == -1 || g > 0 else { throw bad("quant.wgts.group_shapes: bad group size \(g)") }
        guard ["float16", "null", "float32"].contains(scales.first ?? "null") else {
          throw bad("quant.wgts.scale_dtypes \(scales) is not supported for one level (use torch.float16)")
        }
        if signed {
          guard zp == nil, g == -1 else { throw bad("signed weights are supported symmetric and per channel (SmoothQuant W8)") }
          weightFormat = .sym(bits: b)
        } else {
          guard zp == "PostScale" || zp == "PreScale" else {
            throw bad("quant.wgts.zero_point \(zp ?? "null") is not supported for unsigned weights (PostScale or PreScale)")
          }
          weightFormat = .asym(bits: b, group: g == -1 ? nil : g, preScale: zp == "PreScale")
        }
      } else if shapes.count == 2 {
        guard !signed, b == 4, shapes[0][1] == -1, shapes[1][1] > 0, zp == "PostScale",
              scales.count == 2, scales[0] == "float16", scales[1] == "sint8", inter == ["sint8"],
              (recipeInts(r, "quant.wgts.intermediate_levels") == [0]) else {
          throw bad("two-level weights are supported as QoQ progressive only: uint4, PostScale, group_shapes [[1,-1],[1,G]], "
                    + "scale_dtypes [torch.float16, sint8], intermediate_dtypes [sint8]")
        }
        if try r.bool("quant.wgts.needs_dequant_saturation") { throw bad("needs_dequant_saturation true is not supported") }
        weightFormat = .progressive(group: shapes[1][1], protective: protectiveRange(postScale: true))
      } else {
        throw bad("quant.wgts.group_shapes must have one or two levels")
      }
      weightSkips = Set(try r.strings("quant.wgts.skips"))
      for k in weightSkips where !Self.moduleKeys.contains(k) {
        throw bad("quant.wgts.skips: unknown module key \(k) (\(Self.moduleKeys.sorted().joined(separator: ", ")))")
      }
      if try r.bool("quant.wgts.enable_kernel_gptq") {
        var o = GPTQOptions()
        o.dampPercentage = try r.double("quant.wgts.kernel_gptq.damp_percentage")
        o.blockSize = try r.int("quant.wgts.kernel_gptq.block_size")
        o.numInvTries = try r.int("quant.wgts.kernel_gptq.num_inv_tries")
        guard o.dampPercentage >= 0, o.blockSize > 0, o.numInvTries > 0 else { throw bad("quant.wgts.kernel_gptq values must be positive") }
        gptq = o
      }
      if try r.bool("quant.wgts.enable_calib_range") {
        guard let st = Strategy(rawValue: try r.string("quant.wgts.calib_range.strategy") ?? "") else {
          throw bad("quant.wgts.calib_range.strategy must be Manual or GridSearch")
        }
        clipStrategy = st
        clipRatio = try r.double("quant.wgts.calib_range.ratio")
        clipMaxShrink = try r.double("quant.wgts.calib_range.max_shrink")
        clipNumGrids = try r.int("quant.wgts.calib_range.num_grids")
        clipSkips = Set(try r.strings("quant.wgts.calib_range.skips"))
        guard clipRatio > 0, clipRatio <= 1 else { throw bad("quant.wgts.calib_range.ratio must be in (0, 1]") }
        guard clipMaxShrink > 0, clipMaxShrink < 1, clipNumGrids > 0 else {
          throw bad("quant.wgts.calib_range: max_shrink in (0,1) and num_grids > 0")
        }
        if try r.double("quant.wgts.calib_range.max_expand") != 1 { throw bad("quant.wgts.calib_range.max_expand other than 1.0 is not supported") }
        let ss = try r.int("quant.wgts.calib_range.sample_size")
        clipSamples = try sampleSize(ss, "quant.wgts.calib_range.sample_size")
        clipElementBatch = try r.int("quant.wgts.calib_range.element_batch_size")
        clipElementSize = try r.int("quant.wgts.calib_range.element_size")
        guard clipElementBatch >= 1, clipElementSize >= clipElementBatch, clipElementSize <= 1 << 20 else {
          throw bad("quant.wgts.calib_range: element_batch_size ≥ 1 and element_size between it and 1048576 "
                    + "(got \(clipElementBatch), \(clipElementSize))")
        }
        if st == .gridSearch {
          let obj = try r.string("quant.wgts.calib_range.objective")
          guard obj == "OutputsError" || obj == "ProductsError", try r.string("quant.wgts.calib_range.granularity") == "Group" else {
            throw bad("quant.wgts.calib_range GridSearch is supported at granularity Group with objective OutputsError "
                      + "(QoQ: ProductsError per group for o/v/up/down, attention outputs for q/k) or ProductsError (AWQ: every module)")
          }
          clipProducts = obj == "ProductsError"
        }
      }
    }
    // Activations.
    if let ad = try r.string("quant.ipts.dtype") {
      let (signed, b) = try bits(ad, field: "quant.ipts.dtype")
      guard signed, try r.string("quant.ipts.zero_point") == nil else { throw bad("quant.ipts: activations are quantized symmetric (sint8/sint4)") }
      guard try r.groupShapes("quant.ipts.group_shapes") == [[1, -1]] else { throw bad("quant.ipts.group_shapes must be [[1, -1]] (per token)") }
      if try r.bool("quant.ipts.static") {
        throw bad("quant.ipts.static (calibrated activation ranges) is not supported yet; QoQ uses dynamic per-token scales")
      }
      actBits = b
      actSkips = Set(try r.strings("quant.ipts.skips"))
      for k in actSkips where !Self.moduleKeys.contains(k) { throw bad("quant.ipts.skips: unknown module key \(k)") }
    }
    // KV cache.
    if let od = try r.string("quant.opts.dtype") {
      let (signed, b) = try bits(od, field: "quant.opts.dtype")
      let shapes = try r.groupShapes("quant.opts.group_shapes")
      guard shapes.count == 1, shapes[0][0] == 1 || shapes == [[-1, -1]] else {
        throw bad("quant.opts.group_shapes must be one level: [[1, G]] (per token) or [[-1, -1]] (per tensor, static)")
      }
      if try r.bool("quant.opts.static") {
        // SmoothQuant-static: one calibrated scale per tensor (absmax over the calibration set), symmetric.
        guard signed, shapes == [[-1, -1]] else {
          throw bad("quant.opts.static is supported as SmoothQuant's: signed (sint8), group_shapes [[-1, -1]] (per tensor)")
        }
        kvStatic = true
      }
      let skips = Set(try r.strings("quant.opts.skips"))
      guard skips.isSubset(of: ["attn_q"]) else { throw bad("quant.opts.skips: only attn_q may be listed (K and V are always quantized together)") }
      guard skips.contains("attn_q") else { throw bad("quant.opts.skips must contain attn_q: Q is never quantized") }
      kvBits = b
      kvGroup = shapes[0][1] == -1 ? nil : shapes[0][1]
      kvAsymmetric = !signed
      let ck = try r.string("quant.opts.center_keys") ?? "never"
      guard let kc = KeyCentering(rawValue: ck) else { throw bad("quant.opts.center_keys must be auto, always or never (got \(ck))") }
      centerKeys = kc
      if kc == .always && (signed || kvStatic) {
        throw bad("quant.opts.center_keys: always needs dynamic asymmetric KV (unsigned dtype, not static)")
      }
      let rk = try r.string("quant.opts.rotate_keys") ?? "never"
      guard let kr = KeyCentering(rawValue: rk) else { throw bad("quant.opts.rotate_keys must be auto, always or never (got \(rk))") }
      rotateKeys = kr
      if kr == .always && kvStatic { throw bad("quant.opts.rotate_keys: always needs dynamic KV (not static)") }
      let sk = try r.string("quant.opts.scale_keys") ?? "never"
      guard let ks = KeyCentering(rawValue: sk) else { throw bad("quant.opts.scale_keys must be auto, always or never (got \(sk))") }
      scaleKeys = ks
      if ks == .always && kvStatic { throw bad("quant.opts.scale_keys: always needs dynamic KV (not static)") }
      switch try r.string("quant.opts.scale_keys_strategy") ?? "Manual" {
      case "Manual": scaleKeysSearch = false
      case "GridSearch": scaleKeysSearch = true
      case let st: throw bad("quant.opts.scale_keys_strategy must be Manual or GridSearch (got \(st))")
      }
      scaleKeysSamples = try sampleSize(r.int("quant.opts.scale_keys_sample_size"), "quant.opts.scale_keys_sample_size")
      if !signed {
        guard try r.string("quant.opts.zero_point") == "PostScale" else { throw bad("quant.opts.zero_point must be PostScale for unsigned KV") }
      }
    }
    // Transforms.
    if try r.bool("quant.enable_rotation") {
      var o = RotationOptions()
      o.random = try r.bool("quant.rotation.random")
      o.transforms = try r.strings("quant.rotation.transforms")
      o.seed = seed
      for t in o.transforms where t != "out_proj" {
        throw bad("quant.rotation.transforms \(t) is not supported (QoQ uses [out_proj]; down_proj needs an online Hadamard)")
      }
      rotation = o
    }
    if try r.bool("quant.enable_reorder") {
      guard try r.string("quant.reorder.channel_metric") == "InputsAbsMax", try r.string("quant.reorder.channel_index") == "Sequential",
            try r.string("quant.reorder.strategy") == "Manual", try !r.bool("quant.reorder.dynamic") else {
        throw bad("quant.reorder: supported is Manual / InputsAbsMax / Sequential, static (down_proj inputs)")
      }
      reorder = true
    }
    if try r.bool("quant.enable_smooth") {
      if try r.bool("quant.smooth.enable_attn") {
        guard let st = Strategy(rawValue: try r.string("quant.smooth.attn.strategy") ?? "") else {
          throw bad("quant.smooth.attn.strategy must be Manual or GridSearch")
        }
        smoothAttn = (st, try r.double("quant.smooth.attn.alpha"), try r.double("quant.smooth.attn.beta"), try r.int("quant.smooth.attn.num_grids"))
        if st == .gridSearch {
          guard smoothAttn!.grids >= 2 else { throw bad("quant.smooth.attn.num_grids must be at least 2") }
          guard kvBits != nil else { throw bad("SmoothAttention GridSearch needs a KV quantizer (quant.opts) for its objective") }
        }
        let ss = try r.int("quant.smooth.attn.sample_size")
        smoothAttnSamples = try sampleSize(ss, "quant.smooth.attn.sample_size")
        let spans = try r.spanPairs("quant.smooth.attn.spans")
        guard spans.count == 1, spans[0] == ("AbsMax", "AbsMax") else {
          throw bad("quant.smooth.attn.spans: supported is [[AbsMax, AbsMax]] (got \(spans))")
        }
      }
      if try r.bool("quant.smooth.enable_proj") {
        let skips = Set(try r.strings("quant.smooth.proj.skips"))
        for k in skips where !Self.moduleKeys.contains(k) { throw bad("quant.smooth.proj.skips: unknown module key \(k)") }
        smoothProjKeys = Self.moduleKeys.subtracting(skips)
        let alpha = try r.double("quant.smooth.proj.alpha"), beta = try r.double("quant.smooth.proj.beta")
        switch try r.string("quant.smooth.proj.strategy") {
        case "Manual":
          guard skips.contains("out_proj") else {
            throw bad("quant.smooth.proj: Manual out_proj smoothing (v_proj → o_proj) is not supported; list out_proj in quant.smooth.proj.skips")
          }
        case "GridSearch":
          guard alpha > 0, beta == 0 else {
            throw bad("quant.smooth.proj GridSearch is supported as AWQ's: alpha > 0, beta 0 (λ = max|x|^α, α on a grid)")
          }
          guard try r.string("quant.smooth.proj.objective") == "OutputsError" else { throw bad("quant.smooth.proj.objective must be OutputsError") }
          let g = try r.int("quant.smooth.proj.num_grids")
          guard g >= 2 else { throw bad("quant.smooth.proj.num_grids must be at least 2") }
          smoothProjAlphas = SmoothStage.alphaBetaCandidates(alpha: alpha, beta: beta, grids: g).map(\.0)
          let ss = try r.int("quant.smooth.proj.sample_size")
          smoothProjSamples = try sampleSize(ss, "quant.smooth.proj.sample_size")
        case let st: throw bad("quant.smooth.proj.strategy \(st ?? "null") must be Manual or GridSearch")
        }
        let spans = try r.spanPairs("quant.smooth.proj.spans")
        guard spans.count == 1, ["AbsMax", "RootMeanSquare"].contains(spans[0].0), spans[0].1 == "AbsMax" else {
          throw bad("quant.smooth.proj.spans: supported are [[AbsMax, AbsMax]] and [[RootMeanSquare, AbsMax]] "
                    + "(activation span, weight span; one pair) (got \(spans))")
        }
        smoothProjRMS = spans[0].0 == "RootMeanSquare"
        smoothProj = (alpha, beta)
      }
    }
    // Calibration and evaluation.
    calib.path = try r.string("quant.calib.path") ?? ""
    if calib.path.isEmpty { calib.path = BundledData.locate(.calibration) ?? "" }  // "" when missing: refused by the CLI
    calib.numSamples = try r.int("quant.calib.num_samples")
    calib.seqLength = try r.int("quant.calib.seq_length")
    calib.minSeqLength = try r.int("quant.calib.min_seq_length")
    calib.maxSeqLength = try r.int("quant.calib.max_seq_length")
    guard calib.numSamples > 0, calib.seqLength > 1 else { throw bad("quant.calib.num_samples and seq_length must be positive") }
    switch try r.string("quant.calib.activations_dtype") ?? "torch.float32" {
    case "torch.float32", "float32": calibActivationsBF16 = false
    case "torch.bfloat16", "bfloat16": calibActivationsBF16 = true
    case let d: throw bad("quant.calib.activations_dtype \(d) is not supported (torch.float32, torch.bfloat16)")
    }
    if try r.string("quant.develop_dtype") != "torch.float32" { throw bad("quant.develop_dtype must be torch.float32") }
    switch try r.string("model.dtype") ?? "torch.float32" {
    case "torch.float32", "float32": (calibBF16, calibFP16) = (false, false)
    case "torch.bfloat16", "bfloat16": (calibBF16, calibFP16) = (true, false)
    case "torch.float16", "float16": (calibBF16, calibFP16) = (false, true)
    case let d: throw bad("model.dtype \(d) is not supported (torch.float32, torch.bfloat16, torch.float16)")
    }
    evalSeqLen = try r.int("eval.max_seq_length")
    evalWindows = try r.int("eval.max_windows")
    evalDataset = try r.string("eval.dataset") ?? ""
    if evalDataset.isEmpty { evalDataset = BundledData.locate(.wikitext2Test) ?? "" }
    guard evalSeqLen > 1, evalWindows >= 0 else { throw bad("eval.max_seq_length must be > 1 and eval.max_windows ≥ 0") }
  }

  /// Whether any stage needs calibration data (key centering: only on a model where it resolves on).
  public var needsCalibration: Bool {
    reorder || smoothAttn != nil || smoothProj != nil || gptq != nil || clipStrategy == .gridSearch || kvStatic
      || centerKeys == .always || scaleKeys == .always
  }

  /// Whether post-RoPE keys are centered on this model: `always`, or `auto` on a model with attention biases whose
  /// recipe has SmoothAttention (QoQ's KV4 recipes on Qwen2); never with static or symmetric KV.
  public func centersKeys(_ c: LlamaConfiguration) -> Bool {
    guard kvBits != nil, kvAsymmetric, !kvStatic else { return false }
    switch centerKeys {
    case .always: return true
    case .never: return false
    case .auto: return c.attentionBias && smoothAttn != nil
    }
  }

  /// Whether each head of post-RoPE Q and K is Hadamard-rotated before the KV cache: `always`, or `auto` where keys are
  /// centered (the K-bias families: centering removes the bias, the rotation spreads the outlier channels that remain);
  /// never with static KV scales.
  public func rotatesKeys(_ c: LlamaConfiguration) -> Bool {
    guard kvBits != nil, !kvStatic else { return false }
    switch rotateKeys {
    case .always: return true
    case .never: return false
    case .auto: return centersKeys(c) && c.headDim & (c.headDim - 1) == 0
    }
  }

  /// Whether post-RoPE keys are scaled per channel (and queries divided) before the cache: `always`, or `auto` where
  /// keys are rotated; never with static KV scales.
  public func scalesKeys(_ c: LlamaConfiguration) -> Bool {
    guard kvBits != nil, !kvStatic else { return false }
    switch scaleKeys {
    case .always: return true
    case .never: return false
    case .auto: return rotatesKeys(c)
    }
  }

  /// Checks the plan against a model's shapes (group sizes must divide the widths, rotation must exist).
  public func check(_ c: LlamaConfiguration) throws {
    // MoE layers (issue #14) take every recipe: per expert from its routed tokens GPTQ Hessians, the down_proj reorder,
    // SmoothLinear (AbsMax or RootMeanSquare spans), AWQ's w2 search and the weight range search; one λ shared by the
    // router and every expert's w1/w3 (SmoothQuant, AWQ judged on the sparse block).
    if let f = weightFormat, f.groupSize(1 << 30) != 1 << 30 {  // formats with a fixed group width
      let g = f.groupSize(c.hiddenSize)
      for (name, width) in [("hidden_size", c.hiddenSize), ("intermediate_size", c.intermediateSize), ("heads·head_dim", c.qDim)]
      where width % g != 0 {
        throw QoQError("recipe: weight group size \(g) does not divide \(name) = \(width) of this model (try a group of 64: recipes/qoq-g64.yaml)")
      }
    }
    if let kg = kvGroup, c.kvDim % kg != 0 || (kg > c.headDim && kg % c.headDim != 0) {
      throw QoQError("recipe: KV group size \(kg) does not fit kv_heads·head_dim = \(c.kvDim) (head_dim \(c.headDim))")
    }
    // QoQ's asymmetric KV4/KV8 is per (token, head) in QServe and in our engine: a group wider than one head (a
    // 128 group on a head_dim-64 model, or a whole token with several KV heads) would be measured by the fake
    // quantizer but could not be served, so it is refused here, before any work (issue #19).
    if kvBits != nil && kvAsymmetric && !kvStatic {
      let g = kvGroup ?? c.kvDim
      if g > c.headDim {
        throw QoQError("recipe: KV groups of \(g) channels span \(g / c.headDim) heads of this model (head_dim \(c.headDim)); "
                       + "asymmetric KV is quantized per head: use --opts-group-shapes 1,\(c.headDim)"
                       + (c.headDim == 64 ? " (or recipes/qoq-g64.yaml)" : ""))
      }
    }
    if rotatesKeys(c) && c.headDim & (c.headDim - 1) != 0 {
      throw QoQError("recipe: quant.opts.rotate_keys needs a power-of-two head_dim (this model's is \(c.headDim)); use never")
    }
    if rotation != nil && !(rotation!.random) {
      _ = try HadamardRotation(size: c.hiddenSize)
      _ = try HadamardRotation(size: c.headDim)
    }
  }
}

/// An integer list field (e.g. intermediate_levels), nil when it is not one.
func recipeInts(_ r: Recipe, _ path: String) -> [Int]? {
  var v: JSONValue? = r.tree
  for k in path.split(separator: ".") { v = v?[String(k)] }
  return v?.array?.compactMap(\.int)
}

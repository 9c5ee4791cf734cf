// config.json of Llama-family checkpoints, with Hugging Face field names, defaults and validation.
// Reference: transformers LlamaConfig / MistralConfig / Qwen2Config; mlx-swift-lm Llama.swift (init(from:)).
import Foundation
import QoQIO

/// `rope_scaling` of Llama 3.x (`rope_type: "llama3"`); `type` is accepted as the key too.
public struct RopeScaling: Codable, Sendable, Equatable {
  public var ropeType: String
  public var factor: Double
  public var lowFreqFactor: Double
  public var highFreqFactor: Double
  public var originalMaxPositionEmbeddings: Int

  enum CodingKeys: String, CodingKey {
    case ropeType = "rope_type", type, factor, lowFreqFactor = "low_freq_factor", highFreqFactor = "high_freq_factor"
    case originalMaxPositionEmbeddings = "original_max_position_embeddings"
  }

  public init(ropeType: String = "llama3", factor: Double, lowFreqFactor: Double, highFreqFactor: Double,
              originalMaxPositionEmbeddings: Int) {
    self.ropeType = ropeType; self.factor = factor; self.lowFreqFactor = lowFreqFactor
    self.highFreqFactor = highFreqFactor; self.originalMaxPositionEmbeddings = originalMaxPositionEmbeddings
  }

  public init(from decoder: Decoder) throws {
    let c = try decoder.container(keyedBy: CodingKeys.self)
    guard let t = try c.decodeIfPresent(String.self, forKey: .ropeType) ?? c.decodeIfPresent(String.self, forKey: .type) else {
      throw QoQError("config.json: rope_scaling has no rope_type/type")
    }
    ropeType = t
    factor = try c.decodeIfPresent(Double.self, forKey: .factor) ?? 1
    lowFreqFactor = try c.decodeIfPresent(Double.self, forKey: .lowFreqFactor) ?? 1
    highFreqFactor = try c.decodeIfPresent(Double.self, forKey: .highFreqFactor) ?? 4
    originalMaxPositionEmbeddings = try c.decodeIfPresent(Int.self, forKey: .originalMaxPositionEmbeddings) ?? 8192
  }

  public func encode(to encoder: Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(ropeType, forKey: .ropeType)
    try c.encode(factor, forKey: .factor)
    try c.encode(lowFreqFactor, forKey: .lowFreqFactor)
    try c.encode(highFreqFactor, forKey: .highFreqFactor)
    try c.encode(originalMaxPositionEmbeddings, forKey: .originalMaxPositionEmbeddings)
  }
}

/// The configuration shared by the Llama, Mistral and Qwen2 families.
public struct LlamaConfiguration: Codable, Sendable, Equatable {
  public var modelType: String
  public var hiddenSize: Int
  public var intermediateSize: Int
  public var numHiddenLayers: Int
  public var numAttentionHeads: Int
  public var numKeyValueHeads: Int
  public var headDim: Int
  public var rmsNormEps: Double
  public var ropeTheta: Double
  public var ropeScaling: RopeScaling?
  public var maxPositionEmbeddings: Int
  public var vocabSize: Int
  public var tieWordEmbeddings: Bool
  /// q/k/v (and o for Llama's `attention_bias`) carry biases. Qwen2 always has q/k/v biases.
  public var attentionBias: Bool
  public var mlpBias: Bool
  public var bosTokenId: Int?
  public var eosTokenIds: [Int]
  public var slidingWindow: Int?
  /// Storage dtype of the weights (informational; computation is fp32).
  public var torchDtype: String = "float32"
  /// Mixture of experts (Mixtral): experts per MoE layer (`num_local_experts`) and experts each token is routed to
  /// (`num_experts_per_tok`); nil for dense models. Every decoder layer of a Mixtral model is an MoE layer.
  public var numLocalExperts: Int?
  public var numExpertsPerTok: Int = 2

  enum CodingKeys: String, CodingKey {
    case modelType = "model_type", hiddenSize = "hidden_size", intermediateSize = "intermediate_size"
    case numHiddenLayers = "num_hidden_layers", numAttentionHeads = "num_attention_heads"
    case numKeyValueHeads = "num_key_value_heads", headDim = "head_dim", rmsNormEps = "rms_norm_eps"
    case ropeTheta = "rope_theta", ropeScaling = "rope_scaling", maxPositionEmbeddings = "max_position_embeddings"
    case vocabSize = "vocab_size", tieWordEmbeddings = "tie_word_embeddings", attentionBias = "attention_bias"
    case mlpBias = "mlp_bias", bosTokenId = "bos_token_id", eosTokenId = "eos_token_id"
    case slidingWindow = "sliding_window", useSlidingWindow = "use_sliding_window", architectures
    case torchDtype = "torch_dtype", numLocalExperts = "num_local_experts", numExpertsPerTok = "num_experts_per_tok"
  }

  public init(modelType: String = "llama", hiddenSize: Int, intermediateSize: Int, numHiddenLayers: Int,
              numAttentionHeads: Int, numKeyValueHeads: Int? = nil, headDim: Int? = nil, rmsNormEps: Double = 1e-6,
              ropeTheta: Double = 10000, ropeScaling: RopeScaling? = nil, maxPositionEmbeddings: Int = 2048,
              vocabSize: Int, tieWordEmbeddings: Bool = false, attentionBias: Bool? = nil, mlpBias: Bool = false,
              bosTokenId: Int? = 1, eosTokenIds: [Int] = [2], slidingWindow: Int? = nil, numLocalExperts: Int? = nil,
              numExpertsPerTok: Int = 2) throws {
    self.modelType = modelType
    self.hiddenSize = hiddenSize; self.intermediateSize = intermediateSize
    self.numHiddenLayers = numHiddenLayers; self.numAttentionHeads = numAttentionHeads
    self.numKeyValueHeads = numKeyValueHeads ?? numAttentionHeads
    self.headDim = headDim ?? (numAttentionHeads > 0 ? hiddenSize / numAttentionHeads : 0)
    self.rmsNormEps = rmsNormEps; self.ropeTheta = ropeTheta; self.ropeScaling = ropeScaling
    self.maxPositionEmbeddings = maxPositionEmbeddings; self.vocabSize = vocabSize
    self.tieWordEmbeddings = tieWordEmbeddings
    self.attentionBias = attentionBias ?? (modelType == "qwen2")
    self.mlpBias = mlpBias; self.bosTokenId = bosTokenId; self.eosTokenIds = eosTokenIds
    self.slidingWindow = slidingWindow
    self.numLocalExperts = numLocalExperts; self.numExpertsPerTok = numExpertsPerTok
    try validate(headDimGiven: headDim != nil)
  }

  public init(from decoder: Decoder) throws {
    let c = try decoder.container(keyedBy: CodingKeys.self)
    modelType = try c.decode(String.self, forKey: .modelType)
    guard ModelRegistry.families[modelType] != nil else {
      throw QoQError("config.json: unsupported model_type \"\(modelType)\" (supported: \(ModelRegistry.supported.joined(separator: ", ")))")
    }
    hiddenSize = try c.decode(Int.self, forKey: .hiddenSize)
    intermediateSize = try c.decode(Int.self, forKey: .intermediateSize)
    numHiddenLayers = try c.decode(Int.self, forKey: .numHiddenLayers)
    numAttentionHeads = try c.decode(Int.self, forKey: .numAttentionHeads)
    numKeyValueHeads = try c.decodeIfPresent(Int.self, forKey: .numKeyValueHeads) ?? numAttentionHeads
    let hd = try c.decodeIfPresent(Int.self, forKey: .headDim)
    headDim = hd ?? (numAttentionHeads > 0 ? hiddenSize / numAttentionHeads : 0)
    rmsNormEps = try c.decodeIfPresent(Double.self, forKey: .rmsNormEps) ?? 1e-6
    ropeTheta = try c.decodeIfPresent(Double.self, forKey: .ropeTheta) ?? 10000
    ropeScaling = try c.decodeIfPresent(RopeScaling.self, forKey: .ropeScaling)
    maxPositionEmbeddings = try c.decodeIfPresent(Int.self, forKey: .maxPositionEmbeddings) ?? 2048
    vocabSize = try c.decode(Int.self, forKey: .vocabSize)
    tieWordEmbeddings = try c.decodeIfPresent(Bool.self, forKey: .tieWordEmbeddings) ?? false
    attentionBias = try c.decodeIfPresent(Bool.self, forKey: .attentionBias) ?? (modelType == "qwen2")
    if modelType == "qwen2" { attentionBias = true }
    mlpBias = try c.decodeIfPresent(Bool.self, forKey: .mlpBias) ?? false
    bosTokenId = try c.decodeIfPresent(Int.self, forKey: .bosTokenId)
    if let one = try? c.decodeIfPresent(Int.self, forKey: .eosTokenId) {
      eosTokenIds = [one]
    } else {
      eosTokenIds = try c.decodeIfPresent([Int].self, forKey: .eosTokenId) ?? []
    }
    // Mistral and Mixtral use `sliding_window` when set (no use_sliding_window key); Qwen2 only when asked.
    let useSW = try c.decodeIfPresent(Bool.self, forKey: .useSlidingWindow) ?? (modelType == "mistral" || modelType == "mixtral")
    slidingWindow = useSW ? try c.decodeIfPresent(Int.self, forKey: .slidingWindow) : nil
    if let t = ropeScaling?.ropeType, t != "llama3", t != "default" {
      throw QoQError("config.json: rope_scaling type \"\(t)\" is not supported (supported: llama3, default)")
    }
    torchDtype = (try? c.decodeIfPresent(String.self, forKey: .torchDtype)) ?? "float32"
    if modelType == "mixtral" {
      numLocalExperts = try c.decodeIfPresent(Int.self, forKey: .numLocalExperts) ?? 8
      numExpertsPerTok = try c.decodeIfPresent(Int.self, forKey: .numExpertsPerTok) ?? 2
    } else if c.contains(.numLocalExperts) {
      throw QoQError("config.json: num_local_experts is set but model_type \"\(modelType)\" has no expert layers (use mixtral)")
    }
    try validate(headDimGiven: hd != nil)
  }

  public func encode(to encoder: Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode([ModelRegistry.families[modelType]?.architecture ?? "LlamaForCausalLM"], forKey: .architectures)
    try c.encode(modelType, forKey: .modelType)
    try c.encode(hiddenSize, forKey: .hiddenSize)
    try c.encode(intermediateSize, forKey: .intermediateSize)
    try c.encode(numHiddenLayers, forKey: .numHiddenLayers)
    try c.encode(numAttentionHeads, forKey: .numAttentionHeads)
    try c.encode(numKeyValueHeads, forKey: .numKeyValueHeads)
    try c.encode(headDim, forKey: .headDim)
    try c.encode(rmsNormEps, forKey: .rmsNormEps)
    try c.encode(ropeTheta, forKey: .ropeTheta)
    try c.encodeIfPresent(ropeScaling, forKey: .ropeScaling)
    try c.encode(maxPositionEmbeddings, forKey: .maxPositionEmbeddings)
    try c.encode(vocabSize, forKey: .vocabSize)
    try c.encode(tieWordEmbeddings, forKey: .tieWordEmbeddings)
    if modelType != "qwen2" { try c.encode(attentionBias, forKey: .attentionBias) }
    try c.encode(mlpBias, forKey: .mlpBias)
    try c.encodeIfPresent(bosTokenId, forKey: .bosTokenId)
    if eosTokenIds.count == 1 { try c.encode(eosTokenIds[0], forKey: .eosTokenId) }
    else if !eosTokenIds.isEmpty { try c.encode(eosTokenIds, forKey: .eosTokenId) }
    if let sw = slidingWindow { try c.encode(sw, forKey: .slidingWindow) }
    if let e = numLocalExperts { try c.encode(e, forKey: .numLocalExperts); try c.encode(numExpertsPerTok, forKey: .numExpertsPerTok) }
    try c.encode(torchDtype, forKey: .torchDtype)
  }

  func validate(headDimGiven: Bool) throws {
    func bad(_ m: String) -> QoQError { QoQError("config.json: \(m)") }
    // Each size is refused beyond a limit well above every published model (Llama-3.1-405B: 126 layers, hidden 16384,
    // FFN 53248, 128 heads; vocabularies up to 256k), before anything is allocated from it.
    for (name, v, limit) in [("hidden_size", hiddenSize, Self.limits.hidden), ("intermediate_size", intermediateSize, Self.limits.ffn),
                             ("num_hidden_layers", numHiddenLayers, Self.limits.layers),
                             ("num_attention_heads", numAttentionHeads, Self.limits.heads),
                             ("num_key_value_heads", numKeyValueHeads, Self.limits.heads), ("vocab_size", vocabSize, Self.limits.vocab),
                             ("head_dim", headDim, Self.limits.headDim),
                             ("max_position_embeddings", maxPositionEmbeddings, Self.limits.positions)] {
      guard v > 0 else { throw bad("\(name) must be positive (got \(v))") }
      guard v <= limit else { throw bad("\(name) = \(v) exceeds the limit of \(limit)") }
    }
    for id in eosTokenIds + [bosTokenId].compactMap({ $0 }) where id < 0 || id >= vocabSize {
      throw bad("token id \(id) in bos_token_id/eos_token_id is outside the vocabulary (0..<\(vocabSize))")
    }
    if let w = slidingWindow, w <= 0 { throw bad("sliding_window must be positive (got \(w))") }
    if let e = numLocalExperts {
      guard e > 0, e <= Self.limits.experts else { throw bad("num_local_experts must be in 1…\(Self.limits.experts) (got \(e))") }
      guard numExpertsPerTok > 0, numExpertsPerTok <= e else {
        throw bad("num_experts_per_tok must be in 1…num_local_experts (\(e)) (got \(numExpertsPerTok))")
      }
    }
    if let r = ropeScaling {
      let factors = [("factor", r.factor), ("low_freq_factor", r.lowFreqFactor), ("high_freq_factor", r.highFreqFactor)]
      for (n, v) in factors where !(v > 0 && v.isFinite) {
        throw bad("rope_scaling.\(n) must be a positive number (got \(v))")
      }
      guard r.originalMaxPositionEmbeddings > 0, r.originalMaxPositionEmbeddings <= Self.limits.positions else {
        throw bad("rope_scaling.original_max_position_embeddings must be in 1…\(Self.limits.positions)")
      }
    }
    if !headDimGiven && hiddenSize % numAttentionHeads != 0 {
      throw bad("hidden_size \(hiddenSize) is not divisible by num_attention_heads \(numAttentionHeads)")
    }
    guard numAttentionHeads % numKeyValueHeads == 0 else {
      throw bad("num_attention_heads \(numAttentionHeads) is not a multiple of num_key_value_heads \(numKeyValueHeads)")
    }
    guard headDim % 2 == 0 else { throw bad("head_dim \(headDim) must be even for RoPE") }
    guard rmsNormEps > 0, rmsNormEps.isFinite else { throw bad("rms_norm_eps must be positive") }
    guard ropeTheta > 0, ropeTheta.isFinite else { throw bad("rope_theta must be positive") }
    _ = try checkedMul(numAttentionHeads, headDim, "config.json: num_attention_heads × head_dim")
    _ = try checkedMul(vocabSize, hiddenSize, "config.json: vocab_size × hidden_size")
    _ = try checkedMul(intermediateSize, hiddenSize, "config.json: intermediate_size × hidden_size")
    // The whole model's parameter count must be representable (and is what the loaders size their buffers from).
    let mlp = try checkedMul(3 * (numLocalExperts ?? 1), try checkedMul(intermediateSize, hiddenSize, "config.json: MLP size"),
                             "config.json: MLP size")
    let attention = try checkedMul(2 * (numAttentionHeads + numKeyValueHeads), try checkedMul(headDim, hiddenSize, "config.json: attention size"),
                                   "config.json: attention size")
    let perLayer = try checkedAdd(mlp, attention, "config.json: layer size")
    _ = try checkedMul(perLayer, numHiddenLayers, "config.json: parameter count")
  }

  /// Structural limits applied to every config (hostile files are refused before allocation, with the limit named).
  public static let limits = (layers: 1024, hidden: 1 << 16, ffn: 1 << 19, heads: 1024, headDim: 1024, vocab: 1 << 22,
                              positions: 1 << 24, experts: 1024)

  public var qDim: Int { numAttentionHeads * headDim }
  public var kvDim: Int { numKeyValueHeads * headDim }
  /// Whether the decoder layers are mixture-of-experts layers (Mixtral) rather than dense MLPs.
  public var isMoE: Bool { numLocalExperts != nil }

  public static func load(path: String) throws -> LlamaConfiguration {
    let data: Data
    do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
      throw QoQError("\(path): cannot read config (\(error.localizedDescription))")
    }
    // Integer fields holding numbers no Int can represent (1e300, 2^64) are named here; Foundation's decoder would
    // only say "not valid JSON".
    if let root = try? JSON.parse(data, what: path) {
      for key in ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                  "max_position_embeddings", "vocab_size", "bos_token_id", "sliding_window", "num_local_experts",
                  "num_experts_per_tok"] {
        if let v = root[key], let d = v.double, v.int == nil {
          throw QoQError("\(path): \(key) = \(d) is not an integer in range")
        }
      }
      for v in root["eos_token_id"]?.array ?? [root["eos_token_id"]].compactMap({ $0 }) where v.double != nil && v.int == nil {
        throw QoQError("\(path): eos_token_id \(v.double!) is not an integer in range")
      }
    }
    do {
      return try JSONDecoder().decode(LlamaConfiguration.self, from: data)
    } catch let e as QoQError {
      throw QoQError("\(path): \(e.message.replacingOccurrences(of: "config.json: ", with: ""))")
    } catch let DecodingError.keyNotFound(k, _) {
      throw QoQError("\(path): missing field \"\(k.stringValue)\"")
    } catch let DecodingError.typeMismatch(_, ctx) {
      throw QoQError("\(path): wrong type for \"\(ctx.codingPath.map(\.stringValue).joined(separator: "."))\"")
    } catch let DecodingError.valueNotFound(_, ctx) {
      throw QoQError("\(path): null value for \"\(ctx.codingPath.map(\.stringValue).joined(separator: "."))\"")
    } catch {
      throw QoQError("\(path): not valid JSON (\(error))")
    }
  }

  public func jsonData() throws -> Data {
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys]
    return try enc.encode(self)
  }
}

// A GGUF file seen as a Hugging Face checkpoint: config.json fields from `{arch}.*` metadata, tensors renamed to
// HF names and dequantized to fp32, with llama.cpp's Q/K row permutation undone for the llama architecture.
import QoQIO

public final class GGUFWeights: WeightSource {
  public let gguf: GGUFFile
  public let config: LlamaConfiguration
  public let family: ModelFamily
  /// HF name → GGUF tensor name, and for one expert of a merged 3-D expert tensor its index there.
  let hfToGGUF: [String: (name: String, slice: Int?)]
  public let tensorNames: [String]

  public init(_ gguf: GGUFFile) throws {
    self.gguf = gguf
    guard let arch = gguf.string("general.architecture") else {
      throw QoQError("\(gguf.path): no general.architecture in metadata")
    }
    family = try ModelRegistry.family(ggufArchitecture: arch, experts: ggufExpertCount(gguf, arch: arch) != nil)
    config = try ggufConfiguration(gguf, arch: arch, family: family)
    var map: [String: (name: String, slice: Int?)] = [:]
    var unknown: [String] = []
    for t in gguf.tensors {
      if let (layer, w) = mergedExpertTensor(t.name) {
        // blk.{i}.ffn_{gate,up,down}_exps.weight: dims (in, out, experts), one HF tensor per expert.
        let experts = config.numLocalExperts ?? 0
        guard t.dims.count == 3, t.dims[2] == experts else {
          throw QoQError("\(gguf.path): \(t.name) has dims \(t.dims); \(arch).expert_count says \(experts) experts")
        }
        for e in 0..<experts { map[MoEBlock.prefix(layer: layer) + "experts.\(e).\(w).weight"] = (t.name, e) }
      } else if let hf = hfName(ggufName: t.name) { map[hf] = (t.name, nil) } else { unknown.append(t.name) }
    }
    if !unknown.isEmpty {
      throw QoQError("\(gguf.path): unexpected tensor(s) \(unknown.prefix(5).joined(separator: ", "))")
    }
    hfToGGUF = map
    tensorNames = map.keys.sorted()
  }

  public convenience init(path: String) throws { try self.init(GGUFFile(path: path)) }

  public func shape(_ name: String) throws -> [Int] {
    guard let (g, slice) = hfToGGUF[name] else { throw QoQError("\(gguf.path): missing tensor \(name)") }
    let shape = try gguf.tensor(g).shape
    return slice == nil ? shape : Array(shape.dropFirst())
  }

  public func floats(_ name: String) throws -> [Float] {
    guard let (g, slice) = hfToGGUF[name] else { throw QoQError("\(gguf.path): missing tensor \(name)") }
    let raw = try slice.map { try gguf.floats(g, slice: $0) } ?? gguf.floats(g)
    let w = try requireFinite(raw, name: "\(g) (\(name))", in: gguf.path)
    if family.ggufPermutesQK && g.hasSuffix(".weight") {
      if g.hasSuffix("attn_q.weight") { return unpermuteRows(w, heads: config.numAttentionHeads, cols: config.hiddenSize) }
      if g.hasSuffix("attn_k.weight") { return unpermuteRows(w, heads: config.numKeyValueHeads, cols: config.hiddenSize) }
    }
    if family.ggufPermutesQK && g.hasSuffix(".bias") {
      if g.hasSuffix("attn_q.bias") { return unpermuteRows(w, heads: config.numAttentionHeads, cols: 1) }
      if g.hasSuffix("attn_k.bias") { return unpermuteRows(w, heads: config.numKeyValueHeads, cols: 1) }
    }
    return w
  }
}

/// Undoes llama.cpp's `permute`: GGUF row (h, i, j) holds HF row (h, j, i), i < d/2, j < 2, so that rotary
/// pairs (i, i + d/2) of HF's rotate_half become adjacent. Equivalent to numpy
/// `w.reshape(heads, d/2, 2, cols).swapaxes(1, 2).reshape(out, cols)`.
public func unpermuteRows(_ w: [Float], heads: Int, cols: Int) -> [Float] {
  let rows = w.count / cols
  let d = rows / heads, half = d / 2
  var out = [Float](repeating: 0, count: w.count)
  for h in 0..<heads {
    for i in 0..<half {
      for j in 0..<2 {
        let src = (h * d + i * 2 + j) * cols, dst = (h * d + j * half + i) * cols
        for c in 0..<cols { out[dst + c] = w[src + c] }
      }
    }
  }
  return out
}

/// llama.cpp's per-block tensor names → HF's (both directions read this one table).
let ggufBlockNames: [String: String] = [
  "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
  "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
  "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
  "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
  "attn_v.bias": "self_attn.v_proj.bias", "attn_output.bias": "self_attn.o_proj.bias",
  "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
  "ffn_down.weight": "mlp.down_proj.weight", "ffn_gate_inp.weight": "block_sparse_moe.gate.weight",
]
/// llama.cpp's expert tensors → the HF expert weight: w1 = gate, w3 = up, w2 = down.
let ggufExpertNames = ["ffn_gate": "w1", "ffn_up": "w3", "ffn_down": "w2"]

/// `blk.{i}.ffn_{gate,up,down}_exps.weight` (llama.cpp's merged expert tensors) → (layer, w1|w2|w3).
func mergedExpertTensor(_ n: String) -> (Int, String)? {
  let parts = n.split(separator: ".").map(String.init)
  guard parts.count == 4, parts[0] == "blk", let i = Int(parts[1]), parts[3] == "weight", parts[2].hasSuffix("_exps"),
        let w = ggufExpertNames[String(parts[2].dropLast(5))] else { return nil }
  return (i, w)
}
let ggufGlobalNames: [String: String] = [
  "token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
  "output.weight": "lm_head.weight", "rope_freqs.weight": "model.rotary_emb.inv_freq",
]
let hfBlockNames = Dictionary(uniqueKeysWithValues: ggufBlockNames.map { ($1, $0) })

/// llama.cpp tensor name → HF name (nil when unknown).
func hfName(ggufName n: String) -> String? {
  if let g = ggufGlobalNames[n] { return g }
  let parts = n.split(separator: ".", maxSplits: 2).map(String.init)
  // Older files hold one tensor per expert: blk.{i}.ffn_{gate,up,down}.{e}.weight.
  let sub = parts.count == 3 ? parts[2].split(separator: ".").map(String.init) : []
  if parts.count == 3, parts[0] == "blk", let i = Int(parts[1]), sub.count == 3, let w = ggufExpertNames[sub[0]], let e = Int(sub[1]),
     sub[2] == "weight" {
    return MoEBlock.prefix(layer: i) + "experts.\(e).\(w).weight"
  }
  guard parts.count == 3, parts[0] == "blk", let i = Int(parts[1]), let rest = ggufBlockNames[parts[2]] else { return nil }
  return "model.layers.\(i).\(rest)"
}

/// HF tensor name → llama.cpp's (nil when llama.cpp has no such tensor); the inverse of hfName(ggufName:).
public func ggufName(hfName n: String) -> String? {
  if let g = ggufGlobalNames.first(where: { $0.value == n && $0.key != "rope_freqs.weight" })?.key { return g }
  let parts = n.split(separator: ".", maxSplits: 3).map(String.init)
  guard parts.count == 4, parts[0] == "model", parts[1] == "layers", let i = Int(parts[2]), let rest = hfBlockNames[parts[3]] else {
    return nil
  }
  return "blk.\(i).\(rest)"
}

/// llama.cpp's `permute` as a row order: GGUF row r holds HF row order[r] (the inverse of unpermuteRows).
public func ggufPermutedRowOrder(rows: Int, heads: Int) -> [Int] {
  let d = rows / heads, half = d / 2
  var order = [Int](repeating: 0, count: rows)
  for h in 0..<heads {
    for i in 0..<half {
      for j in 0..<2 { order[h * d + i * 2 + j] = h * d + j * half + i }
    }
  }
  return order
}

/// `{arch}.expert_count` where the file is a mixture of experts (some converters write 0 for dense models).
func ggufExpertCount(_ g: GGUFFile, arch: String) -> Int? { g.int("\(arch).expert_count").flatMap { $0 > 0 ? $0 : nil } }

func ggufConfiguration(_ g: GGUFFile, arch: String, family: ModelFamily) throws -> LlamaConfiguration {
  func req(_ key: String) throws -> Int {
    guard let v = g.int("\(arch).\(key)") else { throw QoQError("\(g.path): missing metadata \(arch).\(key)") }
    return v
  }
  let heads = try req("attention.head_count")
  let hidden = try req("embedding_length")
  let tokens = g.metadata["tokenizer.ggml.tokens"]?.array?.count
  guard let vocab = g.int("\(arch).vocab_size") ?? tokens ?? (try? g.tensor("token_embd.weight").shape[0]) else {
    throw QoQError("\(g.path): cannot determine the vocabulary size")
  }
  let hasOutput = g.tensorIndex["output.weight"] != nil
  let attnBias = g.tensorIndex["blk.0.attn_q.bias"] != nil
  var scaling: RopeScaling? = nil
  if g.string("\(arch).rope.scaling.type") == "llama3" || g.tensorIndex["rope_freqs.weight"] != nil {
    throw QoQError("\(g.path): llama3 rope scaling stored as rope_freqs is not supported yet; convert from the HF checkpoint instead")
  }
  if let t = g.string("\(arch).rope.scaling.type"), t != "none" {
    throw QoQError("\(g.path): rope scaling type \(t) is not supported")
  }
  scaling = nil
  var eos: [Int] = []
  if let e = g.int("tokenizer.ggml.eos_token_id") { eos.append(e) }
  let hd = g.int("\(arch).attention.key_length") ?? g.int("\(arch).rope.dimension_count") ?? (hidden / max(heads, 1))
  return try LlamaConfiguration(
    modelType: family.modelType, hiddenSize: hidden, intermediateSize: try req("feed_forward_length"),
    numHiddenLayers: try req("block_count"), numAttentionHeads: heads,
    numKeyValueHeads: g.int("\(arch).attention.head_count_kv") ?? heads, headDim: hd,
    rmsNormEps: g.double("\(arch).attention.layer_norm_rms_epsilon") ?? 1e-6,
    ropeTheta: g.double("\(arch).rope.freq_base") ?? 10000, ropeScaling: scaling,
    maxPositionEmbeddings: g.int("\(arch).context_length") ?? 2048, vocabSize: vocab,
    tieWordEmbeddings: !hasOutput, attentionBias: family.qkvBias || attnBias,
    bosTokenId: g.int("tokenizer.ggml.bos_token_id"), eosTokenIds: eos,
    numLocalExperts: ggufExpertCount(g, arch: arch), numExpertsPerTok: g.int("\(arch).expert_used_count") ?? 2)
}

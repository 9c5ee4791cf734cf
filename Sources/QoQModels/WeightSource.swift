// Where tensors come from: a Hugging Face folder (safetensors) or a GGUF file, both seen through
// Hugging Face tensor names (`model.layers.{i}.self_attn.q_proj.weight`).
import QoQIO

public protocol WeightSource: AnyObject {
  /// Every tensor name the source holds, in HF naming.
  var tensorNames: [String] { get }
  func shape(_ name: String) throws -> [Int]
  func floats(_ name: String) throws -> [Float]
}

extension CheckpointWeights: WeightSource {
  public var tensorNames: [String] { names }
  public func shape(_ name: String) throws -> [Int] { try info(name).shape }
}

/// The tensor names a Llama-family checkpoint must hold, in load order.
public func expectedTensorNames(_ c: LlamaConfiguration) -> [String] {
  var n = ["model.embed_tokens.weight"]
  for i in 0..<c.numHiddenLayers {
    let p = "model.layers.\(i)."
    n += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
    for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
      n.append(p + "self_attn.\(proj).weight")
      if c.attentionBias && (proj != "o_proj" || c.modelType == "llama") { n.append(p + "self_attn.\(proj).bias") }
    }
    if let experts = c.numLocalExperts {
      let m = MoEBlock.prefix(layer: i)
      n.append(m + "gate.weight")
      for e in 0..<experts { for w in ["w1", "w2", "w3"] { n.append(m + "experts.\(e).\(w).weight") } }
      continue
    }
    for proj in ["gate_proj", "up_proj", "down_proj"] {
      n.append(p + "mlp.\(proj).weight")
      if c.mlpBias { n.append(p + "mlp.\(proj).bias") }
    }
  }
  n.append("model.norm.weight")
  if !c.tieWordEmbeddings { n.append("lm_head.weight") }
  return n
}

/// Names that checkpoints carry but the model does not use (HF `_keys_to_ignore_on_load_unexpected`).
func isIgnorable(_ name: String, _ c: LlamaConfiguration) -> Bool {
  name.hasSuffix(".rotary_emb.inv_freq") || (c.tieWordEmbeddings && name == "lm_head.weight")
}

/// Checks that the source has exactly the expected tensors (missing and unexpected both fail) with the
/// expected shapes.
public func verifyTensors(_ src: WeightSource, _ c: LlamaConfiguration) throws {
  let expected = expectedTensorNames(c)
  let have = Set(src.tensorNames)
  let missing = expected.filter { !have.contains($0) }
  if !missing.isEmpty {
    throw QoQError("checkpoint is missing \(missing.count) tensor(s): \(missing.prefix(5).joined(separator: ", "))\(missing.count > 5 ? ", …" : "")")
  }
  let exp = Set(expected)
  let unexpected = src.tensorNames.filter { !exp.contains($0) && !isIgnorable($0, c) }
  if !unexpected.isEmpty {
    throw QoQError("checkpoint has \(unexpected.count) unexpected tensor(s): "
                   + "\(unexpected.prefix(5).joined(separator: ", "))\(unexpected.count > 5 ? ", …" : "")")
  }
  for name in expected {
    let s = try src.shape(name)
    let want = tensorShape(name, c)
    guard s == want else { throw QoQError("tensor \(name) has shape \(s), expected \(want)") }
  }
}

/// The shape a tensor of this configuration must have (HF layout).
public func tensorShape(_ name: String, _ c: LlamaConfiguration) -> [Int] {
  let h = c.hiddenSize
  if name == "model.embed_tokens.weight" || name == "lm_head.weight" { return [c.vocabSize, h] }
  if name.hasSuffix("layernorm.weight") || name == "model.norm.weight" { return [h] }
  if name.hasSuffix("self_attn.k_center") || name.hasSuffix("self_attn.k_scale") { return [c.kvDim] }  // centered/scaled keys
  if name.hasSuffix("block_sparse_moe.gate.weight") { return [c.numLocalExperts ?? 0, h] }  // the MoE router
  if name.hasSuffix(".w2.weight") { return [h, c.intermediateSize] }                          // an expert's down
  let isBias = name.hasSuffix(".bias")
  let out: Int, inp: Int
  if name.contains("q_proj") { (out, inp) = (c.qDim, h) }
  else if name.contains("k_proj") || name.contains("v_proj") { (out, inp) = (c.kvDim, h) }
  else if name.contains("o_proj") { (out, inp) = (h, c.qDim) }
  else if name.contains("down_proj") { (out, inp) = (h, c.intermediateSize) }
  else { (out, inp) = (c.intermediateSize, h) }
  return isBias ? [out] : [out, inp]
}

// GGUF → Hugging Face folder: config.json, model.safetensors (dequantized, Q/K rows un-permuted),
// tokenizer.json, tokenizer_config.json (with the chat template), generation_config.json.
// The folder is built under a temporary name and renamed into place, so a failed run leaves nothing behind.
import Foundation
import QoQIO
import QoQTokenizers

public enum ConvertDType: String, Sendable, CaseIterable { case f32, f16, bf16 }

public func convertGGUFToHF(gguf path: String, output: String, dtype: ConvertDType = .f32, overwrite: Bool = false,
                            progress: ((Int, Int, String) -> Void)? = nil) throws {
  try convertGGUFToHF(try GGUFFile(path: path), output: output, dtype: dtype, overwrite: overwrite, progress: progress)
}

/// The conversion of an opened GGUF (`qoq convert` opens it through ModelCheckpoint.open).
public func convertGGUFToHF(_ g: GGUFFile, output: String, dtype: ConvertDType = .f32, overwrite: Bool = false,
                            progress: ((Int, Int, String) -> Void)? = nil) throws {
  let path = g.path
  try OutputFolder.check(output, force: overwrite, inputs: [path])
  let src = try GGUFWeights(g)
  let config = src.config
  try verifyTensors(src, config)
  let tokJSON = try tokenizerJSON(gguf: g)
  _ = try Tokenizer.load(tokenizerJSON: tokJSON, config: nil, what: path)  // must load before we write anything

  try OutputFolder.write(output, force: overwrite, inputs: [path], command: "convert") { tmp in
    // Shards of at most 2 GiB, each written as soon as it is full: memory holds one shard, not the model.
    let writer = ShardedSafeTensorsWriter(folder: tmp)
    let names = src.tensorNames.filter { !isIgnorable($0, config) }
    for (i, name) in names.enumerated() {
      progress?(i, names.count, name)
      let w = try src.floats(name)
      let shape = try src.shape(name)
      switch dtype {
      case .f32: try writer.add(TensorBlob(name: name, shape: shape, floats: w))
      case .f16:
        let h = w.map { f32ToF16($0).littleEndian }
        try writer.add(TensorBlob(name: name, dtype: .F16, shape: shape, data: h.withUnsafeBytes { Data($0) }))
      case .bf16:
        let h = w.map { f32ToBF16($0).littleEndian }
        try writer.add(TensorBlob(name: name, dtype: .BF16, shape: shape, data: h.withUnsafeBytes { Data($0) }))
      }
    }
    progress?(names.count, names.count, "writing")
    try writer.finish()
    var cfg = config
    cfg.torchDtype = ["f32": "float32", "f16": "float16", "bf16": "bfloat16"][dtype.rawValue]!
    try atomicWrite(tmp + "/config.json", data: try cfg.jsonData())
    try atomicWrite(tmp + "/tokenizer.json", data: Data(JSON.serialize(tokJSON).utf8))
    try atomicWrite(tmp + "/tokenizer_config.json", data: Data(JSON.serialize(tokenizerConfigJSON(g), pretty: true).utf8))
    var gen = JSONObject()
    if let b = config.bosTokenId { gen["bos_token_id"] = .int(b) }
    if let e = config.eosTokenIds.first { gen["eos_token_id"] = .int(e) }
    try atomicWrite(tmp + "/generation_config.json", data: Data(JSON.serialize(.object(gen), pretty: true).utf8))
  }
}

/// tokenizer_config.json for a GGUF tokenizer: special token names, add_bos/add_eos, chat template.
func tokenizerConfigJSON(_ g: GGUFFile) -> JSONValue {
  let tokens = g.metadata["tokenizer.ggml.tokens"]?.array?.compactMap(\.string) ?? []
  func name(_ key: String) -> JSONValue {
    guard let i = g.int("tokenizer.ggml.\(key)"), i >= 0, i < tokens.count else { return .null }
    return .string(tokens[i])
  }
  var o = JSONObject()
  o["add_bos_token"] = .bool(g.metadata["tokenizer.ggml.add_bos_token"]?.bool ?? (g.string("tokenizer.ggml.model") == "llama"))
  o["add_eos_token"] = .bool(g.metadata["tokenizer.ggml.add_eos_token"]?.bool ?? false)
  o["bos_token"] = name("bos_token_id")
  o["eos_token"] = name("eos_token_id")
  o["unk_token"] = name("unknown_token_id")
  o["pad_token"] = name("padding_token_id")
  o["model_max_length"] = .int(g.int("\(g.string("general.architecture") ?? "llama").context_length") ?? 2048)
  o["clean_up_tokenization_spaces"] = .bool(false)
  o["tokenizer_class"] = .string(g.string("tokenizer.ggml.model") == "llama" ? "LlamaTokenizer" : "GPT2Tokenizer")
  if let t = g.string("tokenizer.chat_template") { o["chat_template"] = .string(t) }
  return .object(o)
}

// A Hugging Face tokenizer (tokenizer.json + tokenizer_config.json) as GGUF tokenizer metadata, the way llama.cpp's
// convert_hf_to_gguf.py writes it (get_vocab_base, gguf-py SpecialVocab): the inverse of tokenizerJSON(gguf:).
//   tokens      id order, padded to the model's vocabulary with "[PAD<i>]" (type UNUSED)
//   token_type  CONTROL for special added tokens (or ones that look special, as the converter decides),
//               USER_DEFINED for other added tokens, NORMAL otherwise
//   merges      "left right" strings
//   pre         llama.cpp's pre-tokenizer name, recognised from the pre_tokenizer pipeline (smollm, gpt-2,
//               llama-bpe, qwen2); any other pipeline is refused (llama.cpp would tokenize it differently)
//   special ids tokenizer_config.json's bos/eos/unk/pad token names first, config.json's ids where those are absent
// Byte-level BPE ("gpt2") vocabularies only: a SentencePiece vocabulary needs tokenizer.model's scores.
import QoQIO

public struct GGUFSpecialIds: Sendable {
  public var bos: Int?, eos: Int?
  public init(bos: Int?, eos: Int?) { self.bos = bos; self.eos = eos }
}

public func ggufTokenizerMetadata(tokenizerJSON t: JSONValue, tokenizerConfig tc: JSONValue?, vocabSize: Int,
                                  configIds: GGUFSpecialIds, chatTemplate: String?, what: String) throws -> [(String, GGUFValue)] {
  guard let model = t["model"], model["type"]?.string == "BPE" else {
    throw QoQError("\(what): only BPE tokenizers are exported to GGUF (model.type is \(t["model"]?["type"]?.string ?? "missing"))")
  }
  guard model["byte_fallback"]?.bool != true else {
    throw QoQError("\(what): a SentencePiece-style vocabulary (byte_fallback BPE) is not exported to GGUF yet: llama.cpp needs "
                   + "its scores from tokenizer.model")
  }
  let pre = try ggufPreTokenizerName(t, what: what)
  guard let vocab = model["vocab"]?.object else { throw QoQError("\(what): model.vocab is not an object") }
  var byId = [String?](repeating: nil, count: vocabSize)
  func place(_ token: String, _ id: Int) throws {
    guard id >= 0 && id < vocabSize else {
      throw QoQError("\(what): token \(token.debugDescription) has id \(id), outside the model's \(vocabSize)-entry vocabulary")
    }
    byId[id] = token
  }
  for (tok, v) in vocab.pairs {
    guard let id = v.int else { throw QoQError("\(what): model.vocab[\(tok.debugDescription)] is not an integer id") }
    try place(tok, id)
  }
  var types = [Int32](repeating: 1, count: vocabSize)  // NORMAL
  for (i, a) in (t["added_tokens"]?.array ?? []).enumerated() {
    guard let id = a["id"]?.int, let content = a["content"]?.string else { throw QoQError("\(what): added_tokens[\(i)] lacks id or content") }
    try place(content, id)
    types[id] = a["special"]?.bool == true || looksSpecial(content) ? 3 : 4  // CONTROL : USER_DEFINED
  }
  var tokens: [GGUFValue] = []
  tokens.reserveCapacity(vocabSize)
  for i in 0..<vocabSize {
    if let s = byId[i] { tokens.append(.string(s)) } else { tokens.append(.string("[PAD\(i)]")); types[i] = 5 }  // UNUSED
  }
  var merges: [GGUFValue] = []
  for (i, m) in (model["merges"]?.array ?? []).enumerated() {
    if let s = m.string { merges.append(.string(s)); continue }
    guard let p = m.array, p.count == 2, let l = p[0].string, let r = p[1].string else {
      throw QoQError("\(what): model.merges[\(i)] is neither \"a b\" nor [a, b]")
    }
    merges.append(.string(l + " " + r))
  }
  // Special ids: the token names of tokenizer_config.json (a string or {"content": …}), then config.json's ids.
  func idOf(_ key: String) throws -> Int? {
    guard let v = tc?[key], !v.isNull else { return nil }
    guard let name = v.string ?? v["content"]?.string else { throw QoQError("\(what): tokenizer_config.json \(key) is not a token") }
    guard let id = byId.firstIndex(where: { $0 == name }) else {
      throw QoQError("\(what): tokenizer_config.json \(key) \(name.debugDescription) is not in the vocabulary")
    }
    return id
  }
  var meta: [(String, GGUFValue)] = [("tokenizer.ggml.model", .string("gpt2")), ("tokenizer.ggml.pre", .string(pre)),
                                      ("tokenizer.ggml.tokens", .array(tokens)), ("tokenizer.ggml.token_type", .array(types.map { .i32($0) })),
                                      ("tokenizer.ggml.merges", .array(merges))]
  let ids: [(String, Int?)] = [("bos", try idOf("bos_token") ?? configIds.bos), ("eos", try idOf("eos_token") ?? configIds.eos),
                               ("unknown", try idOf("unk_token")), ("padding", try idOf("pad_token"))]
  for (k, id) in ids {
    guard let id else { continue }
    guard id >= 0 && id < vocabSize else { throw QoQError("\(what): the \(k) token id \(id) is outside the vocabulary") }
    meta.append(("tokenizer.ggml.\(k)_token_id", .u32(UInt32(id))))
  }
  for k in ["add_bos_token", "add_eos_token"] {
    if let b = tc?[k]?.bool { meta.append(("tokenizer.ggml.\(k)", .bool(b))) }
  }
  if let b = tc?["add_prefix_space"]?.bool { meta.append(("tokenizer.ggml.add_space_prefix", .bool(b))) }
  if let c = chatTemplate { meta.append(("tokenizer.chat_template", .string(c))) }
  return meta
}

/// llama.cpp's `tokenizer.ggml.pre` name for a byte-level BPE pipeline we recognise (the ones tokenizerJSON(gguf:)
/// builds back): anything else would be split differently by llama.cpp, so it is refused.
func ggufPreTokenizerName(_ t: JSONValue, what: String) throws -> String {
  let p = t["pre_tokenizer"] ?? .null
  func byteLevel(_ v: JSONValue, regex: Bool) -> Bool { v["type"]?.string == "ByteLevel" && (v["use_regex"]?.bool ?? true) == regex }
  func split(_ v: JSONValue) -> String? { v["type"]?.string == "Split" ? v["pattern"]?["Regex"]?.string : nil }
  if byteLevel(p, regex: true) { return "gpt-2" }
  if p["type"]?.string == "Sequence", let s = p["pretokenizers"]?.array, s.count == 2 {
    if s[0]["type"]?.string == "Digits", s[0]["individual_digits"]?.bool == true, byteLevel(s[1], regex: true) { return "smollm" }
    if let r = split(s[0]), byteLevel(s[1], regex: false) {
      let nfc = t["normalizer"]?["type"]?.string == "NFC"
      if r == PreTokenizerPatterns.llama3 && !nfc { return "llama-bpe" }
      if r == PreTokenizerPatterns.qwen2 && nfc { return "qwen2" }
    }
  }
  throw QoQError("\(what): this pre-tokenizer pipeline has no llama.cpp name we know (recognised: GPT-2 byte level, SmolLM2's "
                 + "digits + byte level, Llama 3's and Qwen2's split regex); llama.cpp would tokenize differently, so it is not exported")
}

/// convert_hf_to_gguf's does_token_look_special: added tokens written like control tokens are CONTROL even when
/// tokenizer.json does not mark them special (Qwen2.5's <|fim_prefix|> …).
func looksSpecial(_ t: String) -> Bool {
  ["<pad>", "<mask>", "<2mass>", "[@BOS@]"].contains(t) || (t.hasPrefix("<|") && t.hasSuffix("|>"))
    || (t.hasPrefix("<｜") && t.hasSuffix("｜>")) || (t.hasPrefix("<start_of_") && t.hasSuffix(">"))
}

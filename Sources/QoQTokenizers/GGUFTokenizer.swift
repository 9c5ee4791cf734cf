// Tokenizers from GGUF metadata (`tokenizer.ggml.*`), and their export as a Hugging Face tokenizer.json.
// "gpt2" vocabularies are byte-level BPE with merges; the pre-tokenizer comes from `tokenizer.ggml.pre`.
// "llama" vocabularies are SentencePiece pieces with scores; merges are derived from the scores the way
// transformers' SentencePieceExtractor does (pairs ranked by the merged piece's score, descending).
import Foundation
import QoQIO

public enum GGUFTokenType: Int { case normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6 }

extension Tokenizer {
  public static func load(gguf g: GGUFFile) throws -> Tokenizer {
    for key in ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"] {
      if let v = g.int(key), Int32(exactly: v) == nil || v < 0 { throw QoQError("\(g.path): \(key) = \(v) is not a token id") }
    }
    return try Tokenizer.load(tokenizerJSON: tokenizerJSON(gguf: g), config: nil, what: g.path + " (tokenizer metadata)")
      .withSpecialIds(bos: g.int("tokenizer.ggml.bos_token_id"), eos: g.int("tokenizer.ggml.eos_token_id"))
  }

  func withSpecialIds(bos: Int?, eos: Int?) -> Tokenizer {
    Tokenizer(model: model, normalizer: normalizer, preTokenizer: preTokenizer, decoder: decoder,
              addedTokens: addedTokens, prefixIds: prefixIds, suffixIds: suffixIds,
              bosTokenId: bos.map { Int32($0) } ?? bosTokenId, eosTokenIds: eos.map { [Int32($0)] } ?? eosTokenIds)
  }
}

/// Builds the `tokenizer.json` document equivalent to a GGUF's tokenizer metadata.
public func tokenizerJSON(gguf g: GGUFFile) throws -> JSONValue {
  let what = g.path
  guard let kind = g.string("tokenizer.ggml.model") else { throw QoQError("\(what): no tokenizer.ggml.model in metadata") }
  guard let toks = g.metadata["tokenizer.ggml.tokens"]?.array else { throw QoQError("\(what): no tokenizer.ggml.tokens") }
  var tokens: [String] = []
  tokens.reserveCapacity(toks.count)
  for (i, t) in toks.enumerated() {
    guard let s = t.string else { throw QoQError("\(what): tokenizer.ggml.tokens[\(i)] is not a string") }
    tokens.append(s)
  }
  let types: [Int] = try {
    guard let a = g.metadata["tokenizer.ggml.token_type"]?.array else { return Array(repeating: 1, count: tokens.count) }
    guard a.count == tokens.count else { throw QoQError("\(what): token_type has \(a.count) entries for \(tokens.count) tokens") }
    return a.map { $0.int ?? 1 }
  }()
  func specialId(_ key: String) throws -> Int? {
    guard let v = g.int("tokenizer.ggml.\(key)") else { return nil }
    guard v >= 0 && v < tokens.count else { throw QoQError("\(what): tokenizer.ggml.\(key) = \(v) is outside the vocabulary") }
    return v
  }
  let bos = try specialId("bos_token_id"), unk = try specialId("unknown_token_id")
  _ = try specialId("eos_token_id")
  let addBos = g.metadata["tokenizer.ggml.add_bos_token"]?.bool ?? (kind == "llama")
  let addEos = g.metadata["tokenizer.ggml.add_eos_token"]?.bool ?? false

  var vocab = JSONObject()
  var added: [JSONValue] = []
  for (i, t) in tokens.enumerated() {
    if vocab[t] == nil { vocab[t] = .int(i) }
    let type = types[i]
    if type == GGUFTokenType.control.rawValue || type == GGUFTokenType.userDefined.rawValue
        || (kind == "llama" && type == GGUFTokenType.unknown.rawValue) {
      added.append(.object(JSONObject([
        ("id", .int(i)), ("content", .string(t)), ("single_word", .bool(false)), ("lstrip", .bool(false)),
        ("rstrip", .bool(false)), ("normalized", .bool(type == GGUFTokenType.userDefined.rawValue)),
        ("special", .bool(type != GGUFTokenType.userDefined.rawValue)),
      ])))
    }
  }
  func template() -> JSONValue {
    var single: [JSONValue] = []
    var specials = JSONObject()
    func sp(_ id: Int) -> JSONValue {
      specials[tokens[id]] = .object(JSONObject([("id", .string(tokens[id])), ("ids", .array([.int(id)])),
                                                 ("tokens", .array([.string(tokens[id])]))]))
      return .object(JSONObject([("SpecialToken", .object(JSONObject([("id", .string(tokens[id])), ("type_id", .int(0))])))]))
    }
    if addBos, let b = bos { single.append(sp(b)) }
    single.append(.object(JSONObject([("Sequence", .object(JSONObject([("id", .string("A")), ("type_id", .int(0))])))])))
    if addEos, let e = g.int("tokenizer.ggml.eos_token_id") { single.append(sp(e)) }
    return .object(JSONObject([("type", .string("TemplateProcessing")), ("single", .array(single)),
                               ("pair", .array(single)), ("special_tokens", .object(specials))]))
  }
  func obj(_ pairs: [(String, JSONValue)]) -> JSONValue { .object(JSONObject(pairs)) }

  switch kind {
  case "gpt2":
    guard let ms = g.metadata["tokenizer.ggml.merges"]?.array else { throw QoQError("\(what): gpt2 tokenizer without tokenizer.ggml.merges") }
    let merges: [JSONValue] = try ms.enumerated().map { (i, m) in
      guard let s = m.string else { throw QoQError("\(what): tokenizer.ggml.merges[\(i)] is not a string") }
      return .string(s)
    }
    let pre = g.string("tokenizer.ggml.pre") ?? "default"
    let byteLevel = { (useRegex: Bool) in
      obj([("type", .string("ByteLevel")), ("add_prefix_space", .bool(false)), ("trim_offsets", .bool(true)),
           ("use_regex", .bool(useRegex))])
    }
    var normalizer: JSONValue = .null
    var ignoreMerges = false
    let preTok: JSONValue
    func split(_ p: String) -> JSONValue {
      obj([("type", .string("Split")), ("pattern", obj([("Regex", .string(p))])), ("behavior", .string("Isolated")),
           ("invert", .bool(false))])
    }
    switch pre {
    case "smollm":
      preTok = obj([("type", .string("Sequence")), ("pretokenizers", .array([
        obj([("type", .string("Digits")), ("individual_digits", .bool(true))]), byteLevel(true)]))])
    case "default", "gpt-2", "gpt2":
      preTok = byteLevel(true)
    case "llama3", "llama-bpe", "llama-v3", "smaug-bpe":
      preTok = obj([("type", .string("Sequence")), ("pretokenizers", .array([split(PreTokenizerPatterns.llama3), byteLevel(false)]))])
      ignoreMerges = true
    case "qwen2":
      normalizer = obj([("type", .string("NFC"))])
      preTok = obj([("type", .string("Sequence")), ("pretokenizers", .array([split(PreTokenizerPatterns.qwen2), byteLevel(false)]))])
    default:
      throw QoQError("\(what): GGUF pre-tokenizer \"\(pre)\" is not supported (supported: smollm, default, gpt2, llama-bpe, llama3, qwen2)")
    }
    let post: JSONValue = (addBos && bos != nil) || addEos
      ? obj([("type", .string("Sequence")), ("processors", .array([byteLevel(false), template()]))])
      : obj([("type", .string("ByteLevel")), ("add_prefix_space", .bool(true)), ("trim_offsets", .bool(false)), ("use_regex", .bool(true))])
    return obj([
      ("version", .string("1.0")), ("truncation", .null), ("padding", .null), ("added_tokens", .array(added)),
      ("normalizer", normalizer), ("pre_tokenizer", preTok), ("post_processor", post),
      ("decoder", obj([("type", .string("ByteLevel")), ("add_prefix_space", .bool(true)), ("trim_offsets", .bool(true)),
                       ("use_regex", .bool(true))])),
      ("model", obj([("type", .string("BPE")), ("dropout", .null), ("unk_token", .null), ("continuing_subword_prefix", .null),
                     ("end_of_word_suffix", .null), ("fuse_unk", .bool(false)), ("byte_fallback", .bool(false)),
                     ("ignore_merges", .bool(ignoreMerges)), ("vocab", .object(vocab)), ("merges", .array(merges))])),
    ])
  case "llama":
    guard let sc = g.metadata["tokenizer.ggml.scores"]?.array, sc.count == tokens.count else {
      throw QoQError("\(what): llama (SentencePiece) tokenizer needs tokenizer.ggml.scores for every token")
    }
    let scores = sc.map { $0.double ?? 0 }
    let merges = sentencePieceMerges(tokens: tokens, scores: scores, types: types)
    let addSpacePrefix = g.metadata["tokenizer.ggml.add_space_prefix"]?.bool ?? true
    var norms: [JSONValue] = []
    if addSpacePrefix { norms.append(obj([("type", .string("Prepend")), ("prepend", .string("▁"))])) }
    norms.append(obj([("type", .string("Replace")), ("pattern", obj([("String", .string(" "))])), ("content", .string("▁"))]))
    var decs: [JSONValue] = [
      obj([("type", .string("Replace")), ("pattern", obj([("String", .string("▁"))])), ("content", .string(" "))]),
      obj([("type", .string("ByteFallback"))]), obj([("type", .string("Fuse"))]),
    ]
    if addSpacePrefix { decs.append(obj([("type", .string("Strip")), ("content", .string(" ")), ("start", .int(1)), ("stop", .int(0))])) }
    return obj([
      ("version", .string("1.0")), ("truncation", .null), ("padding", .null), ("added_tokens", .array(added)),
      ("normalizer", obj([("type", .string("Sequence")), ("normalizers", .array(norms))])), ("pre_tokenizer", .null),
      ("post_processor", template()),
      ("decoder", obj([("type", .string("Sequence")), ("decoders", .array(decs))])),
      ("model", obj([("type", .string("BPE")), ("dropout", .null), ("unk_token", unk.map { .string(tokens[$0]) } ?? .null),
                     ("continuing_subword_prefix", .null), ("end_of_word_suffix", .null), ("fuse_unk", .bool(true)),
                     ("byte_fallback", .bool(true)), ("ignore_merges", .bool(false)), ("vocab", .object(vocab)),
                     ("merges", .array(merges.map { .array([.string($0.0), .string($0.1)]) }))])),
    ])
  default:
    throw QoQError("\(what): GGUF tokenizer model \"\(kind)\" is not supported (supported: gpt2, llama)")
  }
}

/// SentencePiece scores → BPE merges: every split of a normal piece into two vocabulary pieces becomes a merge,
/// ranked by the merged piece's score (higher first), ties by (left id, right id).
func sentencePieceMerges(tokens: [String], scores: [Double], types: [Int]) -> [(String, String)] {
  var index: [[UInt8]: Int] = [:]
  for (i, t) in tokens.enumerated() where index[Array(t.utf8)] == nil { index[Array(t.utf8)] = i }
  var merges: [(l: Int, r: Int, score: Double, id: Int)] = []
  for (i, t) in tokens.enumerated() {
    guard types[i] == GGUFTokenType.normal.rawValue || types[i] == GGUFTokenType.userDefined.rawValue else { continue }
    let scalars = Array(t.unicodeScalars)
    guard scalars.count >= 2 else { continue }
    for cut in 1..<scalars.count {
      var l = String.UnicodeScalarView(), r = String.UnicodeScalarView()
      l.append(contentsOf: scalars[..<cut]); r.append(contentsOf: scalars[cut...])
      if let li = index[Array(String(l).utf8)], let ri = index[Array(String(r).utf8)] {
        merges.append((li, ri, scores[i], i))
      }
    }
  }
  merges.sort { a, b in
    if a.score != b.score { return a.score > b.score }
    if a.id != b.id { return a.id < b.id }
    return (a.l, a.r) < (b.l, b.r)
  }
  return merges.map { (tokens[$0.l], tokens[$0.r]) }
}

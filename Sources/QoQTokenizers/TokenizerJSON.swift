// Loading a Tokenizer from `tokenizer.json` (+ `tokenizer_config.json` for BOS/EOS names). Unsupported pipeline
// components are refused by name rather than silently ignored.
import Foundation
import QoQIO

extension Tokenizer {
  /// Loads `tokenizer.json` from a model folder, with BOS/EOS from `tokenizer_config.json` / `config.json` if present.
  public static func load(folder: String) throws -> Tokenizer {
    let path = folder + "/tokenizer.json"
    guard FileManager.default.fileExists(atPath: path) else { throw QoQError("\(folder): no tokenizer.json") }
    var cfg: JSONValue? = nil
    let cfgPath = folder + "/tokenizer_config.json"
    if FileManager.default.fileExists(atPath: cfgPath) { cfg = try JSON.parseFile(cfgPath) }
    return try load(tokenizerJSON: JSON.parseFile(path), config: cfg, what: path)
  }

  public static func load(tokenizerJSON root: JSONValue, config: JSONValue?, what: String) throws -> Tokenizer {
    func bad(_ m: String) -> QoQError { QoQError("\(what): \(m)") }
    guard let m = root["model"]?.object else { throw bad("missing \"model\"") }
    let type = m["type"]?.string ?? "BPE"
    guard type == "BPE" else { throw bad("tokenizer model type \(type) is not supported (supported: BPE)") }
    if let p = m["continuing_subword_prefix"], !p.isNull, p.string != "" { throw bad("continuing_subword_prefix is not supported") }
    if let p = m["end_of_word_suffix"], !p.isNull, p.string != "" { throw bad("end_of_word_suffix is not supported") }
    guard let vObj = m["vocab"]?.object else { throw bad("model.vocab is missing or not an object") }
    var vocab: [(String, Int32)] = []
    vocab.reserveCapacity(vObj.count)
    for (k, v) in vObj.pairs {
      guard let id = v.int, id >= 0, id < Int(Int32.max) else { throw bad("vocab entry \"\(k)\" has a bad id") }
      vocab.append((k, Int32(id)))
    }
    var merges: [(String, String)] = []
    if let ms = m["merges"]?.array {
      merges.reserveCapacity(ms.count)
      for (i, e) in ms.enumerated() {
        if let s = e.string {
          // "a b": split at the first space (tokens never contain a plain space in byte-level/SPM vocabularies).
          guard let sp = s.firstIndex(of: " ") else { throw bad("merge \(i) \"\(s)\" has no space") }
          merges.append((String(s[..<sp]), String(s[s.index(after: sp)...])))
        } else if let a = e.array, a.count == 2, let l = a[0].string, let r = a[1].string {
          merges.append((l, r))
        } else { throw bad("merge \(i) is neither \"a b\" nor [a, b]") }
      }
    } else if m["merges"] != nil { throw bad("model.merges is not an array") }
    let model = try BPEModel(vocab: vocab, merges: merges, unkToken: m["unk_token"]?.string,
                             fuseUnk: m["fuse_unk"]?.bool ?? false, byteFallback: m["byte_fallback"]?.bool ?? false,
                             ignoreMerges: m["ignore_merges"]?.bool ?? false)
    var added: [AddedToken] = []
    for (i, a) in (root["added_tokens"]?.array ?? []).enumerated() {
      guard let id = a["id"]?.int, id >= 0, id < Int(Int32.max), let content = a["content"]?.string, !content.isEmpty else {
        throw bad("added_tokens[\(i)] needs an id and non-empty content")
      }
      added.append(AddedToken(id: Int32(id), content: content, special: a["special"]?.bool ?? false,
                              lstrip: a["lstrip"]?.bool ?? false, rstrip: a["rstrip"]?.bool ?? false))
    }
    let normalizer = try parseNormalizer(root["normalizer"], bad)
    let pre = try parsePreTokenizer(root["pre_tokenizer"], bad)
    let dec = try parseDecoder(root["decoder"], bad)
    func idOf(_ t: String) -> Int32? { added.first { $0.content.utf8.elementsEqual(t.utf8) }?.id ?? model.tokenId(t) }
    var prefix: [Int32] = [], suffix: [Int32] = []
    try parsePostProcessor(root["post_processor"], bad, &prefix, &suffix)
    // BOS/EOS names from tokenizer_config.json (strings or {"content": …} objects).
    func tokenName(_ v: JSONValue?) -> String? { v?.string ?? v?["content"]?.string }
    let bos = tokenName(config?["bos_token"]).flatMap(idOf)
    var eos: [Int32] = []
    if let e = tokenName(config?["eos_token"]).flatMap(idOf) { eos.append(e) }
    return Tokenizer(model: model, normalizer: normalizer, preTokenizer: pre, decoder: dec, addedTokens: added,
                     prefixIds: prefix, suffixIds: suffix, bosTokenId: bos, eosTokenIds: eos)
  }

  static func parseNormalizer(_ v: JSONValue?, _ bad: (String) -> QoQError) throws -> Normalizer? {
    guard let v = v, !v.isNull else { return nil }
    let t = v["type"]?.string ?? ""
    switch t {
    case "NFC": return .nfc
    case "NFKC": return .nfkc
    case "Prepend":
      guard let p = v["prepend"]?.string else { throw bad("Prepend normalizer without prepend") }
      return .prepend(p)
    case "Replace":
      guard let pat = v["pattern"]?["String"]?.string, let c = v["content"]?.string else {
        throw bad("Replace normalizer: only String patterns are supported")
      }
      return .replace(pat, c)
    case "Sequence":
      return .sequence(try (v["normalizers"]?.array ?? []).compactMap { try parseNormalizer($0, bad) })
    default: throw bad("normalizer type \"\(t)\" is not supported")
    }
  }

  static func parsePreTokenizer(_ v: JSONValue?, _ bad: (String) -> QoQError) throws -> PreTokenizer? {
    guard let v = v, !v.isNull else { return nil }
    let t = v["type"]?.string ?? ""
    switch t {
    case "ByteLevel":
      return .byteLevel(addPrefixSpace: v["add_prefix_space"]?.bool ?? false, useRegex: v["use_regex"]?.bool ?? true)
    case "Digits": return .digits(individual: v["individual_digits"]?.bool ?? false)
    case "Split":
      guard let pat = v["pattern"]?["Regex"]?.string ?? v["pattern"]?["String"]?.string.map(NSRegularExpression.escapedPattern) else {
        throw bad("Split pre-tokenizer without a pattern")
      }
      let behavior = v["behavior"]?.string ?? "Isolated"
      guard behavior == "Isolated", v["invert"]?.bool != true else {
        throw bad("Split pre-tokenizer behavior \(behavior) (invert \(v["invert"]?.bool ?? false)) is not supported")
      }
      return .split(try SplitRegex(pat))
    case "Metaspace":
      let rep = v["replacement"]?.string ?? "▁"
      var scheme = v["prepend_scheme"]?.string ?? "always"
      if let aps = v["add_prefix_space"]?.bool, v["prepend_scheme"] == nil { scheme = aps ? "always" : "never" }
      return .metaspace(replacement: rep, prependScheme: scheme, split: v["split"]?.bool ?? true)
    case "Sequence":
      return .sequence(try (v["pretokenizers"]?.array ?? []).compactMap { try parsePreTokenizer($0, bad) })
    default: throw bad("pre_tokenizer type \"\(t)\" is not supported")
    }
  }

  static func parseDecoder(_ v: JSONValue?, _ bad: (String) -> QoQError) throws -> TokenDecoder? {
    guard let v = v, !v.isNull else { return nil }
    let t = v["type"]?.string ?? ""
    switch t {
    case "ByteLevel": return .byteLevel
    case "ByteFallback": return .byteFallback
    case "Fuse": return .fuse
    case "Replace":
      guard let pat = v["pattern"]?["String"]?.string, let c = v["content"]?.string else {
        throw bad("Replace decoder: only String patterns are supported")
      }
      return .replace(pat, c)
    case "Strip":
      return .strip(v["content"]?.string ?? " ", start: v["start"]?.int ?? 0, stop: v["stop"]?.int ?? 0)
    case "Metaspace":
      let scheme = v["prepend_scheme"]?.string ?? ((v["add_prefix_space"]?.bool ?? true) ? "always" : "never")
      return .metaspace(replacement: v["replacement"]?.string ?? "▁", addPrefixSpace: scheme != "never")
    case "Sequence":
      return .sequence(try (v["decoders"]?.array ?? []).compactMap { try parseDecoder($0, bad) })
    default: throw bad("decoder type \"\(t)\" is not supported")
    }
  }

  static func parsePostProcessor(_ v: JSONValue?, _ bad: (String) -> QoQError, _ prefix: inout [Int32], _ suffix: inout [Int32]) throws {
    guard let v = v, !v.isNull else { return }
    let t = v["type"]?.string ?? ""
    switch t {
    case "ByteLevel": return
    case "Sequence":
      for p in v["processors"]?.array ?? [] { try parsePostProcessor(p, bad, &prefix, &suffix) }
    case "TemplateProcessing":
      guard let single = v["single"]?.array else { throw bad("TemplateProcessing without \"single\"") }
      let specials = v["special_tokens"]?.object
      var seenSeq = false
      for piece in single {
        if piece["Sequence"] != nil { seenSeq = true; continue }
        guard let name = piece["SpecialToken"]?["id"]?.string else { throw bad("TemplateProcessing piece is not understood") }
        guard let ids = specials?[name]?["ids"]?.array?.compactMap({ $0.int }) else {
          throw bad("TemplateProcessing special token \(name) has no ids")
        }
        let i32 = ids.compactMap { Int32(exactly: $0) }.filter { $0 >= 0 }
        guard i32.count == ids.count else {
          throw bad("TemplateProcessing special token \(name) has an id outside 0…\(Int32.max)")
        }
        if seenSeq { suffix += i32 } else { prefix += i32 }
      }
    default: throw bad("post_processor type \"\(t)\" is not supported")
    }
  }
}

extension Tokenizer {
  /// A byte-level BPE tokenizer.json with the 256 byte tokens and no merges (GPT-2's byte table: printable Latin-1
  /// bytes map to themselves, the rest to U+0100… in order): for random-weight and test checkpoints.
  public static func byteLevelJSON() -> JSONValue {
    var vocab = JSONObject()
    var n: UInt32 = 0
    for b in 0..<256 {
      let printable = (33...126).contains(b) || (161...172).contains(b) || (174...255).contains(b)
      let u = printable ? UInt32(b) : 256 + n
      if !printable { n += 1 }
      vocab[String(Character(Unicode.Scalar(u)!))] = .int(b)
    }
    return .object(JSONObject([
      ("version", .string("1.0")), ("added_tokens", .array([])), ("normalizer", .null),
      ("pre_tokenizer", .object(JSONObject([("type", .string("ByteLevel")), ("add_prefix_space", .bool(false)), ("use_regex", .bool(true))]))),
      ("post_processor", .null), ("decoder", .object(JSONObject([("type", .string("ByteLevel"))]))),
      ("model", .object(JSONObject([("type", .string("BPE")), ("vocab", .object(vocab)), ("merges", .array([]))]))),
    ]))
  }
}

// A Hugging Face `tokenizers` pipeline: added tokens split out first, then normalizer → pre-tokenizer → BPE on each
// text section; a post-processor adds BOS/EOS; decoders turn ids back into text.
import Foundation
import QoQIO

public struct AddedToken: Sendable, Equatable {
  public let id: Int32
  public let content: String
  public let special: Bool
  public let lstrip: Bool
  public let rstrip: Bool
  public init(id: Int32, content: String, special: Bool, lstrip: Bool = false, rstrip: Bool = false) {
    self.id = id; self.content = content; self.special = special; self.lstrip = lstrip; self.rstrip = rstrip
  }
}

public enum TokenDecoder: Sendable {
  case byteLevel
  case replace(String, String)
  case byteFallback
  case fuse
  case strip(String, start: Int, stop: Int)
  case metaspace(replacement: String, addPrefixSpace: Bool)
  case sequence([TokenDecoder])
}

public final class Tokenizer: @unchecked Sendable {
  public let model: BPEModel
  public let normalizer: Normalizer?
  public let preTokenizer: PreTokenizer?
  public let decoder: TokenDecoder?
  public let addedTokens: [AddedToken]
  /// Ids added before / after the sequence when `addSpecialTokens` is true (TemplateProcessing).
  public let prefixIds: [Int32]
  public let suffixIds: [Int32]
  public let bosTokenId: Int32?
  public let eosTokenIds: [Int32]
  let addedById: [Int32: AddedToken]
  /// Added tokens keyed by their first UTF-8 byte, longest first.
  let addedByFirstByte: [UInt8: [(bytes: [UInt8], token: AddedToken)]]
  /// Largest piece of text (unicode scalars between added tokens) encoded in one go; longer whitespace-free runs
  /// are still exact because BPE pieces never cross pre-tokenizer boundaries.
  public static let maxInputBytes = 64 << 20

  public init(model: BPEModel, normalizer: Normalizer?, preTokenizer: PreTokenizer?, decoder: TokenDecoder?,
              addedTokens: [AddedToken], prefixIds: [Int32] = [], suffixIds: [Int32] = [],
              bosTokenId: Int32? = nil, eosTokenIds: [Int32] = []) {
    self.model = model; self.normalizer = normalizer; self.preTokenizer = preTokenizer; self.decoder = decoder
    self.addedTokens = addedTokens; self.prefixIds = prefixIds; self.suffixIds = suffixIds
    self.bosTokenId = bosTokenId; self.eosTokenIds = eosTokenIds
    vocabSize = max(model.idToToken.count, (addedTokens.map { Int($0.id) }.max() ?? -1) + 1)
    var byId: [Int32: AddedToken] = [:]
    var byByte: [UInt8: [(bytes: [UInt8], token: AddedToken)]] = [:]
    for t in addedTokens {
      byId[t.id] = t
      let b = Array(t.content.utf8)
      guard let f = b.first else { continue }
      byByte[f, default: []].append((b, t))
    }
    for k in byByte.keys { byByte[k]!.sort { $0.bytes.count > $1.bytes.count } }
    addedById = byId
    addedByFirstByte = byByte
  }

  /// Ids 0..<vocabSize (model vocabulary and added tokens); stored, since the engine checks it at every token.
  public let vocabSize: Int

  /// The token string of an id (added tokens included), or nil when out of range.
  public func token(_ id: Int32) -> String? {
    if let a = addedById[id] { return a.content }
    guard id >= 0, Int(id) < model.idToToken.count else { return nil }
    return model.idToToken[Int(id)]
  }

  public func id(_ token: String) -> Int32? {
    if let a = addedTokens.first(where: { $0.content.utf8.elementsEqual(token.utf8) }) { return a.id }
    return model.tokenId(token)
  }

  public func isSpecial(_ id: Int32) -> Bool { addedById[id]?.special ?? false }

  // MARK: - Encoding

  /// Encodes text. `addSpecialTokens` applies the post-processor (e.g. BOS); `parseSpecial` lets special tokens
  /// written in the text become their ids (turn it off for untrusted user content).
  /// `inertMarkers`: the text was rendered from inert chat contents (ChatContent.swift); markers are removed from text
  /// pieces before they are tokenized.
  public func encode(_ text: String, addSpecialTokens: Bool = false, parseSpecial: Bool = true, inertMarkers: Bool = false) throws -> [Int32] {
    guard text.utf8.count <= Tokenizer.maxInputBytes else {
      throw QoQError("tokenizer: input of \(text.utf8.count) bytes exceeds the \(Tokenizer.maxInputBytes)-byte limit")
    }
    var out: [Int32] = addSpecialTokens ? prefixIds : []
    var first = true
    for section in splitAdded(text, parseSpecial: parseSpecial) {
      switch section {
      case .added(let t): out.append(t.id)
      case .text(let s):
        var piece = inertMarkers ? Tokenizer.removeMarkers(s) : s
        if let n = normalizer { piece = n.apply(piece) }
        if piece.isEmpty { first = false; continue }
        let pieces = preTokenizer?.apply([piece], first: first) ?? [piece]
        for p in pieces { model.encode(p, into: &out) }
      }
      first = false
    }
    if addSpecialTokens { out += suffixIds }
    return out
  }

  enum Section { case text(String), added(AddedToken) }

  /// Splits out added tokens, leftmost-longest, honouring lstrip/rstrip.
  func splitAdded(_ text: String, parseSpecial: Bool) -> [Section] {
    if addedByFirstByte.isEmpty { return [.text(text)] }
    let bytes = Array(text.utf8)
    var sections: [Section] = []
    var start = 0, i = 0
    func isWS(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0A || b == 0x0D || b == 0x0B || b == 0x0C }
    while i < bytes.count {
      var matched: (len: Int, token: AddedToken)? = nil
      if let cands = addedByFirstByte[bytes[i]] {
        for (b, t) in cands where (parseSpecial || !t.special) && i + b.count <= bytes.count {
          if bytes[i..<(i + b.count)].elementsEqual(b) { matched = (b.count, t); break }
        }
      }
      guard let m = matched else { i += 1; continue }
      var textEnd = i
      if m.token.lstrip { while textEnd > start && isWS(bytes[textEnd - 1]) { textEnd -= 1 } }
      if textEnd > start { sections.append(.text(String(decoding: bytes[start..<textEnd], as: UTF8.self))) }
      sections.append(.added(m.token))
      i += m.len
      if m.token.rstrip { while i < bytes.count && isWS(bytes[i]) { i += 1 } }
      start = i
    }
    if start < bytes.count { sections.append(.text(String(decoding: bytes[start...], as: UTF8.self))) }
    return sections
  }

  // MARK: - Decoding

  /// Decodes ids to text; invalid UTF-8 becomes U+FFFD. Unknown ids throw.
  public func decode(_ ids: [Int32], skipSpecialTokens: Bool = false) throws -> String {
    var tokens: [String] = []
    tokens.reserveCapacity(ids.count)
    for id in ids {
      guard let t = token(id) else { throw QoQError("tokenizer: token id \(id) is outside the vocabulary") }
      if skipSpecialTokens && isSpecial(id) { continue }
      tokens.append(t)
    }
    guard let d = decoder else { return tokens.joined() }
    return Tokenizer.run(d, tokens).joined()
  }

  static func run(_ d: TokenDecoder, _ tokens: [String]) -> [String] {
    switch d {
    case .sequence(let ds): return ds.reduce(tokens) { run($1, $0) }
    case .byteLevel:
      var bytes: [UInt8] = []
      for t in tokens { ByteLevelTable.decode(t, into: &bytes) }
      return [String(decoding: bytes, as: UTF8.self)]
    case .replace(let a, let b): return tokens.map { literalReplace($0, a, b) }
    case .fuse: return [tokens.joined()]
    case .byteFallback:
      var out: [String] = []
      var pending: [UInt8] = []
      func flush() {
        guard !pending.isEmpty else { return }
        if let s = String(validating: pending, as: UTF8.self) { out.append(s) }
        else { out.append(contentsOf: Array(repeating: "\u{FFFD}", count: pending.count)) }
        pending = []
      }
      for t in tokens {
        if let b = byteTokenValue(t) { pending.append(b) } else { flush(); out.append(t) }
      }
      flush()
      return out
    case .strip(let content, let start, let stop):
      // Per token, up to `start` leading and `stop` trailing scalars equal to `content` (a single char).
      guard let cs = content.unicodeScalars.first, content.unicodeScalars.count == 1 else { return tokens }
      return tokens.map { t in
        var u = Array(t.unicodeScalars)[...]
        var n = 0
        while n < start, u.first == cs { u = u.dropFirst(); n += 1 }
        n = 0
        while n < stop, u.last == cs { u = u.dropLast(); n += 1 }
        var out = String.UnicodeScalarView()
        out.append(contentsOf: u)
        return String(out)
      }
    case .metaspace(let rep, let addPrefixSpace):
      return tokens.enumerated().map { (i, t) in
        var s = literalReplace(t, rep, " ")
        if i == 0 && addPrefixSpace && s.unicodeScalars.first == " " { s.unicodeScalars.removeFirst() }
        return s
      }
    }
  }

  /// "<0xAB>" → 0xAB; anything else (including "<0x-1>" or three digits) → nil.
  static func byteTokenValue(_ t: String) -> UInt8? {
    let u = Array(t.utf8)
    guard u.count == 6, u[0] == 0x3C, u[1] == 0x30, u[2] == 0x78, u[5] == 0x3E else { return nil }
    func hex(_ c: UInt8) -> UInt8? {
      switch c {
      case 0x30...0x39: return c - 0x30
      case 0x41...0x46: return c - 0x41 + 10
      case 0x61...0x66: return c - 0x61 + 10
      default: return nil
      }
    }
    guard let h = hex(u[3]), let l = hex(u[4]) else { return nil }
    return h << 4 | l
  }
}


/// Replaces every occurrence of `a` by `b`, comparing UTF-8 bytes (no Unicode canonical equivalence, unlike
/// Foundation's `replacingOccurrences`).
func literalReplace(_ s: String, _ a: String, _ b: String) -> String {
  let sb = Array(s.utf8), ab = Array(a.utf8), bb = Array(b.utf8)
  guard !ab.isEmpty, sb.count >= ab.count else { return s }
  var out: [UInt8] = []
  out.reserveCapacity(sb.count)
  var i = 0
  while i < sb.count {
    if sb[i] == ab[0] && i + ab.count <= sb.count && sb[i..<(i + ab.count)].elementsEqual(ab) {
      out.append(contentsOf: bb); i += ab.count
    } else { out.append(sb[i]); i += 1 }
  }
  return String(decoding: out, as: UTF8.self)
}

// Normalizers and pre-tokenizers of the Hugging Face `tokenizers` pipeline that Llama-family tokenizers use.
// Pre-tokenizers split text into pieces; the BPE model then runs on each piece independently.
import Foundation
import QoQIO

/// Regex patterns of the pre-tokenizers we know by name (tokenizer.json Split patterns and GGUF `tokenizer.ggml.pre`).
public enum PreTokenizerPatterns {
  public static let gpt2 = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#
  public static let llama3 = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
  public static let qwen2 = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
}

/// A compiled split regex. Patterns use Oniguruma/Rust syntax; `\s`/`\S` are rewritten to the Unicode White_Space
/// set, which ICU's `\s` does not match exactly (it misses U+000B and U+0085).
public final class SplitRegex: @unchecked Sendable {
  let pattern: String
  let regex: NSRegularExpression

  public init(_ pattern: String) throws {
    self.pattern = pattern
    do {
      regex = try NSRegularExpression(pattern: SplitRegex.translate(pattern), options: [])
    } catch {
      throw QoQError("tokenizer: cannot compile pre-tokenizer regex \(pattern)")
    }
  }

  static let ws = #"\t\n\x{0B}\f\r\x{85}\p{Z}"#

  static func translate(_ p: String) -> String {
    var out = ""
    var inClass = false
    var it = Array(p)
    var i = 0
    while i < it.count {
      let c = it[i]
      if c == "\\" && i + 1 < it.count {
        let n = it[i + 1]
        if n == "s" { out += inClass ? ws : "[\(ws)]"; i += 2; continue }
        if n == "S" && !inClass { out += "[^\(ws)]"; i += 2; continue }
        out.append(c); out.append(n); i += 2; continue
      }
      if c == "[" && !inClass { inClass = true } else if c == "]" && inClass { inClass = false }
      out.append(c)
      i += 1
    }
    it.removeAll()
    return out
  }

  /// Splits `s` into pieces, keeping both matches and the text between them ("Isolated"), or with `invert`
  /// keeping only... (not needed by Llama-family tokenizers).
  /// Works on UTF-16 offsets: `Range(NSRange, in:)` rounds to grapheme clusters and would keep "\r\n" whole.
  func splitIsolated(_ s: String) -> [Substring] {
    let u16 = Array(s.utf16)
    var pieces: [Substring] = []
    var last = 0
    func piece(_ a: Int, _ b: Int) -> Substring { Substring(String(decoding: u16[a..<b], as: UTF16.self)) }
    regex.enumerateMatches(in: s, options: [], range: NSRange(location: 0, length: u16.count)) { m, _, _ in
      guard let m = m, m.range.length > 0 else { return }
      let a = m.range.location, b = a + m.range.length
      if a > last { pieces.append(piece(last, a)) }
      pieces.append(piece(a, b))
      last = b
    }
    if last < u16.count { pieces.append(piece(last, u16.count)) }
    return pieces
  }
}

public enum Normalizer: Sendable {
  case nfc
  case nfkc
  case prepend(String)
  case replace(String, String)
  case sequence([Normalizer])

  func apply(_ s: String) -> String {
    switch self {
    case .nfc: return s.precomposedStringWithCanonicalMapping
    case .nfkc: return s.precomposedStringWithCompatibilityMapping
    case .prepend(let p): return s.isEmpty ? s : p + s
    case .replace(let a, let b): return literalReplace(s, a, b)
    case .sequence(let ns): return ns.reduce(s) { $1.apply($0) }
    }
  }
}

public enum PreTokenizer: @unchecked Sendable {
  /// GPT-2 byte-level: optional regex split, then bytes → printable scalars.
  case byteLevel(addPrefixSpace: Bool, useRegex: Bool)
  /// Digits: each digit on its own (individual) or runs of digits isolated.
  case digits(individual: Bool)
  /// Split on a regex, behaviour "Isolated".
  case split(SplitRegex)
  /// SentencePiece's space marker; `prependScheme` is "always", "first" or "never".
  case metaspace(replacement: String, prependScheme: String, split: Bool)
  case sequence([PreTokenizer])

  /// `first` says whether this is the first text section of the input (for Metaspace's "first" scheme).
  func apply(_ pieces: [String], first: Bool) -> [String] {
    switch self {
    case .sequence(let ps):
      return ps.reduce(pieces) { $1.apply($0, first: first) }
    case .byteLevel(let addPrefix, let useRegex):
      return pieces.flatMap { p -> [String] in
        var s = p
        if addPrefix && s.utf8.first != 0x20 { s = " " + s }
        let parts: [Substring] = useRegex ? byteLevelRegex.splitIsolated(s) : [Substring(s)]
        return parts.map { ByteLevelTable.encode($0) }
      }
    case .digits(let individual):
      return pieces.flatMap { splitDigits($0, individual: individual) }
    case .split(let re):
      return pieces.flatMap { re.splitIsolated($0).map(String.init) }
    case .metaspace(let rep, let scheme, let split):
      return pieces.enumerated().flatMap { (i, p) -> [String] in
        var s = literalReplace(p, " ", rep)
        let prepend = scheme == "always" || (scheme == "first" && first && i == 0)
        if prepend && !s.utf8.starts(with: rep.utf8) { s = rep + s }
        guard split else { return [s] }
        // Split before each replacement char (MergedWithNext).
        var out: [String] = []
        var cur = ""
        for ch in s.unicodeScalars {
          if String(ch) == rep && !cur.isEmpty { out.append(cur); cur = "" }
          cur.unicodeScalars.append(ch)
        }
        if !cur.isEmpty { out.append(cur) }
        return out
      }
    }
  }
}

// Built once; NSRegularExpression is thread-safe for matching.
nonisolated(unsafe) let byteLevelRegex = try! SplitRegex(PreTokenizerPatterns.gpt2)

/// Rust `char::is_numeric`: general categories Nd, Nl, No.
@inline(__always) func isNumeric(_ u: Unicode.Scalar) -> Bool {
  switch u.properties.generalCategory {
  case .decimalNumber, .letterNumber, .otherNumber: return true
  default: return false
  }
}

func splitDigits(_ s: String, individual: Bool) -> [String] {
  var out: [String] = []
  var cur = String.UnicodeScalarView()
  var curIsDigit = false
  for u in s.unicodeScalars {
    let d = isNumeric(u)
    if d && individual {
      if !cur.isEmpty { out.append(String(cur)); cur = .init() }
      out.append(String(u))
      continue
    }
    if !cur.isEmpty && d != curIsDigit { out.append(String(cur)); cur = .init() }
    cur.append(u)
    curIsDigit = d
  }
  if !cur.isEmpty { out.append(String(cur)) }
  return out
}

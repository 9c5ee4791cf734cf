// A strict, bounded JSON parser and a writer. Used for safetensors headers, index files and tokenizer.json:
// it rejects duplicate keys (safetensors forbids them), limits nesting depth, validates UTF-8, and is fast
// enough for a 9 MB tokenizer.json. Foundation's JSONSerialization silently keeps one of two duplicate keys.
import Foundation

public enum JSONValue: Equatable, Sendable {
  case null
  case bool(Bool)
  case int(Int)
  case double(Double)
  case string(String)
  case array([JSONValue])
  case object(JSONObject)

  public var string: String? { if case .string(let s) = self { return s }; return nil }
  public var int: Int? {
    switch self {
    case .int(let i): return i
    case .double(let d): return d.rounded() == d && abs(d) < 9.0e15 ? Int(d) : nil
    default: return nil
    }
  }
  public var double: Double? {
    switch self {
    case .int(let i): return Double(i)
    case .double(let d): return d
    default: return nil
    }
  }
  public var bool: Bool? { if case .bool(let b) = self { return b }; return nil }
  public var array: [JSONValue]? { if case .array(let a) = self { return a }; return nil }
  public var object: JSONObject? { if case .object(let o) = self { return o }; return nil }
  public var isNull: Bool { self == .null }
  public subscript(key: String) -> JSONValue? { object?[key] }
}

/// A JSON object that keeps key order (needed to write files the way users expect to read them).
public struct JSONObject: Equatable, Sendable {
  public private(set) var keys: [String] = []
  public private(set) var values: [String: JSONValue] = [:]
  public init() {}
  public init(_ pairs: [(String, JSONValue)]) { for (k, v) in pairs { self[k] = v } }
  public subscript(key: String) -> JSONValue? {
    get { values[key] }
    set {
      if let v = newValue {
        if values.updateValue(v, forKey: key) == nil { keys.append(key) }
      } else if values.removeValue(forKey: key) != nil {
        keys.removeAll { $0 == key }
      }
    }
  }
  public var count: Int { keys.count }
  public var pairs: [(String, JSONValue)] { keys.map { ($0, values[$0]!) } }
  /// Inserts a key that is known to be new (parser fast path).
  mutating func appendNew(_ key: String, _ value: JSONValue) { keys.append(key); values[key] = value }
}

public enum JSON {
  public static let maxDepth = 128

  /// Parses one JSON document. `what` names the source in error messages.
  public static func parse(_ bytes: UnsafeRawBufferPointer, what: String) throws -> JSONValue {
    var p = Parser(bytes: bytes, what: what)
    p.skipWS()
    let v = try p.value(depth: 0)
    p.skipWS()
    if p.i != bytes.count { throw p.fail("trailing characters after the JSON value") }
    return v
  }

  public static func parse(_ data: Data, what: String) throws -> JSONValue {
    try data.withUnsafeBytes { try parse($0, what: what) }
  }

  public static func parse(_ text: String, what: String) throws -> JSONValue {
    var t = text
    return try t.withUTF8 { try parse(UnsafeRawBufferPointer($0), what: what) }
  }

  public static func parseFile(_ path: String) throws -> JSONValue {
    let f = try MappedFile(path: path)
    return try parse(f.bytes, what: path)
  }

  struct Parser {
    let bytes: UnsafeRawBufferPointer
    let what: String
    var i = 0

    func fail(_ m: String) -> QoQError { QoQError("\(what): invalid JSON at byte \(i): \(m)") }

    mutating func skipWS() {
      while i < bytes.count {
        let c = bytes[i]
        if c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 { i += 1 } else { break }
      }
    }

    mutating func value(depth: Int) throws -> JSONValue {
      if depth > JSON.maxDepth { throw fail("nesting deeper than \(JSON.maxDepth)") }
      guard i < bytes.count else { throw fail("unexpected end of input") }
      switch bytes[i] {
      case UInt8(ascii: "{"): return try object(depth: depth)
      case UInt8(ascii: "["): return try array(depth: depth)
      case UInt8(ascii: "\""): return .string(try string())
      case UInt8(ascii: "t"): try literal("true"); return .bool(true)
      case UInt8(ascii: "f"): try literal("false"); return .bool(false)
      case UInt8(ascii: "n"): try literal("null"); return .null
      default: return try number()
      }
    }

    mutating func literal(_ s: StaticString) throws {
      let n = s.utf8CodeUnitCount
      guard i + n <= bytes.count else { throw fail("unexpected end of input") }
      for k in 0..<n where bytes[i + k] != s.utf8Start[k] { throw fail("unknown literal") }
      i += n
    }

    mutating func object(depth: Int) throws -> JSONValue {
      i += 1
      var obj = JSONObject()
      skipWS()
      if i < bytes.count && bytes[i] == UInt8(ascii: "}") { i += 1; return .object(obj) }
      while true {
        skipWS()
        guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw fail("expected a string key") }
        let k = try string()
        skipWS()
        guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { throw fail("expected ':'") }
        i += 1
        skipWS()
        let v = try value(depth: depth + 1)
        if obj.values[k] != nil { throw fail("duplicate key \"\(k)\"") }
        obj.appendNew(k, v)
        skipWS()
        guard i < bytes.count else { throw fail("unexpected end of input in object") }
        if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
        if bytes[i] == UInt8(ascii: "}") { i += 1; return .object(obj) }
        throw fail("expected ',' or '}'")
      }
    }

    mutating func array(depth: Int) throws -> JSONValue {
      i += 1
      var arr: [JSONValue] = []
      skipWS()
      if i < bytes.count && bytes[i] == UInt8(ascii: "]") { i += 1; return .array(arr) }
      while true {
        skipWS()
        arr.append(try value(depth: depth + 1))
        skipWS()
        guard i < bytes.count else { throw fail("unexpected end of input in array") }
        if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
        if bytes[i] == UInt8(ascii: "]") { i += 1; return .array(arr) }
        throw fail("expected ',' or ']'")
      }
    }

    mutating func hex4() throws -> UInt32 {
      guard i + 4 <= bytes.count else { throw fail("truncated \\u escape") }
      var v: UInt32 = 0
      for _ in 0..<4 {
        let c = bytes[i]
        let d: UInt32
        switch c {
        case 0x30...0x39: d = UInt32(c - 0x30)
        case 0x41...0x46: d = UInt32(c - 0x41 + 10)
        case 0x61...0x66: d = UInt32(c - 0x61 + 10)
        default: throw fail("bad hex digit in \\u escape")
        }
        v = v << 4 | d
        i += 1
      }
      return v
    }

    mutating func string() throws -> String {
      i += 1  // opening quote
      let start = i
      // Fast path: no escapes.
      while i < bytes.count {
        let c = bytes[i]
        if c == UInt8(ascii: "\"") {
          let slice = UnsafeRawBufferPointer(rebasing: bytes[start..<i])
          i += 1
          guard let s = String(validating: slice, as: UTF8.self) else { throw fail("invalid UTF-8 in string") }
          return s
        }
        if c == UInt8(ascii: "\\") { break }
        if c < 0x20 { throw fail("control character in string") }
        i += 1
      }
      var buf = [UInt8](UnsafeRawBufferPointer(rebasing: bytes[start..<i]))
      while i < bytes.count {
        let c = bytes[i]
        if c == UInt8(ascii: "\"") {
          i += 1
          guard let s = String(validating: buf, as: UTF8.self) else { throw fail("invalid UTF-8 in string") }
          return s
        }
        if c < 0x20 { throw fail("control character in string") }
        if c != UInt8(ascii: "\\") { buf.append(c); i += 1; continue }
        i += 1
        guard i < bytes.count else { break }
        let e = bytes[i]
        i += 1
        switch e {
        case UInt8(ascii: "\""): buf.append(0x22)
        case UInt8(ascii: "\\"): buf.append(0x5C)
        case UInt8(ascii: "/"): buf.append(0x2F)
        case UInt8(ascii: "b"): buf.append(0x08)
        case UInt8(ascii: "f"): buf.append(0x0C)
        case UInt8(ascii: "n"): buf.append(0x0A)
        case UInt8(ascii: "r"): buf.append(0x0D)
        case UInt8(ascii: "t"): buf.append(0x09)
        case UInt8(ascii: "u"):
          var cp = try hex4()
          if cp >= 0xD800 && cp < 0xDC00 {
            // A high surrogate must be followed by \u low surrogate; a lone one becomes U+FFFD (as Python does not,
            // but Rust's serde rejects; we choose the replacement so hostile files still load predictably).
            if i + 6 <= bytes.count && bytes[i] == UInt8(ascii: "\\") && bytes[i + 1] == UInt8(ascii: "u") {
              i += 2
              let lo = try hex4()
              if lo >= 0xDC00 && lo < 0xE000 {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
              } else { throw fail("invalid surrogate pair") }
            } else { cp = 0xFFFD }
          } else if cp >= 0xDC00 && cp < 0xE000 { cp = 0xFFFD }
          let scalar = Unicode.Scalar(cp) ?? "\u{FFFD}"
          buf.append(contentsOf: Array(String(Character(scalar)).utf8))
        default: throw fail("unknown escape \\\(Character(Unicode.Scalar(e)))")
        }
      }
      throw fail("unterminated string")
    }

    mutating func number() throws -> JSONValue {
      let start = i
      var isFloat = false
      if i < bytes.count && bytes[i] == UInt8(ascii: "-") { i += 1 }
      let digitsStart = i
      while i < bytes.count {
        let c = bytes[i]
        if c >= 0x30 && c <= 0x39 { i += 1 }
        else if c == UInt8(ascii: ".") || c == UInt8(ascii: "e") || c == UInt8(ascii: "E")
                  || c == UInt8(ascii: "+") || c == UInt8(ascii: "-") { isFloat = true; i += 1 }
        else { break }
      }
      if i == digitsStart { throw fail("unexpected character '\(Character(Unicode.Scalar(bytes[start])))'") }
      let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<i]), as: UTF8.self)
      if !isFloat, let v = Int(text) { return .int(v) }
      // Also accepts Python's NaN/Infinity? No: JSON has none, and such files are rejected.
      guard let d = Double(text), d.isFinite else { throw fail("bad number \(text)") }
      return .double(d)
    }
  }

  // MARK: - Writing

  /// Serializes compactly (or with 2-space indentation), keeping object key order.
  public static func serialize(_ v: JSONValue, pretty: Bool = false) -> String {
    var out = ""
    write(v, into: &out, pretty: pretty, indent: 0)
    return out
  }

  static func write(_ v: JSONValue, into out: inout String, pretty: Bool, indent: Int) {
    switch v {
    case .null: out += "null"
    case .bool(let b): out += b ? "true" : "false"
    case .int(let i): out += String(i)
    case .double(let d):
      // JSON has no NaN or infinity: they are written as null (callers that can produce them say why beside it).
      if !d.isFinite { out += "null"; return }
      if d.rounded() == d && abs(d) < 1e15 { out += String(format: "%.1f", d) } else { out += "\(d)" }
    case .string(let s): writeString(s, into: &out)
    case .array(let a):
      if a.isEmpty { out += "[]"; return }
      out += "["
      for (k, e) in a.enumerated() {
        if k > 0 { out += "," }
        if pretty { out += "\n" + String(repeating: " ", count: indent + 2) }
        write(e, into: &out, pretty: pretty, indent: indent + 2)
      }
      if pretty { out += "\n" + String(repeating: " ", count: indent) }
      out += "]"
    case .object(let o):
      if o.count == 0 { out += "{}"; return }
      out += "{"
      for (k, key) in o.keys.enumerated() {
        if k > 0 { out += "," }
        if pretty { out += "\n" + String(repeating: " ", count: indent + 2) }
        writeString(key, into: &out)
        out += pretty ? ": " : ":"
        write(o.values[key]!, into: &out, pretty: pretty, indent: indent + 2)
      }
      if pretty { out += "\n" + String(repeating: " ", count: indent) }
      out += "}"
    }
  }

  static func writeString(_ s: String, into out: inout String) {
    out += "\""
    for u in s.unicodeScalars {
      switch u {
      case "\"": out += "\\\""
      case "\\": out += "\\\\"
      case "\n": out += "\\n"
      case "\r": out += "\\r"
      case "\t": out += "\\t"
      default:
        if u.value < 0x20 || u.value == 0x7F { out += String(format: "\\u%04x", u.value) }
        else { out.unicodeScalars.append(u) }
      }
    }
    out += "\""
  }
}

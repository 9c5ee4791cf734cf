// GPT-2's byte ↔ unicode table: printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100… in
// order, so every byte sequence becomes a printable string (openai/gpt-2 encoder.py bytes_to_unicode).

enum ByteLevelTable {
  /// byte → scalar.
  static let byteToScalar: [Unicode.Scalar] = {
    var table = [Unicode.Scalar](repeating: " ", count: 256)
    var n: UInt32 = 0
    for b in 0..<256 {
      let printable = (33...126).contains(b) || (161...172).contains(b) || (174...255).contains(b)
      if printable {
        table[b] = Unicode.Scalar(UInt32(b))!
      } else {
        table[b] = Unicode.Scalar(256 + n)!
        n += 1
      }
    }
    return table
  }()

  /// scalar value → byte (nil for scalars outside the table).
  static let scalarToByte: [UInt32: UInt8] = {
    var d: [UInt32: UInt8] = [:]
    for (b, s) in byteToScalar.enumerated() { d[s.value] = UInt8(b) }
    return d
  }()

  static func encode(_ s: Substring) -> String {
    var out = String.UnicodeScalarView()
    for b in s.utf8 { out.append(byteToScalar[Int(b)]) }
    return String(out)
  }

  /// Maps byte-level text back to raw bytes. Scalars outside the table keep their own UTF-8 bytes.
  static func decode(_ s: String, into bytes: inout [UInt8]) {
    for u in s.unicodeScalars {
      if let b = scalarToByte[u.value] { bytes.append(b) } else { bytes.append(contentsOf: Array(String(u).utf8)) }
    }
  }
}

// GGUF writer (version 3, little-endian), the inverse of GGUFFile: header, metadata, tensor infos, then each
// tensor's data at an offset aligned to `general.alignment` (32 unless given). Tensors are produced one at a time
// while the file streams out (memory holds one tensor, not the model), into a temporary file renamed into place.
// Every produced tensor must have exactly the bytes its type and dims call for; anything else stops the write.
import Foundation

/// One tensor to write: `dims` in ggml order (ne[0], the contiguous one, first), its type, and a producer of its
/// bytes called once, when the tensor's turn comes.
public struct GGUFTensorSpec {
  public let name: String
  public let dims: [Int]
  public let type: GGMLType
  public let produce: () throws -> Data

  public init(name: String, dims: [Int], type: GGMLType, produce: @escaping () throws -> Data) {
    self.name = name; self.dims = dims; self.type = type; self.produce = produce
  }

  /// Bytes the tensor occupies, checked: every dimension positive, ne[0] a whole number of blocks.
  public func byteCount() throws -> Int {
    guard (1...4).contains(dims.count), dims.allSatisfy({ $0 > 0 }) else {
      throw QoQError("GGUF tensor \(name): dims \(dims) must be 1 to 4 positive numbers")
    }
    guard dims[0] % type.blockSize == 0 else {
      throw QoQError("GGUF tensor \(name): row length \(dims[0]) is not a multiple of the \(type) block size \(type.blockSize)")
    }
    let n = try checkedCount(dims, "GGUF tensor \(name)")
    return try checkedMul(n / type.blockSize, type.blockBytes, "GGUF tensor \(name)")
  }
}

public enum GGUFWriter {
  /// Writes `path` atomically. `metadata` keeps its order; `general.alignment`, when present, must be a power-of-two
  /// u32 and sets the data alignment.
  public static func write(to path: String, metadata: [(String, GGUFValue)], tensors: [GGUFTensorSpec]) throws {
    var keys = Set<String>()
    for (k, _) in metadata where !keys.insert(k).inserted { throw QoQError("\(path): duplicate metadata key \(k)") }
    var names = Set<String>()
    for t in tensors where !names.insert(t.name).inserted { throw QoQError("\(path): duplicate tensor name \(t.name)") }
    var alignment = 32
    if let a = metadata.first(where: { $0.0 == "general.alignment" })?.1 {
      guard case .u32(let v) = a, v > 0, v & (v - 1) == 0 else { throw QoQError("\(path): general.alignment must be a power-of-two u32") }
      alignment = Int(v)
    }
    var header = Data()
    func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { header.append(contentsOf: $0) } }
    func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { header.append(contentsOf: $0) } }
    func str(_ s: String) { u64(UInt64(s.utf8.count)); header.append(contentsOf: Array(s.utf8)) }
    u32(0x4655_4747)  // "GGUF"
    u32(3)
    u64(UInt64(tensors.count))
    u64(UInt64(metadata.count))
    for (k, v) in metadata {
      str(k)
      u32(try typeCode(v, key: k))
      try append(v, key: k, to: &header)
    }
    var sizes: [Int] = [], offset = 0
    for t in tensors {
      let n = try t.byteCount()
      sizes.append(n)
      str(t.name)
      u32(UInt32(t.dims.count))
      for d in t.dims { u64(UInt64(d)) }
      u32(UInt32(t.type.rawValue))
      u64(UInt64(offset))
      offset = try checkedAdd(offset, try checkedAdd(n, (alignment - n % alignment) % alignment, path), path)
    }
    header.append(Data(count: (alignment - header.count % alignment) % alignment))
    try atomicWrite(path) { h in
      try h.write(contentsOf: header)
      for (i, t) in tensors.enumerated() {
        let data = try t.produce()
        guard data.count == sizes[i] else {
          throw QoQError("\(path): tensor \(t.name) produced \(data.count) bytes; \(t.type) \(t.dims) needs \(sizes[i])")
        }
        try h.write(contentsOf: data)
        let pad = (alignment - data.count % alignment) % alignment  // after the last tensor too, as gguf-py writes
        if pad > 0 { try h.write(contentsOf: Data(count: pad)) }
      }
    }
  }

  static func typeCode(_ v: GGUFValue, key: String) throws -> UInt32 {
    switch v {
    case .u8: return 0
    case .i8: return 1
    case .u16: return 2
    case .i16: return 3
    case .u32: return 4
    case .i32: return 5
    case .f32: return 6
    case .bool: return 7
    case .string: return 8
    case .array: return 9
    case .u64: return 10
    case .i64: return 11
    case .f64: return 12
    }
  }

  static func append(_ v: GGUFValue, key: String, to d: inout Data) throws {
    func raw<T: FixedWidthInteger>(_ x: T) { withUnsafeBytes(of: x.littleEndian) { d.append(contentsOf: $0) } }
    switch v {
    case .u8(let x): raw(x)
    case .i8(let x): raw(x)
    case .u16(let x): raw(x)
    case .i16(let x): raw(x)
    case .u32(let x): raw(x)
    case .i32(let x): raw(x)
    case .u64(let x): raw(x)
    case .i64(let x): raw(x)
    case .f32(let x): raw(x.bitPattern)
    case .f64(let x): raw(x.bitPattern)
    case .bool(let b): d.append(b ? 1 : 0)
    case .string(let s): raw(UInt64(s.utf8.count)); d.append(contentsOf: Array(s.utf8))
    case .array(let a):
      // GGUF arrays are homogeneous: the element type is written once. An empty array is written as u8[0].
      let code = try a.first.map { try typeCode($0, key: key) } ?? 0
      guard code != 9 else { throw QoQError("GGUF metadata \(key): nested arrays are not written") }
      for (i, e) in a.enumerated() where try typeCode(e, key: key) != code {
        throw QoQError("GGUF metadata \(key): element \(i) has another type than element 0 (arrays are homogeneous)")
      }
      raw(code)
      raw(UInt64(a.count))
      for e in a { try append(e, key: key, to: &d) }
    }
  }
}

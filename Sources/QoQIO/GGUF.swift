// GGUF v2/v3 reader (llama.cpp's model container). Every count, length and offset is checked against the bytes
// that remain before anything is allocated: GGUF parsers are a known CVE source (anchors.md §3.2).
// Layout: magic "GGUF", u32 version, u64 n_tensors, u64 n_kv, KV pairs, tensor infos, padding to `alignment`,
// tensor data. Tensor dims are ggml order (ne[0] = row length); `shape` here is reversed (row-major, HF order).
import Foundation

public indirect enum GGUFValue: Equatable, Sendable {
  case u8(UInt8), i8(Int8), u16(UInt16), i16(Int16), u32(UInt32), i32(Int32), f32(Float), bool(Bool)
  case string(String), array([GGUFValue]), u64(UInt64), i64(Int64), f64(Double)

  public var int: Int? {
    switch self {
    case .u8(let v): return Int(v)
    case .i8(let v): return Int(v)
    case .u16(let v): return Int(v)
    case .i16(let v): return Int(v)
    case .u32(let v): return Int(v)
    case .i32(let v): return Int(v)
    case .u64(let v): return v <= UInt64(Int.max) ? Int(v) : nil
    case .i64(let v): return Int(v)
    case .bool(let b): return b ? 1 : 0
    default: return nil
    }
  }
  public var double: Double? {
    switch self {
    case .f32(let v): return Double(v)
    case .f64(let v): return v
    default: return int.map(Double.init)
    }
  }
  public var string: String? { if case .string(let s) = self { return s }; return nil }
  public var bool: Bool? { if case .bool(let b) = self { return b }; return int.map { $0 != 0 } }
  public var array: [GGUFValue]? { if case .array(let a) = self { return a }; return nil }
}

public struct GGUFTensorInfo: Sendable {
  public let name: String
  /// ggml dims, ne[0] first (the contiguous one).
  public let dims: [Int]
  public let type: GGMLType
  /// Absolute byte offset of the data in the file.
  public let offset: Int
  public let byteCount: Int
  /// Row-major shape (reversed dims), as in PyTorch / safetensors.
  public var shape: [Int] { dims.reversed() }
  public var count: Int { dims.reduce(1, *) }
}

public final class GGUFFile: @unchecked Sendable {
  public static let maxStringLength = 1 << 30
  public static let maxArrayElements = 1 << 30
  public let path: String
  public let file: MappedFile
  public let version: Int
  public let metadata: [String: GGUFValue]
  public let metadataKeys: [String]
  public let tensors: [GGUFTensorInfo]
  public let tensorIndex: [String: Int]
  public let alignment: Int
  public let dataOffset: Int

  public convenience init(path: String) throws { try self.init(file: MappedFile(path: path)) }

  public init(file: MappedFile) throws {
    self.file = file
    path = file.path
    var r = ByteReader(bytes: file.bytes, what: file.path)
    let magic = try r.u32()
    guard magic == 0x4655_4747 else { throw QoQError("\(path): not a GGUF file (bad magic)") }
    let ver = try r.u32()
    if ver == 0 || ver > 0xFFFF && ver.byteSwapped <= 3 {
      throw QoQError("\(path): GGUF version \(ver) looks byte-swapped (big-endian files are not supported)")
    }
    guard ver == 2 || ver == 3 else { throw QoQError("\(path): unsupported GGUF version \(ver) (supported: 2, 3)") }
    version = Int(ver)
    let nTensors = try r.u64()
    let nKV = try r.u64()
    // Each KV needs ≥ 12 bytes (key length + type), each tensor info ≥ 24 bytes.
    guard nKV <= UInt64(r.remaining / 12) else { throw QoQError("\(path): GGUF header claims \(nKV) metadata entries, more than the file can hold") }
    guard nTensors <= UInt64(r.remaining / 24) else { throw QoQError("\(path): GGUF header claims \(nTensors) tensors, more than the file can hold") }
    var meta: [String: GGUFValue] = [:]
    var keys: [String] = []
    for _ in 0..<Int(nKV) {
      let key = try r.string()
      let type = try r.u32()
      let v = try r.value(type: type, key: key)
      if meta[key] != nil { throw QoQError("\(path): duplicate metadata key \(key)") }
      meta[key] = v
      keys.append(key)
    }
    var align = 32
    if let a = meta["general.alignment"] {
      guard case .u32(let av) = a, av > 0, av & (av - 1) == 0, av <= 1 << 20 else {
        throw QoQError("\(path): general.alignment must be a power-of-two u32")
      }
      align = Int(av)
    }
    alignment = align
    var infos: [(String, [Int], GGMLType, UInt64)] = []
    var seen = Set<String>()
    for _ in 0..<Int(nTensors) {
      let name = try r.string()
      guard seen.insert(name).inserted else { throw QoQError("\(path): duplicate tensor name \(name)") }
      let nd = try r.u32()
      guard nd >= 1 && nd <= 4 else { throw QoQError("\(path): tensor \(name): bad number of dimensions \(nd)") }
      var dims: [Int] = []
      for _ in 0..<nd {
        let d = try r.u64()
        guard d <= UInt64(Int32.max) else { throw QoQError("\(path): tensor \(name): dimension \(d) too large") }
        dims.append(Int(d))
      }
      let t = try r.u32()
      guard let type = GGMLType(rawValue: Int(t)) else { throw QoQError("\(path): tensor \(name): unknown ggml type \(t)") }
      let off = try r.u64()
      infos.append((name, dims, type, off))
    }
    let pos = r.position
    let data = (pos + align - 1) / align * align
    guard data <= file.count else { throw QoQError("\(path): tensor data section starts past the end of the file") }
    dataOffset = data
    let dataSize = file.count - data
    var out: [GGUFTensorInfo] = []
    var expected = 0
    for (name, dims, type, off) in infos {
      let n = try checkedCount(dims, "\(path): tensor \(name)")
      guard dims[0] % type.blockSize == 0 else {
        throw QoQError("\(path): tensor \(name): row length \(dims[0]) is not a multiple of the \(type) block size \(type.blockSize)")
      }
      let bytes = try checkedMul(n / type.blockSize, type.blockBytes, "\(path): tensor \(name)")
      guard off <= UInt64(dataSize), Int(off) == expected else {
        throw QoQError("\(path): tensor \(name): data offset \(off) is not where it should be (\(expected))")
      }
      let end = try checkedAdd(Int(off), bytes, "\(path): tensor \(name)")
      guard end <= dataSize else {
        throw QoQError("\(path): tensor \(name): data (\(bytes) bytes at \(off)) runs past the end of the file")
      }
      expected = try checkedAdd(end, (align - end % align) % align, "\(path): tensor \(name)")
      out.append(GGUFTensorInfo(name: name, dims: dims, type: type, offset: data + Int(off), byteCount: bytes))
    }
    metadata = meta
    metadataKeys = keys
    tensors = out
    var idx: [String: Int] = [:]
    for (i, t) in out.enumerated() { idx[t.name] = i }
    tensorIndex = idx
  }

  public func tensor(_ name: String) throws -> GGUFTensorInfo {
    guard let i = tensorIndex[name] else { throw QoQError("\(path): missing tensor \(name)") }
    return tensors[i]
  }

  public func raw(_ t: GGUFTensorInfo) -> UnsafeRawBufferPointer {
    UnsafeRawBufferPointer(rebasing: file.bytes[t.offset..<(t.offset + t.byteCount)])
  }

  /// Dequantizes a tensor to float32 (row-major, `shape` order).
  public func floats(_ name: String) throws -> [Float] {
    let t = try tensor(name)
    defer { file.release(t.offset, t.offset + t.byteCount) }  // a copy: the mapped pages are not needed after
    return try dequantize(raw(t), type: t.type, count: t.count, what: "\(path): \(name)")
  }

  /// Dequantizes slice `i` of a tensor's outermost dimension, row-major: one expert of llama.cpp's merged 3-D expert
  /// tensors (`ffn_*_exps`, dims (in, out, experts)), without dequantizing the others.
  public func floats(_ name: String, slice i: Int) throws -> [Float] {
    let t = try tensor(name)
    guard t.dims.count >= 2, let outer = t.dims.last, outer > 0, i >= 0, i < outer else {
      throw QoQError("\(path): tensor \(name) with dims \(t.dims) has no slice \(i)")
    }
    let bytes = t.byteCount / outer, start = t.offset + i * bytes  // rows are whole blocks, so slices are too
    defer { file.release(start, start + bytes) }
    return try dequantize(UnsafeRawBufferPointer(rebasing: file.bytes[start..<(start + bytes)]), type: t.type,
                          count: t.count / outer, what: "\(path): \(name)[\(i)]")
  }

  public func string(_ key: String) -> String? { metadata[key]?.string }
  public func int(_ key: String) -> Int? { metadata[key]?.int }
  public func double(_ key: String) -> Double? { metadata[key]?.double }
}

/// A bounded little-endian reader: every read checks the remaining length first.
struct ByteReader {
  let bytes: UnsafeRawBufferPointer
  let what: String
  var position = 0
  var remaining: Int { bytes.count - position }

  func truncated(_ m: String) -> QoQError { QoQError("\(what): truncated file (\(m) at byte \(position))") }

  mutating func take<T>(_: T.Type, _ m: String) throws -> T {
    let n = MemoryLayout<T>.size
    guard remaining >= n else { throw truncated(m) }
    let v = bytes.loadUnaligned(fromByteOffset: position, as: T.self)
    position += n
    return v
  }
  mutating func u32() throws -> UInt32 { try take(UInt32.self, "u32").littleEndian }
  mutating func u64() throws -> UInt64 { try take(UInt64.self, "u64").littleEndian }

  mutating func string() throws -> String {
    let n = try u64()
    guard n <= UInt64(GGUFFile.maxStringLength) else { throw QoQError("\(what): string length \(n) exceeds the limit") }
    guard n <= UInt64(remaining) else { throw truncated("string of \(n) bytes") }
    let s = UnsafeRawBufferPointer(rebasing: bytes[position..<(position + Int(n))])
    position += Int(n)
    // GGUF strings should be UTF-8; invalid bytes are replaced rather than rejected (as llama.cpp accepts them).
    return String(decoding: s, as: UTF8.self)
  }

  mutating func value(type: UInt32, key: String, depth: Int = 0) throws -> GGUFValue {
    switch type {
    case 0: return .u8(try take(UInt8.self, key))
    case 1: return .i8(try take(Int8.self, key))
    case 2: return .u16(try take(UInt16.self, key).littleEndian)
    case 3: return .i16(try take(Int16.self, key).littleEndian)
    case 4: return .u32(try take(UInt32.self, key).littleEndian)
    case 5: return .i32(try take(Int32.self, key).littleEndian)
    case 6: return .f32(Float(bitPattern: try take(UInt32.self, key).littleEndian))
    case 7:
      let b = try take(UInt8.self, key)
      guard b <= 1 else { throw QoQError("\(what): metadata \(key): bool value \(b) is not 0 or 1") }
      return .bool(b == 1)
    case 8: return .string(try string())
    case 9:
      guard depth == 0 else { throw QoQError("\(what): metadata \(key): nested arrays are not supported") }
      let et = try u32()
      let n = try u64()
      guard n <= UInt64(GGUFFile.maxArrayElements) else { throw QoQError("\(what): metadata \(key): array of \(n) elements exceeds the limit") }
      let minSize: Int
      switch et {
      case 0, 1, 7: minSize = 1
      case 2, 3: minSize = 2
      case 4, 5, 6: minSize = 4
      case 8, 10, 11, 12: minSize = 8
      default: throw QoQError("\(what): metadata \(key): unknown array element type \(et)")
      }
      guard n <= UInt64(remaining / minSize) else { throw truncated("array \(key) of \(n) elements") }
      var arr: [GGUFValue] = []
      arr.reserveCapacity(Int(n))
      for _ in 0..<Int(n) { arr.append(try value(type: et, key: key, depth: depth + 1)) }
      return .array(arr)
    case 10: return .u64(try u64())
    case 11: return .i64(Int64(bitPattern: try u64()))
    case 12: return .f64(Double(bitPattern: try u64()))
    default: throw QoQError("\(what): metadata \(key): unknown value type \(type)")
    }
  }
}

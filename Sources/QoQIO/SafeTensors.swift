// safetensors reader (memory-mapped, validated as huggingface/safetensors `validate()` does) and atomic writer.
// Format: u64 LE header length N, N bytes of JSON `{name: {dtype, shape, data_offsets: [begin, end]}, __metadata__}`,
// then the byte buffer. Offsets are relative to the buffer; the buffer must be fully covered without holes.
import Foundation

public struct TensorInfo: Sendable, Equatable {
  public let name: String
  public let dtype: DType
  public let shape: [Int]
  /// Byte range inside the file (absolute, already shifted past the header).
  public let begin: Int
  public let end: Int
  public var count: Int { shape.reduce(1, *) }
  public var byteCount: Int { end - begin }
}

public final class SafeTensorsFile: @unchecked Sendable {
  public static let maxHeaderSize = 100_000_000
  public let path: String
  public let file: MappedFile
  public let tensors: [String: TensorInfo]
  /// Tensor names in file order (by offset).
  public let names: [String]
  public let metadata: [String: String]

  public convenience init(path: String) throws {
    try self.init(file: MappedFile(path: path))
  }

  public init(file: MappedFile) throws {
    self.file = file
    self.path = file.path
    let bytes = file.bytes
    let p = file.path
    guard bytes.count >= 8 else { throw QoQError("\(p): not a safetensors file (shorter than the 8-byte header length)") }
    let n64 = bytes.loadUnaligned(as: UInt64.self).littleEndian
    guard n64 <= UInt64(Self.maxHeaderSize) else {
      throw QoQError("\(p): safetensors header length \(n64) exceeds the 100 MB limit")
    }
    let n = Int(n64)
    guard 8 + n <= bytes.count else {
      throw QoQError("\(p): safetensors header length \(n) runs past the end of the file (\(bytes.count) bytes)")
    }
    let headerBytes = UnsafeRawBufferPointer(rebasing: bytes[8..<(8 + n)])
    guard n > 0, headerBytes[0] == UInt8(ascii: "{") else {
      throw QoQError("\(p): safetensors header does not start with '{'")
    }
    let header = try JSON.parse(headerBytes, what: "\(p) (safetensors header)")
    guard let obj = header.object else { throw QoQError("\(p): safetensors header is not a JSON object") }
    let dataStart = 8 + n
    let bufferLen = bytes.count - dataStart
    var meta: [String: String] = [:]
    var infos: [TensorInfo] = []
    for (name, v) in obj.pairs {
      if name == "__metadata__" {
        guard let m = v.object else { throw QoQError("\(p): __metadata__ is not an object") }
        for (k, mv) in m.pairs {
          guard let s = mv.string else { throw QoQError("\(p): __metadata__[\(k)] is not a string") }
          meta[k] = s
        }
        continue
      }
      guard let t = v.object else { throw QoQError("\(p): tensor \(name): entry is not an object") }
      guard let ds = t["dtype"]?.string else { throw QoQError("\(p): tensor \(name): missing dtype") }
      guard let dtype = DType(rawValue: ds) else {
        throw QoQError("\(p): tensor \(name): unsupported dtype \(ds) (allowed: \(DType.allCases.map(\.rawValue).joined(separator: ", ")))")
      }
      guard let shapeArr = t["shape"]?.array else { throw QoQError("\(p): tensor \(name): missing shape") }
      guard shapeArr.count <= 16 else { throw QoQError("\(p): tensor \(name) has \(shapeArr.count) dimensions (the limit is 16)") }
      var shape: [Int] = []
      for d in shapeArr {
        guard let x = d.int, x >= 0 else { throw QoQError("\(p): tensor \(name): bad shape \(shapeArr)") }
        shape.append(x)
      }
      guard let offs = t["data_offsets"]?.array, offs.count == 2, let b = offs[0].int, let e = offs[1].int,
            b >= 0, e >= b else {
        throw QoQError("\(p): tensor \(name): bad data_offsets")
      }
      let count = try checkedCount(shape, "\(p): tensor \(name)")
      let size = try checkedMul(count, dtype.size, "\(p): tensor \(name)")
      guard e - b == size else {
        throw QoQError("\(p): tensor \(name): data_offsets span \(e - b) bytes but shape \(shape) of \(ds) needs \(size)")
      }
      guard e <= bufferLen else {
        throw QoQError("\(p): tensor \(name): data_offsets [\(b), \(e)] run past the end of the data (\(bufferLen) bytes)")
      }
      infos.append(TensorInfo(name: name, dtype: dtype, shape: shape, begin: dataStart + b, end: dataStart + e))
    }
    // The buffer must be covered exactly, in order, with no overlap and no holes (no polyglot files).
    infos.sort { ($0.begin, $0.end) < ($1.begin, $1.end) }
    var expect = dataStart
    for t in infos {
      guard t.begin == expect else {
        throw QoQError("\(p): tensor \(t.name): data_offsets overlap or leave a hole "
                       + "(starts at \(t.begin - dataStart), expected \(expect - dataStart))")
      }
      expect = t.end
    }
    guard expect == bytes.count else {
      throw QoQError("\(p): \(bytes.count - expect) bytes after the last tensor are not covered by the header")
    }
    var dict: [String: TensorInfo] = [:]
    for t in infos { dict[t.name] = t }
    tensors = dict
    names = infos.map(\.name)
    metadata = meta
  }

  public func info(_ name: String) throws -> TensorInfo {
    guard let t = tensors[name] else { throw QoQError("\(path): no tensor named \(name)") }
    return t
  }

  /// Raw little-endian bytes of a tensor, inside the mapping.
  public func raw(_ name: String) throws -> UnsafeRawBufferPointer {
    let t = try info(name)
    return UnsafeRawBufferPointer(rebasing: file.bytes[t.begin..<t.end])
  }

  /// Rows [rows) of a tensor of two or more dimensions (rows along the first), converted to float32; the mapped
  /// pages read are released afterwards (streaming a large table without an fp32 copy of all of it).
  public func floats(_ name: String, rows: Range<Int>) throws -> [Float] {
    let t = try info(name)
    guard t.shape.count >= 2, rows.lowerBound >= 0, rows.upperBound <= t.shape[0] else {
      throw QoQError("\(path): rows \(rows) of \(name) \(t.shape) are out of range")
    }
    let width = t.count / max(1, t.shape[0])
    return converted(at: t.begin + rows.lowerBound * width * t.dtype.size, count: rows.count * width, dtype: t.dtype)
  }

  /// `count` elements of `dtype` at byte offset `begin`, converted to float32 16 MiB of source at a time, each piece's
  /// mapped pages released once converted: reading a tensor never holds it twice (mapped and converted) in RSS.
  func converted(at begin: Int, count n: Int, dtype: DType) -> [Float] {
    let step = max(1, (16 << 20) / dtype.size)
    return [Float](unsafeUninitializedCapacity: n) { buf, c in
      var i = 0
      while i < n {
        let m = min(step, n - i), at = begin + i * dtype.size
        convertToFloat(file.base! + at, dtype: dtype, count: m, into: buf.baseAddress! + i)
        file.release(at, at + m * dtype.size)
        i += m
      }
      c = n
    }
  }

  /// Releases a tensor's mapped pages from this process's resident set (after reading it through `raw`).
  public func release(_ name: String) {
    if let t = try? info(name) { file.release(t.begin, t.end) }
  }

  /// A tensor converted to float32 (a copy: its mapped pages are released afterwards).
  public func floats(_ name: String) throws -> [Float] {
    let t = try info(name)
    return converted(at: t.begin, count: t.count, dtype: t.dtype)
  }
}

/// One tensor to write: its bytes must already be little-endian in `dtype`.
public struct TensorBlob: Sendable {
  public var name: String
  public var dtype: DType
  public var shape: [Int]
  public var data: Data
  public init(name: String, dtype: DType, shape: [Int], data: Data) {
    self.name = name; self.dtype = dtype; self.shape = shape; self.data = data
  }
  public init(name: String, shape: [Int], floats: [Float]) {
    self.init(name: name, dtype: .F32, shape: shape, data: floats.withUnsafeBytes { Data($0) })
  }
}

/// A tensor written by a callback instead of from memory (activations, shard assembly): the callback must write
/// exactly `byteCount` little-endian bytes.
public struct StreamedTensor {
  public var name: String
  public var dtype: DType
  public var shape: [Int]
  public var byteCount: Int
  public var write: (FileHandle) throws -> Void
  public init(name: String, dtype: DType, shape: [Int], byteCount: Int, write: @escaping (FileHandle) throws -> Void) {
    self.name = name; self.dtype = dtype; self.shape = shape; self.byteCount = byteCount; self.write = write
  }
  /// An fp32 array written in place (no copy).
  public init(name: String, shape: [Int], floats: [Float]) {
    self.init(name: name, dtype: .F32, shape: shape, byteCount: floats.count * 4) { fh in
      try floats.withUnsafeBytes { b in
        guard let base = b.baseAddress, b.count > 0 else { return }
        try fh.write(contentsOf: Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: base), count: b.count, deallocator: .none))
      }
    }
  }
}

public enum SafeTensorsWriter {
  /// Writes tensors produced by callbacks (sorted by name) atomically, in bounded memory.
  public static func write(streamed tensors: [StreamedTensor], metadata: [String: String] = ["format": "pt"], to path: String) throws {
    let sorted = tensors.sorted { $0.name < $1.name }
    var header = JSONObject()
    if !metadata.isEmpty {
      header["__metadata__"] = .object(JSONObject(metadata.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) }))
    }
    var offset = 0
    var seen = Set<String>()
    for t in sorted {
      guard seen.insert(t.name).inserted else { throw QoQError("\(path): duplicate tensor name \(t.name)") }
      let need = try checkedMul(try checkedCount(t.shape, t.name), t.dtype.size, t.name)
      guard need == t.byteCount else {
        throw QoQError("\(path): tensor \(t.name) has \(t.byteCount) bytes, shape \(t.shape) of \(t.dtype) needs \(need)")
      }
      header[t.name] = .object(JSONObject([
        ("dtype", .string(t.dtype.rawValue)),
        ("shape", .array(t.shape.map { .int($0) })),
        ("data_offsets", .array([.int(offset), .int(offset + t.byteCount)])),
      ]))
      offset = try checkedAdd(offset, t.byteCount, "\(path): file size")
    }
    var h = Array(JSON.serialize(.object(header)).utf8)
    while h.count % 8 != 0 { h.append(0x20) }
    try atomicWrite(path) { fh in
      var n = UInt64(h.count).littleEndian
      try fh.write(contentsOf: Data(bytes: &n, count: 8))
      try fh.write(contentsOf: Data(h))
      for t in sorted {
        let before = try fh.offset()
        try t.write(fh)
        guard try fh.offset() - before == UInt64(t.byteCount) else { throw QoQError("\(path): tensor \(t.name) was written short") }
      }
    }
  }

  /// Writes tensors (sorted by name) atomically; the header is padded with spaces to a multiple of 8 bytes.
  public static func write(_ tensors: [TensorBlob], metadata: [String: String] = ["format": "pt"], to path: String) throws {
    try write(streamed: tensors.map { t in
      StreamedTensor(name: t.name, dtype: t.dtype, shape: t.shape, byteCount: t.data.count) { try $0.write(contentsOf: t.data) }
    }, metadata: metadata, to: path)
  }
}

// Reading `torch.save` files without Python and without running anything: the zip container (stored entries,
// as torch writes them) and a restricted pickle machine that builds only tensors, dicts, lists, tuples and plain
// values. The only globals it accepts are the handful torch uses to describe tensors (torch._utils._rebuild_tensor_v2,
// torch.*Storage, collections.OrderedDict); any other global — os.system, builtins.eval, … — is refused by name
// before anything could be called. Every length and offset is checked (deepcompressor's model.pt / scale.pt and
// QServe's pytorch_model.bin are such files).
import Foundation

/// A tensor read from a torch file: dtype, shape and its elements, contiguous, little-endian.
public struct TorchTensor: Sendable, Equatable {
  public var dtype: DType
  public var shape: [Int]
  public var data: Data
  public var count: Int { shape.reduce(1, *) }
  public init(dtype: DType, shape: [Int], data: Data) { self.dtype = dtype; self.shape = shape; self.data = data }

  /// Elements as Float (F32, F16, BF16, F64, integer types).
  public func floats() -> [Float] {
    data.withUnsafeBytes { b in
      (0..<count).map { i -> Float in
        switch dtype {
        case .F32: return b.loadUnaligned(fromByteOffset: 4 * i, as: Float.self)
        case .F64: return Float(b.loadUnaligned(fromByteOffset: 8 * i, as: Double.self))
        case .F16: return f16ToF32(b.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
        case .BF16: return Float(bitPattern: UInt32(b.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) << 16)
        case .I64: return Float(b.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self))
        case .I32: return Float(b.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self))
        case .U32: return Float(b.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))
        case .I16: return Float(b.loadUnaligned(fromByteOffset: 2 * i, as: Int16.self))
        case .I8: return Float(b.load(fromByteOffset: i, as: Int8.self))
        case .U8: return Float(b.load(fromByteOffset: i, as: UInt8.self))
        }
      }
    }
  }
}

/// A pickled list or dict: a reference, as in Python, so APPEND/SETITEMS on a memoized container mutate it in place
/// (linear time) and every memo reference sees the same object.
public final class PickleContainer: @unchecked Sendable {
  public var items: [PickleValue] = []
  public var pairs: [(PickleValue, PickleValue)] = []
  init(items: [PickleValue] = [], pairs: [(PickleValue, PickleValue)] = []) { self.items = items; self.pairs = pairs }
}

/// The values a restricted pickle may produce.
public indirect enum PickleValue: Sendable {
  case none, bool(Bool), int(Int), float(Double), string(String), bytes(Data)
  case list(PickleContainer), tuple([PickleValue]), dict(PickleContainer)
  case tensor(TorchTensor)
  case global(String)                          // an allowed callable or class, before it is applied
  case storage(dtype: DType, key: String, count: Int)

  var string: String? { if case .string(let s) = self { return s }; return nil }
  var int: Int? { if case .int(let i) = self { return i }; if case .bool(let b) = self { return b ? 1 : 0 }; return nil }
}

public enum TorchFile {
  static let storageTypes: [String: DType] = [
    "FloatStorage": .F32, "HalfStorage": .F16, "BFloat16Storage": .BF16, "DoubleStorage": .F64, "LongStorage": .I64,
    "IntStorage": .I32, "ShortStorage": .I16, "CharStorage": .I8, "ByteStorage": .U8, "BoolStorage": .U8,
  ]
  static let allowedGlobals: Set<String> = Set(storageTypes.keys.map { "torch." + $0 }).union([
    "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor", "torch._utils._rebuild_parameter",
    "collections.OrderedDict",
  ])

  /// Reads a torch.save zip file into a flat name → tensor dict (nested dicts are flattened with ".").
  public static func load(path: String) throws -> [String: TorchTensor] {
    let file = try MappedFile(path: path)
    let zip = try ZipArchive(bytes: UnsafeRawBufferPointer(start: file.base, count: file.count), what: path)
    guard let pkl = zip.names.first(where: { $0.hasSuffix("/data.pkl") || $0 == "data.pkl" }) else {
      throw QoQError("\(path): not a torch zip file (no data.pkl); legacy non-zip torch files are not supported")
    }
    let prefix = String(pkl.dropLast("data.pkl".count))
    // Decoded tensors may not exceed a bound proportional to the file: views that expand a small storage (or the
    // same storage referenced over and over) are refused instead of filling memory.
    let budget = 4 * file.count + (1 << 20)
    var machine = Unpickler(data: try zip.entry(pkl), what: path, decodedBudget: budget) { key in try zip.entry(prefix + "data/" + key) }
    let root = try machine.run()
    _ = file
    var out: [String: TorchTensor] = [:]
    // Containers may share or contain themselves (memo references): a cycle is refused, and the walk is bounded so a
    // DAG of memo references cannot make it exponential.
    var visits = 0
    var onPath = Set<ObjectIdentifier>()
    func flatten(_ v: PickleValue, _ name: String, depth: Int) throws {
      visits += 1
      if visits > 1_000_000 { throw QoQError("\(path): the pickle's structure has more than 1,000,000 entries") }
      if depth > 64 { throw QoQError("\(path): the pickle nests dicts more than 64 deep") }
      switch v {
      case .tensor(let t): out[name] = t
      case .dict(let d):
        let id = ObjectIdentifier(d)
        guard onPath.insert(id).inserted else { throw QoQError("\(path): a dict at \(name.isEmpty ? "top level" : name) contains itself") }
        defer { onPath.remove(id) }
        for (k, x) in d.pairs {
          guard let ks = k.string else { throw QoQError("\(path): a dict key at \(name.isEmpty ? "top level" : name) is not a string") }
          try flatten(x, name.isEmpty ? ks : name + "." + ks, depth: depth + 1)
        }
      default: break  // plain values (counters, metadata) carry no weights
      }
    }
    try flatten(root, "", depth: 0)
    return out
  }
}

/// A zip archive whose entries are stored (method 0), as torch.save writes them.
struct ZipArchive {
  let bytes: UnsafeRawBufferPointer
  var entries: [String: (offset: Int, size: Int)] = [:]
  var names: [String] { Array(entries.keys) }
  let what: String

  init(bytes: UnsafeRawBufferPointer, what: String) throws {
    self.bytes = bytes; self.what = what
    let n = bytes.count
    func u16(_ o: Int) throws -> Int {
      guard o >= 0, o + 2 <= n else { throw QoQError("\(what): truncated zip") }; return Int(bytes.loadUnaligned(fromByteOffset: o, as: UInt16.self))
    }
    func u32(_ o: Int) throws -> Int {
      guard o >= 0, o + 4 <= n else { throw QoQError("\(what): truncated zip") }; return Int(bytes.loadUnaligned(fromByteOffset: o, as: UInt32.self))
    }
    // End of central directory: the last 0x06054b50 within the final 64 KiB + 22 bytes.
    var eocd = -1
    var o = n - 22
    while o >= max(0, n - 22 - 65_535) { if try u32(o) == 0x0605_4b50 { eocd = o; break }; o -= 1 }
    guard eocd >= 0 else { throw QoQError("\(what): not a zip file (no end-of-central-directory record)") }
    let count = try u16(eocd + 10), cdOffset = try u32(eocd + 16)
    var p = cdOffset
    for _ in 0..<count {
      guard try u32(p) == 0x0201_4b50 else { throw QoQError("\(what): corrupt zip central directory") }
      let method = try u16(p + 10), csize = try u32(p + 20), usize = try u32(p + 24)
      let nameLen = try u16(p + 28), extraLen = try u16(p + 30), commentLen = try u16(p + 32), local = try u32(p + 42)
      guard p + 46 + nameLen <= n else { throw QoQError("\(what): truncated zip") }
      let name = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[(p + 46)..<(p + 46 + nameLen)]), as: UTF8.self)
      guard method == 0, csize == usize else { throw QoQError("\(what): zip entry \(name) is compressed; torch files store entries uncompressed") }
      guard csize != 0xFFFF_FFFF, local != 0xFFFF_FFFF else { throw QoQError("\(what): zip64 entries are not supported (\(name))") }
      guard try u32(local) == 0x0403_4b50 else { throw QoQError("\(what): bad local header for \(name)") }
      let dataStart = local + 30 + (try u16(local + 26)) + (try u16(local + 28))
      guard dataStart >= 0, dataStart + csize <= n else { throw QoQError("\(what): zip entry \(name) runs past the end of the file") }
      entries[name] = (dataStart, csize)
      p += 46 + nameLen + extraLen + commentLen
    }
  }

  func entry(_ name: String) throws -> Data {
    guard let e = entries[name] else { throw QoQError("\(what): missing zip entry \(name)") }
    return Data(bytes[e.offset..<(e.offset + e.size)])
  }
}

/// The restricted pickle machine (protocols 2–5 as torch writes them).
struct Unpickler {
  let data: Data
  let what: String
  let storage: (String) throws -> Data
  var stack: [PickleValue] = []
  var marks: [Int] = []
  var memo: [Int: PickleValue] = [:]
  var pos = 0
  /// Bytes of tensor data decoded so far, and the most allowed (see TorchFile.load).
  var decoded = 0
  let decodedBudget: Int
  /// Each storage is read from the archive once, however many tensors view it.
  var storages: [String: Data] = [:]
  /// Tensors have at most this many dimensions (torch checkpoints use 1–4).
  static let maxDims = 16

  init(data: Data, what: String, decodedBudget: Int = .max, storage: @escaping (String) throws -> Data) {
    self.data = data; self.what = what; self.decodedBudget = decodedBudget; self.storage = storage
  }

  mutating func byte() throws -> UInt8 {
    guard pos < data.count else { throw QoQError("\(what): pickle ends early") }
    defer { pos += 1 }
    return data[data.startIndex + pos]
  }
  mutating func take(_ n: Int) throws -> Data {
    guard n >= 0, n <= data.count - pos else { throw QoQError("\(what): pickle ends early (a length of \(n) bytes at \(pos))") }
    defer { pos += n }
    return data.subdata(in: (data.startIndex + pos)..<(data.startIndex + pos + n))
  }
  mutating func uint(_ n: Int) throws -> Int { var v = 0; for (i, b) in try take(n).enumerated() { v |= Int(b) << (8 * i) }; return v }
  mutating func line() throws -> String {
    var s = Data()
    while true { let b = try byte(); if b == 0x0A { break }; s.append(b); if s.count > 4096 { throw QoQError("\(what): pickle line too long") } }
    return String(decoding: s, as: UTF8.self)
  }
  mutating func pop() throws -> PickleValue { guard let v = stack.popLast() else { throw QoQError("\(what): pickle stack underflow") }; return v }
  mutating func popMark() throws -> [PickleValue] {
    guard let m = marks.popLast(), m <= stack.count else { throw QoQError("\(what): pickle mark missing") }
    defer { stack.removeSubrange(m...) }
    return Array(stack[m...])
  }
  mutating func global(_ module: String, _ name: String) throws -> PickleValue {
    let full = module + "." + name
    guard TorchFile.allowedGlobals.contains(full) else {
      throw QoQError("\(what): the pickle refers to \(full); only tensors, dicts, lists and plain values are accepted (nothing is executed)")
    }
    return .global(full)
  }

  mutating func run() throws -> PickleValue {
    var steps = 0
    while true {
      steps += 1
      if steps > 50_000_000 { throw QoQError("\(what): pickle too long") }
      let op = try byte()
      switch op {
      case 0x80: _ = try byte()                                      // PROTO
      case 0x95: _ = try take(8)                                     // FRAME
      case 0x2E: return try pop()                                    // STOP
      case 0x7D: stack.append(.dict(PickleContainer()))              // EMPTY_DICT
      case 0x5D: stack.append(.list(PickleContainer()))              // EMPTY_LIST
      case 0x29: stack.append(.tuple([]))                            // EMPTY_TUPLE
      case 0x28: marks.append(stack.count)                           // MARK
      case 0x4E: stack.append(.none)                                 // NONE
      case 0x88: stack.append(.bool(true))                           // NEWTRUE
      case 0x89: stack.append(.bool(false))                          // NEWFALSE
      case 0x4A: stack.append(.int(Int(Int32(truncatingIfNeeded: try uint(4)))))   // BININT
      case 0x4B: stack.append(.int(try uint(1)))                     // BININT1
      case 0x4D: stack.append(.int(try uint(2)))                     // BININT2
      case 0x8A:                                                     // LONG1
        let n = try uint(1)
        guard n <= 8 else { throw QoQError("\(what): integer too large") }
        var v = try uint(n)
        if n > 0 && n < 8 && v >= 1 << (8 * n - 1) { v -= 1 << (8 * n) }
        stack.append(.int(v))
      case 0x47:                                                     // BINFLOAT (big-endian)
        let d = try take(8)
        stack.append(.float(Double(bitPattern: d.reduce(UInt64(0)) { $0 << 8 | UInt64($1) })))
      case 0x58: stack.append(.string(String(decoding: try take(try uint(4)), as: UTF8.self)))    // BINUNICODE
      case 0x8C: stack.append(.string(String(decoding: try take(try uint(1)), as: UTF8.self)))    // SHORT_BINUNICODE
      case 0x8D: stack.append(.string(String(decoding: try take(try uint(8)), as: UTF8.self)))    // BINUNICODE8
      case 0x42: stack.append(.bytes(try take(try uint(4))))         // BINBYTES
      case 0x43: stack.append(.bytes(try take(try uint(1))))         // SHORT_BINBYTES
      case 0x74: stack.append(.tuple(try popMark()))                 // TUPLE
      case 0x85: stack.append(.tuple([try pop()]))                   // TUPLE1
      case 0x86: let b = try pop(), a = try pop(); stack.append(.tuple([a, b]))                    // TUPLE2
      case 0x87: let c = try pop(), b = try pop(), a = try pop(); stack.append(.tuple([a, b, c]))  // TUPLE3
      case 0x6C: stack.append(.list(PickleContainer(items: try popMark())))                  // LIST
      case 0x64:                                                     // DICT
        let items = try popMark()
        guard items.count % 2 == 0 else { throw QoQError("\(what): odd DICT") }
        stack.append(.dict(PickleContainer(pairs: stride(from: 0, to: items.count, by: 2).map { (items[$0], items[$0 + 1]) })))
      case 0x61: let v = try pop(); try appendTo(&stack, [v])        // APPEND
      case 0x65: let vs = try popMark(); try appendTo(&stack, vs)    // APPENDS
      case 0x73: let v = try pop(), k = try pop(); try setItems(&stack, [(k, v)])                   // SETITEM
      case 0x75:                                                     // SETITEMS
        let items = try popMark()
        guard items.count % 2 == 0 else { throw QoQError("\(what): odd SETITEMS") }
        try setItems(&stack, stride(from: 0, to: items.count, by: 2).map { (items[$0], items[$0 + 1]) })
      case 0x71: memo[try uint(1)] = try top()                       // BINPUT
      case 0x72: memo[try uint(4)] = try top()                       // LONG_BINPUT
      case 0x94: memo[memo.count] = try top()                        // MEMOIZE
      case 0x68: stack.append(try memoGet(try uint(1)))              // BINGET
      case 0x6A: stack.append(try memoGet(try uint(4)))              // LONG_BINGET
      case 0x63: let m = try line(), n = try line(); stack.append(try global(m, n))               // GLOBAL
      case 0x93:                                                     // STACK_GLOBAL
        guard let n = try pop().string, let m = try pop().string else { throw QoQError("\(what): bad STACK_GLOBAL") }
        stack.append(try global(m, n))
      case 0x51:                                                     // BINPERSID
        guard case .tuple(let t) = try pop(), t.count >= 5, t[0].string == "storage", case .global(let cls) = t[1],
              let key = t[2].string, let n = t[4].int, let dt = TorchFile.storageTypes[String(cls.dropFirst("torch.".count))] else {
          throw QoQError("\(what): unsupported persistent id (only torch storages)")
        }
        stack.append(.storage(dtype: dt, key: key, count: n))
      case 0x52: let args = try pop(), f = try pop(); stack.append(try reduce(f, args))           // REDUCE
      case 0x62: _ = try pop()                                       // BUILD: state of an OrderedDict (metadata); ignored
      default:
        throw QoQError("\(what): pickle opcode 0x\(String(op, radix: 16)) is not allowed (only tensors, dicts, lists and plain values)")
      }
    }
  }

  func top() throws -> PickleValue { guard let v = stack.last else { throw QoQError("\(what): pickle stack underflow") }; return v }
  func memoGet(_ i: Int) throws -> PickleValue { guard let v = memo[i] else { throw QoQError("\(what): pickle memo \(i) missing") }; return v }

  /// In place on the container at the top of the stack: linear time however the list is shared.
  func appendTo(_ s: inout [PickleValue], _ vs: [PickleValue]) throws {
    guard case .list(let l) = s.last else { throw QoQError("\(what): APPEND to a non-list") }
    l.items += vs
  }
  func setItems(_ s: inout [PickleValue], _ kv: [(PickleValue, PickleValue)]) throws {
    guard case .dict(let d) = s.last else { throw QoQError("\(what): SETITEM on a non-dict") }
    d.pairs += kv
  }

  /// Applies one of the allowed callables.
  mutating func reduce(_ f: PickleValue, _ args: PickleValue) throws -> PickleValue {
    guard case .global(let name) = f, case .tuple(let a) = args else { throw QoQError("\(what): REDUCE of a non-callable") }
    switch name {
    case "collections.OrderedDict": return .dict(PickleContainer())
    case "torch._utils._rebuild_parameter": guard let t = a.first else { throw QoQError("\(what): bad parameter") }; return t
    case "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor":
      guard a.count >= 4, case .storage(let dt, let key, let n) = a[0], let off = a[1].int,
            case .tuple(let sz) = a[2], case .tuple(let st) = a[3] else { throw QoQError("\(what): bad tensor record") }
      guard sz.count <= Self.maxDims else { throw QoQError("\(what): a tensor has \(sz.count) dimensions (the limit is \(Self.maxDims))") }
      let shape = sz.compactMap(\.int), strides = st.compactMap(\.int)
      guard shape.count == sz.count, strides.count == shape.count, shape.allSatisfy({ $0 >= 0 }), strides.allSatisfy({ $0 >= 0 }), off >= 0 else {
        throw QoQError("\(what): bad tensor shape or strides")
      }
      let storageBytes = try checkedMul(n, dt.size, "\(what): storage \(key)")
      let raw: Data
      if let cached = storages[key] { raw = cached } else { raw = try storage(key); storages[key] = raw }
      guard raw.count == storageBytes else { throw QoQError("\(what): storage \(key) has \(raw.count) bytes, expected \(storageBytes)") }
      let count = try checkedCount(shape, "\(what): tensor shape \(shape)")
      if count == 0 { return .tensor(TorchTensor(dtype: dt, shape: shape, data: Data())) }
      var last = off
      for (d, s) in zip(shape, strides) {
        last = try checkedAdd(last, try checkedMul(d - 1, s, "\(what): tensor strides"), "\(what): tensor strides")
      }
      guard last < n else { throw QoQError("\(what): tensor reaches past its storage \(key)") }
      // A view with more elements than its storage repeats elements (stride 0 or overlapping strides): refused, so a
      // tiny storage cannot expand into a huge tensor.
      guard count <= n else { throw QoQError("\(what): a tensor view of \(count) elements expands its storage \(key) of \(n) elements") }
      decoded = try checkedAdd(decoded, count * dt.size, "\(what): decoded size")
      guard decoded <= decodedBudget else {
        throw QoQError("\(what): the tensors decode to more than \(decodedBudget) bytes (4× the file); refusing to expand it")
      }
      var contiguous = true, expect = 1
      for d in stride(from: shape.count - 1, through: 0, by: -1) where shape[d] > 1 {
        if strides[d] != expect { contiguous = false; break }
        expect *= shape[d]
      }
      if contiguous {
        let start = raw.startIndex + off * dt.size
        return .tensor(TorchTensor(dtype: dt, shape: shape, data: raw.subdata(in: start..<(start + count * dt.size))))
      }
      var out = Data(count: count * dt.size)
      raw.withUnsafeBytes { src in
        out.withUnsafeMutableBytes { dst in
          var idx = [Int](repeating: 0, count: shape.count)
          for e in 0..<count {
            var s = off
            for d in 0..<shape.count { s += idx[d] * strides[d] }
            (dst.baseAddress! + e * dt.size).copyMemory(from: src.baseAddress! + s * dt.size, byteCount: dt.size)
            var d = shape.count - 1
            while d >= 0 { idx[d] += 1; if idx[d] < shape[d] { break }; idx[d] = 0; d -= 1 }
          }
        }
      }
      return .tensor(TorchTensor(dtype: dt, shape: shape, data: out))
    default:
      throw QoQError("\(what): \(name) cannot be applied here")
    }
  }
}

// Structure-aware fuzzing of the restricted torch/pickle reader: random but well-formed opcode streams (containers,
// memo puts and gets, APPEND/SETITEMS, allowed and forbidden globals, REDUCE of the tensor rebuilders with hostile
// shapes, strides, offsets and storage sizes, huge string lengths), wrapped in a stored zip with storage entries.
// Every input must load or throw a QoQError; never trap, hang or allocate without bound.
import Foundation
import QoQIO
import QoQTestSupport

struct PickleGen {
  var rng: SplitMix64
  var out: [UInt8] = [0x80, 2]

  mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
  mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
  mutating func str(_ s: String) { out.append(0x8C); out.append(UInt8(min(255, s.utf8.count))); out += Array(s.utf8.prefix(255)) }

  static let boundary: [Int64] = [0, 1, -1, 2, 3, 7, 255, 256, 65_535, 1 << 31 - 1, 1 << 31, 1 << 32, 1 << 40, 1 << 62, Int64.max, Int64.min]
  mutating func int(_ v: Int64) {
    if v >= 0 && v < 256 { out += [0x4B, UInt8(v)]; return }
    out.append(0x8A); out.append(8)
    withUnsafeBytes(of: v.littleEndian) { out += $0 }
  }
  mutating func anyInt() { int(rng.int(3) == 0 ? Int64(rng.int(64)) : Self.boundary[rng.int(Self.boundary.count)]) }

  /// A tensor record: REDUCE(_rebuild_tensor_v2, (persid storage, offset, shape, stride, requires_grad, hooks)).
  mutating func tensor() {
    out += Array("ctorch._utils\n_rebuild_tensor_v2\n".utf8)
    out.append(0x28)  // MARK for the args tuple
    // persistent id ("storage", torch.FloatStorage, key, "cpu", numel)
    out.append(0x28)
    str("storage")
    out += Array("ctorch\n\(["FloatStorage", "HalfStorage", "ByteStorage", "LongStorage", "EvilStorage"][rng.int(5)])\n".utf8)
    str(String(rng.int(3)))
    str("cpu")
    anyInt()
    out.append(0x74)  // TUPLE
    out.append(0x51)  // BINPERSID
    anyInt()          // storage offset
    for _ in 0..<2 {  // shape, stride
      out.append(0x28)
      for _ in 0..<(rng.int(5) == 0 ? 20 + rng.int(50) : rng.int(4)) { anyInt() }
      out.append(0x74)
    }
    out.append(0x89)  // requires_grad False
    out.append(0x28); out.append(0x74)  // empty hooks tuple
    out.append(0x74)
    out.append(0x52)  // REDUCE
  }

  mutating func op(depth: Int) {
    switch rng.int(18) {
    case 0: out.append(0x7D)                           // EMPTY_DICT
    case 1: out.append(0x5D)                           // EMPTY_LIST
    case 2: out.append(0x28)                           // MARK
    case 3: anyInt()
    case 4: str(["weight", "a", "", "model.layers.0.q_proj.weight"][rng.int(4)])
    case 5: out.append(0x71); out.append(UInt8(rng.int(8)))   // BINPUT
    case 6: out.append(0x68); out.append(UInt8(rng.int(8)))   // BINGET
    case 7: out.append(0x94)                           // MEMOIZE
    case 8: out.append(0x61)                           // APPEND
    case 9: out.append(0x65)                           // APPENDS
    case 10: out.append(0x73)                          // SETITEM
    case 11: out.append(0x75)                          // SETITEMS
    case 12: tensor()
    case 13: out += Array(("c\(["os", "builtins", "collections", "torch._utils"][rng.int(4)])\n"
                           + "\(["system", "eval", "OrderedDict", "_rebuild_parameter"][rng.int(4)])\n").utf8)
    case 14: out.append(0x52)                          // REDUCE
    case 15: out.append([0x74, 0x85, 0x86, 0x87, 0x6C, 0x64][rng.int(6)])   // TUPLE*, LIST, DICT
    case 16:                                           // a huge declared string length
      out.append([0x58, 0x8D, 0x42][rng.int(3)])
      if out.last == 0x8D { u64([UInt64.max, 1 << 63, 1 << 40][rng.int(3)]) } else { u32(UInt32.max) }
    default:                                           // a memo-doubling chain: x = (x, x) repeated
      for _ in 0..<rng.int(40) { out += [0x68, 0, 0x68, 0, 0x86, 0x71, 0] }
    }
  }

  mutating func pickle() -> [UInt8] {
    out = [0x80, 2, 0x7D, 0x71, 0]   // PROTO 2, EMPTY_DICT, BINPUT 0
    for _ in 0..<(1 + rng.int(60)) { op(depth: 0) }
    if rng.int(4) != 0 { out.append(0x2E) }   // STOP (sometimes missing)
    return out
  }
}

func pickleFuzzInput(_ rng: inout SplitMix64) -> [UInt8] {
  var g = PickleGen(rng: SplitMix64(seed: rng.next()))
  let pkl = g.pickle()
  var entries: [(String, [UInt8])] = [("archive/data.pkl", pkl)]
  for k in 0..<3 { entries.append(("archive/data/\(k)", [UInt8](repeating: UInt8(k), count: [0, 4, 16, 64][rng.int(4)]))) }
  return storedZip(entries)
}

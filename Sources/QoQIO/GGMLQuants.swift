// ggml tensor types and block dequantization (ported from ggml-quants.c's dequantize_row_* reference code).
// Each block stores fp16 scales followed by packed integer codes; K-quants use 256-element super-blocks.
import Foundation

public enum GGMLType: Int, Sendable, CaseIterable {
  case F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9
  case Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15
  case I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, BF16 = 30

  /// Elements per block.
  public var blockSize: Int {
    switch self {
    case .F32, .F16, .BF16, .I8, .I16, .I32, .I64, .F64: return 1
    case .Q4_0, .Q4_1, .Q5_0, .Q5_1, .Q8_0, .Q8_1: return 32
    case .Q2_K, .Q3_K, .Q4_K, .Q5_K, .Q6_K, .Q8_K: return 256
    }
  }

  /// Bytes per block.
  public var blockBytes: Int {
    switch self {
    case .F32, .I32: return 4
    case .F16, .BF16, .I16: return 2
    case .I8: return 1
    case .I64, .F64: return 8
    case .Q4_0: return 18
    case .Q4_1: return 20
    case .Q5_0: return 22
    case .Q5_1: return 24
    case .Q8_0: return 34
    case .Q8_1: return 36
    case .Q2_K: return 84
    case .Q3_K: return 110
    case .Q4_K: return 144
    case .Q5_K: return 176
    case .Q6_K: return 210
    case .Q8_K: return 292
    }
  }

  /// Whether `dequantize` supports this type.
  public var canDequantize: Bool {
    switch self {
    case .F32, .F16, .BF16, .Q4_0, .Q4_1, .Q5_0, .Q5_1, .Q8_0, .Q4_K, .Q5_K, .Q6_K: return true
    default: return false
    }
  }
}

/// Dequantizes `count` elements of `type` from `src` (which must hold exactly count/blockSize blocks).
public func dequantize(_ src: UnsafeRawBufferPointer, type: GGMLType, count: Int, what: String) throws -> [Float] {
  guard type.canDequantize else { throw QoQError("\(what): dequantization of ggml type \(type) is not supported") }
  guard count % type.blockSize == 0 else { throw QoQError("\(what): \(count) elements is not a multiple of the \(type) block size") }
  let nb = count / type.blockSize
  guard src.count == (try checkedMul(nb, type.blockBytes, what)) else {
    throw QoQError("\(what): \(src.count) bytes do not hold \(count) elements of \(type)")
  }
  guard count > 0 else { return [] }
  return [Float](unsafeUninitializedCapacity: count) { buf, c in
    dequantizeBlocks(src.baseAddress!, type: type, blocks: nb, into: buf.baseAddress!)
    c = count
  }
}

/// ggml's quantize_row_q8_0_ref (and gguf-py's port): each block of 32 floats becomes d = max|x| / 127, stored as
/// fp16, and 32 int8 codes round(x · (1/d)) rounded half away from zero; an all-zero block has d = 0 and zero codes.
/// `x.count` must be a multiple of 32. Throws, naming `what`, on a NaN or infinity, or where d overflows fp16
/// (max|x| > 65504 · 127): such a tensor cannot be held by Q8_0.
public func quantizeQ8_0(_ x: UnsafeBufferPointer<Float>, what: String) throws -> Data {
  guard x.count % 32 == 0 else { throw QoQError("\(what): \(x.count) elements is not a multiple of the Q8_0 block size 32") }
  let nb = x.count / 32
  var out = Data(count: try checkedMul(nb, GGMLType.Q8_0.blockBytes, what))
  try out.withUnsafeMutableBytes { (o: UnsafeMutableRawBufferPointer) in
    for blk in 0..<nb {
      let v = x.baseAddress! + blk * 32, p = blk * 34
      var amax: Float = 0
      for j in 0..<32 {
        guard v[j].isFinite else { throw QoQError("\(what): element \(blk * 32 + j) is \(v[j]); Q8_0 holds finite values only") }
        amax = max(amax, abs(v[j]))
      }
      let d = amax / 127, dh = f32ToF16(d)
      guard dh & 0x7C00 != 0x7C00 else {
        throw QoQError("\(what): block \(blk) has max |x| = \(amax); its Q8_0 scale \(d) overflows fp16 (at most 65504)")
      }
      // ggml multiplies by 1/d; where 1/d overflows (d subnormal, its fp16 is 0 anyway) dividing keeps |q| ≤ 127.
      let id: Float = d == 0 ? 0 : 1 / d
      o.storeBytes(of: dh.littleEndian, toByteOffset: p, as: UInt16.self)
      for j in 0..<32 {
        let q = id.isFinite ? v[j] * id : v[j] / d
        o[p + 2 + j] = UInt8(bitPattern: Int8(q.rounded(.toNearestOrAwayFromZero)))
      }
    }
  }
  return out
}

@inline(__always) private func h(_ p: UnsafeRawPointer, _ o: Int) -> Float { f16ToF32(p.loadUnaligned(fromByteOffset: o, as: UInt16.self)) }
@inline(__always) private func b(_ p: UnsafeRawPointer, _ o: Int) -> UInt8 { p.load(fromByteOffset: o, as: UInt8.self) }

/// K-quant 6-bit scale and min for sub-block j (ggml's get_scale_min_k4).
@inline(__always) private func scaleMinK4(_ j: Int, _ q: UnsafeRawPointer) -> (Float, Float) {
  if j < 4 {
    return (Float(b(q, j) & 63), Float(b(q, j + 4) & 63))
  }
  let d = (b(q, j + 4) & 0xF) | ((b(q, j - 4) >> 6) << 4)
  let m = (b(q, j + 4) >> 4) | ((b(q, j) >> 6) << 4)
  return (Float(d), Float(m))
}

func dequantizeBlocks(_ src: UnsafeRawPointer, type: GGMLType, blocks nb: Int, into y: UnsafeMutablePointer<Float>) {
  switch type {
  case .F32, .F16, .BF16:
    convertToFloat(src, dtype: type == .F32 ? .F32 : type == .F16 ? .F16 : .BF16, count: nb, into: y)
  case .Q4_0:
    for i in 0..<nb {
      let p = src + i * 18, d = h(p, 0), o = y + i * 32
      for j in 0..<16 {
        let q = b(p, 2 + j)
        o[j] = Float(Int(q & 0xF) - 8) * d
        o[j + 16] = Float(Int(q >> 4) - 8) * d
      }
    }
  case .Q4_1:
    for i in 0..<nb {
      let p = src + i * 20, d = h(p, 0), m = h(p, 2), o = y + i * 32
      for j in 0..<16 {
        let q = b(p, 4 + j)
        o[j] = Float(q & 0xF) * d + m
        o[j + 16] = Float(q >> 4) * d + m
      }
    }
  case .Q5_0:
    for i in 0..<nb {
      let p = src + i * 22, d = h(p, 0), o = y + i * 32
      let qh = p.loadUnaligned(fromByteOffset: 2, as: UInt32.self).littleEndian
      for j in 0..<16 {
        let xh0 = UInt8(truncatingIfNeeded: ((qh >> UInt32(j)) << 4) & 0x10)
        let xh1 = UInt8(truncatingIfNeeded: (qh >> UInt32(j + 12)) & 0x10)
        let q = b(p, 6 + j)
        o[j] = Float(Int((q & 0xF) | xh0) - 16) * d
        o[j + 16] = Float(Int((q >> 4) | xh1) - 16) * d
      }
    }
  case .Q5_1:
    for i in 0..<nb {
      let p = src + i * 24, d = h(p, 0), m = h(p, 2), o = y + i * 32
      let qh = p.loadUnaligned(fromByteOffset: 4, as: UInt32.self).littleEndian
      for j in 0..<16 {
        let xh0 = UInt8(truncatingIfNeeded: ((qh >> UInt32(j)) << 4) & 0x10)
        let xh1 = UInt8(truncatingIfNeeded: (qh >> UInt32(j + 12)) & 0x10)
        let q = b(p, 8 + j)
        o[j] = Float((q & 0xF) | xh0) * d + m
        o[j + 16] = Float((q >> 4) | xh1) * d + m
      }
    }
  case .Q8_0:
    for i in 0..<nb {
      let p = src + i * 34, d = h(p, 0), o = y + i * 32
      for j in 0..<32 { o[j] = Float(p.load(fromByteOffset: 2 + j, as: Int8.self)) * d }
    }
  case .Q4_K:
    for i in 0..<nb {
      let p = src + i * 144, d = h(p, 0), dmin = h(p, 2), sc = p + 4
      var q = p + 16, o = y + i * 256, s = 0
      for _ in 0..<4 {  // 64 elements per step: two sub-blocks sharing 32 bytes of nibbles
        let (sc1, m1) = scaleMinK4(s, sc), (sc2, m2) = scaleMinK4(s + 1, sc)
        let d1 = d * sc1, mm1 = dmin * m1, d2 = d * sc2, mm2 = dmin * m2
        for l in 0..<32 { o[l] = d1 * Float(b(q, l) & 0xF) - mm1 }
        for l in 0..<32 { o[32 + l] = d2 * Float(b(q, l) >> 4) - mm2 }
        q += 32; o += 64; s += 2
      }
    }
  case .Q5_K:
    for i in 0..<nb {
      let p = src + i * 176, d = h(p, 0), dmin = h(p, 2), sc = p + 4, qh = p + 16
      var ql = p + 48, o = y + i * 256, s = 0
      var u1: UInt8 = 1, u2: UInt8 = 2
      for _ in 0..<4 {
        let (sc1, m1) = scaleMinK4(s, sc), (sc2, m2) = scaleMinK4(s + 1, sc)
        let d1 = d * sc1, mm1 = dmin * m1, d2 = d * sc2, mm2 = dmin * m2
        for l in 0..<32 { o[l] = d1 * Float((b(ql, l) & 0xF) + (b(qh, l) & u1 != 0 ? 16 : 0)) - mm1 }
        for l in 0..<32 { o[32 + l] = d2 * Float((b(ql, l) >> 4) + (b(qh, l) & u2 != 0 ? 16 : 0)) - mm2 }
        ql += 32; o += 64; s += 2
        u1 <<= 2; u2 <<= 2
      }
    }
  case .Q6_K:
    for i in 0..<nb {
      let p = src + i * 210, d = h(p, 208)
      var ql = p, qh = p + 128, sc = p + 192, o = y + i * 256
      for _ in 0..<2 {
        for l in 0..<32 {
          let s = l / 16
          let q1 = Int((b(ql, l) & 0xF) | ((b(qh, l) >> 0) & 3) << 4) - 32
          let q2 = Int((b(ql, l + 32) & 0xF) | ((b(qh, l) >> 2) & 3) << 4) - 32
          let q3 = Int((b(ql, l) >> 4) | ((b(qh, l) >> 4) & 3) << 4) - 32
          let q4 = Int((b(ql, l + 32) >> 4) | ((b(qh, l) >> 6) & 3) << 4) - 32
          o[l] = d * Float(sc.load(fromByteOffset: s, as: Int8.self)) * Float(q1)
          o[l + 32] = d * Float(sc.load(fromByteOffset: s + 2, as: Int8.self)) * Float(q2)
          o[l + 64] = d * Float(sc.load(fromByteOffset: s + 4, as: Int8.self)) * Float(q3)
          o[l + 96] = d * Float(sc.load(fromByteOffset: s + 6, as: Int8.self)) * Float(q4)
        }
        o += 128; ql += 64; qh += 32; sc += 8
      }
    }
  default:
    preconditionFailure("checked by dequantize()")
  }
}

// Element types of checkpoint tensors and portable half-precision conversions.

/// Tensor element types accepted in safetensors files (an allow-list; anything else is rejected).
public enum DType: String, Sendable, CaseIterable {
  case F64, F32, F16, BF16, I64, I32, U32, I16, I8, U8

  public var size: Int {
    switch self {
    case .F64, .I64: return 8
    case .F32, .I32, .U32: return 4
    case .F16, .BF16, .I16: return 2
    case .I8, .U8: return 1
    }
  }
}

/// IEEE half → float, bit-exact, without relying on `Float16` (unavailable on Intel macOS).
@inline(__always)
public func f16ToF32(_ h: UInt16) -> Float {
  let sign = UInt32(h & 0x8000) << 16
  let exp = UInt32(h >> 10) & 0x1F
  let man = UInt32(h & 0x3FF)
  if exp == 0 {
    if man == 0 { return Float(bitPattern: sign) }
    // Subnormal: value = man · 2^-24.
    let v = Float(man) * (1.0 / 16_777_216.0)
    return sign != 0 ? -v : v
  }
  if exp == 0x1F { return Float(bitPattern: sign | 0x7F80_0000 | (man << 13)) }
  return Float(bitPattern: sign | ((exp + 112) << 23) | (man << 13))
}

/// float → IEEE half with round-to-nearest-even (overflow → ±inf, NaN kept).
@inline(__always)
public func f32ToF16(_ f: Float) -> UInt16 {
  let x = f.bitPattern
  let sign = UInt16((x >> 16) & 0x8000)
  let exp = Int((x >> 23) & 0xFF)
  var man = x & 0x7F_FFFF
  if exp == 0xFF { return sign | 0x7C00 | (man != 0 ? 0x200 : 0) }
  let e = exp - 127 + 15
  if e >= 0x1F { return sign | 0x7C00 }
  if e <= 0 {
    if e < -10 { return sign }
    man |= 0x80_0000
    let shift = UInt32(14 - e)
    var half = man >> shift
    let rem = man & ((1 << shift) - 1)
    let halfway = UInt32(1) << (shift - 1)
    if rem > halfway || (rem == halfway && (half & 1) == 1) { half += 1 }
    return sign | UInt16(half)
  }
  var h = UInt32(e) << 10 | (man >> 13)
  let rem = man & 0x1FFF
  if rem > 0x1000 || (rem == 0x1000 && (h & 1) == 1) { h += 1 }
  return sign | UInt16(h)
}

@inline(__always)
public func bf16ToF32(_ b: UInt16) -> Float { Float(bitPattern: UInt32(b) << 16) }

/// float → bfloat16, round-to-nearest-even, NaN kept.
@inline(__always)
public func f32ToBF16(_ f: Float) -> UInt16 {
  let u = f.bitPattern
  if f.isNaN { return UInt16(truncatingIfNeeded: (u >> 16) | 0x40) }
  return UInt16(truncatingIfNeeded: (u &+ 0x7FFF &+ ((u >> 16) & 1)) >> 16)
}

/// Converts `count` elements of `dtype` at `src` to float32.
public func convertToFloat(_ src: UnsafeRawPointer, dtype: DType, count: Int, into dst: UnsafeMutablePointer<Float>) {
  switch dtype {
  case .F32:
    for i in 0..<count { dst[i] = src.loadUnaligned(fromByteOffset: 4 * i, as: Float.self) }
  case .F16:
    for i in 0..<count { dst[i] = f16ToF32(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
  case .BF16:
    for i in 0..<count { dst[i] = bf16ToF32(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
  case .F64:
    for i in 0..<count { dst[i] = Float(src.loadUnaligned(fromByteOffset: 8 * i, as: Double.self)) }
  case .I64:
    for i in 0..<count { dst[i] = Float(src.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self)) }
  case .I32:
    for i in 0..<count { dst[i] = Float(src.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self)) }
  case .U32:
    for i in 0..<count { dst[i] = Float(src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)) }
  case .I16:
    for i in 0..<count { dst[i] = Float(src.loadUnaligned(fromByteOffset: 2 * i, as: Int16.self)) }
  case .I8:
    for i in 0..<count { dst[i] = Float(src.load(fromByteOffset: i, as: Int8.self)) }
  case .U8:
    for i in 0..<count { dst[i] = Float(src.load(fromByteOffset: i, as: UInt8.self)) }
  }
}

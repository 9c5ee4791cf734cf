// Per-token dynamic INT8 activations (qserve.md §3.1) in the form the integer GEMMs read: int8 codes, one fp scale
// per row, and int32 sums per 32-element block (the zero-point term Σ_g z·Σx of asymmetric weights, §8.1).
// The rounding matches the fake quantizer the accuracy was measured with (QoQFormat.fakeQuantizePerToken):
// s = fp16(max|x|/127) (0 → 1), code = clamp(rne(x/s), −127, 127).
#if QOQ_AVX512
import _Builtin_intrinsics.intel
#endif

public final class QuantizedRows: @unchecked Sendable {
  public let capacity: Int
  public let k: Int
  /// Rows in use.
  public var m: Int = 0
  /// (capacity rounded up to 4, k): padding rows stay zero so 4-row kernels may read them.
  public let codes: UnsafeMutablePointer<Int8>
  public let scale: UnsafeMutablePointer<Float>   // (capacity)
  public let blockSums: UnsafeMutablePointer<Int32>  // (capacity, k/32)
  public var blocks: Int { k / 32 }

  public init(capacity: Int, k: Int) {
    precondition(k % 32 == 0 && capacity > 0, "activation width must be a multiple of 32")
    self.capacity = capacity; self.k = k
    let rows = (capacity + 3) / 4 * 4
    codes = .allocate(capacity: rows * k); codes.initialize(repeating: 0, count: rows * k)
    scale = .allocate(capacity: rows); scale.initialize(repeating: 0, count: rows)
    blockSums = .allocate(capacity: rows * (k / 32)); blockSums.initialize(repeating: 0, count: rows * (k / 32))
  }
  deinit { codes.deallocate(); scale.deallocate(); blockSums.deallocate() }

  /// Sum of the codes of row r over [k0, k0+len), both multiples of 32.
  @inline(__always) public func sum(_ r: Int, _ k0: Int, _ len: Int) -> Int32 {
    var s: Int32 = 0
    let b = blockSums + r * blocks
    for i in (k0 / 32)..<((k0 + len) / 32) { s &+= b[i] }
    return s
  }

  /// Quantizes row r from fp32 values x (k).
  public func quantizeRow(_ r: Int, _ x: UnsafePointer<Float>) {
    let k = self.k
    var amax: Float = 0
    var i = 0
    #if QOQ_AVX512
    var vm = _mm512_setzero_ps()
    while i + 16 <= k { vm = _mm512_max_ps(vm, _mm512_abs_ps(_mm512_loadu_ps(x + i))); i += 16 }
    amax = _mm512_reduce_max_ps(vm)
    #elseif QOQ_AVX2
    i = k / 8 * 8
    amax = absMaxAVX2(x, i)
    #endif
    while i < k { amax = max(amax, abs(x[i])); i += 1 }
    var s = f16Round(amax / 127)
    if s == 0 { s = 1 }
    scale[r] = s
    let c = codes + r * k, bs = blockSums + r * blocks
    var b0 = 0
    #if QOQ_AVX512
    let vs = _mm512_set1_ps(s), lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127)
    while b0 < k {
      var acc = _mm512_setzero_si512()
      for h in 0..<2 {
        // x/s (a true division, as the fake quantizer does), round half to even (the default MXCSR mode of
        // vcvtps2dq), clamp, narrow to int8.
        let q = _mm512_cvtps_epi32(_mm512_div_ps(_mm512_loadu_ps(x + b0 + 16 * h), vs))
        let qi = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi)
        acc = _mm512_add_epi32(acc, qi)
        UnsafeMutableRawPointer(c + b0 + 16 * h).storeBytes(of: _mm512_cvtsepi32_epi8(qi), as: __m128i.self)
      }
      bs[b0 / 32] = _mm512_reduce_add_epi32(acc)
      b0 += 32
    }
    #elseif QOQ_AVX2
    quantizeCodesAVX2(x, s, k, c, bs)
    #else
    while b0 < k {
      var acc: Int32 = 0
      for j in b0..<(b0 + 32) { let q = int8Code(x[j] / s); c[j] = q; acc += Int32(q) }
      bs[b0 / 32] = acc
      b0 += 32
    }
    #endif
  }

  /// Scalar twin of `quantizeRow`: (codes, scale) of one row.
  public static func quantizeReference(_ x: [Float]) -> (codes: [Int8], scale: Float) {
    var amax: Float = 0
    for v in x { amax = max(amax, abs(v)) }
    var s = f16Round(amax / 127)
    if s == 0 { s = 1 }
    return (x.map { int8Code($0 / s) }, s)
  }
}

/// RMSNorm fused with INT8 quantization (qserve.md §3.2): row r of `out` from x (k) and the norm weight; the
/// normalized fp32 row is only staged in `scratch` (k floats), never written to the model's buffers.
public func rmsNormQuantize(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, eps: Float, out: QuantizedRows,
                            row r: Int, scratch: UnsafeMutablePointer<Float>) {
  rmsNorm(x, weight, eps: eps, n: out.k, scratch)
  out.quantizeRow(r, scratch)
}

/// SiLU(gate)·up fused with INT8 quantization (§3.4): gu holds gate (i) then up (i) for one token.
public func siluMulQuantize(_ gu: UnsafePointer<Float>, width i: Int, out: QuantizedRows, row r: Int,
                            scratch: UnsafeMutablePointer<Float>) {
  siluMul(gu, gu + i, scratch, i)
  out.quantizeRow(r, scratch)
}

/// fp32 → fp16 → fp32 with round-to-nearest-even (the value an fp16 scale holds).
@inline(__always) public func f16Round(_ x: Float) -> Float { Float(Float16(x)) }

extension QuantizedRows {
  /// Sets row r to given codes and scale (tests and benchmarks that need exact integer inputs).
  public func setRow(_ r: Int, codes c: [Int8], scale s: Float) {
    precondition(c.count == k)
    for i in 0..<k { codes[r * k + i] = c[i] }
    scale[r] = s
    for b in 0..<blocks { var t: Int32 = 0; for i in 0..<32 { t += Int32(c[b * 32 + i]) }; blockSums[r * blocks + b] = t }
  }
}

/// Round-to-nearest-even into −127…127; NaN becomes 0 (never a trapping conversion).
@inline(__always) public func int8Code(_ v: Float) -> Int8 {
  let r = v.rounded(.toNearestOrEven)
  return r.isNaN ? 0 : Int8(min(max(r, -127), 127))
}

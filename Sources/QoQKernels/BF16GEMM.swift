// BF16 GEMM for calibration passes: C[m×n] (+)= bf16(A)·bf16(W)ᵀ with fp32 accumulation (vdpbf16ps: two products
// per lane per instruction, twice the FP32 FMA rate on Zen 4). Same blocking as `sgemm`; A is rounded to bf16 when
// packed, W once at load. Not used by the FP reference path, whose numbers must match transformers' fp32.
// vdpbf16ps is chosen at run time: AVX-512 CPUs without AVX512_BF16 (Cascade Lake, Ice Lake) and every other build
// run the SIMD form of `dotPairs`, which widens the pairs to fp32 and adds the odd product, then the even one, as
// vdpbf16ps does (Intel SDM), so both give the same bits (bf16 products are exact in fp32; only denormals, which
// vdpbf16ps flushes, can differ).
import CShim
#if QOQ_AVX512
import _Builtin_intrinsics.intel
#endif

@inline(__always) func bf16Bits(_ f: Float) -> UInt16 {
  let u = f.bitPattern
  if f.isNaN { return UInt16(truncatingIfNeeded: (u >> 16) | 0x40) }
  return UInt16(truncatingIfNeeded: (u &+ 0x7FFF &+ ((u >> 16) & 1)) >> 16)
}
@inline(__always) func bf16Value(_ b: UInt16) -> Float { Float(bitPattern: UInt32(b) << 16) }

/// W (n×k) as bf16 panels of 32 output columns with k in pairs: [panel][k/2][32][2], zero-padded.
public final class PackedMatrixBF16: @unchecked Sendable {
  public let n: Int, k: Int, panels: Int, kPairs: Int
  let data: UnsafeMutablePointer<UInt16>

  public init(nk w: UnsafePointer<Float>, n: Int, k: Int) {
    self.n = n; self.k = k
    panels = (n + 31) / 32; kPairs = (k + 1) / 2
    let cap = max(1, panels * kPairs * 64)
    data = .allocate(capacity: cap)
    data.initialize(repeating: 0, count: cap)
    for p in 0..<panels {
      for j in 0..<min(32, n - p * 32) {
        let src = w + (p * 32 + j) * k
        for kk in 0..<k { data[p * kPairs * 64 + (kk / 2) * 64 + j * 2 + kk % 2] = bf16Bits(src[kk]) }
      }
    }
  }
  deinit { data.deallocate() }
}

/// Whether this CPU has AVX512_BF16's vdpbf16ps (read once; `QOQ_CPU_PRETEND_MISSING=avx512_bf16` hides it) and this
/// build can use it.
public let cpuHasDPBF16: Bool = {
  #if QOQ_AVX512
  return qoq_cpu_has("avx512_bf16") != 0
  #else
  return false
  #endif
}()

/// C = bf16(A)·bf16(W)ᵀ (or += when accumulate), fp32 accumulation. The pool's threads split the output panels.
/// `dpbf16` picks vdpbf16ps (only where `cpuHasDPBF16`) or the widening SIMD kernel; both give the same bits.
public func bgemm(m: Int, a: UnsafePointer<Float>, lda: Int, b: PackedMatrixBF16, c: UnsafeMutablePointer<Float>, ldc: Int,
                  accumulate: Bool = false, dpbf16: Bool = cpuHasDPBF16) {
  let dpbf16 = dpbf16 && cpuHasDPBF16
  if m <= 0 || b.n <= 0 { return }
  let pool = ThreadPool.shared
  if pool.threads > 1 && b.panels >= 2 && Double(m) * Double(b.n) * Double(b.k) >= 4e6 {
    let parts = min(pool.threads, b.panels)
    pool.run(parts: parts) { t in
      bgemmBlock(m: m, a: a, lda: lda, b: b, panels: (b.panels * t / parts)..<(b.panels * (t + 1) / parts), c: c, ldc: ldc,
                 accumulate: accumulate, dpbf16: dpbf16)
    }
  } else {
    bgemmBlock(m: m, a: a, lda: lda, b: b, panels: 0..<b.panels, c: c, ldc: ldc, accumulate: accumulate, dpbf16: dpbf16)
  }
}

func bgemmBlock(m: Int, a: UnsafePointer<Float>, lda: Int, b: PackedMatrixBF16, panels: Range<Int>,
                c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool, dpbf16: Bool) {
  let kp = b.kPairs
  let mc = 64
  // A tile packed as [tile][k/2][8][2] bf16 (rows past m repeat the last row).
  let apack = UnsafeMutablePointer<UInt16>.allocate(capacity: mc * kp * 2); defer { apack.deallocate() }
  let scratch = UnsafeMutablePointer<Float>.allocate(capacity: 8 * 32); defer { scratch.deallocate() }
  var m0 = 0
  while m0 < m {
    let rows = min(mc, m - m0)
    var t = 0
    while t < rows {
      let valid = min(8, rows - t)
      for r in 0..<8 {
        let src = a + (m0 + t + min(r, valid - 1)) * lda
        let dst = apack + t * kp * 2
        for kk in 0..<(kp * 2) { dst[(kk / 2) * 16 + r * 2 + kk % 2] = kk < b.k ? bf16Bits(src[kk]) : 0 }
      }
      t += 8
    }
    for p in panels {
      let cols = min(32, b.n - p * 32)
      var t2 = 0
      while t2 < rows {
        let rr = min(8, rows - t2)
        bf16Kernel8x32(apack + t2 * kp * 2, b.data + p * kp * 64, kp, c + (m0 + t2) * ldc + p * 32, ldc, rr, cols, accumulate,
                       scratch, dpbf16)
        t2 += 8
      }
    }
    m0 += rows
  }
}

@inline(__always)
func bf16Kernel8x32(_ ap: UnsafePointer<UInt16>, _ bp: UnsafePointer<UInt16>, _ kp: Int, _ c: UnsafeMutablePointer<Float>,
                    _ ldc: Int, _ rows: Int, _ cols: Int, _ acc: Bool, _ scratch: UnsafeMutablePointer<Float>, _ dpbf16: Bool) {
  let full = rows == 8 && cols == 32
  let cc = full ? c : scratch
  let lc = full ? ldc : 32
  if !full {
    for i in 0..<256 { scratch[i] = 0 }
    if acc { for r in 0..<rows { for j in 0..<cols { scratch[r * 32 + j] = c[r * ldc + j] } } }
  }
  dotPairs(ap, bp, kp, cc, lc, acc || !full, dpbf16)
  if !full { for r in 0..<rows { for j in 0..<cols { c[r * ldc + j] = scratch[r * 32 + j] } } }
}

/// The 8×32 tile over kp pairs of k: A is [k/2][8][2] bf16, W [k/2][32][2] (one pair per 32-bit lane), C row stride lc.
/// With `dpbf16` each step is vdpbf16ps (AVX512_BF16 only; see `cpuHasDPBF16`). Otherwise Swift SIMD types (AVX-512,
/// AVX2, NEON) widen each pair to fp32 (even element = low half << 16, odd element = high half) and add c += a_odd·w_odd,
/// then c += a_even·w_even: vdpbf16ps's order, and bf16 products are exact in fp32, so both give the same bits.
@inline(__always)
func dotPairs(_ ap: UnsafePointer<UInt16>, _ bp: UnsafePointer<UInt16>, _ kp: Int, _ cc: UnsafeMutablePointer<Float>,
              _ lc: Int, _ load: Bool, _ dpbf16: Bool) {
  var c00 = V16(), c01 = V16(), c10 = V16(), c11 = V16(), c20 = V16(), c21 = V16(), c30 = V16(), c31 = V16()
  var c40 = V16(), c41 = V16(), c50 = V16(), c51 = V16(), c60 = V16(), c61 = V16(), c70 = V16(), c71 = V16()
  if load {
    c00 = loadV(cc); c01 = loadV(cc + 16); c10 = loadV(cc + lc); c11 = loadV(cc + lc + 16)
    c20 = loadV(cc + 2 * lc); c21 = loadV(cc + 2 * lc + 16); c30 = loadV(cc + 3 * lc); c31 = loadV(cc + 3 * lc + 16)
    c40 = loadV(cc + 4 * lc); c41 = loadV(cc + 4 * lc + 16); c50 = loadV(cc + 5 * lc); c51 = loadV(cc + 5 * lc + 16)
    c60 = loadV(cc + 6 * lc); c61 = loadV(cc + 6 * lc + 16); c70 = loadV(cc + 7 * lc); c71 = loadV(cc + 7 * lc + 16)
  }
  var pa = UnsafeRawPointer(ap), pb = UnsafeRawPointer(bp)
  #if QOQ_AVX512
  if dpbf16 {
    for _ in 0..<kp {
      let b0 = _mm512_loadu_si512(pb), b1 = _mm512_loadu_si512(pb + 64)
      @inline(__always) func x(_ r: Int) -> __m512i { _mm512_set1_epi32(pa.loadUnaligned(fromByteOffset: 4 * r, as: Int32.self)) }
      c00 = shim_dpbf16_ps(c00, x(0), b0); c01 = shim_dpbf16_ps(c01, x(0), b1)
      c10 = shim_dpbf16_ps(c10, x(1), b0); c11 = shim_dpbf16_ps(c11, x(1), b1)
      c20 = shim_dpbf16_ps(c20, x(2), b0); c21 = shim_dpbf16_ps(c21, x(2), b1)
      c30 = shim_dpbf16_ps(c30, x(3), b0); c31 = shim_dpbf16_ps(c31, x(3), b1)
      c40 = shim_dpbf16_ps(c40, x(4), b0); c41 = shim_dpbf16_ps(c41, x(4), b1)
      c50 = shim_dpbf16_ps(c50, x(5), b0); c51 = shim_dpbf16_ps(c51, x(5), b1)
      c60 = shim_dpbf16_ps(c60, x(6), b0); c61 = shim_dpbf16_ps(c61, x(6), b1)
      c70 = shim_dpbf16_ps(c70, x(7), b0); c71 = shim_dpbf16_ps(c71, x(7), b1)
      pa += 32; pb += 128
    }
  }
  #endif
  if !dpbf16 {
    typealias U16 = SIMD16<UInt32>
    @inline(__always) func even(_ v: U16) -> V16 { unsafeBitCast(v &<< 16, to: V16.self) }
    @inline(__always) func odd(_ v: U16) -> V16 { unsafeBitCast(v & 0xFFFF_0000, to: V16.self) }
    @inline(__always) func row(_ c0: inout V16, _ c1: inout V16, _ r: Int, _ b0e: V16, _ b0o: V16, _ b1e: V16, _ b1o: V16) {
      let x = pa.loadUnaligned(fromByteOffset: 4 * r, as: UInt32.self)
      let xe = V16(repeating: Float(bitPattern: x << 16)), xo = V16(repeating: Float(bitPattern: x & 0xFFFF_0000))
      c0 = c0.addingProduct(xo, b0o).addingProduct(xe, b0e)
      c1 = c1.addingProduct(xo, b1o).addingProduct(xe, b1e)
    }
    for _ in 0..<kp {
      let w0 = pb.loadUnaligned(as: U16.self), w1 = pb.loadUnaligned(fromByteOffset: 64, as: U16.self)
      let b0e = even(w0), b0o = odd(w0), b1e = even(w1), b1o = odd(w1)
      row(&c00, &c01, 0, b0e, b0o, b1e, b1o); row(&c10, &c11, 1, b0e, b0o, b1e, b1o)
      row(&c20, &c21, 2, b0e, b0o, b1e, b1o); row(&c30, &c31, 3, b0e, b0o, b1e, b1o)
      row(&c40, &c41, 4, b0e, b0o, b1e, b1o); row(&c50, &c51, 5, b0e, b0o, b1e, b1o)
      row(&c60, &c61, 6, b0e, b0o, b1e, b1o); row(&c70, &c71, 7, b0e, b0o, b1e, b1o)
      pa += 32; pb += 128
    }
  }
  storeV(c00, cc); storeV(c01, cc + 16); storeV(c10, cc + lc); storeV(c11, cc + lc + 16)
  storeV(c20, cc + 2 * lc); storeV(c21, cc + 2 * lc + 16); storeV(c30, cc + 3 * lc); storeV(c31, cc + 3 * lc + 16)
  storeV(c40, cc + 4 * lc); storeV(c41, cc + 4 * lc + 16); storeV(c50, cc + 5 * lc); storeV(c51, cc + 5 * lc + 16)
  storeV(c60, cc + 6 * lc); storeV(c61, cc + 6 * lc + 16); storeV(c70, cc + 7 * lc); storeV(c71, cc + 7 * lc + 16)
}

/// Scalar twin: Σ_k bf16(A[i][k])·bf16(W[j][k]) in Double.
public func bgemmReference(m: Int, n: Int, k: Int, a: UnsafePointer<Float>, lda: Int, w: UnsafePointer<Float>,
                           c: UnsafeMutablePointer<Float>, ldc: Int) {
  for i in 0..<m {
    for j in 0..<n {
      var s = 0.0
      for kk in 0..<k { s += Double(bf16Value(bf16Bits(a[i * lda + kk]))) * Double(bf16Value(bf16Bits(w[j * k + kk]))) }
      c[i * ldc + j] = Float(s)
    }
  }
}

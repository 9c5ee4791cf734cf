// Row-wise vector kernels used by the FP forward pass. Each has a scalar twin in `Reference`.
import Foundation
#if QOQ_AVX512 || QOQ_AVX2
import _Builtin_intrinsics.intel
#endif

// Lane-wise max/min: Swift's generic SIMD `pointwiseMax`/`.max()` compile to per-lane loops, so use the
// intrinsics where we have them.
@inline(__always) func vmax(_ a: V16, _ b: V16) -> V16 {
  #if QOQ_AVX512
  return _mm512_max_ps(a, b)
  #elseif QOQ_AVX2
  return V16(lowHalf: _mm256_max_ps(a.lowHalf, b.lowHalf), highHalf: _mm256_max_ps(a.highHalf, b.highHalf))
  #else
  return pointwiseMax(a, b)
  #endif
}
@inline(__always) func vmin(_ a: V16, _ b: V16) -> V16 {
  #if QOQ_AVX512
  return _mm512_min_ps(a, b)
  #elseif QOQ_AVX2
  return V16(lowHalf: _mm256_min_ps(a.lowHalf, b.lowHalf), highHalf: _mm256_min_ps(a.highHalf, b.highHalf))
  #else
  return pointwiseMin(a, b)
  #endif
}
@inline(__always) func hmax(_ a: V16) -> Float {
  #if QOQ_AVX512
  return _mm512_reduce_max_ps(a)
  #elseif QOQ_AVX2
  return _mm256_max_ps(a.lowHalf, a.highHalf).max()
  #else
  return a.max()
  #endif
}

@inline(__always)
func hsum(_ v: V16) -> Float { v.sum() }

/// Σ x[i]·y[i] with 4 SIMD16 accumulators.
public func dot(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, _ n: Int) -> Float {
  var a0 = V16(), a1 = V16(), a2 = V16(), a3 = V16()
  var i = 0
  while i + 64 <= n {
    a0 = a0.addingProduct(loadV(x + i), loadV(y + i))
    a1 = a1.addingProduct(loadV(x + i + 16), loadV(y + i + 16))
    a2 = a2.addingProduct(loadV(x + i + 32), loadV(y + i + 32))
    a3 = a3.addingProduct(loadV(x + i + 48), loadV(y + i + 48))
    i += 64
  }
  while i + 16 <= n { a0 = a0.addingProduct(loadV(x + i), loadV(y + i)); i += 16 }
  var s = hsum((a0 + a1) + (a2 + a3))
  while i < n { s += x[i] * y[i]; i += 1 }
  return s
}

/// out = x / sqrt(mean(x²) + eps) · weight (HF LlamaRMSNorm, fp32). `out` may alias `x`.
public func rmsNorm(_ x: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, eps: Float, n: Int,
                    _ out: UnsafeMutablePointer<Float>) {
  let ss = dot(x, x, n)
  let inv = 1 / (ss / Float(n) + eps).squareRoot()
  let vinv = V16(repeating: inv)
  var i = 0
  while i + 16 <= n { storeV(loadV(weight + i) * (loadV(x + i) * vinv), out + i); i += 16 }
  while i < n { out[i] = weight[i] * (x[i] * inv); i += 1 }
}

/// e^x for 16 lanes: Cephes expf (range reduction by ln 2, degree-6 polynomial), max relative error ≈ 2e-7
/// against `expf` (tested). Inputs are clamped to [-87.3, 88.37] (2^n must stay finite).
@inline(__always)
func expV(_ x0: V16) -> V16 {
  let x = vmin(vmax(x0, V16(repeating: -87.3)), V16(repeating: 88.37))
  // Round-to-nearest-even via the 1.5·2^23 trick: t's low mantissa bits hold the integer n.
  let magic = V16(repeating: 12_582_912)
  let t = x * 1.44269504088896341 + magic
  let n = t - magic
  var r = x - n * 0.693359375
  r = r - n * -2.12194440e-4
  var p = V16(repeating: 1.9875691500e-4)
  p = p * r + 1.3981999507e-3
  p = p * r + 8.3334519073e-3
  p = p * r + 4.1665795894e-2
  p = p * r + 1.6666665459e-1
  p = p * r + 5.0000001201e-1
  let y = p * r * r + r + 1
  let ni = unsafeBitCast(t, to: SIMD16<Int32>.self) &- 0x4B40_0000
  let bits = (ni &+ 127) &<< 23
  return y * unsafeBitCast(bits, to: V16.self)
}

/// Vector exp exposed for tests (scalar twin: `expf`).
public func expVector(_ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, _ n: Int) {
  var i = 0
  while i + 16 <= n { storeV(expV(loadV(x + i)), out + i); i += 16 }
  if i < n {
    var tmp = V16(repeating: 0)
    for j in i..<n { tmp[j - i] = x[j] }
    let e = expV(tmp)
    for j in i..<n { out[j] = e[j - i] }
  }
}

@inline(__always)
func maxValue(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
  var m = -Float.infinity
  var i = 0
  if n >= 16 {
    var v = loadV(x)
    i = 16
    while i + 16 <= n { v = vmax(v, loadV(x + i)); i += 16 }
    m = hmax(v)
  }
  while i < n { m = max(m, x[i]); i += 1 }
  return m
}

/// In-place softmax over n values (max-subtracted, fp32, vectorized exp).
public func softmaxInPlace(_ x: UnsafeMutablePointer<Float>, _ n: Int) {
  if n == 0 { return }
  let m = maxValue(x, n)
  let vm = V16(repeating: m)
  var acc = V16()
  var i = 0
  while i + 16 <= n {
    let e = expV(loadV(x + i) - vm)
    storeV(e, x + i)
    acc += e
    i += 16
  }
  var s = acc.sum()
  while i < n { let e = expf(x[i] - m); x[i] = e; s += e; i += 1 }
  let inv = V16(repeating: 1 / s)
  i = 0
  while i + 16 <= n { storeV(loadV(x + i) * inv, x + i); i += 16 }
  while i < n { x[i] *= 1 / s; i += 1 }
}

/// Scalar twin of `softmaxInPlace`.
public func softmaxReference(_ x: [Float]) -> [Float] {
  let m = x.max() ?? 0
  let e = x.map { exp(Double($0 - m)) }
  let z = e.reduce(0, +)
  return e.map { Float($0 / z) }
}

/// log Σ exp(x[i]), max-subtracted; lanes accumulate in fp32, the total in Double (for cross-entropy).
public func logSumExp(_ x: UnsafePointer<Float>, _ n: Int) -> Double {
  if n == 0 { return -Double.infinity }
  let m = maxValue(x, n)
  let vm = V16(repeating: m)
  var acc = V16()
  var i = 0
  while i + 16 <= n { acc += expV(loadV(x + i) - vm); i += 16 }
  var s = 0.0
  for l in 0..<16 { s += Double(acc[l]) }
  while i < n { s += exp(Double(x[i] - m)); i += 1 }
  return Double(m) + log(s)
}

/// out[i] = silu(gate[i]) · up[i], silu(g) = g / (1 + e^-g). `out` may alias either input.
public func siluMul(_ gate: UnsafePointer<Float>, _ up: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, _ n: Int) {
  var i = 0
  let one = V16(repeating: 1)
  while i + 16 <= n {
    let g = loadV(gate + i)
    storeV(g / (one + expV(-g)) * loadV(up + i), out + i)
    i += 16
  }
  while i < n {
    let g = gate[i]
    out[i] = g / (1 + expf(-g)) * up[i]
    i += 1
  }
}

/// Scalar twin of `siluMul`.
public func siluMulReference(_ g: Float, _ u: Float) -> Float { g / (1 + expf(-g)) * u }

/// y[i] += x[i].
public func addInPlace(_ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ n: Int) {
  var i = 0
  while i + 16 <= n { storeV(loadV(y + i) + loadV(x + i), y + i); i += 16 }
  while i < n { y[i] += x[i]; i += 1 }
}

/// Index of the largest value (first one on ties), as torch.argmax does.
public func argmax(_ x: UnsafePointer<Float>, _ n: Int) -> Int {
  var best = 0
  var bv = -Float.infinity
  for i in 0..<n where x[i] > bv { bv = x[i]; best = i }
  return best
}

/// Synthetic FP32 FMA peak of one thread (GFLOPS): 12 independent zmm FMA chains, a = a·x + y. The honest
/// denominator for SGEMM efficiency on the machine at hand (Zen 4 runs 512-bit FMAs at half Zen 5's rate).
public func measureFMAPeak(iterations: Int = 20_000_000) -> Double {
  let x = V16(repeating: 0.999_999), y = V16(repeating: 1e-7)
  var a0 = V16(repeating: 1), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0
  var a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0
  let t = Date()
  for _ in 0..<iterations {
    a0 = y.addingProduct(a0, x); a1 = y.addingProduct(a1, x); a2 = y.addingProduct(a2, x); a3 = y.addingProduct(a3, x)
    a4 = y.addingProduct(a4, x); a5 = y.addingProduct(a5, x); a6 = y.addingProduct(a6, x); a7 = y.addingProduct(a7, x)
    a8 = y.addingProduct(a8, x); a9 = y.addingProduct(a9, x); a10 = y.addingProduct(a10, x); a11 = y.addingProduct(a11, x)
  }
  let dt = Date().timeIntervalSince(t)
  let sink = (a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11).sum()
  return sink.isNaN ? 0 : Double(iterations) * 12 * 32 / dt / 1e9
}

/// In place, x ← H·x with H the normalized Sylvester Walsh–Hadamard matrix of order n (a power of two): H is
/// orthogonal and symmetric, so applying it twice gives x back. Key rotation (issue #19) applies it to each head of
/// post-RoPE Q and K, which leaves every score q·k unchanged and spreads K's outlier channels over the head.
public func walshHadamard(_ x: UnsafeMutablePointer<Float>, _ n: Int) {
  precondition(n > 0 && n & (n - 1) == 0, "Walsh–Hadamard order \(n) is not a power of two")
  var h = 1
  while h < n {
    for i in stride(from: 0, to: n, by: 2 * h) {
      for j in i..<(i + h) { let a = x[j], b = x[j + h]; x[j] = a + b; x[j + h] = a - b }
    }
    h *= 2
  }
  let s = 1 / Float(n).squareRoot()
  for i in 0..<n { x[i] *= s }
}

/// out (cols, rows) = xᵀ for x (rows, cols): out[j·ldOut + r] = x[r·ld + j]. Tiles of 32 × 32 so that both sides
/// move along whole cache lines (a row-by-row copy writes one line per element); column tiles are split over the
/// pool when the matrix is large. Pure data movement: the same bits as `transposeReference`.
public func transpose(_ x: UnsafePointer<Float>, rows: Int, cols: Int, ld: Int, into out: UnsafeMutablePointer<Float>, ldOut: Int) {
  let tile = 32, tiles = (cols + tile - 1) / tile
  func columns(_ t: Range<Int>) {
    for j0 in stride(from: t.lowerBound * tile, to: min(cols, t.upperBound * tile), by: tile) {
      let j1 = min(cols, j0 + tile)
      for r0 in stride(from: 0, to: rows, by: tile) {
        let r1 = min(rows, r0 + tile)
        for j in j0..<j1 { for r in r0..<r1 { out[j * ldOut + r] = x[r * ld + j] } }
      }
    }
  }
  ThreadPool.shared.parts(tiles, parallel: rows * cols >= 1 << 18) { columns($0) }
}

/// Scalar twin of `transpose`.
public func transposeReference(_ x: [Float], rows: Int, cols: Int) -> [Float] {
  var out = [Float](repeating: 0, count: rows * cols)
  for r in 0..<rows { for j in 0..<cols { out[j * rows + r] = x[r * cols + j] } }
  return out
}

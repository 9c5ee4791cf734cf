// FP32 GEMM for linear layers and attention: C[m×n] (+)= A[m×k] · Wᵀ, with W given as [n×k] (a Linear weight,
// out × in) and packed once into 32-column panels. 8×32 register tile: 16 zmm accumulators, 2 B loads and 8 A
// broadcasts per k step (swift-perf.md §2c). Every output element is accumulated in the same order (k ascending,
// one fused multiply-add per k) whatever m is, so a row's result does not depend on the batch it runs in.

/// W (n×k) packed as panels of 32 output columns: [ceil(n/32)][k][32] floats, zero-padded past n.
public final class PackedMatrix: @unchecked Sendable {
  public let n: Int
  public let k: Int
  public let panels: Int
  public let data: UnsafeMutablePointer<Float>

  /// `zeroed: false` leaves the storage uninitialized for an initializer that writes every element itself.
  private init(n: Int, k: Int, zeroed: Bool = true) {
    precondition(n >= 0 && k >= 0)
    self.n = n; self.k = k
    panels = (n + 31) / 32
    let cap = max(1, panels * k * 32)
    data = .allocate(capacity: cap)
    if zeroed || panels * k == 0 { data.initialize(repeating: 0, count: cap) }
  }

  /// Packs W given row-major as [n][ldw] (row j is output column j).
  public convenience init(nk w: UnsafePointer<Float>, n: Int, k: Int, ldw: Int? = nil) {
    self.init(n: n, k: k)
    pack(nk: w, ldw: ldw ?? k)
  }

  private func pack(nk w: UnsafePointer<Float>, ldw ld: Int) {
    for p in 0..<panels {
      let cols = min(32, n - p * 32)
      let dst = data + p * k * 32
      for j in 0..<cols {
        let src = w + (p * 32 + j) * ld
        for kk in 0..<k { dst[kk * 32 + j] = src[kk] }
      }
    }
  }

  /// Packs B given row-major as [k][ldb] (so C = A·B); used for P·V in attention.
  /// Each panel row is one copy of up to 32 contiguous floats; only the last panel's padding is zeroed. Panels are
  /// split over the pool when the matrix is large (a Hessian chunk packs 512 tokens × the input width).
  public convenience init(kn b: UnsafePointer<Float>, k: Int, n: Int, ldb: Int? = nil) {
    self.init(n: n, k: k, zeroed: false)
    let ld = ldb ?? n, d = data, pc = panels
    func pack(_ ps: Range<Int>) {
      for p in ps {
        let cols = min(32, n - p * 32)
        let dst = d + p * k * 32
        if cols < 32 { dst.initialize(repeating: 0, count: k * 32) }
        for kk in 0..<k { (dst + kk * 32).update(from: b + kk * ld + p * 32, count: cols) }
      }
    }
    ThreadPool.shared.parts(pc, parallel: pc * k * 32 >= 1 << 18) { pack($0) }
  }

  public convenience init(nk w: [Float], n: Int, k: Int) {
    precondition(w.count >= n * k)
    self.init(n: n, k: k)
    if n > 0 && k > 0 { w.withUnsafeBufferPointer { pack(nk: $0.baseAddress!, ldw: k) } }
  }

  deinit { data.deallocate() }

  /// Element W[j][kk] (for tests and unpacking).
  public func element(_ j: Int, _ kk: Int) -> Float { data[(j / 32) * k * 32 + kk * 32 + j % 32] }
}

typealias V16 = SIMD16<Float>

let gemmKC = 256
let gemmMC = 64

/// C[m×n] = A[m×k]·Wᵀ (or += when `accumulate`). A row-major with leading dimension lda, C with ldc.
/// Each MC×KC block of A is packed as [tile][kc][8] so the 8 broadcasts of a k step read one 32-byte line
/// (rows of A read in place alias in L1 when lda is a multiple of 4 KiB, as in attention).
/// Large products are split over two threads by output panels (or by rows when there is one panel); the
/// arithmetic per element is the same either way.
/// `columns` limits the product to the first columns of W (rows of the packed matrix) and `depth` to the first
/// k values of each row — causal attention uses both to skip the masked triangle.
public func sgemm(m: Int, a: UnsafePointer<Float>, lda: Int, b: PackedMatrix,
                  c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool = false,
                  columns: Int? = nil, depth: Int? = nil) {
  let n = min(b.n, columns ?? b.n), k = min(b.k, depth ?? b.k)
  if m <= 0 || n <= 0 { return }
  let panelCount = (n + 31) / 32
  if k == 0 {
    if !accumulate { for i in 0..<m { (c + i * ldc).update(repeating: 0, count: n) } }
    return
  }
  let pool = ThreadPool.shared
  let big = Double(m) * Double(n) * Double(k) >= 4e6
  if m == 1 {
    if big && pool.threads > 1 && panelCount >= 8 {
      // Boundaries on multiples of 4 panels (the GEMV's unit), at most one part per 4 panels.
      let parts = min(pool.threads, panelCount / 4)
      pool.run(parts: parts) { t in
        let p0 = min(panelCount, (panelCount / 4 * t / parts) * 4),
            p1 = t == parts - 1 ? panelCount : min(panelCount, (panelCount / 4 * (t + 1) / parts) * 4)
        if p1 > p0 { gemv(a: a, b: b, c: c, accumulate: accumulate, panels: p0..<p1, n: n, k: k) }
      }
    } else {
      gemv(a: a, b: b, c: c, accumulate: accumulate, panels: 0..<panelCount, n: n, k: k)
    }
    return
  }
  if big && pool.threads > 1 {
    if panelCount >= 2 {
      let parts = min(pool.threads, panelCount)
      pool.run(parts: parts) { t in
        sgemmBlock(m: m, a: a, lda: lda, b: b, panels: (panelCount * t / parts)..<(panelCount * (t + 1) / parts), n: n, k: k, c: c,
                   ldc: ldc, accumulate: accumulate)
      }
    } else {
      // Row blocks of 8 (the micro-kernel's height) split between the threads.
      let parts = min(pool.threads, (m + 7) / 8)
      pool.run(parts: parts) { t in
        let r0 = min(m, (m + 7) / 8 * t / parts * 8), r1 = t == parts - 1 ? m : min(m, (m + 7) / 8 * (t + 1) / parts * 8)
        if r1 > r0 {
          sgemmBlock(m: r1 - r0, a: a + r0 * lda, lda: lda, b: b, panels: 0..<panelCount, n: n, k: k, c: c + r0 * ldc,
                     ldc: ldc, accumulate: accumulate)
        }
      }
    }
    return
  }
  sgemmBlock(m: m, a: a, lda: lda, b: b, panels: 0..<panelCount, n: n, k: k, c: c, ldc: ldc, accumulate: accumulate)
}

/// The single-threaded blocked GEMM over a range of output panels.
func sgemmBlock(m: Int, a: UnsafePointer<Float>, lda: Int, b: PackedMatrix, panels: Range<Int>, n: Int, k: Int,
                c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool) {
  let scratch = UnsafeMutablePointer<Float>.allocate(capacity: 8 * 32)
  defer { scratch.deallocate() }
  let apack = UnsafeMutablePointer<Float>.allocate(capacity: gemmMC * gemmKC)
  defer { apack.deallocate() }
  var k0 = 0
  while k0 < k {
    let kc = min(gemmKC, k - k0)
    let acc = accumulate || k0 > 0
    var m0 = 0
    while m0 < m {
      let mc = min(gemmMC, m - m0)
      packA(a + m0 * lda + k0, lda, mc, kc, apack)
      for p in panels {
        let bp = b.data + p * b.k * 32 + k0 * 32
        let cols = min(32, n - p * 32)
        var t = 0
        while t < mc {
          let rows = min(8, mc - t)
          #if QOQ_AVX2
          kernel8x32AVX2(apack + t * kc, rows, bp, kc, c + (m0 + t) * ldc + p * 32, ldc, cols, acc, scratch)
          #else
          kernel8x32(apack + t * kc, rows, bp, kc, c + (m0 + t) * ldc + p * 32, ldc, cols, acc, scratch)
          #endif
          t += 8
        }
      }
      m0 += mc
    }
    k0 += kc
  }
}

@inline(__always)
func loadV(_ p: UnsafePointer<Float>) -> V16 { UnsafeRawPointer(p).loadUnaligned(as: V16.self) }
@inline(__always)
func storeV(_ v: V16, _ p: UnsafeMutablePointer<Float>) { UnsafeMutableRawPointer(p).storeBytes(of: v, as: V16.self) }

/// Packs rows×kc of A as [tile of 8 rows][kc][8]; rows past the end of the last tile repeat its last row.
@inline(__always)
func packA(_ a: UnsafePointer<Float>, _ lda: Int, _ rows: Int, _ kc: Int, _ dst: UnsafeMutablePointer<Float>) {
  var t = 0
  while t < rows {
    let valid = min(8, rows - t)
    let d = dst + t * kc
    var src = [UnsafePointer<Float>](repeating: a, count: 8)
    for r in 0..<8 { src[r] = a + (t + min(r, valid - 1)) * lda }
    src.withUnsafeBufferPointer { sp in
      let s0 = sp[0], s1 = sp[1], s2 = sp[2], s3 = sp[3], s4 = sp[4], s5 = sp[5], s6 = sp[6], s7 = sp[7]
      for kk in 0..<kc {
        let o = d + kk * 8
        o[0] = s0[kk]; o[1] = s1[kk]; o[2] = s2[kk]; o[3] = s3[kk]
        o[4] = s4[kk]; o[5] = s5[kk]; o[6] = s6[kk]; o[7] = s7[kk]
      }
    }
    t += 8
  }
}

/// One 8×32 tile over kc steps, A packed [kc][8]. A partial tile goes through `scratch` so nothing outside C is
/// read or written.
@inline(__always)
func kernel8x32(_ ap: UnsafePointer<Float>, _ rows: Int, _ bp: UnsafePointer<Float>, _ kc: Int,
                _ c: UnsafeMutablePointer<Float>, _ ldc: Int, _ cols: Int, _ acc: Bool,
                _ scratch: UnsafeMutablePointer<Float>) {
  let full = rows == 8 && cols == 32
  let cc = full ? c : scratch
  let lc = full ? ldc : 32
  if !full && acc {
    for r in 0..<rows { for j in 0..<cols { scratch[r * 32 + j] = c[r * ldc + j] } }
  }
  var c00 = V16(), c01 = V16(), c10 = V16(), c11 = V16(), c20 = V16(), c21 = V16(), c30 = V16(), c31 = V16()
  var c40 = V16(), c41 = V16(), c50 = V16(), c51 = V16(), c60 = V16(), c61 = V16(), c70 = V16(), c71 = V16()
  if acc {
    c00 = loadV(cc); c01 = loadV(cc + 16)
    if rows > 1 { c10 = loadV(cc + lc); c11 = loadV(cc + lc + 16) }
    if rows > 2 { c20 = loadV(cc + 2 * lc); c21 = loadV(cc + 2 * lc + 16) }
    if rows > 3 { c30 = loadV(cc + 3 * lc); c31 = loadV(cc + 3 * lc + 16) }
    if rows > 4 { c40 = loadV(cc + 4 * lc); c41 = loadV(cc + 4 * lc + 16) }
    if rows > 5 { c50 = loadV(cc + 5 * lc); c51 = loadV(cc + 5 * lc + 16) }
    if rows > 6 { c60 = loadV(cc + 6 * lc); c61 = loadV(cc + 6 * lc + 16) }
    if rows > 7 { c70 = loadV(cc + 7 * lc); c71 = loadV(cc + 7 * lc + 16) }
  }
  var pa = ap, pb = bp
  for _ in 0..<kc {
    let b0 = loadV(pb), b1 = loadV(pb + 16)
    var x = V16(repeating: pa[0]); c00 = c00.addingProduct(x, b0); c01 = c01.addingProduct(x, b1)
    x = V16(repeating: pa[1]); c10 = c10.addingProduct(x, b0); c11 = c11.addingProduct(x, b1)
    x = V16(repeating: pa[2]); c20 = c20.addingProduct(x, b0); c21 = c21.addingProduct(x, b1)
    x = V16(repeating: pa[3]); c30 = c30.addingProduct(x, b0); c31 = c31.addingProduct(x, b1)
    x = V16(repeating: pa[4]); c40 = c40.addingProduct(x, b0); c41 = c41.addingProduct(x, b1)
    x = V16(repeating: pa[5]); c50 = c50.addingProduct(x, b0); c51 = c51.addingProduct(x, b1)
    x = V16(repeating: pa[6]); c60 = c60.addingProduct(x, b0); c61 = c61.addingProduct(x, b1)
    x = V16(repeating: pa[7]); c70 = c70.addingProduct(x, b0); c71 = c71.addingProduct(x, b1)
    pa += 8; pb += 32
  }
  storeV(c00, cc); storeV(c01, cc + 16)
  if rows > 1 { storeV(c10, cc + lc); storeV(c11, cc + lc + 16) }
  if rows > 2 { storeV(c20, cc + 2 * lc); storeV(c21, cc + 2 * lc + 16) }
  if rows > 3 { storeV(c30, cc + 3 * lc); storeV(c31, cc + 3 * lc + 16) }
  if rows > 4 { storeV(c40, cc + 4 * lc); storeV(c41, cc + 4 * lc + 16) }
  if rows > 5 { storeV(c50, cc + 5 * lc); storeV(c51, cc + 5 * lc + 16) }
  if rows > 6 { storeV(c60, cc + 6 * lc); storeV(c61, cc + 6 * lc + 16) }
  if rows > 7 { storeV(c70, cc + 7 * lc); storeV(c71, cc + 7 * lc + 16) }
  if !full {
    for r in 0..<rows { for j in 0..<cols { c[r * ldc + j] = scratch[r * 32 + j] } }
  }
}

#if QOQ_AVX2
typealias V8 = SIMD8<Float>

/// The 8×32 tile for CPUs with 16 vector registers of 256 bits (AVX2): kernel8x32's 16 zmm accumulators would be 32
/// ymm and spill, so the tile runs as four 4×16 passes (8 ymm accumulators, 2 B loads and 4 broadcasts per k step:
/// FMA-bound on 2 FMA units). Each element still gets one fused multiply-add per k, k ascending, so the results are
/// those of kernel8x32 bit for bit.
@inline(__always)
func kernel8x32AVX2(_ ap: UnsafePointer<Float>, _ rows: Int, _ bp: UnsafePointer<Float>, _ kc: Int,
                    _ c: UnsafeMutablePointer<Float>, _ ldc: Int, _ cols: Int, _ acc: Bool,
                    _ scratch: UnsafeMutablePointer<Float>) {
  let full = rows == 8 && cols == 32
  let cc = full ? c : scratch
  let lc = full ? ldc : 32
  if !full && acc {
    for r in 0..<rows { for j in 0..<cols { scratch[r * 32 + j] = c[r * ldc + j] } }
  }
  var g = 0
  while g < rows {
    micro4x16AVX2(ap + g, bp, kc, cc + g * lc, lc, acc)
    if cols > 16 { micro4x16AVX2(ap + g, bp + 16, kc, cc + g * lc + 16, lc, acc) }
    g += 4
  }
  if !full {
    for r in 0..<rows { for j in 0..<cols { c[r * ldc + j] = scratch[r * 32 + j] } }
  }
}

/// Rows g…g+3 (A packed [kc][8], read from `pa` with stride 8) × 16 columns of a 32-wide panel (stride 32).
@inline(__always)
func micro4x16AVX2(_ pa0: UnsafePointer<Float>, _ pb0: UnsafePointer<Float>, _ kc: Int, _ c: UnsafeMutablePointer<Float>,
                   _ lc: Int, _ acc: Bool) {
  @inline(__always) func ld(_ p: UnsafePointer<Float>) -> V8 { UnsafeRawPointer(p).loadUnaligned(as: V8.self) }
  @inline(__always) func st(_ v: V8, _ p: UnsafeMutablePointer<Float>) { UnsafeMutableRawPointer(p).storeBytes(of: v, as: V8.self) }
  var c00 = V8(), c01 = V8(), c10 = V8(), c11 = V8(), c20 = V8(), c21 = V8(), c30 = V8(), c31 = V8()
  if acc {
    c00 = ld(c); c01 = ld(c + 8); c10 = ld(c + lc); c11 = ld(c + lc + 8)
    c20 = ld(c + 2 * lc); c21 = ld(c + 2 * lc + 8); c30 = ld(c + 3 * lc); c31 = ld(c + 3 * lc + 8)
  }
  var pa = pa0, pb = pb0
  for _ in 0..<kc {
    let b0 = ld(pb), b1 = ld(pb + 8)
    var x = V8(repeating: pa[0]); c00 = c00.addingProduct(x, b0); c01 = c01.addingProduct(x, b1)
    x = V8(repeating: pa[1]); c10 = c10.addingProduct(x, b0); c11 = c11.addingProduct(x, b1)
    x = V8(repeating: pa[2]); c20 = c20.addingProduct(x, b0); c21 = c21.addingProduct(x, b1)
    x = V8(repeating: pa[3]); c30 = c30.addingProduct(x, b0); c31 = c31.addingProduct(x, b1)
    pa += 8; pb += 32
  }
  st(c00, c); st(c01, c + 8); st(c10, c + lc); st(c11, c + lc + 8)
  st(c20, c + 2 * lc); st(c21, c + 2 * lc + 8); st(c30, c + 3 * lc); st(c31, c + 3 * lc + 8)
}
#endif

/// The m = 1 product of this build: 16-lane accumulators where there are 32 zmm registers, 8-lane ones on AVX2.
@inline(__always)
func gemv(a: UnsafePointer<Float>, b: PackedMatrix, c: UnsafeMutablePointer<Float>, accumulate: Bool, panels: Range<Int>, n: Int, k: Int) {
  #if QOQ_AVX2
  gemvPanelsAVX2(a: a, b: b, c: c, accumulate: accumulate, panels: panels, n: n, k: k)
  #else
  gemvPanels(a: a, b: b, c: c, accumulate: accumulate, panels: panels, n: n, k: k)
  #endif
}

#if QOQ_AVX2
/// m = 1 on AVX2: two panels (64 columns, 8 ymm accumulators) at a time; gemvPanels' 8 accumulators of 16 lanes would
/// take all 16 ymm registers and spill. One fused multiply-add per k, k ascending, as every other path.
func gemvPanelsAVX2(a: UnsafePointer<Float>, b: PackedMatrix, c: UnsafeMutablePointer<Float>, accumulate: Bool,
                    panels: Range<Int>, n: Int, k: Int) {
  @inline(__always) func ld(_ p: UnsafePointer<Float>) -> V8 { UnsafeRawPointer(p).loadUnaligned(as: V8.self) }
  @inline(__always) func st(_ v: V8, _ p: UnsafeMutablePointer<Float>) { UnsafeMutableRawPointer(p).storeBytes(of: v, as: V8.self) }
  let stride = b.k * 32
  let scratch = UnsafeMutablePointer<Float>.allocate(capacity: 64)
  defer { scratch.deallocate() }
  var p = panels.lowerBound
  while p < panels.upperBound {
    let np = min(2, panels.upperBound - p)
    let cols = min(np * 32, n - p * 32)
    scratch.update(repeating: 0, count: 64)
    if accumulate { for j in 0..<cols { scratch[j] = c[p * 32 + j] } }
    var a0 = ld(scratch), a1 = ld(scratch + 8), a2 = ld(scratch + 16), a3 = ld(scratch + 24)
    var a4 = ld(scratch + 32), a5 = ld(scratch + 40), a6 = ld(scratch + 48), a7 = ld(scratch + 56)
    let b0 = b.data + p * stride
    if np == 2 {
      let b1 = b0 + stride
      for kk in 0..<k {
        let x = V8(repeating: a[kk]), o = kk * 32
        a0 = a0.addingProduct(x, ld(b0 + o)); a1 = a1.addingProduct(x, ld(b0 + o + 8))
        a2 = a2.addingProduct(x, ld(b0 + o + 16)); a3 = a3.addingProduct(x, ld(b0 + o + 24))
        a4 = a4.addingProduct(x, ld(b1 + o)); a5 = a5.addingProduct(x, ld(b1 + o + 8))
        a6 = a6.addingProduct(x, ld(b1 + o + 16)); a7 = a7.addingProduct(x, ld(b1 + o + 24))
      }
    } else {
      for kk in 0..<k {
        let x = V8(repeating: a[kk]), o = kk * 32
        a0 = a0.addingProduct(x, ld(b0 + o)); a1 = a1.addingProduct(x, ld(b0 + o + 8))
        a2 = a2.addingProduct(x, ld(b0 + o + 16)); a3 = a3.addingProduct(x, ld(b0 + o + 24))
      }
    }
    st(a0, scratch); st(a1, scratch + 8); st(a2, scratch + 16); st(a3, scratch + 24)
    st(a4, scratch + 32); st(a5, scratch + 40); st(a6, scratch + 48); st(a7, scratch + 56)
    for j in 0..<cols { c[p * 32 + j] = scratch[j] }
    p += np
  }
}
#endif

/// m = 1: four panels at a time (8 independent accumulators hide FMA latency), k ascending per element, the
/// same arithmetic order as kernel8x32 (KC-blocked), so decode rows equal prefill rows bit for bit.
func gemvPanels(a: UnsafePointer<Float>, b: PackedMatrix, c: UnsafeMutablePointer<Float>, accumulate: Bool,
                panels: Range<Int>, n: Int, k: Int) {
  let stride = b.k * 32
  var tmp = [Float](repeating: 0, count: 128)
  tmp.withUnsafeMutableBufferPointer { tbuf in
    let scratch = tbuf.baseAddress!
    var p = panels.lowerBound
    while p < panels.upperBound {
      let np = min(4, panels.upperBound - p)
      let cols = min(np * 32, n - p * 32)
      if accumulate { for j in 0..<cols { scratch[j] = c[p * 32 + j] } } else { for j in 0..<128 { scratch[j] = 0 } }
      var acc = (loadV(scratch), loadV(scratch + 16), loadV(scratch + 32), loadV(scratch + 48),
                 loadV(scratch + 64), loadV(scratch + 80), loadV(scratch + 96), loadV(scratch + 112))
      let b0 = b.data + p * stride
      if np == 4 {
        let b1 = b0 + stride, b2 = b1 + stride, b3 = b2 + stride
        for kk in 0..<k {
          let x = V16(repeating: a[kk]), o = kk * 32
          acc.0 = acc.0.addingProduct(x, loadV(b0 + o)); acc.1 = acc.1.addingProduct(x, loadV(b0 + o + 16))
          acc.2 = acc.2.addingProduct(x, loadV(b1 + o)); acc.3 = acc.3.addingProduct(x, loadV(b1 + o + 16))
          acc.4 = acc.4.addingProduct(x, loadV(b2 + o)); acc.5 = acc.5.addingProduct(x, loadV(b2 + o + 16))
          acc.6 = acc.6.addingProduct(x, loadV(b3 + o)); acc.7 = acc.7.addingProduct(x, loadV(b3 + o + 16))
        }
      } else {
        for q in 0..<np {
          let bq = b0 + q * stride
          var lo = q == 0 ? acc.0 : q == 1 ? acc.2 : acc.4
          var hi = q == 0 ? acc.1 : q == 1 ? acc.3 : acc.5
          for kk in 0..<k {
            let x = V16(repeating: a[kk])
            lo = lo.addingProduct(x, loadV(bq + kk * 32)); hi = hi.addingProduct(x, loadV(bq + kk * 32 + 16))
          }
          if q == 0 { acc.0 = lo; acc.1 = hi } else if q == 1 { acc.2 = lo; acc.3 = hi } else { acc.4 = lo; acc.5 = hi }
        }
      }
      storeV(acc.0, scratch); storeV(acc.1, scratch + 16); storeV(acc.2, scratch + 32); storeV(acc.3, scratch + 48)
      storeV(acc.4, scratch + 64); storeV(acc.5, scratch + 80); storeV(acc.6, scratch + 96); storeV(acc.7, scratch + 112)
      for j in 0..<cols { c[p * 32 + j] = scratch[j] }
      p += np
    }
  }
}

/// Scalar twin of `sgemm`: C[i][j] (+)= Σ_k A[i][k]·W[j][k], with W row-major [n][k]. Double accumulation.
public func sgemmReference(m: Int, n: Int, k: Int, a: UnsafePointer<Float>, lda: Int, w: UnsafePointer<Float>, ldw: Int,
                           c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool = false) {
  for i in 0..<m {
    for j in 0..<n {
      var s = 0.0
      for kk in 0..<k { s += Double(a[i * lda + kk]) * Double(w[j * ldw + kk]) }
      c[i * ldc + j] = accumulate ? c[i * ldc + j] + Float(s) : Float(s)
    }
  }
}

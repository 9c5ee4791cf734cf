// W8A8 GEMM (qserve.md §2.6; SmoothQuant checkpoints): symmetric int8 weights w with one fp scale per output row,
// stored offset by 128 as the unsigned operand of vpdpbusd: Σ (w+128)·x = Σ w·x + 128·Σx, so
// y = s_x·s_w·(acc − 128·Σx). Layout: blocks of 16 output rows × 4 inputs in 64 bytes (byte 4r+j = w[r][k+j]+128),
// ordered [N/16][K/4].
#if QOQ_AVX512
import _Builtin_intrinsics.intel
#endif

public final class PackedW8A8: IntLinearKernel, @unchecked Sendable {
  public let n: Int, k: Int
  let blocks: Int
  let data: UnsafeMutablePointer<UInt8>   // [blocks][k/4][64]
  let scale: UnsafeMutablePointer<Float>  // [blocks·16]
  let bias: UnsafeMutablePointer<Float>?

  /// codes (n, k) unsigned = w + 128 (QuantizedWeight's sym codes), scale (n).
  public init(codes: [UInt8], scale s: [Float], n: Int, k: Int, bias b: [Float]? = nil) {
    precondition(k % 32 == 0 && codes.count == n * k && s.count == n)
    self.n = n; self.k = k; blocks = (n + 15) / 16
    data = .allocate(capacity: blocks * 16 * k); data.initialize(repeating: 128, count: blocks * 16 * k)
    scale = .allocate(capacity: blocks * 16); scale.initialize(repeating: 0, count: blocks * 16)
    bias = b == nil ? nil : .allocate(capacity: blocks * 16)
    bias?.initialize(repeating: 0, count: blocks * 16)
    for row in 0..<n {
      let rb = row / 16, r = row % 16
      for i in 0..<k { data[(rb * (k / 4) + i / 4) * 64 + 4 * r + i % 4] = codes[row * k + i] }
      scale[row] = s[row]
      if let b { bias![row] = b[row] }
    }
  }
  deinit { data.deallocate(); scale.deallocate(); bias?.deallocate() }

  public func forward(_ a: QuantizedRows, _ y: UnsafeMutablePointer<Float>, ldy: Int) {
    precondition(a.k == k)
    let m = a.m
    if m == 0 { return }
    ThreadPool.shared.parts(blocks) { range in
      #if QOQ_AVX512
      forEachWeightRun(range, blockBytes: self.k * 16, tokens: m) { r, rows, run in
        self.kernel4(a, r, run.lowerBound, run.upperBound, y, ldy, rows: rows)
      }
      #elseif QOQ_AVX2
      forEachWeightRun(range, blockBytes: self.k * 16, tokens: m) { r, rows, run in
        self.kernelAVX2(a, r, run.lowerBound, run.upperBound, y, ldy, rows: rows)
      }
      #else
      for r in 0..<m { for rb in range { self.referenceBlock(a, r, rb, y, ldy) } }
      #endif
    }
  }

  #if QOQ_AVX512
  /// y[r][16·rb …] = (p − 128·Σx)·s_w·s_x (+ bias), masked at n.
  @inline(__always) func emit(_ p: __m512i, _ a: QuantizedRows, _ rb: Int, _ y: UnsafeMutablePointer<Float>, _ ldy: Int, _ r: Int) {
    let acc = _mm512_sub_epi32(p, _mm512_set1_epi32(128 &* a.sum(r, 0, k)))
    var o = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_loadu_ps(scale + rb * 16)), _mm512_set1_ps(a.scale[r]))
    if let b = bias { o = _mm512_add_ps(o, _mm512_loadu_ps(b + rb * 16)) }
    _mm512_mask_storeu_ps(y + r * ldy + rb * 16, __mmask16(truncatingIfNeeded: (1 << min(16, n - rb * 16)) - 1), o)
  }

  func kernel4(_ a: QuantizedRows, _ r0: Int, _ b0: Int, _ b1: Int, _ y: UnsafeMutablePointer<Float>, _ ldy: Int, rows: Int) {
    let k = self.k
    let x0 = UnsafeRawPointer(a.codes + r0 * k), x1 = x0 + k, x2 = x1 + k, x3 = x2 + k
    for rb in b0..<b1 {
      var w = UnsafeRawPointer(data + rb * (k / 4) * 64)
      var p0 = _mm512_setzero_si512(), p1 = p0, p2 = p0, p3 = p0
      var xo = 0
      for _ in 0..<(k / 4) {
        let v = _mm512_loadu_si512(w)
        p0 = _mm512_dpbusd_epi32(p0, v, _mm512_set1_epi32(x0.loadUnaligned(fromByteOffset: xo, as: Int32.self)))
        p1 = _mm512_dpbusd_epi32(p1, v, _mm512_set1_epi32(x1.loadUnaligned(fromByteOffset: xo, as: Int32.self)))
        p2 = _mm512_dpbusd_epi32(p2, v, _mm512_set1_epi32(x2.loadUnaligned(fromByteOffset: xo, as: Int32.self)))
        p3 = _mm512_dpbusd_epi32(p3, v, _mm512_set1_epi32(x3.loadUnaligned(fromByteOffset: xo, as: Int32.self)))
        w += 64; xo += 4
      }
      emit(p0, a, rb, y, ldy, r0)
      if rows > 1 { emit(p1, a, rb, y, ldy, r0 + 1) }
      if rows > 2 { emit(p2, a, rb, y, ldy, r0 + 2) }
      if rows > 3 { emit(p3, a, rb, y, ldy, r0 + 3) }
    }
  }
  #endif

  /// Exact integer accumulator Σ w·x of one (token row, output row), from the packed bytes (scalar twin).
  public func referenceAccumulator(_ a: QuantizedRows, row r: Int, outRow o: Int) -> Int32 {
    let rb = o / 16, ri = o % 16
    var acc: Int32 = 0
    for i in 0..<k { acc &+= (Int32(data[(rb * (k / 4) + i / 4) * 64 + 4 * ri + i % 4]) - 128) &* Int32(a.codes[r * k + i]) }
    return acc
  }

  func referenceBlock(_ a: QuantizedRows, _ r: Int, _ rb: Int, _ y: UnsafeMutablePointer<Float>, _ ldy: Int) {
    for i in 0..<min(16, n - rb * 16) {
      let o = rb * 16 + i
      y[r * ldy + o] = Float(referenceAccumulator(a, row: r, outRow: o)) * scale[o] * a.scale[r] + (bias?[o] ?? 0)
    }
  }
}

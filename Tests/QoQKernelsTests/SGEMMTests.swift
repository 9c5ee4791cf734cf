import Testing
@testable import QoQKernels
import QoQTestSupport

func maxRelError(_ x: [Float], _ y: [Float]) -> Float {
  var num: Float = 0, den: Float = 0
  for i in 0..<x.count { num = max(num, abs(x[i] - y[i])); den = max(den, abs(y[i])) }
  return num / max(den, 1e-30)
}

@Suite struct SGEMMTests {
  static let sizes: [(Int, Int, Int)] = [
    (1, 1, 1), (3, 17, 5), (17, 33, 129), (8, 32, 256), (129, 65, 257), (1, 129, 1023), (7, 100, 3),
    (33, 31, 513), (2, 127, 64), (300, 40, 17),
  ]

  @Test(arguments: sizes)
  func matchesScalarTwin(_ s: (Int, Int, Int)) {
    let (m, n, k) = s
    let a = randomFloats(m * k, seed: 1), w = randomFloats(n * k, seed: 2)
    var ref = [Float](repeating: 0, count: m * n), out = [Float](repeating: 7, count: m * n)
    let packed = PackedMatrix(nk: w, n: n, k: k)
    a.withUnsafeBufferPointer { ap in
      w.withUnsafeBufferPointer { wp in
        ref.withUnsafeMutableBufferPointer { rp in
          sgemmReference(m: m, n: n, k: k, a: ap.baseAddress!, lda: k, w: wp.baseAddress!, ldw: k, c: rp.baseAddress!, ldc: n)
        }
        out.withUnsafeMutableBufferPointer { op in sgemm(m: m, a: ap.baseAddress!, lda: k, b: packed, c: op.baseAddress!, ldc: n) }
      }
    }
    #expect(maxRelError(out, ref) < 1e-5, "m=\(m) n=\(n) k=\(k)")
  }

  /// Every path (AVX-512 8×32 tiles, the AVX2 build's 4×16 passes, the m = 1 GEMV, threaded splits) gives each
  /// element one fused multiply-add per k, k ascending, from 0: exactly this Float loop, bit for bit, on awkward sizes
  /// (m across the 8-row tiles, n across the 32-wide panels, k across the 256-deep blocks).
  @Test(arguments: [(1, 1, 1), (3, 17, 5), (17, 33, 129), (8, 32, 256), (129, 65, 257), (5, 100, 600), (1, 129, 300),
                    (64, 16, 3), (12, 48, 513)])
  func equalsTheFMAOrderTwinExactly(_ s: (Int, Int, Int)) {
    let (m, n, k) = s
    let a = randomFloats(m * k, seed: 5), w = randomFloats(n * k, seed: 6)
    var ref = [Float](repeating: 0, count: m * n), out = [Float](repeating: 3, count: m * n)
    for i in 0..<m {
      for j in 0..<n {
        var acc: Float = 0
        for kk in 0..<k { acc = acc.addingProduct(a[i * k + kk], w[j * k + kk]) }
        ref[i * n + j] = acc
      }
    }
    let packed = PackedMatrix(nk: w, n: n, k: k)
    a.withUnsafeBufferPointer { ap in
      out.withUnsafeMutableBufferPointer { op in sgemm(m: m, a: ap.baseAddress!, lda: k, b: packed, c: op.baseAddress!, ldc: n) }
    }
    #expect(out == ref, "m=\(m) n=\(n) k=\(k)")
  }

  @Test func accumulateAndStrides() {
    // C has a wider leading dimension than n; the untouched padding columns must stay as they were.
    let m = 19, n = 45, k = 300, ldc = 50, lda = 310
    let a = randomFloats(m * lda, seed: 3), w = randomFloats(n * k, seed: 4)
    var c = randomFloats(m * ldc, seed: 5)
    var ref = c
    let packed = PackedMatrix(nk: w, n: n, k: k)
    a.withUnsafeBufferPointer { ap in
      w.withUnsafeBufferPointer { wp in
        ref.withUnsafeMutableBufferPointer { rp in
          sgemmReference(m: m, n: n, k: k, a: ap.baseAddress!, lda: lda, w: wp.baseAddress!, ldw: k, c: rp.baseAddress!, ldc: ldc, accumulate: true)
        }
        c.withUnsafeMutableBufferPointer { cp in sgemm(m: m, a: ap.baseAddress!, lda: lda, b: packed, c: cp.baseAddress!, ldc: ldc, accumulate: true) }
      }
    }
    #expect(maxRelError(c, ref) < 1e-5)
  }

  @Test func rowsAreBatchInvariant() {
    // Row i computed inside a batch of 37 rows equals the same row computed alone (m = 1), bit for bit.
    let m = 37, n = 70, k = 600
    let a = randomFloats(m * k, seed: 6), w = randomFloats(n * k, seed: 7)
    let packed = PackedMatrix(nk: w, n: n, k: k)
    var all = [Float](repeating: 0, count: m * n)
    a.withUnsafeBufferPointer { ap in
      all.withUnsafeMutableBufferPointer { sgemm(m: m, a: ap.baseAddress!, lda: k, b: packed, c: $0.baseAddress!, ldc: n) }
      for i in [0, 5, 17, 36] {
        var one = [Float](repeating: 0, count: n)
        one.withUnsafeMutableBufferPointer { sgemm(m: 1, a: ap.baseAddress! + i * k, lda: k, b: packed, c: $0.baseAddress!, ldc: n) }
        #expect(one == Array(all[(i * n)..<(i * n + n)]))
      }
    }
  }

  /// The kn packing (row copies, zeroed padding, threaded when large) equals the nk packing of the transposed matrix
  /// in every stored float, padding included; rows read with a leading dimension wider than n.
  @Test(arguments: [(37, 70), (1, 1), (3, 17), (129, 33), (600, 450)])
  func packFromKNLayout(_ k: Int, _ n: Int) {
    let ld = n + 3
    let b = randomFloats(k * ld, seed: 8)
    let p = b.withUnsafeBufferPointer { PackedMatrix(kn: $0.baseAddress!, k: k, n: n, ldb: ld) }
    var t = [Float](repeating: 0, count: n * k)
    for kk in 0..<k { for j in 0..<n { t[j * k + kk] = b[kk * ld + j] } }
    let q = PackedMatrix(nk: t, n: n, k: k)
    #expect(p.panels == q.panels)
    let count = p.panels * k * 32
    #expect(Array(UnsafeBufferPointer(start: p.data, count: count)) == Array(UnsafeBufferPointer(start: q.data, count: count)))
    for j in [0, n / 2, n - 1] { for kk in [0, k - 1] { #expect(p.element(j, kk) == b[kk * ld + j]) } }
  }
}

@Suite struct SGEMMLimitTests {
  /// `columns` and `depth` restrict the product to a leading block of W, as causal attention uses them.
  @Test(arguments: [(5, 70, 90, 33, 17), (40, 64, 300, 64, 257), (1, 200, 129, 129, 1), (9, 31, 20, 1, 20)])
  func leadingBlockMatchesScalarTwin(_ s: (Int, Int, Int, Int, Int)) {
    let (m, n, k, cols, depth) = s
    let a = randomFloats(m * k, seed: 21), w = randomFloats(n * k, seed: 22)
    let packed = PackedMatrix(nk: w, n: n, k: k)
    var ref = [Float](repeating: 0, count: m * cols), out = [Float](repeating: 0, count: m * cols)
    a.withUnsafeBufferPointer { ap in
      w.withUnsafeBufferPointer { wp in
        ref.withUnsafeMutableBufferPointer { rp in
          sgemmReference(m: m, n: cols, k: depth, a: ap.baseAddress!, lda: k, w: wp.baseAddress!, ldw: k, c: rp.baseAddress!, ldc: cols)
        }
      }
      out.withUnsafeMutableBufferPointer { sgemm(m: m, a: ap.baseAddress!, lda: k, b: packed, c: $0.baseAddress!, ldc: cols, columns: cols, depth: depth) }
    }
    #expect(maxRelError(out, ref) < 1e-5)
  }

  /// The pool's split over 2, 3 and 5 threads (GEMM by panels and by rows, GEMV by 4-panel units, BF16 GEMM) is
  /// bit-identical to one thread: every output element is computed by exactly one thread in the same order.
  @Test(arguments: [2, 3, 5])
  func threadSplitEqualsOneThread(_ threads: Int) {
    let m = 70, n = 1100, k = 400
    let a = randomFloats(m * k, seed: 31), w = randomFloats(n * k, seed: 32)
    let packed = PackedMatrix(nk: w, n: n, k: k), narrow = PackedMatrix(nk: w, n: 20, k: k)
    let pb = w.withUnsafeBufferPointer { PackedMatrixBF16(nk: $0.baseAddress!, n: n, k: k) }
    func run() -> [[Float]] {
      var c = [Float](repeating: 0, count: m * n), gv = [Float](repeating: 0, count: n), rows = [Float](repeating: 0, count: m * 20)
      var bc = c
      a.withUnsafeBufferPointer { ap in
        c.withUnsafeMutableBufferPointer { sgemm(m: m, a: ap.baseAddress!, lda: k, b: packed, c: $0.baseAddress!, ldc: n) }
        gv.withUnsafeMutableBufferPointer { sgemm(m: 1, a: ap.baseAddress!, lda: k, b: packed, c: $0.baseAddress!, ldc: n) }
        rows.withUnsafeMutableBufferPointer { sgemm(m: m, a: ap.baseAddress!, lda: k, b: narrow, c: $0.baseAddress!, ldc: 20) }
        bc.withUnsafeMutableBufferPointer { bgemm(m: m, a: ap.baseAddress!, lda: k, b: pb, c: $0.baseAddress!, ldc: n) }
      }
      return [c, gv, rows, bc]
    }
    // The shared pool (the kernels use it); other tests running meanwhile get bit-identical results either way.
    let pool = ThreadPool.shared, saved = pool.threads
    pool.setThreads(1)
    let one = run()
    pool.setThreads(threads)
    let many = run()
    pool.setThreads(saved)
    for i in 0..<4 { #expect(one[i] == many[i], "result \(i) with \(threads) threads") }
    #expect(Array(one[0].prefix(n)) == one[1])
  }

  /// Every part runs exactly once, on as many threads as asked (workers are added as needed), repeatedly.
  @Test func poolRunsEveryPartOnce() {
    let pool = ThreadPool(threads: 6)
    let hits = UnsafeMutablePointer<Int>.allocate(capacity: 64); defer { hits.deallocate() }
    for parts in [1, 2, 6, 3, 9, 1, 7] {
      hits.initialize(repeating: 0, count: 64)
      pool.run(parts: parts) { t in hits[t] += 1 }
      #expect((0..<parts).allSatisfy { hits[$0] == 1 } && (parts..<64).allSatisfy { hits[$0] == 0 }, "\(parts) parts")
    }
  }
}

@Suite struct BF16GEMMTests {
  @Test(arguments: [(1, 1, 1), (3, 17, 5), (17, 33, 129), (70, 300, 400), (9, 64, 2)])
  func matchesScalarTwin(_ s: (Int, Int, Int)) {
    let (m, n, k) = s
    let a = randomFloats(m * k, seed: 51), w = randomFloats(n * k, seed: 52)
    var ref = [Float](repeating: 0, count: m * n), out = [Float](repeating: 9, count: m * n)
    let packed = w.withUnsafeBufferPointer { PackedMatrixBF16(nk: $0.baseAddress!, n: n, k: k) }
    a.withUnsafeBufferPointer { ap in
      w.withUnsafeBufferPointer { wp in ref.withUnsafeMutableBufferPointer { bgemmReference(m: m, n: n, k: k, a: ap.baseAddress!, lda: k, w: wp.baseAddress!, c: $0.baseAddress!, ldc: n) } }
      out.withUnsafeMutableBufferPointer { bgemm(m: m, a: ap.baseAddress!, lda: k, b: packed, c: $0.baseAddress!, ldc: n) }
    }
    #expect(maxRelError(out, ref) < 1e-5, "m=\(m) n=\(n) k=\(k)")
  }

  /// c += a_odd·w_odd, then c += a_even·w_even for each pair of k, in Float: vdpbf16ps's order (Intel SDM), written out
  /// by hand. Products of two bf16 values are exact in fp32, so this is the only rounding there is.
  static func dpbf16Order(m: Int, n: Int, k: Int, _ a: [Float], _ w: [Float], start: [Float]) -> [Float] {
    var c = start
    func bf(_ x: [Float], _ i: Int, _ kk: Int) -> Float { kk < k ? bf16Value(bf16Bits(x[i * k + kk])) : 0 }
    for i in 0..<m {
      for j in 0..<n {
        var s = c[i * n + j]
        for kk in stride(from: 0, to: k, by: 2) {
          s = s + bf(a, i, kk + 1) * bf(w, j, kk + 1)
          s = s + bf(a, i, kk) * bf(w, j, kk)
        }
        c[i * n + j] = s
      }
    }
    return c
  }

  /// The widening SIMD tile (AVX2, portable, and AVX-512 CPUs without AVX512_BF16 such as Cascade Lake and Ice Lake)
  /// equals vdpbf16ps's order bit for bit, accumulating or not, on awkward sizes.
  @Test(arguments: [(1, 1, 1), (3, 17, 5), (17, 33, 129), (70, 300, 400), (9, 64, 2)])
  func widenedPairsFollowDPBF16Order(_ s: (Int, Int, Int)) {
    let (m, n, k) = s
    let a = randomFloats(m * k, seed: 61), w = randomFloats(n * k, seed: 62), start = randomFloats(m * n, seed: 63)
    let packed = w.withUnsafeBufferPointer { PackedMatrixBF16(nk: $0.baseAddress!, n: n, k: k) }
    var out = [Float](repeating: 9, count: m * n), acc = start
    a.withUnsafeBufferPointer { ap in
      out.withUnsafeMutableBufferPointer { bgemm(m: m, a: ap.baseAddress!, lda: k, b: packed, c: $0.baseAddress!, ldc: n, dpbf16: false) }
      acc.withUnsafeMutableBufferPointer {
        bgemm(m: m, a: ap.baseAddress!, lda: k, b: packed, c: $0.baseAddress!, ldc: n, accumulate: true, dpbf16: false)
      }
    }
    let zeros = [Float](repeating: 0, count: m * n)
    #expect(out == Self.dpbf16Order(m: m, n: n, k: k, a, w, start: zeros), "m=\(m) n=\(n) k=\(k)")
    #expect(acc == Self.dpbf16Order(m: m, n: n, k: k, a, w, start: start), "accumulate m=\(m) n=\(n) k=\(k)")
  }

  /// vdpbf16ps gives the same bits as the hand-written order (no denormals in these inputs).
  @Test(.enabled(if: cpuHasDPBF16, "needs AVX512_BF16 (vdpbf16ps) and an AVX-512 build"),
        arguments: [(1, 1, 1), (17, 33, 129), (70, 300, 400)])
  func dpbf16EqualsItsOrder(_ s: (Int, Int, Int)) {
    let (m, n, k) = s
    let a = randomFloats(m * k, seed: 71), w = randomFloats(n * k, seed: 72)
    let packed = w.withUnsafeBufferPointer { PackedMatrixBF16(nk: $0.baseAddress!, n: n, k: k) }
    var out = [Float](repeating: 9, count: m * n)
    a.withUnsafeBufferPointer { ap in
      out.withUnsafeMutableBufferPointer { bgemm(m: m, a: ap.baseAddress!, lda: k, b: packed, c: $0.baseAddress!, ldc: n, dpbf16: true) }
    }
    #expect(out == Self.dpbf16Order(m: m, n: n, k: k, a, w, start: [Float](repeating: 0, count: m * n)))
  }
}

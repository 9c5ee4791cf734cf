import Testing
@testable import QoQKernels
import QoQIO
import QoQTestSupport

/// Random W4A8 problems. Progressive weights stay within QoQ's guarantee (q·s2 − z ∈ int8).
struct IntProblem {
  let n: Int, k: Int, m: Int, group: Int
  var codes: [UInt8], s2: [Float], z: [Float], x: [[Int8]]

  init(n: Int, k: Int, m: Int, group: Int, seed: UInt64) {
    self.n = n; self.k = k; self.m = m; self.group = group
    var rng = SplitMix64(seed: seed)
    let ng = k / group
    codes = (0..<(n * k)).map { _ in UInt8(rng.int(16)) }
    s2 = []; z = []
    for _ in 0..<(n * ng) { let sc = 1 + rng.int(8); s2.append(Float(sc)); z.append(Float(min(rng.int(sc * 15 + 1), 127))) }
    x = (0..<m).map { _ in (0..<k).map { _ in Int8(rng.int(255) - 127) } }
  }

  func rows() -> QuantizedRows {
    let a = QuantizedRows(capacity: m, k: k)
    for r in 0..<m { a.setRow(r, codes: x[r], scale: 1) }
    a.m = m
    return a
  }

  /// Independent of any packing: Σ_i (q_i·s2_g − z_g)·x_i straight from the unpacked codes.
  func naive(_ r: Int, _ o: Int) -> Int32 {
    let ng = k / group
    var s: Int32 = 0
    for i in 0..<k { let g = o * ng + i / group; s += (Int32(codes[o * k + i]) * Int32(s2[g]) - Int32(z[g])) * Int32(x[r][i]) }
    return s
  }
}

@Suite struct W4A8Tests {
  /// Integer accumulators of the VNNI kernels (GEMV at m = 1, 4-row GEMM otherwise) equal the scalar twin and the
  /// unpacked formula exactly on awkward sizes (s_x = s1 = 1 makes the fp output the accumulator itself).
  @Test(arguments: [(1, 32, 1, 32), (3, 64, 2, 64), (17, 576, 3, 64), (129, 128, 5, 128), (33, 1536, 17, 64),
                    (16, 192, 4, 32), (40, 256, 1, 128)])
  func progressiveAccumulatorsExact(_ s: (Int, Int, Int, Int)) {
    let p = IntProblem(n: s.0, k: s.1, m: s.2, group: s.3, seed: UInt64(s.0 * 1000 + s.1 + s.2))
    let w = PackedW4A8(progressiveCodes: p.codes, s2: p.s2, z: p.z, s1: [Float](repeating: 1, count: p.n), n: p.n, k: p.k, group: p.group)
    let a = p.rows()
    var y = [Float](repeating: .nan, count: p.m * p.n)
    y.withUnsafeMutableBufferPointer { w.forward(a, $0.baseAddress!, ldy: p.n) }
    for r in 0..<p.m {
      for o in 0..<p.n {
        let want = p.naive(r, o)
        #expect(w.referenceAccumulator(a, row: r, outRow: o).int == want)
        #expect(y[r * p.n + o] == Float(want), "row \(r) out \(o)")
      }
    }
  }

  /// Asymmetric uint4 (per group and per channel) with fp scales: the kernel equals a Double dot product of the
  /// dequantized weights and activations (independent of the packing) to fp32 rounding, scales and bias included.
  @Test(arguments: [(1, 64, 1, 64), (17, 576, 3, 576), (129, 128, 5, 32), (20, 1536, 2, 128)])
  func asymmetricMatchesDequantized(_ s: (Int, Int, Int, Int)) {
    let p = IntProblem(n: s.0, k: s.1, m: s.2, group: s.3, seed: UInt64(s.1 * 7 + s.0))
    let ng = p.k / p.group
    let scale = randomFloats(p.n * ng, seed: 5).map { abs($0) * 0.01 + 1e-3 }, zero = randomFloats(p.n * ng, seed: 6).map { $0 * 0.05 }
    let bias = randomFloats(p.n, seed: 7)
    let w = PackedW4A8(asymCodes: p.codes, scale: scale, zero: zero, n: p.n, k: p.k, group: p.group, bias: bias)
    let a = p.rows()
    for r in 0..<p.m { a.scale[r] = 0.01 * Float(r + 1) }
    var y = [Float](repeating: .nan, count: p.m * p.n)
    y.withUnsafeMutableBufferPointer { w.forward(a, $0.baseAddress!, ldy: p.n) }
    for r in 0..<p.m {
      for o in 0..<p.n {
        var want = 0.0, mag = 0.0
        for i in 0..<p.k {
          let g = o * ng + i / p.group
          let t = (Double(p.codes[o * p.k + i]) * Double(scale[g]) - Double(zero[g])) * Double(p.x[r][i]) * Double(a.scale[r])
          want += t; mag += abs(t)
        }
        want += Double(bias[o])
        #expect(abs(Double(y[r * p.n + o]) - want) <= 1e-5 * (mag + 1), "row \(r) out \(o)")
      }
    }
  }

  /// W4A16 over the same packed weights with fp32 activations: the fast path equals its scalar twin and a Double
  /// product of the dequantized weights (independent of the packing), awkward sizes, bias included.
  @Test(arguments: [(1, 64, 1, 64), (17, 576, 3, 576), (129, 128, 5, 32), (20, 1536, 2, 128), (3, 32, 7, 32)])
  func w4a16MatchesDequantized(_ s: (Int, Int, Int, Int)) {
    let p = IntProblem(n: s.0, k: s.1, m: s.2, group: s.3, seed: UInt64(s.1 * 3 + s.0))
    let ng = p.k / p.group
    let scale = randomFloats(p.n * ng, seed: 8).map { abs($0) * 0.01 + 1e-3 }, zero = randomFloats(p.n * ng, seed: 9).map { $0 * 0.05 }
    let bias = randomFloats(p.n, seed: 10)
    let w = PackedW4A8(asymCodes: p.codes, scale: scale, zero: zero, n: p.n, k: p.k, group: p.group, bias: bias)
    let x = randomFloats(p.m * p.k, seed: 11)
    var y = [Float](repeating: .nan, count: p.m * p.n), yr = y
    x.withUnsafeBufferPointer { xb in
      w.forwardFP(xb.baseAddress!, rows: p.m, &y, ldy: p.n)
      w.forwardFPReference(xb.baseAddress!, rows: p.m, &yr, ldy: p.n)
    }
    for r in 0..<p.m {
      for o in 0..<p.n {
        var want = Double(bias[o]), mag = 0.0
        for i in 0..<p.k {
          let g = o * ng + i / p.group
          let t = (Double(p.codes[o * p.k + i]) * Double(scale[g]) - Double(zero[g])) * Double(x[r * p.k + i])
          want += t; mag += abs(t)
        }
        #expect(abs(Double(y[r * p.n + o]) - want) <= 1e-5 * (mag + 1), "row \(r) out \(o)")
        #expect(abs(y[r * p.n + o] - yr[r * p.n + o]) <= 1e-5 * Float(mag + 1))
      }
    }
  }

  /// W8A8: exact integer accumulators against the unpacked formula; outputs scaled by s_w·s_x.
  @Test(arguments: [(1, 32, 1), (3, 96, 2), (17, 576, 5), (129, 64, 3)])
  func w8a8Exact(_ s: (Int, Int, Int)) {
    let (n, k, m) = s
    var rng = SplitMix64(seed: UInt64(n * k * m))
    let w8 = (0..<(n * k)).map { _ in Int32(rng.int(255) - 127) }
    let sw = (0..<n).map { _ in Float(rng.int(4) + 1) }
    let p = IntProblem(n: 1, k: k, m: m, group: k, seed: 3)
    let w = PackedW8A8(codes: w8.map { UInt8($0 + 128) }, scale: sw, n: n, k: k)
    let a = p.rows()
    var y = [Float](repeating: .nan, count: m * n)
    y.withUnsafeMutableBufferPointer { w.forward(a, $0.baseAddress!, ldy: n) }
    for r in 0..<m {
      for o in 0..<n {
        var want: Int32 = 0
        for i in 0..<k { want += w8[o * k + i] * Int32(p.x[r][i]) }
        #expect(w.referenceAccumulator(a, row: r, outRow: o) == want)
        #expect(y[r * n + o] == Float(want) * sw[o])
      }
    }
  }

  /// Per-token quantization: the vector path equals the scalar twin bit for bit (codes, scale, block sums), and the
  /// scalar twin equals the hand-computed case.
  @Test func quantizeRowsMatchTwin() {
    for k in [32, 64, 576] {
      let x = randomFloats(k, seed: UInt64(k), scale: 3)
      let a = QuantizedRows(capacity: 3, k: k)
      x.withUnsafeBufferPointer { a.quantizeRow(1, $0.baseAddress!) }
      let (codes, s) = QuantizedRows.quantizeReference(x)
      #expect(a.scale[1] == s)
      #expect((0..<k).map { a.codes[k + $0] } == codes)
      for b in 0..<(k / 32) { #expect(a.blockSums[a.blocks + b] == codes[(b * 32)..<(b * 32 + 32)].reduce(0) { $0 + Int32($1) }) }
    }
    // Hand case: max |x| = 2.54 → s = fp16(0.02) = 0.0200042724609375; 1.0/s = 49.989… → 50; −2.54/s → −127.
    let (c, s) = QuantizedRows.quantizeReference([1.0, -2.54, 0.0101, 0])
    #expect(s == 0.0200042724609375)
    #expect(c == [50, -127, 1, 0])
    // All zeros: scale 1, codes 0.
    #expect(QuantizedRows.quantizeReference([0, 0]).scale == 1)
  }
}

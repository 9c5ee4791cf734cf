import Foundation
import Testing
@testable import QoQKernels
import QoQTestSupport

@Suite struct VectorOpsTests {
  @Test(arguments: [1, 3, 17, 64, 129, 1023])
  func dotAndNorm(_ n: Int) {
    let x = randomFloats(n, seed: 11), w = randomFloats(n, seed: 12)
    var ref = 0.0
    for i in 0..<n { ref += Double(x[i]) * Double(w[i]) }
    #expect(abs(Double(dot(x, w, n)) - ref) < 1e-4 * Double(n).squareRoot())
    var out = [Float](repeating: 0, count: n)
    rmsNorm(x, w, eps: 1e-5, n: n, &out)
    let ms = x.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(n)
    for i in 0..<n {
      let r = Double(w[i]) * Double(x[i]) / (ms + 1e-5).squareRoot()
      #expect(abs(Double(out[i]) - r) < 1e-5 * max(1, abs(r)))
    }
  }

  /// The tiled (and, when large, threaded) transpose moves every element exactly where its scalar twin does, with
  /// leading dimensions wider than the matrix on both sides.
  @Test(arguments: [(1, 1), (3, 17), (17, 3), (129, 33), (600, 513)])
  func transposeMatchesReference(_ rows: Int, _ cols: Int) {
    let x = randomFloats(rows * cols, seed: UInt64(rows * 7 + cols))
    let ref = transposeReference(x, rows: rows, cols: cols)
    var out = [Float](repeating: 0, count: cols * rows)
    transpose(x, rows: rows, cols: cols, ld: cols, into: &out, ldOut: rows)
    #expect(out == ref)
    // Strided: x inside a (rows, cols + 5) array, out inside a (cols, rows + 2) one; the padding stays untouched.
    var wide = [Float](repeating: -7, count: rows * (cols + 5))
    for r in 0..<rows { for j in 0..<cols { wide[r * (cols + 5) + j] = x[r * cols + j] } }
    var padded = [Float](repeating: 99, count: cols * (rows + 2))
    transpose(wide, rows: rows, cols: cols, ld: cols + 5, into: &padded, ldOut: rows + 2)
    for j in 0..<cols {
      #expect(Array(padded[(j * (rows + 2))..<(j * (rows + 2) + rows)]) == Array(ref[(j * rows)..<(j * rows + rows)]))
      #expect(padded[j * (rows + 2) + rows] == 99 && padded[j * (rows + 2) + rows + 1] == 99)
    }
  }

  /// The fast Walsh–Hadamard transform against the explicit Sylvester matrix H_n[i][j] = (−1)^popcount(i & j) / √n,
  /// and H·H = I (it is its own inverse).
  @Test(arguments: [1, 2, 8, 32, 128])
  func walshHadamardMatchesMatrix(_ n: Int) {
    var rng = SystemRandomNumberGenerator()
    let x = (0..<n).map { _ in Float.random(in: -3...3, using: &rng) }
    var y = x
    y.withUnsafeMutableBufferPointer { walshHadamard($0.baseAddress!, n) }
    for i in 0..<n {
      var want = 0.0
      for j in 0..<n { want += ((i & j).nonzeroBitCount % 2 == 0 ? 1 : -1) * Double(x[j]) }
      want /= Double(n).squareRoot()
      #expect(abs(Double(y[i]) - want) < 1e-5, "n \(n) row \(i): \(y[i]) vs \(want)")
    }
    y.withUnsafeMutableBufferPointer { walshHadamard($0.baseAddress!, n) }
    for i in 0..<n { #expect(abs(y[i] - x[i]) < 1e-5) }
  }

  @Test func softmaxAndLogSumExp() {
    var x: [Float] = [1, 2, 3, -1000]
    let lse = logSumExp(x, 4)
    #expect(abs(lse - log(exp(1.0) + exp(2.0) + exp(3.0))) < 1e-9)
    softmaxInPlace(&x, 4)
    let z = exp(1.0) + exp(2.0) + exp(3.0)
    #expect(abs(Double(x[2]) - exp(3.0) / z) < 1e-6)
    #expect(x[3] == 0)
    #expect(argmax([1, 5, 5, 2], 4) == 1)
  }

  @Test(arguments: [1, 3, 17, 129])
  func siluMulMatchesScalarTwin(_ n: Int) {
    let g = randomFloats(n, seed: 41).map { $0 * 12 }, u = randomFloats(n, seed: 42)
    var o = [Float](repeating: 0, count: n)
    siluMul(g, u, &o, n)
    for i in 0..<n { #expect(abs(o[i] - siluMulReference(g[i], u[i])) <= 1e-6 * max(1, abs(o[i]))) }
  }

  @Test func siluMulMatchesFormula() {
    let g: [Float] = [-3, 0, 0.5, 4], u: [Float] = [2, 3, -1, 0.25]
    var o = [Float](repeating: 0, count: 4)
    siluMul(g, u, &o, 4)
    for i in 0..<4 {
      let s = Double(g[i]) / (1 + exp(-Double(g[i]))) * Double(u[i])
      #expect(abs(Double(o[i]) - s) < 1e-6)
    }
  }
}

@Suite struct ExpTests {
  @Test func vectorExpMatchesExpf() {
    let xs: [Float] = (0..<2000).map { Float($0) * 0.0875 - 87.0 } + [0, -0.0, 1e-8, -1e-8, 88.3, -87.2]
    var out = [Float](repeating: 0, count: xs.count)
    expVector(xs, &out, xs.count)
    for (i, x) in xs.enumerated() {
      let r = Double(x).exp()
      #expect(abs(Double(out[i]) - r) <= 4e-7 * r, "x=\(x)")
    }
  }

  @Test(arguments: [1, 3, 17, 129, 1023])
  func softmaxMatchesScalarTwin(_ n: Int) {
    var x = randomFloats(n, seed: UInt64(n)).map { $0 * 20 }
    let ref = softmaxReference(x)
    softmaxInPlace(&x, n)
    for i in 0..<n { #expect(abs(x[i] - ref[i]) <= 1e-6 * max(ref[i], 1e-3)) }
    let y = randomFloats(n, seed: 99).map { $0 * 30 }
    let lse = logSumExp(y, n)
    let m = Double(y.max()!)
    let refL = m + log(y.reduce(0.0) { $0 + exp(Double($1) - m) })
    #expect(abs(lse - refL) < 1e-6)
  }
}

extension Double { func exp() -> Double { Foundation.exp(self) } }

import Foundation
import QoQKernels
import QoQTestSupport
import Testing
@testable import QoQQuant

/// The blocked, threaded Cholesky and triangular inverse against their unblocked scalar twins and against the
/// defining identities (A = L·Lᵀ, L·L⁻¹ = I, Uᵀ·U·H = I), on awkward sizes that cut blocks, tiles and 4-row groups.
@Suite struct CholeskyTests {
  /// A symmetric positive-definite n×n matrix: XᵀX/k + 0.1·I from a fixed random X (k × n), k = n + 5.
  static func spd(_ n: Int, seed: UInt64) -> [Double] {
    let k = n + 5
    let x = randomFloats(k * n, seed: seed).map(Double.init)
    var a = [Double](repeating: 0, count: n * n)
    for r in 0..<k { for i in 0..<n { let xi = x[r * n + i]; for j in 0..<n { a[i * n + j] += xi * x[r * n + j] } } }
    for i in 0..<n { for j in 0..<n { a[i * n + j] /= Double(k) }; a[i * n + i] += 0.1 }
    return a
  }

  static func maxAbs(_ a: [Double], _ b: [Double]) -> Double { zip(a, b).map { abs($0 - $1) }.max() ?? 0 }

  @Test(arguments: [1, 3, 17, 129, 300])
  func blockedCholeskyEqualsScalarTwin(_ n: Int) throws {
    let a = Self.spd(n, seed: UInt64(n))
    var twin = a
    #expect(choleskyLower(&twin, n))
    for (block, threads) in [(128, 1), (16, 3), (5, 2), (128, 4)] {
      var l = a
      let pool = ThreadPool(threads: threads)
      let ok = l.withUnsafeMutableBufferPointer { choleskyLowerBlocked($0.baseAddress!, n, block: block, pool: pool) }
      #expect(ok)
      #expect(Self.maxAbs(l, twin) <= 1e-12, "n \(n) block \(block) threads \(threads)")
      // Independent check: L·Lᵀ = A and the strict upper triangle is zero.
      var err = 0.0
      for i in 0..<n {
        for j in 0..<n {
          var s = 0.0
          for k in 0...min(i, j) { s += l[i * n + k] * l[j * n + k] }
          err = max(err, abs(s - a[i * n + j]))
          if j > i { #expect(l[i * n + j] == 0) }
        }
      }
      #expect(err <= 1e-12 * Double(n))
    }
  }

  @Test(arguments: [1, 3, 17, 129, 300])
  func blockedInverseEqualsScalarTwin(_ n: Int) throws {
    var l = Self.spd(n, seed: 40 + UInt64(n))
    #expect(choleskyLower(&l, n))
    var twin = l
    twin.withUnsafeMutableBufferPointer { invertLowerScalar($0.baseAddress!, n) }
    for (block, threads) in [(128, 1), (16, 3), (7, 2)] {
      var x = l
      x.withUnsafeMutableBufferPointer { invertLowerBlocked($0.baseAddress!, n, block: block, pool: ThreadPool(threads: threads)) }
      let scale = twin.map(abs).max() ?? 1
      #expect(Self.maxAbs(x, twin) <= 1e-12 * scale, "n \(n) block \(block) threads \(threads)")
      // Independent check: L·X = I, X lower.
      var err = 0.0
      for i in 0..<n {
        for j in 0..<n {
          var s = 0.0
          for k in 0..<n { s += l[i * n + k] * x[k * n + j] }
          err = max(err, abs(s - (i == j ? 1 : 0)))
          if j > i { #expect(x[i * n + j] == 0) }
        }
      }
      #expect(err <= 1e-11 * Double(n))
    }
  }

  /// A non-positive-definite matrix is refused, not factored into NaNs.
  @Test func indefiniteIsRefused() {
    var a: [Double] = [1, 2, 2, 1]
    #expect(!a.withUnsafeMutableBufferPointer { choleskyLowerBlocked($0.baseAddress!, 2) })
    var nanA: [Double] = [1, .nan, .nan, 1]
    #expect(!nanA.withUnsafeMutableBufferPointer { choleskyLowerBlocked($0.baseAddress!, 2) })
  }

  /// GPTQ's U is upper triangular with a positive diagonal and Uᵀ·U = (P·H·Pᵀ + damp·I)⁻¹, checked by multiplying back.
  @Test(arguments: [3, 129, 200])
  func gptqInverseFactorsTheDampedInverse(_ n: Int) throws {
    var h = Self.spd(n, seed: 90 + UInt64(n))
    h[1 * n + 1] = 0  // a dead input: unit diagonal, as deepcompressor does
    for j in 0..<n where j != 1 { h[1 * n + j] = 0; h[j * n + 1] = 0 }
    let inv = try GPTQInverse(hessian: h, size: n)
    let p = inv.permutation, u = inv.u
    #expect(inv.dead == [1])
    var a = [Double](repeating: 0, count: n * n)
    for i in 0..<n {
      for j in 0..<n { a[i * n + j] = h[p[i] * n + p[j]] }
      a[i * n + i] = (h[p[i] * n + p[i]] == 0 ? 1 : h[p[i] * n + p[i]]) + inv.damping
    }
    var err = 0.0
    for i in 0..<n {
      #expect(u[i * n + i] > 0)
      for j in 0..<i { #expect(u[i * n + j] == 0) }
      // (Uᵀ·U·A)[i][j]
      var row = [Double](repeating: 0, count: n)
      for k in 0..<n where u[k * n + i] != 0 { for m in 0..<n { row[m] += u[k * n + i] * u[k * n + m] } }
      for j in 0..<n {
        var s = 0.0
        for m in 0..<n { s += row[m] * a[m * n + j] }
        err = max(err, abs(s - (i == j ? 1 : 0)))
      }
    }
    #expect(err <= 1e-9, "‖UᵀUA − I‖∞ \(err)")
  }
}

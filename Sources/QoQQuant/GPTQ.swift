// GPTQ as deepcompressor implements it (deepcompressor.md §1.4): H = Σ (2/N)·x xᵀ over calibration tokens with N the
// number of sequences; dead columns; act-order by descending diag(H); damping 1% of mean(diag) with retries;
// U = upper Cholesky factor of H⁻¹; columns in blocks with lazy updates; static scales and zeros (fixed before GPTQ).
import Foundation
import QoQFormat
import QoQIO
import QoQKernels

/// Accumulates H = Σ 2/N · x xᵀ for one linear's input (in × in), in fp32 like deepcompressor.
public final class HessianAccumulator: @unchecked Sendable {
  public let size: Int
  public private(set) var h: [Float]
  private var tokens = 0

  public init(size: Int) { self.size = size; h = [Float](repeating: 0, count: size * size) }

  /// Adds rows x (rows, size).
  public func add(_ x: UnsafePointer<Float>, rows: Int) {
    let chunk = 512
    var r0 = 0
    let xt = UnsafeMutablePointer<Float>.allocate(capacity: size * chunk); defer { xt.deallocate() }
    while r0 < rows {
      let n = min(chunk, rows - r0)
      for r in 0..<n { for i in 0..<size { xt[i * n + r] = x[(r0 + r) * size + i] } }  // (size, n)
      let packed = PackedMatrix(nk: xt, n: size, k: n)
      h.withUnsafeMutableBufferPointer { sgemm(m: size, a: xt, lda: n, b: packed, c: $0.baseAddress!, ldc: size, accumulate: true) }
      r0 += n
    }
    tokens += rows
  }

  /// H scaled by 2/N for N calibration sequences, in Double.
  public func hessian(sequences: Int) -> [Double] { h.map { Double($0) * 2 / Double(max(1, sequences)) } }
}

public struct GPTQOptions: Sendable, Equatable {
  public var dampPercentage = 0.01
  public var blockSize = 128
  public var numInvTries = 250
  public init() {}
}

public struct GPTQResult: Sendable {
  public var weight: QuantizedWeight
  public var permutation: [Int]
  public var damping: Double
}

/// In-place Cholesky of a symmetric positive-definite n×n matrix (lower factor L, A = L·Lᵀ); false if not PD.
func choleskyLower(_ a: inout [Double], _ n: Int) -> Bool {
  for j in 0..<n {
    var d = a[j * n + j]
    for k in 0..<j { d -= a[j * n + k] * a[j * n + k] }
    if !(d > 0) || !d.isFinite { return false }
    let ljj = d.squareRoot()
    a[j * n + j] = ljj
    for i in (j + 1)..<max(j + 1, n) {
      var s = a[i * n + j]
      for k in 0..<j { s -= a[i * n + k] * a[j * n + k] }
      a[i * n + j] = s / ljj
    }
    for i in 0..<j { a[i * n + j] = 0 }
  }
  return true
}

/// H⁻¹ from its lower Cholesky factor L (torch.cholesky_inverse).
func choleskyInverse(_ l: [Double], _ n: Int) -> [Double] {
  // Invert L (lower triangular), then H⁻¹ = L⁻ᵀ L⁻¹.
  var li = [Double](repeating: 0, count: n * n)
  for j in 0..<n {
    li[j * n + j] = 1 / l[j * n + j]
    for i in (j + 1)..<max(j + 1, n) {
      var s = 0.0
      for k in j..<i { s -= l[i * n + k] * li[k * n + j] }
      li[i * n + j] = s / l[i * n + i]
    }
  }
  var inv = [Double](repeating: 0, count: n * n)
  for i in 0..<n {
    for j in 0...i {
      var s = 0.0
      for k in i..<n { s += li[k * n + i] * li[k * n + j] }
      inv[i * n + j] = s; inv[j * n + i] = s
    }
  }
  return inv
}

/// Runs GPTQ on weight w (out, in) with Hessian h (in, in, already 2/N-scaled) and static quantizer parameters.
public func gptq(weight w0: [Float], hessian h0: [Double], quantizer qz: WeightQuantizer,
                 options: GPTQOptions = GPTQOptions()) throws -> GPTQResult {
  let out = qz.outFeatures, n = qz.inFeatures
  var h = h0
  // Work in the quantizer's domain (progressive: u = clamp(w/s1, ±P)), in Double.
  var w = [Double](repeating: 0, count: out * n)
  for o in 0..<out { for i in 0..<n { w[o * n + i] = Double(qz.toDomain(w0[o * n + i], row: o)) } }
  // Dead inputs: H_ii = 0 → H_ii = 1 and the column is zeroed.
  for i in 0..<n where h[i * n + i] == 0 {
    h[i * n + i] = 1
    for o in 0..<out { w[o * n + i] = 0 }
  }
  // Act-order: columns by descending diag(H) (stable for ties).
  let perm = (0..<n).sorted { a, b in
    let da = h[a * n + a], db = h[b * n + b]
    return da != db ? da > db : a < b
  }
  var hp = [Double](repeating: 0, count: n * n)
  for i in 0..<n { for j in 0..<n { hp[i * n + j] = h[perm[i] * n + perm[j]] } }
  var wp = [Double](repeating: 0, count: out * n)
  for o in 0..<out { for i in 0..<n { wp[o * n + i] = w[o * n + perm[i]] } }
  // Damping with retries.
  var meanDiag = 0.0
  for i in 0..<n { meanDiag += hp[i * n + i] }
  meanDiag /= Double(n)
  var damp = options.dampPercentage * meanDiag
  var l: [Double] = []
  var ok = false
  for _ in 0..<max(1, options.numInvTries) {
    var a = hp
    for i in 0..<n { a[i * n + i] += damp }
    if choleskyLower(&a, n) { l = a; ok = true; break }
    damp += 0.001 * meanDiag
  }
  guard ok else { throw QoQError("GPTQ: the Hessian is not positive definite after \(options.numInvTries) damping tries") }
  // U = upper Cholesky factor of H⁻¹ (H⁻¹ = Uᵀ U).
  var hinv = choleskyInverse(l, n)
  guard choleskyLower(&hinv, n) else { throw QoQError("GPTQ: H⁻¹ is not positive definite") }
  var u = [Double](repeating: 0, count: n * n)  // upper: U[i][j] = Lᵀ
  for i in 0..<n { for j in i..<n { u[i * n + j] = hinv[j * n + i] } }

  var codes = [UInt8](repeating: 0, count: out * n)
  let bs = max(1, options.blockSize)
  var err = [Double](repeating: 0, count: out * bs)
  var i1 = 0
  while i1 < n {
    let i2 = min(i1 + bs, n), cnt = i2 - i1
    for i in 0..<cnt {
      let col = i1 + i, orig = perm[col]
      let d = u[col * n + col]
      for o in 0..<out {
        let x = wp[o * n + col]
        let (code, value) = qz.quantize(Float(x), row: o, column: orig)
        codes[o * n + orig] = code
        let e = (x - Double(value)) / d
        err[o * bs + i] = e
        // Update the rest of the block.
        if col + 1 < i2 {
          for j in (col + 1)..<i2 { wp[o * n + j] -= e * u[col * n + j] }
        }
      }
    }
    // Lazy update of the columns right of the block: W[:, i2:] -= Err · U[i1:i2, i2:].
    if i2 < n {
      for o in 0..<out {
        for i in 0..<cnt {
          let e = err[o * bs + i]
          if e == 0 { continue }
          let urow = (i1 + i) * n
          for j in i2..<n { wp[o * n + j] -= e * u[urow + j] }
        }
      }
    }
    i1 = i2
  }
  let q = QuantizedWeight(format: qz.format, outFeatures: out, inFeatures: n, codes: codes, scale: qz.scale,
                          zero: qz.zero, rowScale: qz.rowScale)
  return GPTQResult(weight: q, permutation: perm, damping: damp)
}

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

  /// Rows (tokens) accumulated so far.
  public var rows: Int { tokens }

  /// Frees the accumulated matrix once its Hessian has been taken (an 8B model's down_proj input holds 0.8 GB).
  public func release() { h = [] }

  /// Adds rows x (rows, size). Only the lower triangle is accumulated (row blocks of 128, each against the columns up
  /// to the block's end), about half the work of a full XᵀX; `hessian` mirrors it. Per chunk of 512 tokens the rows are
  /// transposed once (tiles) for A and packed once from x for B, and each row block is one threaded GEMM over its columns.
  public func add(_ x: UnsafePointer<Float>, rows: Int) {
    let chunk = 512, block = 128
    var r0 = 0
    let xt = UnsafeMutablePointer<Float>.allocate(capacity: size * min(chunk, max(1, rows))); defer { xt.deallocate() }
    while r0 < rows {
      let n = min(chunk, rows - r0)
      transpose(x + r0 * size, rows: n, cols: size, ld: size, into: xt, ldOut: n)  // (size, n)
      let packed = PackedMatrix(kn: x + r0 * size, k: n, n: size, ldb: size)  // Xᵀ's rows as output columns
      h.withUnsafeMutableBufferPointer { hb in
        for i0 in stride(from: 0, to: size, by: block) {
          let m = min(block, size - i0)
          sgemm(m: m, a: xt + i0 * n, lda: n, b: packed, c: hb.baseAddress! + i0 * size, ldc: size, accumulate: true,
                columns: i0 + m)
        }
      }
      r0 += n
    }
    tokens += rows
  }

  /// H scaled by 2/N for N calibration sequences, in Double (upper triangle mirrored from the lower).
  public func hessian(sequences: Int) -> [Double] {
    let f = 2 / Double(max(1, sequences))
    var out = [Double](repeating: 0, count: size * size)
    for i in 0..<size {
      for j in 0...i {
        // Within a diagonal block both triangles were computed; the lower one is canonical.
        let v = Double(h[i * size + j]) * f
        out[i * size + j] = v; out[j * size + i] = v
      }
    }
    guard inputPermutation != nil || inputDivisor != nil else { return out }
    // The inputs were captured before an exact transform of this layer's input channels (reorder, then SmoothLinear):
    // x'_j = x_perm[j] / λ_j, so H'_ij = H_perm[i],perm[j] / (λ_i λ_j).
    let perm = inputPermutation ?? Array(0..<size)
    let lam = inputDivisor.map { $0.map(Double.init) } ?? [Double](repeating: 1, count: size)
    var t = [Double](repeating: 0, count: size * size)
    for i in 0..<size { for j in 0..<size { t[i * size + j] = out[perm[i] * size + perm[j]] / (lam[i] * lam[j]) } }
    return t
  }

  /// Set when the captured inputs precede a transform of the input channels (the fused transform+GPTQ pass).
  public var inputPermutation: [Int]?
  public var inputDivisor: [Float]?
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

typealias D8 = SIMD8<Double>

/// y[0..<n] += a · x[0..<n] (Double, 8 lanes).
@inline(__always)
func axpyD(_ a: Double, _ x: UnsafePointer<Double>, _ y: UnsafeMutablePointer<Double>, _ n: Int) {
  var i = 0
  let va = D8(repeating: a)
  while i + 8 <= n {
    let r = UnsafeMutableRawPointer(y + i)
    r.storeBytes(of: r.loadUnaligned(as: D8.self).addingProduct(va, UnsafeRawPointer(x + i).loadUnaligned(as: D8.self)), as: D8.self)
    i += 8
  }
  while i < n { y[i] += a * x[i]; i += 1 }
}

/// Σ x[i]·y[i] (Double, 8 lanes).
@inline(__always)
func dotD(_ x: UnsafePointer<Double>, _ y: UnsafePointer<Double>, _ n: Int) -> Double {
  var acc = D8()
  var i = 0
  while i + 8 <= n {
    acc = acc.addingProduct(UnsafeRawPointer(x + i).loadUnaligned(as: D8.self), UnsafeRawPointer(y + i).loadUnaligned(as: D8.self))
    i += 8
  }
  var s = acc.sum()
  while i < n { s += x[i] * y[i]; i += 1 }
  return s
}

/// In-place Cholesky of a symmetric positive-definite n×n matrix (lower factor L, A = L·Lᵀ; the strict upper
/// triangle is zeroed); false if not positive definite.
func choleskyLower(_ a: inout [Double], _ n: Int) -> Bool {
  a.withUnsafeMutableBufferPointer { ab in
    let p = ab.baseAddress!
    for j in 0..<n {
      let rj = p + j * n
      let d = rj[j] - dotD(rj, rj, j)
      if !(d > 0) || !d.isFinite { return false }
      let ljj = d.squareRoot()
      rj[j] = ljj
      for i in (j + 1)..<max(j + 1, n) {
        let ri = p + i * n
        ri[j] = (ri[j] - dotD(ri, rj, j)) / ljj
      }
    }
    for i in 0..<n { for j in (i + 1)..<max(i + 1, n) { p[i * n + j] = 0 } }
    return true
  }
}

/// U, the upper Cholesky factor of H⁻¹ (H⁻¹ = Uᵀ·U), after damping H (1% of mean(diag) plus 0.1% per retry).
/// Row-major n×n. Computed once per distinct Hessian and shared by the linears that read the same input.
public struct GPTQInverse: Sendable {
  public let n: Int
  public let u: [Double]
  public let permutation: [Int]
  public let damping: Double
  public let dead: [Int]

  /// U without forming H⁻¹ (deepcompressor takes cholesky(cholesky_inverse(cholesky(H)), upper) — the same matrix,
  /// as the Cholesky factor is unique): with J the reversal, J·H·J = M·Mᵀ (M lower) gives H = V·Vᵀ for the upper
  /// V = J·M·J, so H⁻¹ = V⁻ᵀ·V⁻¹ and U = V⁻¹ = J·M⁻¹·J. J·X·J of a row-major matrix is its element array
  /// reversed. One n×n Double buffer besides `h0` (an 8B model's down_proj, n = 14336: 2 × 1.6 GB), two blocked
  /// n³/3 passes on every thread.
  public init(hessian h0: [Double], size n: Int, options: GPTQOptions = GPTQOptions()) throws {
    self.n = n
    // Dead inputs (zero diagonal) get a unit diagonal; the permutation sorts the diagonal in descending order.
    let diag = (0..<n).map { h0[$0 * n + $0] == 0 ? 1 : h0[$0 * n + $0] }
    dead = (0..<n).filter { h0[$0 * n + $0] == 0 }
    let perm = (0..<n).sorted { a, b in diag[a] != diag[b] ? diag[a] > diag[b] : a < b }
    permutation = perm
    let meanDiag = diag.reduce(0, +) / Double(n)
    var damp = options.dampPercentage * meanDiag
    var result: [Double]? = nil
    for _ in 0..<max(1, options.numInvTries) {
      // a = J·(P·H·Pᵀ + damp·I)·J, rebuilt from h0 for each try.
      var a = [Double](repeating: 0, count: n * n)
      let ok = a.withUnsafeMutableBufferPointer { ab -> Bool in
        let nn = n * n
        for i in 0..<n {
          let src = perm[i] * n, dst = nn - 1 - i * n
          for j in 0..<n { ab[dst - j] = h0[src + perm[j]] }
          ab[dst - i] = diag[perm[i]] + damp
        }
        guard choleskyLowerBlocked(ab.baseAddress!, n) else { return false }
        invertLowerBlocked(ab.baseAddress!, n)
        ab.reverse()
        return true
      }
      if ok { result = a; break }
      damp += 0.001 * meanDiag
    }
    guard let u = result else {
      throw QoQError("GPTQ: the Hessian is not positive definite after \(options.numInvTries) damping tries")
    }
    self.u = u
    damping = damp
  }
}

/// Runs GPTQ on weight w (out, in) with Hessian h (in, in, already 2/N-scaled) and static quantizer parameters.
public func gptq(weight w0: [Float], hessian h0: [Double], quantizer qz: WeightQuantizer,
                 options: GPTQOptions = GPTQOptions()) throws -> GPTQResult {
  try gptq(weight: w0, inverse: GPTQInverse(hessian: h0, size: qz.inFeatures, options: options), quantizer: qz, options: options)
}

/// GPTQ with a precomputed inverse factor (shared by q/k/v and by gate/up).
public func gptq(weight w0: [Float], inverse inv: GPTQInverse, quantizer qz: WeightQuantizer,
                 options: GPTQOptions = GPTQOptions()) throws -> GPTQResult {
  let out = qz.outFeatures, n = qz.inFeatures
  precondition(inv.n == n)
  let perm = inv.permutation
  // Work in the quantizer's domain (progressive: u = w/s1), permuted, in Double; dead columns zeroed.
  var wp = [Double](repeating: 0, count: out * n)
  let deadSet = Set(inv.dead)
  for o in 0..<out {
    for i in 0..<n {
      let src = perm[i]
      wp[o * n + i] = deadSet.contains(src) ? 0 : Double(qz.toDomain(w0[o * n + src], row: o))
    }
  }
  var codes = [UInt8](repeating: 0, count: out * n)
  let bs = max(1, options.blockSize)
  var err = [Double](repeating: 0, count: out * bs)
  // Rows are independent given U: each part runs every column block over its own rows (row o touches only row o of
  // W, E and the codes), so the result is the same bits whatever the split.
  inv.u.withUnsafeBufferPointer { ub in
    wp.withUnsafeMutableBufferPointer { wb in
      err.withUnsafeMutableBufferPointer { eb in
        codes.withUnsafeMutableBufferPointer { cb in
          let U = ub.baseAddress!, W = wb.baseAddress!, E = eb.baseAddress!, C = cb.baseAddress!
          ThreadPool.shared.parts(out) { rows in
            var i1 = 0
            while i1 < n {
              let i2 = min(i1 + bs, n), cnt = i2 - i1
              for o in rows {
                let row = W + o * n
                for i in 0..<cnt {
                  let col = i1 + i, orig = perm[col]
                  let x = row[col]
                  let (code, value) = qz.quantize(Float(x), row: o, column: orig)
                  C[o * n + orig] = code
                  let e = (x - Double(value)) / U[col * n + col]
                  E[o * bs + i] = e
                  if col + 1 < i2 { axpyD(-e, U + col * n + col + 1, row + col + 1, i2 - col - 1) }
                }
                // Lazy update of the columns right of the block: W[o, i2:] −= Σ_i E[o, i]·U[i1+i, i2:].
                if i2 < n { for i in 0..<cnt where E[o * bs + i] != 0 { axpyD(-E[o * bs + i], U + (i1 + i) * n + i2, row + i2, n - i2) } }
              }
              i1 = i2
            }
          }
        }
      }
    }
  }
  let q = QuantizedWeight(format: qz.format, outFeatures: out, inFeatures: n, codes: codes, scale: qz.scale,
                          zero: qz.zero, rowScale: qz.rowScale)
  return GPTQResult(weight: q, permutation: perm, damping: inv.damping)
}

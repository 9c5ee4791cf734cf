// Blocked, multi-threaded Double Cholesky factorization and lower-triangular inverse for GPTQ's Hessians
// (n = 1536…28672). The unblocked versions in GPTQ.swift stream the whole matrix from memory once per column and run
// on one thread: for an 8960-wide down_proj input that was minutes per layer, most of a QoQ layer's time. Here both
// are right-looking block algorithms (blocks of 128 columns) whose bulk is one kernel, C −= A·B on 4 × 16 tiles with
// 512-bit accumulators, parallel over row bands or column tiles. The unblocked routines stay as their scalar twins.
import QoQKernels

/// Columns per block; also the row count of the inverse's row blocks.
let choleskyBlock = 128

/// C[m×n] −= A[m×k]·B[k×n] (row-major, leading dimensions in elements). Column tiles of 16, k in chunks of 256 so a
/// chunk of B (32 KB) stays in L1/L2 while every 4-row group of A passes over it.
func subtractProduct(_ c: UnsafeMutablePointer<Double>, _ ldc: Int, _ a: UnsafePointer<Double>, _ lda: Int,
                     _ b: UnsafePointer<Double>, _ ldb: Int, m: Int, n: Int, k: Int) {
  guard m > 0, n > 0, k > 0 else { return }
  let kc = 256
  var j0 = 0
  while j0 < n {
    let w = min(16, n - j0)
    var k0 = 0
    while k0 < k {
      let kk = min(kc, k - k0)
      var r = 0
      while r < m {
        let rows = min(4, m - r)
        let ap = a + r * lda + k0, bp = b + k0 * ldb + j0, cp = c + r * ldc + j0
        if w == 16 { tile4x16(ap, lda, bp, ldb, kk, cp, ldc, rows: rows) } else { tileEdge(ap, lda, bp, ldb, kk, cp, ldc, rows: rows, cols: w) }
        r += 4
      }
      k0 += kc
    }
    j0 += 16
  }
}

/// One 4 × 16 tile (rows < 4 read the last valid row again and store only the valid ones).
@inline(__always)
private func tile4x16(_ a: UnsafePointer<Double>, _ lda: Int, _ b: UnsafePointer<Double>, _ ldb: Int, _ k: Int,
                      _ c: UnsafeMutablePointer<Double>, _ ldc: Int, rows: Int) {
  let a0 = a, a1 = a + min(1, rows - 1) * lda, a2 = a + min(2, rows - 1) * lda, a3 = a + min(3, rows - 1) * lda
  var c00 = D8(), c01 = D8(), c10 = D8(), c11 = D8(), c20 = D8(), c21 = D8(), c30 = D8(), c31 = D8()
  for p in 0..<k {
    let bp = UnsafeRawPointer(b + p * ldb)
    let b0 = bp.loadUnaligned(as: D8.self), b1 = bp.loadUnaligned(fromByteOffset: 64, as: D8.self)
    let x0 = D8(repeating: a0[p]), x1 = D8(repeating: a1[p]), x2 = D8(repeating: a2[p]), x3 = D8(repeating: a3[p])
    c00 = c00.addingProduct(x0, b0); c01 = c01.addingProduct(x0, b1)
    c10 = c10.addingProduct(x1, b0); c11 = c11.addingProduct(x1, b1)
    c20 = c20.addingProduct(x2, b0); c21 = c21.addingProduct(x2, b1)
    c30 = c30.addingProduct(x3, b0); c31 = c31.addingProduct(x3, b1)
  }
  @inline(__always) func store(_ r: Int, _ v0: D8, _ v1: D8) {
    let cp = UnsafeMutableRawPointer(c + r * ldc)
    cp.storeBytes(of: cp.loadUnaligned(as: D8.self) - v0, as: D8.self)
    cp.storeBytes(of: cp.loadUnaligned(fromByteOffset: 64, as: D8.self) - v1, toByteOffset: 64, as: D8.self)
  }
  store(0, c00, c01)
  if rows > 1 { store(1, c10, c11) }
  if rows > 2 { store(2, c20, c21) }
  if rows > 3 { store(3, c30, c31) }
}

private func tileEdge(_ a: UnsafePointer<Double>, _ lda: Int, _ b: UnsafePointer<Double>, _ ldb: Int, _ k: Int,
                      _ c: UnsafeMutablePointer<Double>, _ ldc: Int, rows: Int, cols: Int) {
  for r in 0..<rows {
    for j in 0..<cols {
      var s = 0.0
      for p in 0..<k { s += a[r * lda + p] * b[p * ldb + j] }
      c[r * ldc + j] -= s
    }
  }
}

/// Blocked in-place Cholesky (A = L·Lᵀ, L lower; the strict upper triangle is zeroed); false if A is not positive
/// definite. Reads only the lower triangle. Per block of columns [k0, k1): factor the diagonal block, solve the panel
/// below it (rows in parallel), then A[k1..., k1...] −= P·Pᵀ on the lower triangle (bands of 32 rows in parallel).
func choleskyLowerBlocked(_ a: UnsafeMutablePointer<Double>, _ n: Int, block nb: Int = choleskyBlock,
                          pool: ThreadPool = .shared) -> Bool {
  let pt = UnsafeMutablePointer<Double>.allocate(capacity: max(1, nb * n)); defer { pt.deallocate() }
  var k0 = 0
  while k0 < n {
    let k1 = min(n, k0 + nb), w = k1 - k0, m = n - k1
    // Diagonal block, unblocked (its earlier columns' updates are already applied).
    for j in k0..<k1 {
      let rj = a + j * n + k0
      let d = rj[j - k0] - dotD(rj, rj, j - k0)
      if !(d > 0) || !d.isFinite { return false }
      rj[j - k0] = d.squareRoot()
      for i in (j + 1)..<max(j + 1, k1) {
        let ri = a + i * n + k0
        ri[j - k0] = (ri[j - k0] - dotD(ri, rj, j - k0)) / rj[j - k0]
      }
    }
    if m > 0 {
      // Panel: row i of A[k1..., k0..<k1] becomes row i of P = A·L_kk⁻ᵀ; Pt (w × m) is its transpose.
      let threads = pool.threads
      pool.run(parts: threads) { t in
        let lo = k1 + m * t / threads, hi = k1 + m * (t + 1) / threads
        for i in lo..<hi {
          let ri = a + i * n + k0
          for j in 0..<w {
            let rj = a + (k0 + j) * n + k0
            ri[j] = (ri[j] - dotD(ri, rj, j)) / rj[j]
            pt[j * m + (i - k1)] = ri[j]
          }
        }
      }
      // Trailing update on the lower triangle, bands of 32 rows dealt round-robin (a band's work grows with its row).
      let band = 32, bands = (m + band - 1) / band
      pool.run(parts: min(threads, bands)) { t in
        var bi = t
        while bi < bands {
          let r0 = k1 + bi * band, rows = min(band, n - r0)
          subtractProduct(a + r0 * n + k1, n, a + r0 * n + k0, n, pt, m, m: rows, n: r0 + rows - k1, k: w)
          bi += min(threads, bands)
        }
      }
    }
    k0 = k1
  }
  for i in 0..<n { (a + i * n + i + 1).update(repeating: 0, count: n - i - 1) }
  return true
}

/// In-place inverse of a lower-triangular L with a zero strict upper triangle (it stays zero). Row blocks I in order:
/// T = −L[I, ..<i0]·X[..<i0, ..<i0] (X = L⁻¹ for the rows above, already in place; column tiles in parallel), then
/// X[I, ..<i0] = X_II·T and X_II = L_II⁻¹ (unblocked).
func invertLowerBlocked(_ l: UnsafeMutablePointer<Double>, _ n: Int, block nb: Int = choleskyBlock, pool: ThreadPool = .shared) {
  let t = UnsafeMutablePointer<Double>.allocate(capacity: max(1, nb * n)); defer { t.deallocate() }
  let xii = UnsafeMutablePointer<Double>.allocate(capacity: nb * nb); defer { xii.deallocate() }
  var i0 = 0
  while i0 < n {
    let i1 = min(n, i0 + nb), h = i1 - i0
    // X_II = L_II⁻¹ by forward substitution, one row at a time (row r needs the rows above it).
    xii.update(repeating: 0, count: nb * nb)
    for r in 0..<h {
      let lr = l + (i0 + r) * n + i0
      let d = 1 / lr[r]
      for j in 0..<r {
        var s = 0.0
        for k in j..<r { s += lr[k] * xii[k * nb + j] }
        xii[r * nb + j] = -s * d
      }
      xii[r * nb + r] = d
    }
    if i0 > 0 {
      let tiles = (i0 + 15) / 16, threads = min(pool.threads, tiles)
      t.update(repeating: 0, count: h * i0)
      // T[:, j0..<j0+16] −= L[I, j0..<i0]·X[j0..<i0, tile] (X's rows above j0 are zero in these columns).
      pool.run(parts: threads) { p in
        var tile = p
        while tile < tiles {
          let j0 = tile * 16, w = min(16, i0 - j0)
          subtractProduct(t + j0, i0, l + i0 * n + j0, n, l + j0 * n + j0, n, m: h, n: w, k: i0 - j0)
          tile += threads
        }
      }
      // X[I, ..<i0] = X_II·T, written over L[I, ..<i0] (no longer needed): zero it, then subtract (−X_II)·T.
      for r in 0..<h { (l + (i0 + r) * n).update(repeating: 0, count: i0) }
      let neg = UnsafeMutablePointer<Double>.allocate(capacity: h * h); defer { neg.deallocate() }
      for r in 0..<h { for c in 0..<h { neg[r * h + c] = -xii[r * nb + c] } }
      pool.run(parts: threads) { p in
        var tile = p
        while tile < tiles {
          let j0 = tile * 16, w = min(16, i0 - j0)
          subtractProduct(l + i0 * n + j0, n, neg, h, t + j0, i0, m: h, n: w, k: h)
          tile += threads
        }
      }
    }
    for r in 0..<h { for c in 0...r { l[(i0 + r) * n + i0 + c] = xii[r * nb + c] } }
    i0 = i1
  }
}

/// Unblocked in-place inverse of a lower-triangular matrix (the scalar twin of `invertLowerBlocked`).
func invertLowerScalar(_ l: UnsafeMutablePointer<Double>, _ n: Int) {
  let row = UnsafeMutablePointer<Double>.allocate(capacity: max(1, n)); defer { row.deallocate() }
  for i in 0..<n {
    let xi = l + i * n
    row.update(repeating: 0, count: i + 1)
    row[i] = 1
    for k in 0..<i where xi[k] != 0 { axpyD(-xi[k], l + k * n, row, k + 1) }
    let d = 1 / xi[i]
    for j in 0...i { xi[j] = row[j] * d }
  }
}

// W4A16 (qserve.md §2.6; AWQ/GPTQ weight-only checkpoints): the asymmetric uint4 weights of PackedW4A8's float mode
// (same streaming layout, fp scale s_g and post-scale zero z_g per row and group) times fp32 activations:
//   y = Σ_g (s_g·Σ_{i∈g} q_i·x_i − z_g·Σ_{i∈g} x_i)  with the inner sums in fp32 FMAs.
// Codes become floats in registers (shift, mask, convert), 16 output rows per zmm as in the integer kernels.
#if QOQ_AVX512
import _Builtin_intrinsics.intel
#endif

extension PackedW4A8 {
  /// y (m, ldy) ← x (m, k) · Ŵᵀ (+ bias) with fp32 activations. Float group mode only.
  public func forwardFP(_ x: UnsafePointer<Float>, rows m: Int, _ y: UnsafeMutablePointer<Float>, ldy: Int) {
    precondition(!integerGroups, "W4A16 needs fp group parameters (asymmetric uint4)")
    if m == 0 { return }
    let gs = groupSums(x, rows: m); defer { gs.deallocate() }
    ThreadPool.shared.parts(blocks) { range in
      #if QOQ_AVX512
      forEachWeightRun(range, blockBytes: self.k * 8, tokens: m) { r, rows, run in
        self.fpKernel4(x, gs, r, run.lowerBound, run.upperBound, y, ldy, rows: rows)
      }
      #elseif QOQ_AVX2
      forEachWeightRun(range, blockBytes: self.k * 8, tokens: m) { r, rows, run in
        self.fpKernel4AVX2(x, gs, r, run.lowerBound, run.upperBound, y, ldy, rows: rows)
      }
      #else
      for r in 0..<m { for rb in range { self.referenceFP(x, gs, r, rb, y, ldy) } }
      #endif
    }
  }

  /// Per-row sums of x over each weight group, (rows, groups); the caller deallocates.
  func groupSums(_ x: UnsafePointer<Float>, rows m: Int) -> UnsafeMutablePointer<Float> {
    let ng = groups
    let gs = UnsafeMutablePointer<Float>.allocate(capacity: max(1, m * ng))
    for r in 0..<m { for g in 0..<ng { var s: Float = 0; for i in 0..<group { s += x[r * k + g * group + i] }; gs[r * ng + g] = s } }
    return gs
  }

  #if QOQ_AVX512
  func fpKernel4(_ x: UnsafePointer<Float>, _ gs: UnsafePointer<Float>, _ r0: Int, _ b0: Int, _ b1: Int,
                 _ y: UnsafeMutablePointer<Float>, _ ldy: Int, rows: Int) {
    let k = self.k, ng = groups, cpg = group / 8
    let mask = _mm512_set1_epi32(0xF)
    // Rows past `rows` read row r0 again (valid memory) and are not stored.
    let x0 = x + r0 * k, x1 = x + (r0 + min(1, rows - 1)) * k, x2 = x + (r0 + min(2, rows - 1)) * k, x3 = x + (r0 + min(3, rows - 1)) * k
    for rb in b0..<b1 {
      var w = UnsafeRawPointer(data + rb * (k / 8) * 64)
      var t0 = _mm512_setzero_ps(), t1 = t0, t2 = t0, t3 = t0
      for g in 0..<ng {
        var p0 = _mm512_setzero_ps(), p1 = p0, p2 = p0, p3 = p0
        var xo = g * group
        for _ in 0..<cpg {
          let v = _mm512_loadu_si512(w)
          for j in 0..<8 {
            // Byte j%4 of each lane: low nibble = input xo+j (j < 4), high nibble = input xo+j (j ≥ 4).
            let shift = Int32(8 * (j % 4) + (j < 4 ? 0 : 4))
            let q = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srl_epi32(v, _mm_cvtsi32_si128(shift)), mask))
            p0 = _mm512_fmadd_ps(q, _mm512_set1_ps(x0[xo + j]), p0)
            p1 = _mm512_fmadd_ps(q, _mm512_set1_ps(x1[xo + j]), p1)
            p2 = _mm512_fmadd_ps(q, _mm512_set1_ps(x2[xo + j]), p2)
            p3 = _mm512_fmadd_ps(q, _mm512_set1_ps(x3[xo + j]), p3)
          }
          w += 64; xo += 8
        }
        let gp = (rb * ng + g) * 32
        let sv = _mm512_loadu_ps(gf + gp), zv = _mm512_loadu_ps(gf + gp + 16)
        let r1 = min(1, rows - 1), r2 = min(2, rows - 1), r3 = min(3, rows - 1)
        t0 = _mm512_fnmadd_ps(zv, _mm512_set1_ps(gs[r0 * ng + g]), _mm512_fmadd_ps(p0, sv, t0))
        t1 = _mm512_fnmadd_ps(zv, _mm512_set1_ps(gs[(r0 + r1) * ng + g]), _mm512_fmadd_ps(p1, sv, t1))
        t2 = _mm512_fnmadd_ps(zv, _mm512_set1_ps(gs[(r0 + r2) * ng + g]), _mm512_fmadd_ps(p2, sv, t2))
        t3 = _mm512_fnmadd_ps(zv, _mm512_set1_ps(gs[(r0 + r3) * ng + g]), _mm512_fmadd_ps(p3, sv, t3))
      }
      emitFP(t0, rb, y, ldy, r0)
      if rows > 1 { emitFP(t1, rb, y, ldy, r0 + 1) }
      if rows > 2 { emitFP(t2, rb, y, ldy, r0 + 2) }
      if rows > 3 { emitFP(t3, rb, y, ldy, r0 + 3) }
    }
  }

  @inline(__always) func emitFP(_ v: __m512, _ rb: Int, _ y: UnsafeMutablePointer<Float>, _ ldy: Int, _ r: Int) {
    var o = v
    if let b = bias { o = _mm512_add_ps(o, _mm512_loadu_ps(b + rb * 16)) }
    _mm512_mask_storeu_ps(y + r * ldy + rb * 16, __mmask16(truncatingIfNeeded: (1 << min(16, n - rb * 16)) - 1), o)
  }
  #endif

  /// Scalar twin: one (token row, row block) from the packed bytes, element by element.
  func referenceFP(_ x: UnsafePointer<Float>, _ gs: UnsafePointer<Float>, _ r: Int, _ rb: Int, _ y: UnsafeMutablePointer<Float>, _ ldy: Int) {
    let ng = groups
    for ri in 0..<min(16, n - rb * 16) {
      var tf: Float = 0
      for g in 0..<ng {
        var p: Float = 0
        for i in (g * group)..<((g + 1) * group) {
          let byte = data[(rb * (k / 8) + i / 8) * 64 + 4 * ri + (i % 8) % 4]
          p += Float(i % 8 < 4 ? byte & 0xF : byte >> 4) * x[r * k + i]
        }
        let gp = (rb * ng + g) * 32 + ri
        tf += p * gf[gp] - gf[gp + 16] * gs[r * ng + g]
      }
      y[r * ldy + rb * 16 + ri] = tf + (bias?[rb * 16 + ri] ?? 0)
    }
  }

  /// The scalar twin over all rows (tests).
  public func forwardFPReference(_ x: UnsafePointer<Float>, rows m: Int, _ y: UnsafeMutablePointer<Float>, ldy: Int) {
    let gs = groupSums(x, rows: m); defer { gs.deallocate() }
    for r in 0..<m { for rb in 0..<blocks { referenceFP(x, gs, r, rb, y, ldy) } }
  }
}

// AVX2 variants of the integer linear kernels, for x86-64 CPUs without AVX-512 (Haswell … Alder Lake, Zen 1–3;
// issue #17). The packed layouts are the AVX-512 kernels' own; a ymm holds 8 int32 lanes, i.e. half of a
// [16 rows × 8 inputs] 64-byte block (bytes 0–31 are rows 0–7, bytes 32–63 rows 8–15). vpdpbusd becomes vpmaddubsw
// (u8·s8 pairs → int16) then vpmaddwd with ones (int16 pairs → int32), which is exact here:
//  - 4-bit codes: u ≤ 15 and |x| ≤ 128, so a pair is ≤ 3,840 and the lo+hi pairs of 4 chunks (≤ 30,720) are summed
//    in int16 before one widening per 32 inputs;
//  - W8A8: the weights are signed (stored +128), so |w| is the unsigned operand and x·sign(w) the signed one (vpsignb):
//    a pair is ≤ 2·128·127 = 32,512, widened every chunk.
// Results equal the AVX-512 kernels': integer accumulators bit for bit, the same fp epilogue operations.
#if QOQ_AVX2
import _Builtin_intrinsics.intel

@inline(__always) func bcast4(_ p: UnsafeRawPointer, _ o: Int) -> __m256i {
  _mm256_set1_epi32(p.loadUnaligned(fromByteOffset: o, as: Int32.self))
}
@inline(__always) func load256(_ p: UnsafeRawPointer, _ o: Int = 0) -> __m256i { p.loadUnaligned(fromByteOffset: o, as: __m256i.self) }
/// 8 int8 group parameters widened to int32 lanes.
@inline(__always) func int8x8(_ p: UnsafePointer<Int8>) -> __m256i {
  _mm256_cvtepi8_epi32(_mm_set1_epi64x(UnsafeRawPointer(p).loadUnaligned(as: Int64.self)))
}
@inline(__always) func loadPS(_ p: UnsafePointer<Float>) -> __m256 { _mm256_loadu_ps(p) }
/// Σ of u8·s8 products over each 4-byte lane, widened to int32 (the AVX2 spelling of vpdpbusd without accumulate).
@inline(__always) func widen16(_ s: __m256i) -> __m256i { _mm256_madd_epi16(s, _mm256_set1_epi16(1)) }
@inline(__always) func nibbleDot(_ v: __m256i, _ xl: __m256i, _ xh: __m256i) -> __m256i {
  let mask = _mm256_set1_epi8(0x0F)
  return _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(v, mask), xl),
                          _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), mask), xh))
}

/// y[0..<cnt] = v (cnt ≥ 1; a masked store below 8).
@inline(__always) func store8(_ v: __m256, _ y: UnsafeMutablePointer<Float>, _ cnt: Int) {
  if cnt >= 8 { _mm256_storeu_ps(y, v); return }
  _mm256_maskstore_ps(y, _mm256_cmpgt_epi32(_mm256_set1_epi32(Int32(cnt)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)), v)
}

extension PackedW4A8 {
  /// y[r][o0 …] = v·α·s_x (+ bias), clipped at n; o0 = 16·rb + 8·h.
  @inline(__always) func emit8(_ v: __m256, _ a: QuantizedRows, _ o0: Int, _ y: UnsafeMutablePointer<Float>, _ ldy: Int, _ r: Int) {
    var o = _mm256_mul_ps(_mm256_mul_ps(v, loadPS(alpha + o0)), _mm256_set1_ps(a.scale[r]))
    if let b = bias { o = _mm256_add_ps(o, loadPS(b + o0)) }
    store8(o, y + r * ldy + o0, n - o0)
  }

  /// Group epilogue of 8 rows whose parameters start at gp (s2/s at gp, z at gp + 16), Σx of the group = s.
  @inline(__always) func epilogueInt(_ t: __m256i, _ p: __m256i, _ gp: Int, _ s: Int32) -> __m256i {
    _mm256_add_epi32(t, _mm256_sub_epi32(_mm256_mullo_epi32(p, int8x8(gi + gp)), _mm256_mullo_epi32(int8x8(gi + gp + 16), _mm256_set1_epi32(s))))
  }
  @inline(__always) func epilogueFP(_ t: __m256, _ p: __m256i, _ gp: Int, _ s: Int32) -> __m256 {
    _mm256_fnmadd_ps(loadPS(gf + gp + 16), _mm256_set1_ps(Float(s)), _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), loadPS(gf + gp), t))
  }

  /// One token row (decode GEMV) over row blocks b0..<b1: both halves of each block in one pass over the weights.
  func kernel1AVX2(_ a: QuantizedRows, _ b0: Int, _ b1: Int, _ y: UnsafeMutablePointer<Float>, _ ldy: Int) {
    let k = self.k, ng = groups, quads = group / 32
    let x = UnsafeRawPointer(a.codes)
    for rb in b0..<b1 {
      var w = UnsafeRawPointer(data + rb * (k / 8) * 64)
      var ti0 = _mm256_setzero_si256(), ti1 = ti0
      var tf0 = _mm256_setzero_ps(), tf1 = tf0
      for g in 0..<ng {
        var p0 = _mm256_setzero_si256(), p1 = p0
        var xo = g * group
        for _ in 0..<quads {
          var s0 = _mm256_setzero_si256(), s1 = s0
          for u in 0..<4 {
            let xl = bcast4(x, xo + 8 * u), xh = bcast4(x, xo + 8 * u + 4)
            s0 = _mm256_add_epi16(s0, nibbleDot(load256(w, 64 * u), xl, xh))
            s1 = _mm256_add_epi16(s1, nibbleDot(load256(w, 64 * u + 32), xl, xh))
          }
          p0 = _mm256_add_epi32(p0, widen16(s0)); p1 = _mm256_add_epi32(p1, widen16(s1))
          w += 256; xo += 32
        }
        let s = a.sum(0, g * group, group), gp = (rb * ng + g) * 32
        if integerGroups { ti0 = epilogueInt(ti0, p0, gp, s); ti1 = epilogueInt(ti1, p1, gp + 8, s) }
        else { tf0 = epilogueFP(tf0, p0, gp, s); tf1 = epilogueFP(tf1, p1, gp + 8, s) }
      }
      if integerGroups { tf0 = _mm256_cvtepi32_ps(ti0); tf1 = _mm256_cvtepi32_ps(ti1) }
      emit8(tf0, a, rb * 16, y, ldy, 0)
      if rb * 16 + 8 < n { emit8(tf1, a, rb * 16 + 8, y, ldy, 0) }
    }
  }

  /// Four token rows r0..<r0+4 (rows beyond `rows` are padding, not stored), one half block (8 rows) at a time.
  func kernel4AVX2(_ a: QuantizedRows, _ r0: Int, _ b0: Int, _ b1: Int, _ y: UnsafeMutablePointer<Float>, _ ldy: Int, rows: Int) {
    let k = self.k, ng = groups, quads = group / 32
    let x0 = UnsafeRawPointer(a.codes + r0 * k), x1 = x0 + k, x2 = x1 + k, x3 = x2 + k
    for rb in b0..<b1 {
      for h in 0..<2 where rb * 16 + 8 * h < n {
        var w = UnsafeRawPointer(data + rb * (k / 8) * 64 + 32 * h)
        var ti0 = _mm256_setzero_si256(), ti1 = ti0, ti2 = ti0, ti3 = ti0
        var tf0 = _mm256_setzero_ps(), tf1 = tf0, tf2 = tf0, tf3 = tf0
        for g in 0..<ng {
          var p0 = _mm256_setzero_si256(), p1 = p0, p2 = p0, p3 = p0
          var xo = g * group
          for _ in 0..<quads {
            var s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0
            for u in 0..<4 {
              let v = load256(w, 64 * u), o = xo + 8 * u
              s0 = _mm256_add_epi16(s0, nibbleDot(v, bcast4(x0, o), bcast4(x0, o + 4)))
              s1 = _mm256_add_epi16(s1, nibbleDot(v, bcast4(x1, o), bcast4(x1, o + 4)))
              s2 = _mm256_add_epi16(s2, nibbleDot(v, bcast4(x2, o), bcast4(x2, o + 4)))
              s3 = _mm256_add_epi16(s3, nibbleDot(v, bcast4(x3, o), bcast4(x3, o + 4)))
            }
            p0 = _mm256_add_epi32(p0, widen16(s0)); p1 = _mm256_add_epi32(p1, widen16(s1))
            p2 = _mm256_add_epi32(p2, widen16(s2)); p3 = _mm256_add_epi32(p3, widen16(s3))
            w += 256; xo += 32
          }
          let gp = (rb * ng + g) * 32 + 8 * h, k0 = g * group
          let q0 = a.sum(r0, k0, group), q1 = a.sum(r0 + 1, k0, group), q2 = a.sum(r0 + 2, k0, group), q3 = a.sum(r0 + 3, k0, group)
          if integerGroups {
            ti0 = epilogueInt(ti0, p0, gp, q0); ti1 = epilogueInt(ti1, p1, gp, q1)
            ti2 = epilogueInt(ti2, p2, gp, q2); ti3 = epilogueInt(ti3, p3, gp, q3)
          } else {
            tf0 = epilogueFP(tf0, p0, gp, q0); tf1 = epilogueFP(tf1, p1, gp, q1)
            tf2 = epilogueFP(tf2, p2, gp, q2); tf3 = epilogueFP(tf3, p3, gp, q3)
          }
        }
        if integerGroups {
          tf0 = _mm256_cvtepi32_ps(ti0); tf1 = _mm256_cvtepi32_ps(ti1); tf2 = _mm256_cvtepi32_ps(ti2); tf3 = _mm256_cvtepi32_ps(ti3)
        }
        let o0 = rb * 16 + 8 * h
        emit8(tf0, a, o0, y, ldy, r0)
        if rows > 1 { emit8(tf1, a, o0, y, ldy, r0 + 1) }
        if rows > 2 { emit8(tf2, a, o0, y, ldy, r0 + 2) }
        if rows > 3 { emit8(tf3, a, o0, y, ldy, r0 + 3) }
      }
    }
  }

  /// W4A16: four fp32 token rows (rows past `rows` re-read row r0's last valid row and are not stored).
  func fpKernel4AVX2(_ x: UnsafePointer<Float>, _ gs: UnsafePointer<Float>, _ r0: Int, _ b0: Int, _ b1: Int,
                     _ y: UnsafeMutablePointer<Float>, _ ldy: Int, rows: Int) {
    let k = self.k, ng = groups, cpg = group / 8
    let mask = _mm256_set1_epi32(0xF)
    let r1 = min(1, rows - 1), r2 = min(2, rows - 1), r3 = min(3, rows - 1)
    let x0 = x + r0 * k, x1 = x + (r0 + r1) * k, x2 = x + (r0 + r2) * k, x3 = x + (r0 + r3) * k
    for rb in b0..<b1 {
      for h in 0..<2 where rb * 16 + 8 * h < n {
        var w = UnsafeRawPointer(data + rb * (k / 8) * 64 + 32 * h)
        var t0 = _mm256_setzero_ps(), t1 = t0, t2 = t0, t3 = t0
        for g in 0..<ng {
          var p0 = _mm256_setzero_ps(), p1 = p0, p2 = p0, p3 = p0
          var xo = g * group
          for _ in 0..<cpg {
            let v = load256(w)
            for j in 0..<8 {
              // Byte j%4 of each lane: low nibble = input xo+j (j < 4), high nibble = input xo+j (j ≥ 4).
              let shift = Int32(8 * (j % 4) + (j < 4 ? 0 : 4))
              let q = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srl_epi32(v, _mm_cvtsi32_si128(shift)), mask))
              p0 = _mm256_fmadd_ps(q, _mm256_set1_ps(x0[xo + j]), p0)
              p1 = _mm256_fmadd_ps(q, _mm256_set1_ps(x1[xo + j]), p1)
              p2 = _mm256_fmadd_ps(q, _mm256_set1_ps(x2[xo + j]), p2)
              p3 = _mm256_fmadd_ps(q, _mm256_set1_ps(x3[xo + j]), p3)
            }
            w += 64; xo += 8
          }
          let gp = (rb * ng + g) * 32 + 8 * h
          let sv = loadPS(gf + gp), zv = loadPS(gf + gp + 16)
          t0 = _mm256_fnmadd_ps(zv, _mm256_set1_ps(gs[r0 * ng + g]), _mm256_fmadd_ps(p0, sv, t0))
          t1 = _mm256_fnmadd_ps(zv, _mm256_set1_ps(gs[(r0 + r1) * ng + g]), _mm256_fmadd_ps(p1, sv, t1))
          t2 = _mm256_fnmadd_ps(zv, _mm256_set1_ps(gs[(r0 + r2) * ng + g]), _mm256_fmadd_ps(p2, sv, t2))
          t3 = _mm256_fnmadd_ps(zv, _mm256_set1_ps(gs[(r0 + r3) * ng + g]), _mm256_fmadd_ps(p3, sv, t3))
        }
        let o0 = rb * 16 + 8 * h
        @inline(__always) func put(_ t: __m256, _ i: Int) {
          store8(bias.map { _mm256_add_ps(t, loadPS($0 + o0)) } ?? t, y + (r0 + i) * ldy + o0, n - o0)
        }
        put(t0, 0)
        if rows > 1 { put(t1, 1) }
        if rows > 2 { put(t2, 2) }
        if rows > 3 { put(t3, 3) }
      }
    }
  }
}

extension PackedW8A8 {
  /// One or four token rows r0..<r0+rows (1 ≤ rows ≤ 4; the 4-row loop reads padding rows, never stored).
  func kernelAVX2(_ a: QuantizedRows, _ r0: Int, _ b0: Int, _ b1: Int, _ y: UnsafeMutablePointer<Float>, _ ldy: Int, rows: Int) {
    let k = self.k, flip = _mm256_set1_epi8(-128)
    let x0 = UnsafeRawPointer(a.codes + r0 * k), x1 = x0 + k, x2 = x1 + k, x3 = x2 + k
    for rb in b0..<b1 {
      for h in 0..<2 where rb * 16 + 8 * h < n {
        var w = UnsafeRawPointer(data + rb * (k / 4) * 64 + 32 * h)
        var p0 = _mm256_setzero_si256(), p1 = p0, p2 = p0, p3 = p0
        if rows == 1 {
          for xo in stride(from: 0, to: k, by: 4) {
            let v = _mm256_xor_si256(load256(w), flip), u = _mm256_sign_epi8(v, v)
            p0 = _mm256_add_epi32(p0, widen16(_mm256_maddubs_epi16(u, _mm256_sign_epi8(bcast4(x0, xo), v))))
            w += 64
          }
        } else {
          for xo in stride(from: 0, to: k, by: 4) {
            let v = _mm256_xor_si256(load256(w), flip), u = _mm256_sign_epi8(v, v)
            p0 = _mm256_add_epi32(p0, widen16(_mm256_maddubs_epi16(u, _mm256_sign_epi8(bcast4(x0, xo), v))))
            p1 = _mm256_add_epi32(p1, widen16(_mm256_maddubs_epi16(u, _mm256_sign_epi8(bcast4(x1, xo), v))))
            p2 = _mm256_add_epi32(p2, widen16(_mm256_maddubs_epi16(u, _mm256_sign_epi8(bcast4(x2, xo), v))))
            p3 = _mm256_add_epi32(p3, widen16(_mm256_maddubs_epi16(u, _mm256_sign_epi8(bcast4(x3, xo), v))))
            w += 64
          }
        }
        let o0 = rb * 16 + 8 * h
        // Σ w·x directly (the AVX-512 kernel's acc − 128·Σx), then ·s_w·s_x (+ bias) in the same order.
        @inline(__always) func put(_ p: __m256i, _ i: Int) {
          var o = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(p), loadPS(scale + o0)), _mm256_set1_ps(a.scale[r0 + i]))
          if let b = bias { o = _mm256_add_ps(o, loadPS(b + o0)) }
          store8(o, y + (r0 + i) * ldy + o0, n - o0)
        }
        put(p0, 0)
        if rows > 1 { put(p1, 1) }
        if rows > 2 { put(p2, 2) }
        if rows > 3 { put(p3, 3) }
      }
    }
  }
}

/// max |x[i]| over the first k8 = k rounded down to 8 values (the caller finishes the tail).
@inline(__always) func absMaxAVX2(_ x: UnsafePointer<Float>, _ k8: Int) -> Float {
  let absMask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF))
  var vm = _mm256_setzero_ps()
  for i in stride(from: 0, to: k8, by: 8) { vm = _mm256_max_ps(vm, _mm256_and_ps(loadPS(x + i), absMask)) }
  return vm.max()
}

/// int8 codes clamp(rne(x/s), −127, 127) of k values (k a multiple of 32) and their sums per 32-value block.
func quantizeCodesAVX2(_ x: UnsafePointer<Float>, _ s: Float, _ k: Int, _ c: UnsafeMutablePointer<Int8>, _ bs: UnsafeMutablePointer<Int32>) {
  let vs = _mm256_set1_ps(s), lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127)
  // packs_epi32 then packs_epi16 interleave the 128-bit lanes: dwords come out as q0a q1a q2a q3a q0b q1b q2b q3b.
  let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)
  for b0 in stride(from: 0, to: k, by: 32) {
    // x/s (a true division, as the fake quantizer does), round half to even (vcvtps2dq's default mode), clamp.
    @inline(__always) func code(_ o: Int) -> __m256i {
      _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_div_ps(loadPS(x + b0 + o), vs)), lo), hi)
    }
    let q0 = code(0), q1 = code(8), q2 = code(16), q3 = code(24)
    let sum = _mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3))
    bs[b0 / 32] = unsafeBitCast(sum, to: SIMD8<Int32>.self).wrappedSum()
    let packed = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3)), order)
    UnsafeMutableRawPointer(c + b0).storeBytes(of: packed, as: __m256i.self)
  }
}
#endif

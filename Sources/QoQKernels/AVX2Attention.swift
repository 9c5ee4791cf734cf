// AVX2 variants of the paged-attention helpers (PagedAttention.swift has the AVX-512 ones and the scalar twins):
// the same page layouts (KVPages.swift), 16 tokens per tile as two ymm halves (tokens 0–7, 8–15).
// Integer KV4 scores use vpmaddubsw + vpmaddwd (4-bit codes × int8 query: exact, see AVX2Linear.swift), so the
// score function is the AVX-512 kernel's, integer accumulators bit for bit.
#if QOQ_AVX2
import _Builtin_intrinsics.intel

/// Integer scores of all queries for tokens t0..<t0+16 of a KV4 K page: codes unpacked once into the tile
/// (per 8-channel chunk c: low nibbles of tokens 0–7, 8–15, then high nibbles, 128 bytes), then per query
/// 4 vpmaddubsw per chunk, widened to int32 every 4 chunks.
func scoresInt4(_ f: KVPageFormat, _ page: UnsafeRawPointer, _ h: Int, _ t0: Int, _ sc: AttentionScratch, nq: Int,
                scale: Float, out: UnsafeMutablePointer<Float>, ldo: Int) {
  let D = f.headDim, P = f.pageSize, codes = page + h * f.codeBytesPerHead
  let mask = _mm256_set1_epi8(0x0F)
  let tile = UnsafeMutableRawPointer(sc.tile)
  for c in 0..<(D / 8) {
    for half in 0..<2 {
      let v = load256(codes, (c * P + t0) * 4 + 32 * half)
      tile.storeBytes(of: _mm256_and_si256(v, mask), toByteOffset: c * 128 + 32 * half, as: __m256i.self)
      tile.storeBytes(of: _mm256_and_si256(_mm256_srli_epi16(v, 4), mask), toByteOffset: c * 128 + 64 + 32 * half, as: __m256i.self)
    }
  }
  let sp = f.scales(page) + h * P + t0, zp = f.zeros(page) + h * P + t0
  let s0 = loadPS(sp), s1 = loadPS(sp + 8), z0 = loadPS(zp), z1 = loadPS(zp + 8)
  for i in 0..<nq {
    let q8 = UnsafeRawPointer(sc.q8 + i * D)
    var a0 = _mm256_setzero_si256(), a1 = a0
    for c4 in stride(from: 0, to: D / 8, by: 4) {
      var u0 = _mm256_setzero_si256(), u1 = u0
      for c in c4..<(c4 + 4) {
        let xl = bcast4(q8, 8 * c), xh = bcast4(q8, 8 * c + 4), tc = UnsafeRawPointer(tile + c * 128)
        u0 = _mm256_add_epi16(u0, _mm256_add_epi16(_mm256_maddubs_epi16(load256(tc), xl), _mm256_maddubs_epi16(load256(tc, 64), xh)))
        u1 = _mm256_add_epi16(u1, _mm256_add_epi16(_mm256_maddubs_epi16(load256(tc, 32), xl), _mm256_maddubs_epi16(load256(tc, 96), xh)))
      }
      a0 = _mm256_add_epi32(a0, widen16(u0)); a1 = _mm256_add_epi32(a1, widen16(u1))
    }
    // sq·(s·acc − z·Σq8)·scale
    let qs = _mm256_set1_ps(sc.qInfo[2 * i + 1]), m = _mm256_set1_ps(sc.qInfo[2 * i] * scale)
    _mm256_storeu_ps(out + i * ldo, _mm256_mul_ps(_mm256_fmsub_ps(s0, _mm256_cvtepi32_ps(a0), _mm256_mul_ps(z0, qs)), m))
    _mm256_storeu_ps(out + i * ldo + 8, _mm256_mul_ps(_mm256_fmsub_ps(s1, _mm256_cvtepi32_ps(a1), _mm256_mul_ps(z1, qs)), m))
  }
}

/// K of tokens t0..<t0+16 of head h as a [D][16] fp32 tile.
@inline(__always) func decodeKTileAVX2(_ f: KVPageFormat, _ page: UnsafeRawPointer, _ h: Int, _ t0: Int, _ tile: UnsafeMutablePointer<Float>) {
  let D = f.headDim, P = f.pageSize, codes = page + h * f.codeBytesPerHead
  switch f.mode {
  case .fp16:
    for d in 0..<D {
      for half in 0..<2 {
        let v = codes.loadUnaligned(fromByteOffset: (d * P + t0 + 8 * half) * 2, as: __m128i.self)
        _mm256_storeu_ps(tile + d * 16 + 8 * half, _mm256_cvtph_ps(v))
      }
    }
  case .kv4, .kv8:
    let four = f.mode == .kv4
    let mask = _mm256_set1_epi32(four ? 0xF : 0xFF)
    let sp = f.scales(page) + h * P + t0, zp = f.zeros(page) + h * P + t0
    for half in 0..<2 {
      let s = loadPS(sp + 8 * half), z = loadPS(zp + 8 * half)
      for c in 0..<(D / (four ? 8 : 4)) {
        let v = load256(codes, (c * P + t0) * 4 + 32 * half)
        for j in 0..<4 {
          let lo = _mm256_and_si256(_mm256_srl_epi32(v, _mm_cvtsi32_si128(Int32(8 * j))), mask)
          let dl = four ? 8 * c + j : 4 * c + j
          _mm256_storeu_ps(tile + dl * 16 + 8 * half, _mm256_fmsub_ps(_mm256_cvtepi32_ps(lo), s, z))
          if four {
            let hi = _mm256_and_si256(_mm256_srl_epi32(v, _mm_cvtsi32_si128(Int32(8 * j + 4))), mask)
            _mm256_storeu_ps(tile + (8 * c + 4 + j) * 16 + 8 * half, _mm256_fmsub_ps(_mm256_cvtepi32_ps(hi), s, z))
          }
        }
      }
    }
  }
}

/// 16 scores (one per token of the tile) of query q.
@inline(__always) func scoresFromTileAVX2(_ tile: UnsafePointer<Float>, _ q: UnsafePointer<Float>, _ D: Int, _ scale: Float,
                                          _ out: UnsafeMutablePointer<Float>) {
  var a0 = _mm256_setzero_ps(), a1 = a0, b0 = a0, b1 = a0
  for d in stride(from: 0, to: D, by: 2) {
    let q0 = _mm256_set1_ps(q[d]), q1 = _mm256_set1_ps(q[d + 1])
    a0 = _mm256_fmadd_ps(q0, loadPS(tile + d * 16), a0); a1 = _mm256_fmadd_ps(q0, loadPS(tile + d * 16 + 8), a1)
    b0 = _mm256_fmadd_ps(q1, loadPS(tile + d * 16 + 16), b0); b1 = _mm256_fmadd_ps(q1, loadPS(tile + d * 16 + 24), b1)
  }
  let vs = _mm256_set1_ps(scale)
  _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_add_ps(a0, b0), vs))
  _mm256_storeu_ps(out + 8, _mm256_mul_ps(_mm256_add_ps(a1, b1), vs))
}

/// V of token t of head h, dequantized into row (D floats).
@inline(__always) func decodeVRowAVX2(_ f: KVPageFormat, _ page: UnsafeRawPointer, _ h: Int, _ t: Int, _ row: UnsafeMutablePointer<Float>) {
  let D = f.headDim, P = f.pageSize, codes = page + h * f.codeBytesPerHead
  // Eight bytes, zero-extended to 8 int32 lanes (never reads past them).
  @inline(__always) func bytes8(_ o: Int) -> __m256i {
    _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(codes.loadUnaligned(fromByteOffset: o, as: Int64.self)))
  }
  switch f.mode {
  case .fp16:
    for d in stride(from: 0, to: D, by: 8) {
      _mm256_storeu_ps(row + d, _mm256_cvtph_ps(codes.loadUnaligned(fromByteOffset: (t * D + d) * 2, as: __m128i.self)))
    }
  case .kv4:
    let s = _mm256_set1_ps(f.scales(page)[h * P + t]), z = _mm256_set1_ps(f.zeros(page)[h * P + t])
    let mask = _mm256_set1_epi32(0xF)
    for j in stride(from: 0, to: D / 2, by: 8) {
      let v = bytes8(t * D / 2 + j)
      _mm256_storeu_ps(row + j, _mm256_fmsub_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v, mask)), s, z))
      _mm256_storeu_ps(row + D / 2 + j, _mm256_fmsub_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4)), s, z))
    }
  case .kv8:
    let s = _mm256_set1_ps(f.scales(page)[h * P + t]), z = _mm256_set1_ps(f.zeros(page)[h * P + t])
    for d in stride(from: 0, to: D, by: 8) { _mm256_storeu_ps(row + d, _mm256_fmsub_ps(_mm256_cvtepi32_ps(bytes8(t * D + d)), s, z)) }
  }
}

/// y[0..<n] += a·x[0..<n] (n a multiple of 8).
@inline(__always) func axpyAVX2(_ a: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
  let va = _mm256_set1_ps(a)
  for d in stride(from: 0, to: n, by: 8) { _mm256_storeu_ps(y + d, _mm256_fmadd_ps(va, loadPS(x + d), loadPS(y + d))) }
}
#endif

// Attention of a set of queries (the g query heads of one KV head, times one or more positions) over one sequence's
// KV pages (qserve.md §4.4, §8.1). Query i sees the first visible[i] tokens (causal prefill: its position + 1;
// decode: the whole context). Two score paths:
//  - integer (KV4, the default): q quantized per query to int8 (sq = max|q|/127), codes as the unsigned operand of
//    vpdpbusd: score_t = sq·(s_t·Σ_d q8_d·c_td − z_t·Σ_d q8_d)·(1/√D) — the per-channel GEMM trick applied to K;
//  - fp32: K decoded 16 tokens at a time into a [D][16] tile, 16 scores per FMA chain (any mode; the reference).
// Softmax in fp32, then out_i = Σ_t p_it·v̂_t with each token's V decoded once for all queries.
import Foundation
#if QOQ_AVX512 || QOQ_AVX2
import _Builtin_intrinsics.intel
#endif

/// Buffers for one thread's attention calls (allocated once, grown on demand).
public final class AttentionScratch: @unchecked Sendable {
  var scores: UnsafeMutablePointer<Float>
  var scoreCapacity = 0
  let tile: UnsafeMutablePointer<Float>      // [D][16] floats (fp path) or D/4 zmm of codes (integer path)
  let vrow: UnsafeMutablePointer<Float>      // D
  var q8: UnsafeMutablePointer<Int8>
  var qInfo: UnsafeMutablePointer<Float>     // per query: sq, Σq8
  var queryCapacity = 0
  let headDim: Int

  public init(headDim: Int) {
    self.headDim = headDim
    scores = .allocate(capacity: 1); tile = .allocate(capacity: headDim * 16); vrow = .allocate(capacity: headDim)
    q8 = .allocate(capacity: 1); qInfo = .allocate(capacity: 1)
  }
  deinit { scores.deallocate(); tile.deallocate(); vrow.deallocate(); q8.deallocate(); qInfo.deallocate() }

  func reserve(queries nq: Int, stride: Int) {
    if nq * stride > scoreCapacity { scores.deallocate(); scoreCapacity = nq * stride * 2; scores = .allocate(capacity: scoreCapacity) }
    if nq > queryCapacity {
      q8.deallocate(); qInfo.deallocate(); queryCapacity = nq * 2
      q8 = .allocate(capacity: queryCapacity * headDim); qInfo = .allocate(capacity: queryCapacity * 2)
    }
  }
}

/// out[i] (D, row stride outStride) ← attention of q[i] (D, row stride qStride) over the pages of head h.
/// `kPages[p]`/`vPages[p]` are the bases of the sequence's p-th K/V page of this layer.
public func pagedAttention(_ f: KVPageFormat, kPages: [UnsafeRawPointer], vPages: [UnsafeRawPointer], head h: Int,
                           q: UnsafePointer<Float>, qStride: Int, nq: Int, visible: [Int], scale: Float,
                           integerScores: Bool, out: UnsafeMutablePointer<Float>, outStride: Int, scratch sc: AttentionScratch) {
  let D = f.headDim, P = f.pageSize
  let L = visible.max() ?? 0
  precondition(visible.count == nq && L <= kPages.count * P && L <= vPages.count * P)
  let stride = (L + 15) / 16 * 16
  sc.reserve(queries: nq, stride: stride)
  let scores = sc.scores
  let useInt = integerScores && f.mode == .kv4
  if useInt { for i in 0..<nq { quantizeQuery(q + i * qStride, D, sc.q8 + i * D, sc.qInfo + 2 * i) } }
  #if !QOQ_AVX512 && !QOQ_AVX2
  // Without VNNI or AVX2 the integer-score function is computed in fp32 from the int8 query (q8 · sq), as the twin does: the
  // same scores as the integer kernel up to fp32 rounding.
  var qDequant: [Float] = []
  if useInt { qDequant = (0..<(nq * D)).map { Float(sc.q8[$0]) * sc.qInfo[2 * ($0 / D)] } }
  #endif
  // Scores, 16 tokens at a time.
  for tg in 0..<(stride / 16) {
    let page = kPages[tg * 16 / P], t0 = tg * 16 % P
    #if QOQ_AVX512 || QOQ_AVX2
    if useInt { scoresInt4(f, page, h, t0, sc, nq: nq, scale: scale, out: scores + tg * 16, ldo: stride); continue }
    #endif
    decodeKTile(f, page, h, t0, sc.tile)
    #if !QOQ_AVX512 && !QOQ_AVX2
    if useInt {
      qDequant.withUnsafeBufferPointer { qd in
        for i in 0..<nq { scoresFromTile(sc.tile, qd.baseAddress! + i * D, D, scale, scores + i * stride + tg * 16) }
      }
      continue
    }
    #endif
    for i in 0..<nq { scoresFromTile(sc.tile, q + i * qStride, D, scale, scores + i * stride + tg * 16) }
  }
  // Softmax over each query's visible prefix.
  for i in 0..<nq { if visible[i] > 0 { softmaxInPlace(scores + i * stride, visible[i]) } }
  // Values: decode each token once, accumulate into every query that sees it.
  for i in 0..<nq { (out + i * outStride).initialize(repeating: 0, count: D) }
  for t in 0..<L {
    decodeVRow(f, vPages[t / P], h, t % P, sc.vrow)
    for i in 0..<nq where t < visible[i] { axpy(scores[i * stride + t], sc.vrow, out + i * outStride, D) }
  }
}

/// Scalar twin: fp32 attention from the stored values (`KVPageFormat.load`), one element at a time. With
/// `integerScores` the query is quantized exactly as the fast path does, so both compute the same function.
public func pagedAttentionReference(_ f: KVPageFormat, kPages: [UnsafeRawPointer], vPages: [UnsafeRawPointer], head h: Int,
                                    q: UnsafePointer<Float>, qStride: Int, nq: Int, visible: [Int], scale: Float,
                                    integerScores: Bool, out: UnsafeMutablePointer<Float>, outStride: Int) {
  let D = f.headDim, P = f.pageSize
  for i in 0..<nq {
    var qv = (0..<D).map { q[i * qStride + $0] }
    if integerScores && f.mode == .kv4 {
      var q8 = [Int8](repeating: 0, count: D), info: [Float] = [0, 0]
      qv.withUnsafeBufferPointer { quantizeQuery($0.baseAddress!, D, &q8, &info) }
      qv = q8.map { Float($0) * info[0] }
    }
    var s = (0..<visible[i]).map { t in
      var acc: Float = 0
      for d in 0..<D { acc += qv[d] * f.load(page: kPages[t / P], head: h, slot: t % P, channel: d, isKey: true) }
      return acc * scale
    }
    let m = s.max() ?? 0
    var sum: Float = 0
    for t in s.indices { s[t] = expf(s[t] - m); sum += s[t] }
    for d in 0..<D {
      var acc: Float = 0
      for t in s.indices { acc += s[t] / sum * f.load(page: vPages[t / P], head: h, slot: t % P, channel: d, isKey: false) }
      out[i * outStride + d] = acc
    }
  }
}

/// int8 query: sq = max|q|/127 (not fp16-rounded: it never leaves the kernel), q8 = rne(q/sq); info = (sq, Σq8).
@inline(__always) func quantizeQuery(_ q: UnsafePointer<Float>, _ D: Int, _ q8: UnsafeMutablePointer<Int8>, _ info: UnsafeMutablePointer<Float>) {
  var m: Float = 0
  for d in 0..<D { m = max(m, abs(q[d])) }
  let s: Float = m == 0 ? 1 : m / 127
  var sum: Int32 = 0
  for d in 0..<D { let v = int8Code(q[d] / s); q8[d] = v; sum += Int32(v) }
  info[0] = s; info[1] = Float(sum)
}

@inline(__always) func axpy(_ a: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
  #if QOQ_AVX512
  let va = _mm512_set1_ps(a)
  for d in stride(from: 0, to: n, by: 16) { _mm512_storeu_ps(y + d, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + d), _mm512_loadu_ps(y + d))) }
  #elseif QOQ_AVX2
  axpyAVX2(a, x, y, n)
  #else
  for d in 0..<n { y[d] += a * x[d] }
  #endif
}

/// K of tokens t0..<t0+16 of head h as a [D][16] fp32 tile.
func decodeKTile(_ f: KVPageFormat, _ page: UnsafeRawPointer, _ h: Int, _ t0: Int, _ tile: UnsafeMutablePointer<Float>) {
  let D = f.headDim, P = f.pageSize, codes = page + h * f.codeBytesPerHead
  #if QOQ_AVX512
  switch f.mode {
  case .fp16:
    for d in 0..<D { _mm512_storeu_ps(tile + d * 16, _mm512_cvtph_ps((codes + (d * P + t0) * 2).loadUnaligned(as: __m256i.self))) }
  case .kv4, .kv8:
    let s = _mm512_loadu_ps(f.scales(page) + h * P + t0), z = _mm512_loadu_ps(f.zeros(page) + h * P + t0)
    let four = f.mode == .kv4
    let mask = _mm512_set1_epi32(four ? 0xF : 0xFF)
    for c in 0..<(D / (four ? 8 : 4)) {
      let v = _mm512_loadu_si512(codes + (c * P + t0) * 4)
      for j in 0..<4 {
        let lo = _mm512_and_si512(_mm512_srl_epi32(v, _mm_cvtsi32_si128(Int32(8 * j))), mask)
        let dl = four ? 8 * c + j : 4 * c + j
        _mm512_storeu_ps(tile + dl * 16, _mm512_fmsub_ps(_mm512_cvtepi32_ps(lo), s, z))
        if four {
          let hi = _mm512_and_si512(_mm512_srl_epi32(v, _mm_cvtsi32_si128(Int32(8 * j + 4))), mask)
          _mm512_storeu_ps(tile + (8 * c + 4 + j) * 16, _mm512_fmsub_ps(_mm512_cvtepi32_ps(hi), s, z))
        }
      }
    }
  }
  #elseif QOQ_AVX2
  decodeKTileAVX2(f, page, h, t0, tile)
  #else
  for d in 0..<D { for t in 0..<16 { tile[d * 16 + t] = f.load(page: page, head: h, slot: t0 + t, channel: d, isKey: true) } }
  #endif
}

/// 16 scores (one per token of the tile) of query q.
@inline(__always) func scoresFromTile(_ tile: UnsafePointer<Float>, _ q: UnsafePointer<Float>, _ D: Int, _ scale: Float,
                                      _ out: UnsafeMutablePointer<Float>) {
  #if QOQ_AVX512
  var a = _mm512_setzero_ps(), b = _mm512_setzero_ps()
  for d in stride(from: 0, to: D, by: 2) {
    a = _mm512_fmadd_ps(_mm512_set1_ps(q[d]), _mm512_loadu_ps(tile + d * 16), a)
    b = _mm512_fmadd_ps(_mm512_set1_ps(q[d + 1]), _mm512_loadu_ps(tile + (d + 1) * 16), b)
  }
  _mm512_storeu_ps(out, _mm512_mul_ps(_mm512_add_ps(a, b), _mm512_set1_ps(scale)))
  #elseif QOQ_AVX2
  scoresFromTileAVX2(tile, q, D, scale, out)
  #else
  for t in 0..<16 { var s: Float = 0; for d in 0..<D { s += q[d] * tile[d * 16 + t] }; out[t] = s * scale }
  #endif
}

#if QOQ_AVX512
/// Integer scores of all queries for tokens t0..<t0+16 of a KV4 K page: codes unpacked once into D/4 zmm
/// (low/high nibbles per 8-channel chunk), then D/4 vpdpbusd per query.
func scoresInt4(_ f: KVPageFormat, _ page: UnsafeRawPointer, _ h: Int, _ t0: Int, _ sc: AttentionScratch, nq: Int,
                scale: Float, out: UnsafeMutablePointer<Float>, ldo: Int) {
  let D = f.headDim, P = f.pageSize, codes = page + h * f.codeBytesPerHead
  let mask = _mm512_set1_epi8(0x0F)
  let tile = UnsafeMutableRawPointer(sc.tile)
  for c in 0..<(D / 8) {
    let v = _mm512_loadu_si512(codes + (c * P + t0) * 4)
    _mm512_storeu_si512(tile + c * 128, _mm512_and_si512(v, mask))
    _mm512_storeu_si512(tile + c * 128 + 64, _mm512_and_si512(_mm512_srli_epi16(v, 4), mask))
  }
  let s = _mm512_loadu_ps(f.scales(page) + h * P + t0), z = _mm512_loadu_ps(f.zeros(page) + h * P + t0)
  for i in 0..<nq {
    let q8 = UnsafeRawPointer(sc.q8 + i * D)
    var a = _mm512_setzero_si512(), b = _mm512_setzero_si512()
    for c in 0..<(D / 8) {
      a = _mm512_dpbusd_epi32(a, _mm512_loadu_si512(tile + c * 128), _mm512_set1_epi32(q8.loadUnaligned(fromByteOffset: 8 * c, as: Int32.self)))
      b = _mm512_dpbusd_epi32(b, _mm512_loadu_si512(tile + c * 128 + 64),
                              _mm512_set1_epi32(q8.loadUnaligned(fromByteOffset: 8 * c + 4, as: Int32.self)))
    }
    let acc = _mm512_cvtepi32_ps(_mm512_add_epi32(a, b))
    // sq·(s·acc − z·Σq8)·scale
    let r = _mm512_fmsub_ps(s, acc, _mm512_mul_ps(z, _mm512_set1_ps(sc.qInfo[2 * i + 1])))
    _mm512_storeu_ps(out + i * ldo, _mm512_mul_ps(r, _mm512_set1_ps(sc.qInfo[2 * i] * scale)))
  }
}
#endif

/// V of token t of head h, dequantized into row (D floats).
func decodeVRow(_ f: KVPageFormat, _ page: UnsafeRawPointer, _ h: Int, _ t: Int, _ row: UnsafeMutablePointer<Float>) {
  let D = f.headDim, P = f.pageSize, codes = page + h * f.codeBytesPerHead
  #if QOQ_AVX512
  switch f.mode {
  case .fp16:
    for d in stride(from: 0, to: D, by: 16) { _mm512_storeu_ps(row + d, _mm512_cvtph_ps((codes + (t * D + d) * 2).loadUnaligned(as: __m256i.self))) }
  case .kv4:
    let s = _mm512_set1_ps(f.scales(page)[h * P + t]), z = _mm512_set1_ps(f.zeros(page)[h * P + t])
    let mask = _mm512_set1_epi32(0xF)
    for j in stride(from: 0, to: D / 2, by: 16) {
      let v = _mm512_cvtepu8_epi32((codes + t * D / 2 + j).loadUnaligned(as: __m128i.self))
      _mm512_storeu_ps(row + j, _mm512_fmsub_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v, mask)), s, z))
      _mm512_storeu_ps(row + D / 2 + j, _mm512_fmsub_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4)), s, z))
    }
  case .kv8:
    let s = _mm512_set1_ps(f.scales(page)[h * P + t]), z = _mm512_set1_ps(f.zeros(page)[h * P + t])
    for d in stride(from: 0, to: D, by: 16) {
      _mm512_storeu_ps(row + d, _mm512_fmsub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32((codes + t * D + d).loadUnaligned(as: __m128i.self))), s, z))
    }
  }
  #elseif QOQ_AVX2
  decodeVRowAVX2(f, page, h, t, row)
  #else
  for d in 0..<D { row[d] = f.load(page: page, head: h, slot: t, channel: d, isKey: false) }
  #endif
}

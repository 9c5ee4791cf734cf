// W4A8 GEMM/GEMV (qserve.md §2.3, §8.1, §8.3): uint4 weight codes are the unsigned operand of vpdpbusd, int8
// activations the signed one. Two group epilogues:
//  - integer (QoQ progressive): per group g, acc += s2_g·P_g − z_g·Σ_g x, exact in int32 (q·s2 − z stays in int8
//    thanks to the protective range, so |acc| ≤ 127·127·K); y = s_x·α·acc with α = s1 (per output row).
//  - float (asymmetric uint4 with fp16 scale s_g and post-scale zero z_g, per group or one group per row):
//    y = s_x·Σ_g (s_g·P_g − z_g·Σ_g x).
// Layout streams (§8.3): blocks of 16 output rows × 8 inputs in 64 bytes, byte 4r+j = w[r][k+j] (low nibble) |
// w[r][k+4+j] (high nibble); blocks ordered [N/16][K/8], so a thread walks one contiguous run of memory per 16 rows,
// every 32-bit lane of a zmm is one output row and activations enter as 4-byte broadcasts: no horizontal sums.
#if QOQ_AVX512
import _Builtin_intrinsics.intel
#endif

/// The kernels behind one small protocol: the engine's linear layers call `forward` and never look at the format.
public protocol IntLinearKernel: AnyObject, Sendable {
  var n: Int { get }
  var k: Int { get }
  /// y (a.m, ldy) ← product for rows 0..<a.m, columns 0..<n (bias included).
  func forward(_ a: QuantizedRows, _ y: UnsafeMutablePointer<Float>, ldy: Int)
}

public final class PackedW4A8: IntLinearKernel, @unchecked Sendable {
  public let n: Int, k: Int, group: Int
  public var groups: Int { k / group }
  public let integerGroups: Bool
  let blocks: Int                        // ceil(n/16)
  let data: UnsafeMutablePointer<UInt8>  // [blocks][k/8][64]
  // Integer mode: [blocks][groups][2][16] int8 (s2 ∈ 1…127, z ∈ −128…127, as the checkpoint stores them): 2 bytes per
  // row and 128-wide group beside its 64 bytes of codes (int32 here was 8 bytes, 12.5% more to read per token).
  let gi: UnsafeMutablePointer<Int8>
  let gf: UnsafeMutablePointer<Float>    // float mode:   [blocks][groups][2][16] (s, z)
  let alpha: UnsafeMutablePointer<Float> // [blocks·16]: s1 (integer mode) or 1
  let bias: UnsafeMutablePointer<Float>? // [blocks·16]

  /// Progressive QoQ weights: codes (n, k) 0…15, s2 and z (n, k/group) integers, s1 (n).
  public convenience init(progressiveCodes codes: [UInt8], s2: [Float], z: [Float], s1: [Float], n: Int, k: Int,
                          group: Int, bias: [Float]? = nil) {
    self.init(codes: codes, n: n, k: k, group: group, integer: true, scale: s2, zero: z, alpha: s1, bias: bias)
  }

  /// Asymmetric uint4: ŵ = q·s − z with fp scale and zero per (row, group); group = k for per-channel.
  public convenience init(asymCodes codes: [UInt8], scale: [Float], zero: [Float], n: Int, k: Int, group: Int,
                          bias: [Float]? = nil) {
    self.init(codes: codes, n: n, k: k, group: group, integer: false, scale: scale, zero: zero, alpha: nil, bias: bias)
  }

  init(codes: [UInt8], n: Int, k: Int, group: Int, integer: Bool, scale: [Float], zero: [Float], alpha a: [Float]?,
       bias b: [Float]?) {
    precondition(k % 32 == 0 && group % 32 == 0 && k % group == 0 && codes.count == n * k)
    precondition(scale.count == n * (k / group) && zero.count == scale.count)
    precondition(!integer || zip(scale, zero).allSatisfy { Float(Int8(exactly: $0) ?? 0) == $0 && $0 >= 1 && Int8(exactly: $1) != nil },
                 "progressive s2 must be integers in 1…127 and z integers in −128…127")
    self.n = n; self.k = k; self.group = group; integerGroups = integer
    blocks = (n + 15) / 16
    let ng = k / group, np = blocks * 16
    data = .allocate(capacity: blocks * k * 8); data.initialize(repeating: 0, count: blocks * k * 8)
    // Only the mode's own parameter array is sized (the other keeps one element).
    let ni = integer ? blocks * ng * 32 : 1, nf = integer ? 1 : blocks * ng * 32
    gi = .allocate(capacity: ni); gi.initialize(repeating: 0, count: ni)
    gf = .allocate(capacity: nf); gf.initialize(repeating: 0, count: nf)
    alpha = .allocate(capacity: np); alpha.initialize(repeating: 0, count: np)
    bias = b == nil ? nil : .allocate(capacity: np)
    bias?.initialize(repeating: 0, count: np)
    for row in 0..<n {
      let rb = row / 16, r = row % 16
      for c in 0..<(k / 8) {
        for j in 0..<4 {
          let lo = codes[row * k + 8 * c + j] & 0xF, hi = codes[row * k + 8 * c + 4 + j] & 0xF
          data[(rb * (k / 8) + c) * 64 + 4 * r + j] = lo | hi << 4
        }
      }
      for g in 0..<ng {
        let o = (rb * ng + g) * 32 + r
        if integer { gi[o] = Int8(scale[row * ng + g]); gi[o + 16] = Int8(zero[row * ng + g]) }
        else { gf[o] = scale[row * ng + g]; gf[o + 16] = zero[row * ng + g] }
      }
      alpha[row] = a?[row] ?? 1
      if let b { bias![row] = b[row] }
    }
  }
  deinit { data.deallocate(); gi.deallocate(); gf.deallocate(); alpha.deallocate(); bias?.deallocate() }

  private init(copying o: PackedW4A8) {
    n = o.n; k = o.k; group = o.group; integerGroups = o.integerGroups; blocks = o.blocks
    let ng = k / group
    data = .allocate(capacity: blocks * k * 8); data.update(from: o.data, count: blocks * k * 8)
    let ni = integerGroups ? blocks * ng * 32 : 1, nf = integerGroups ? 1 : blocks * ng * 32
    gi = .allocate(capacity: ni); gi.update(from: o.gi, count: ni)
    gf = .allocate(capacity: nf); gf.update(from: o.gf, count: nf)
    alpha = .allocate(capacity: blocks * 16); alpha.update(from: o.alpha, count: blocks * 16)
    bias = o.bias.map { b in
      let p = UnsafeMutablePointer<Float>.allocate(capacity: o.blocks * 16); p.update(from: b, count: o.blocks * 16); return p
    }
  }

  /// An independent copy in fresh memory (benchmarks that must not hit the cache).
  public func duplicate() -> PackedW4A8 { PackedW4A8(copying: self) }

  public func forward(_ a: QuantizedRows, _ y: UnsafeMutablePointer<Float>, ldy: Int) {
    precondition(a.k == k)
    let m = a.m
    if m == 0 { return }
    ThreadPool.shared.parts(blocks) { range in
      #if QOQ_AVX512
      // One token: the GEMV streams weights once. More: four token rows per weight decode (padding rows of
      // QuantizedRows are readable, their results are not stored).
      if m == 1 { self.kernel1(a, 0, range.lowerBound, range.upperBound, y, ldy) } else {
        forEachWeightRun(range, blockBytes: self.k * 8, tokens: m) { r, rows, run in
          self.kernel4(a, r, run.lowerBound, run.upperBound, y, ldy, rows: rows)
        }
      }
      #elseif QOQ_AVX2
      if m == 1 { self.kernel1AVX2(a, range.lowerBound, range.upperBound, y, ldy) } else {
        forEachWeightRun(range, blockBytes: self.k * 8, tokens: m) { r, rows, run in
          self.kernel4AVX2(a, r, run.lowerBound, run.upperBound, y, ldy, rows: rows)
        }
      }
      #else
      self.reference(a, rows: 0..<m, blocks: range, y, ldy)
      #endif
    }
  }

  /// Stores 16 outputs of row block rb for token row r (clipped at n).
  @inline(__always) func store(_ vals: UnsafePointer<Float>, _ rb: Int, _ y: UnsafeMutablePointer<Float>, _ ldy: Int, _ r: Int) {
    let base = rb * 16, cnt = min(16, n - base)
    for i in 0..<cnt { y[r * ldy + base + i] = vals[i] + (bias?[base + i] ?? 0) }
  }

  #if QOQ_AVX512
  /// 16 int8 group parameters widened to int32 lanes.
  @inline(__always) func int8x16(_ p: UnsafePointer<Int8>) -> __m512i {
    _mm512_cvtepi8_epi32(UnsafeRawPointer(p).loadUnaligned(as: __m128i.self))
  }

  /// y[r][16·rb …] = v·α·s_x (+ bias), masked at n.
  @inline(__always) func emit(_ v: __m512, _ a: QuantizedRows, _ rb: Int, _ y: UnsafeMutablePointer<Float>, _ ldy: Int, _ r: Int) {
    var o = _mm512_mul_ps(_mm512_mul_ps(v, _mm512_loadu_ps(alpha + rb * 16)), _mm512_set1_ps(a.scale[r]))
    if let b = bias { o = _mm512_add_ps(o, _mm512_loadu_ps(b + rb * 16)) }
    let cnt = min(16, n - rb * 16)
    _mm512_mask_storeu_ps(y + r * ldy + rb * 16, __mmask16(truncatingIfNeeded: (1 << cnt) - 1), o)
  }

  /// Four token rows r0..<r0+4 (rows beyond `rows` are padding and not stored) over row blocks b0..<b1.
  func kernel4(_ a: QuantizedRows, _ r0: Int, _ b0: Int, _ b1: Int, _ y: UnsafeMutablePointer<Float>, _ ldy: Int, rows: Int) {
    let k = self.k, ng = groups, cpg = group / 8
    let mask = _mm512_set1_epi8(0x0F)
    let x0 = UnsafeRawPointer(a.codes + r0 * k), x1 = x0 + k, x2 = x1 + k, x3 = x2 + k
    for rb in b0..<b1 {
      var w = UnsafeRawPointer(data + rb * (k / 8) * 64)
      var ti0 = _mm512_setzero_si512(), ti1 = ti0, ti2 = ti0, ti3 = ti0
      var tf0 = _mm512_setzero_ps(), tf1 = tf0, tf2 = tf0, tf3 = tf0
      for g in 0..<ng {
        var p0 = _mm512_setzero_si512(), p1 = p0, p2 = p0, p3 = p0
        var xo = g * group
        for _ in 0..<cpg {
          let v = _mm512_loadu_si512(w)
          let lo = _mm512_and_si512(v, mask), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask)
          p0 = _mm512_dpbusd_epi32(p0, lo, _mm512_set1_epi32(x0.loadUnaligned(fromByteOffset: xo, as: Int32.self)))
          p0 = _mm512_dpbusd_epi32(p0, hi, _mm512_set1_epi32(x0.loadUnaligned(fromByteOffset: xo + 4, as: Int32.self)))
          p1 = _mm512_dpbusd_epi32(p1, lo, _mm512_set1_epi32(x1.loadUnaligned(fromByteOffset: xo, as: Int32.self)))
          p1 = _mm512_dpbusd_epi32(p1, hi, _mm512_set1_epi32(x1.loadUnaligned(fromByteOffset: xo + 4, as: Int32.self)))
          p2 = _mm512_dpbusd_epi32(p2, lo, _mm512_set1_epi32(x2.loadUnaligned(fromByteOffset: xo, as: Int32.self)))
          p2 = _mm512_dpbusd_epi32(p2, hi, _mm512_set1_epi32(x2.loadUnaligned(fromByteOffset: xo + 4, as: Int32.self)))
          p3 = _mm512_dpbusd_epi32(p3, lo, _mm512_set1_epi32(x3.loadUnaligned(fromByteOffset: xo, as: Int32.self)))
          p3 = _mm512_dpbusd_epi32(p3, hi, _mm512_set1_epi32(x3.loadUnaligned(fromByteOffset: xo + 4, as: Int32.self)))
          w += 64; xo += 8
        }
        let s0 = a.sum(r0, g * group, group), s1 = a.sum(r0 + 1, g * group, group)
        let s2 = a.sum(r0 + 2, g * group, group), s3 = a.sum(r0 + 3, g * group, group)
        let gp = (rb * ng + g) * 32
        if integerGroups {
          let sv = int8x16(gi + gp), zv = int8x16(gi + gp + 16)
          ti0 = _mm512_add_epi32(ti0, _mm512_sub_epi32(_mm512_mullo_epi32(p0, sv), _mm512_mullo_epi32(zv, _mm512_set1_epi32(s0))))
          ti1 = _mm512_add_epi32(ti1, _mm512_sub_epi32(_mm512_mullo_epi32(p1, sv), _mm512_mullo_epi32(zv, _mm512_set1_epi32(s1))))
          ti2 = _mm512_add_epi32(ti2, _mm512_sub_epi32(_mm512_mullo_epi32(p2, sv), _mm512_mullo_epi32(zv, _mm512_set1_epi32(s2))))
          ti3 = _mm512_add_epi32(ti3, _mm512_sub_epi32(_mm512_mullo_epi32(p3, sv), _mm512_mullo_epi32(zv, _mm512_set1_epi32(s3))))
        } else {
          let sv = _mm512_loadu_ps(gf + gp), zv = _mm512_loadu_ps(gf + gp + 16)
          tf0 = _mm512_fnmadd_ps(zv, _mm512_set1_ps(Float(s0)), _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), sv, tf0))
          tf1 = _mm512_fnmadd_ps(zv, _mm512_set1_ps(Float(s1)), _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), sv, tf1))
          tf2 = _mm512_fnmadd_ps(zv, _mm512_set1_ps(Float(s2)), _mm512_fmadd_ps(_mm512_cvtepi32_ps(p2), sv, tf2))
          tf3 = _mm512_fnmadd_ps(zv, _mm512_set1_ps(Float(s3)), _mm512_fmadd_ps(_mm512_cvtepi32_ps(p3), sv, tf3))
        }
      }
      if integerGroups {
        tf0 = _mm512_cvtepi32_ps(ti0); tf1 = _mm512_cvtepi32_ps(ti1); tf2 = _mm512_cvtepi32_ps(ti2); tf3 = _mm512_cvtepi32_ps(ti3)
      }
      emit(tf0, a, rb, y, ldy, r0)
      if rows > 1 { emit(tf1, a, rb, y, ldy, r0 + 1) }
      if rows > 2 { emit(tf2, a, rb, y, ldy, r0 + 2) }
      if rows > 3 { emit(tf3, a, rb, y, ldy, r0 + 3) }
    }
  }

  /// One token row (decode GEMV): weights stream once, two independent accumulators per chunk pair.
  func kernel1(_ a: QuantizedRows, _ r0: Int, _ b0: Int, _ b1: Int, _ y: UnsafeMutablePointer<Float>, _ ldy: Int) {
    let k = self.k, ng = groups, cpg = group / 8
    let mask = _mm512_set1_epi8(0x0F)
    let x0 = UnsafeRawPointer(a.codes + r0 * k)
    for rb in b0..<b1 {
      var w = UnsafeRawPointer(data + rb * (k / 8) * 64)
      var ti = _mm512_setzero_si512(), tf = _mm512_setzero_ps()
      for g in 0..<ng {
        var pa = _mm512_setzero_si512(), pb = pa
        var xo = g * group
        for _ in 0..<cpg {
          let v = _mm512_loadu_si512(w)
          let lo = _mm512_and_si512(v, mask), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask)
          pa = _mm512_dpbusd_epi32(pa, lo, _mm512_set1_epi32(x0.loadUnaligned(fromByteOffset: xo, as: Int32.self)))
          pb = _mm512_dpbusd_epi32(pb, hi, _mm512_set1_epi32(x0.loadUnaligned(fromByteOffset: xo + 4, as: Int32.self)))
          w += 64; xo += 8
        }
        let p = _mm512_add_epi32(pa, pb), s = a.sum(r0, g * group, group)
        let gp = (rb * ng + g) * 32
        if integerGroups {
          ti = _mm512_add_epi32(ti, _mm512_sub_epi32(_mm512_mullo_epi32(p, int8x16(gi + gp)),
                                                     _mm512_mullo_epi32(int8x16(gi + gp + 16), _mm512_set1_epi32(s))))
        } else {
          tf = _mm512_fnmadd_ps(_mm512_loadu_ps(gf + gp + 16), _mm512_set1_ps(Float(s)),
                                _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_loadu_ps(gf + gp), tf))
        }
      }
      if integerGroups { tf = _mm512_cvtepi32_ps(ti) }
      emit(tf, a, rb, y, ldy, r0)
    }
  }
  #endif

  /// Scalar twin: the same result one element at a time from the packed bytes (integer mode: exact accumulators).
  public func reference(_ a: QuantizedRows, rows: Range<Int>, blocks bl: Range<Int>, _ y: UnsafeMutablePointer<Float>, _ ldy: Int) {
    var out = [Float](repeating: 0, count: 16)
    for r in rows {
      for rb in bl {
        for i in 0..<16 {
          let acc = referenceAccumulator(a, row: r, outRow: rb * 16 + i)
          out[i] = integerGroups ? Float(acc.int) * alpha[rb * 16 + i] * a.scale[r] : acc.float * a.scale[r]
        }
        out.withUnsafeBufferPointer { store($0.baseAddress!, rb, y, ldy, r) }
      }
    }
  }

  /// The accumulator of one (token row, output row): integer (progressive) or fp (asymmetric) before s_x.
  public func referenceAccumulator(_ a: QuantizedRows, row r: Int, outRow o: Int) -> (int: Int32, float: Float) {
    let rb = o / 16, ri = o % 16, ng = groups
    var ti: Int32 = 0, tf: Float = 0
    for g in 0..<ng {
      var p: Int32 = 0
      for i in (g * group)..<((g + 1) * group) {
        let c = i / 8, j = i % 8
        let byte = data[(rb * (k / 8) + c) * 64 + 4 * ri + j % 4]
        let q = Int32(j < 4 ? byte & 0xF : byte >> 4)
        p &+= q &* Int32(a.codes[r * k + i])
      }
      let s = a.sum(r, g * group, group), gp = (rb * ng + g) * 32 + ri
      if integerGroups { ti &+= Int32(gi[gp]) &* p &- Int32(gi[gp + 16]) &* s }
      else { tf = tf + Float(p) * gf[gp] - gf[gp + 16] * Float(s) }
    }
    return (ti, tf)
  }
}

// W4A8 GEMV for QoQ's progressive weights (qserve.md §2.3, §8.1): uint4 codes q, per-group integer scale s2 and
// zero z, per-row fp scale s1; int8 activations x with one fp scale. Per output row the integer accumulator is
//   acc = Σ_g (s2_g · Σ_{i∈g} q_i·x_i − z_g · Σ_{i∈g} x_i)  =  Σ_i (q_i·s2 − z)·x_i,
// exact in int32 because q·s2 − z lies in int8 (protective range) and K·127·128 < 2^31 for K ≤ 130k; then
// y = s_x · s1 · acc. The u4 codes are the unsigned operand of vpdpbusd, x the signed one.
#if arch(x86_64)
import _Builtin_intrinsics.intel
#endif

/// Weights packed for the kernel: each 128-element chunk of a row is 64 bytes, byte j holding q[j] (low nibble)
/// and q[j + 64] (high nibble). Groups are 64 or 128 wide; K must be a multiple of 128.
public final class W4A8Packed: @unchecked Sendable {
  public let rows: Int
  public let k: Int
  public let group: Int
  public let data: [UInt8]      // (rows, k/2)
  public let s2: [Int32]        // (rows, k/group)
  public let z: [Int32]         // (rows, k/group)
  public let s1: [Float]        // (rows)

  /// codes (rows, k) in 0…15; s2, z (rows, k/group); s1 (rows).
  public init(codes: [UInt8], s2: [Int8], z: [Int8], s1: [Float], rows: Int, k: Int, group: Int) {
    precondition(k % 128 == 0 && (group == 64 || group == 128) && codes.count == rows * k)
    self.rows = rows; self.k = k; self.group = group
    var d = [UInt8](repeating: 0, count: rows * k / 2)
    for r in 0..<rows {
      for c in 0..<(k / 128) {
        for j in 0..<64 {
          let lo = codes[r * k + c * 128 + j] & 0xF, hi = codes[r * k + c * 128 + 64 + j] & 0xF
          d[r * k / 2 + c * 64 + j] = lo | hi << 4
        }
      }
    }
    data = d
    self.s2 = s2.map(Int32.init); self.z = z.map(Int32.init); self.s1 = s1
  }
}

/// Per-group sums of x (k/group values), needed for the zero-point term.
public func groupSums(_ x: UnsafePointer<Int8>, k: Int, group: Int) -> [Int32] {
  (0..<(k / group)).map { g in var s: Int32 = 0; for i in 0..<group { s &+= Int32(x[g * group + i]) }; return s }
}

/// Integer accumulators acc[r] for one int8 activation vector (the fast kernel).
public func w4a8Gemv(_ w: W4A8Packed, x: UnsafePointer<Int8>, xsum: [Int32], acc: UnsafeMutablePointer<Int32>) {
  #if arch(x86_64)
  let k = w.k, ng = k / w.group, chunks = k / 128
  let mask = _mm512_set1_epi8(0x0F)
  w.data.withUnsafeBufferPointer { db in
    w.s2.withUnsafeBufferPointer { s2b in
      w.z.withUnsafeBufferPointer { zb in
        let xr = UnsafeRawPointer(x)
        for r in 0..<w.rows {
          let row = UnsafeRawPointer(db.baseAddress! + r * k / 2)
          var total = _mm512_setzero_si512()
          for c in 0..<chunks {
            let v = _mm512_loadu_si512(row + c * 64)
            let lo = _mm512_and_si512(v, mask)
            let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask)
            let xl = _mm512_loadu_si512(xr + c * 128), xh = _mm512_loadu_si512(xr + c * 128 + 64)
            let pl = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xl)
            let ph = _mm512_dpbusd_epi32(_mm512_setzero_si512(), hi, xh)
            if w.group == 64 {
              // Low half is group 2c, high half group 2c+1.
              total = _mm512_add_epi32(total, _mm512_mullo_epi32(pl, _mm512_set1_epi32(s2b[r * ng + 2 * c])))
              total = _mm512_add_epi32(total, _mm512_mullo_epi32(ph, _mm512_set1_epi32(s2b[r * ng + 2 * c + 1])))
            } else {
              total = _mm512_add_epi32(total, _mm512_mullo_epi32(_mm512_add_epi32(pl, ph), _mm512_set1_epi32(s2b[r * ng + c])))
            }
          }
          var corr: Int32 = 0
          for g in 0..<ng { corr &+= zb[r * ng + g] &* xsum[g] }
          acc[r] = _mm512_reduce_add_epi32(total) &- corr
        }
      }
    }
  }
  #else
  w4a8GemvReference(w, x: x, xsum: xsum, acc: acc)
  #endif
}

/// Scalar twin: the same accumulators from unpacked codes, one element at a time.
public func w4a8GemvReference(_ w: W4A8Packed, x: UnsafePointer<Int8>, xsum: [Int32], acc: UnsafeMutablePointer<Int32>) {
  let k = w.k, ng = k / w.group
  for r in 0..<w.rows {
    var s: Int32 = 0
    for i in 0..<k {
      let c = i / 128, j = i % 128
      let byte = w.data[r * k / 2 + c * 64 + j % 64]
      let q = Int32(j < 64 ? byte & 0xF : byte >> 4)
      let g = i / w.group
      s &+= (q &* w.s2[r * ng + g] &- w.z[r * ng + g]) &* Int32(x[i])
    }
    acc[r] = s
  }
  _ = xsum
}

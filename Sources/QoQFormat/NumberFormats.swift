// Number formats of deepcompressor's quantizers (deepcompressor.md §1.3), as fake quantization in fp32:
// round half to even, fp16 rounding of fp16-typed scales and zeros, a zero scale becomes 1.
// Weights are (out, in) row-major; a "group" is a run of `group` input channels of one output row.
import QoQIO

/// fp32 → fp16 → fp32 (the value an fp16-typed scale or zero actually holds).
@inline(__always) public func fp16Round(_ x: Float) -> Float { f16ToF32(f32ToF16(x)) }

/// Round half to even (torch.round).
@inline(__always) public func rne(_ x: Float) -> Float { x.rounded(.toNearestOrEven) }

/// The protective range of progressive quantization: the largest P such that every integer interval inside
/// [−P, P] survives the uint4 round trip (s2 = round((vmax−vmin)/15), z = round(−vmin), q = clamp(round((u+z)/s2)))
/// with q·s2 − z inside ±127. deepcompressor brute-forces it; 120 for post-scale zeros, 119 for pre-scale.
public func protectiveRange(postScale: Bool = true) -> Int {
  var best = 0
  outer: for p in 1...127 {
    for lo in -p...p {
      for hi in lo...p {
        let vmin = Float(lo), vmax = Float(hi)
        var s2 = min(max(rne((vmax - vmin) / 15), -127), 127)
        if s2 == 0 { s2 = 1 }
        let z = min(max(rne(-vmin), -128), 127)
        for v in [vmin, vmax] {
          let q: Float
          let deq: Float
          if postScale {
            q = min(max(rne((v + z) / s2), 0), 15)
            deq = q * s2 - z
          } else {
            let zp = min(max(rne(-vmin / s2), 0), 15)
            q = min(max(rne(v / s2 + zp), 0), 15)
            deq = (q - zp) * s2
          }
          if deq < -127 || deq > 127 { continue outer }
        }
      }
    }
    best = p
  }
  return best
}

/// Asymmetric uint-b quantization of one group with a post-scale zero (fp16 scale and zero):
/// s = fp16((max−min)/qmax) (0 → 1), z = fp16(−min), q = clamp(round((w+z)/s), 0, qmax), ŵ = q·s − z.
/// `ratio` shrinks the range to [r·min, r·max] (clipping search).
public struct AsymGroupQuant: Equatable, Sendable {
  public var scale: Float
  public var zero: Float

  public init(scale: Float, zero: Float) { self.scale = scale; self.zero = zero }

  /// `preScale`: the zero is an integer zero point zp = clamp(round(−min/s), 0, qmax) held as zp·s (exact in fp32),
  /// so code() is clamp(round(x/s + zp)) and dequant() (q − zp)·s, deepcompressor's PreScale domain.
  public init(range w: UnsafeBufferPointer<Float>, qmax: Float, ratio: Float = 1, preScale: Bool = false) {
    var lo = Float.infinity, hi = -Float.infinity
    for x in w { lo = min(lo, x); hi = max(hi, x) }
    if w.isEmpty { lo = 0; hi = 0 }
    lo *= ratio; hi *= ratio
    var s = fp16Round((hi - lo) / qmax)
    if s == 0 { s = 1 }
    scale = s
    zero = preScale ? min(max(rne(-lo / s), 0), qmax) * s : fp16Round(-lo)
  }

  @inline(__always) public func code(_ x: Float, qmax: Float) -> Float { min(max(rne((x + zero) / scale), 0), qmax) }
  @inline(__always) public func dequant(_ q: Float) -> Float { q * scale - zero }
}

/// Progressive (QoQ g128) weight quantization of one output row: an fp16 per-row scale s1 with protective range
/// P (u = clamp(w/s1, −P, P), not rounded), then per group an integer uint4 step on u with integer scale s2 ∈ [1,127]
/// and integer zero z: q = clamp(round((u+z)/s2), 0, 15); ŵ = s1·(q·s2 − z).
public struct ProgressiveRowQuant: Sendable {
  public var s1: Float
  public var s2: [Float]
  public var z: [Float]

  public static func levelOne(row w: UnsafeBufferPointer<Float>, protective p: Float) -> Float {
    var m: Float = 0
    for x in w { m = max(m, abs(x)) }
    var s = fp16Round(m / p)
    if s == 0 { s = 1 }
    return s
  }

  /// Integer group parameters from the intermediate values u of one group.
  public static func group(_ u: UnsafeBufferPointer<Float>, ratio: Float = 1) -> (s2: Float, z: Float) {
    var lo = Float.infinity, hi = -Float.infinity
    for x in u { lo = min(lo, x); hi = max(hi, x) }
    if u.isEmpty { lo = 0; hi = 0 }
    lo *= ratio; hi *= ratio
    var s2 = min(max(rne((hi - lo) / 15), -127), 127)
    if s2 == 0 { s2 = 1 }
    let z = min(max(rne(-lo), -128), 127)
    return (s2, z)
  }
}

/// INT8 symmetric per-token activation fake quantization, in place on (rows, width):
/// s = fp16(max|x|/127) (0 → 1), x̂ = s·clamp(round(x/s), −127, 127). `bits` other than 8 use ±(2^(b−1)−1).
public func fakeQuantizePerToken(_ x: UnsafeMutablePointer<Float>, rows: Int, width: Int, bits: Int = 8) {
  let qmax = Float((1 << (bits - 1)) - 1)
  for r in 0..<rows {
    let row = x + r * width
    var m: Float = 0
    for i in 0..<width { m = max(m, abs(row[i])) }
    var s = fp16Round(m / qmax)
    if s == 0 { s = 1 }
    for i in 0..<width { row[i] = s * min(max(rne(row[i] / s), -qmax), qmax) }
  }
}

/// Asymmetric uint-b per-token fake quantization in groups of `group` channels (KV cache), in place:
/// s = fp16((max−min)/qmax), z = fp16(−min), q = clamp(round((x+z)/s), 0, qmax), x̂ = q·s − z.
public func fakeQuantizeAsymGroups(_ x: UnsafeMutablePointer<Float>, rows: Int, width: Int, group: Int, bits: Int) {
  let qmax = Float((1 << bits) - 1)
  for r in 0..<rows {
    var g0 = 0
    while g0 < width {
      let n = min(group, width - g0), p = x + r * width + g0
      let gq = AsymGroupQuant(range: UnsafeBufferPointer(start: p, count: n), qmax: qmax)
      for i in 0..<n { p[i] = gq.dequant(gq.code(p[i], qmax: qmax)) }
      g0 += n
    }
  }
}

/// INT-b symmetric per-token KV fake quantization (KV8 for SmoothQuant recipes), in place.
public func fakeQuantizeSymGroups(_ x: UnsafeMutablePointer<Float>, rows: Int, width: Int, group: Int, bits: Int) {
  var g0 = 0
  while g0 < width {
    let n = min(group, width - g0)
    for r in 0..<rows {
      let tmp = UnsafeMutablePointer<Float>.allocate(capacity: n); defer { tmp.deallocate() }
      tmp.update(from: x + r * width + g0, count: n)
      fakeQuantizePerToken(tmp, rows: 1, width: n, bits: bits)
      (x + r * width + g0).update(from: tmp, count: n)
    }
    g0 += n
  }
}

// Weight quantization of one linear layer (out, in): the formats of deepcompressor.md §1.3 with static (range
// known before quantizing) parameters, RTN codes, and the integers a real kernel consumes.
import QoQFormat
import QoQIO

/// Static quantization parameters of a weight (computed from the original, possibly clipped, range before GPTQ
/// decides the codes), plus the per-element quantize/dequantize step GPTQ calls column by column.
public struct WeightQuantizer: Sendable {
  public let format: WeightFormat
  public let outFeatures: Int, inFeatures: Int
  public var scale: [Float]
  public var zero: [Float]
  public var rowScale: [Float]
  let qmax: Float

  /// Parameters from the weight's range. `ratios` (out × groups, or one value) shrink each group's range.
  public init(weight w: [Float], out: Int, inp: Int, format: WeightFormat, ratios: [Float]? = nil) {
    self.format = format
    outFeatures = out; inFeatures = inp
    let gs = format.groupSize(inp), ng = (inp + gs - 1) / gs
    let ratio: (Int, Int) -> Float = { o, g in
      guard let r = ratios else { return 1 }
      return r.count == 1 ? r[0] : r[o * ng + g]
    }
    var sc = [Float](repeating: 1, count: out * ng), zr = [Float](repeating: 0, count: out * ng)
    var rs = [Float]()
    let qm: Float
    switch format {
    case .asym(let b, _, let pre):
      let qmax = Float((1 << b) - 1)
      qm = qmax
      w.withUnsafeBufferPointer { wb in
        for o in 0..<out {
          for g in 0..<ng {
            let lo = g * gs, n = min(gs, inp - lo)
            let p = AsymGroupQuant(range: UnsafeBufferPointer(rebasing: wb[(o * inp + lo)..<(o * inp + lo + n)]), qmax: qmax,
                                   ratio: ratio(o, g), preScale: pre)
            sc[o * ng + g] = p.scale; zr[o * ng + g] = p.zero
          }
        }
      }
    case .progressive(_, let p):
      qm = 15
      rs = [Float](repeating: 1, count: out)
      var u = [Float](repeating: 0, count: gs)
      w.withUnsafeBufferPointer { wb in
        for o in 0..<out {
          let row = UnsafeBufferPointer(rebasing: wb[(o * inp)..<(o * inp + inp)])
          let s1 = ProgressiveRowQuant.levelOne(row: row, protective: Float(p))
          rs[o] = s1
          for g in 0..<ng {
            let lo = g * gs, n = min(gs, inp - lo)
            for i in 0..<n { u[i] = min(max(row[lo + i] / s1, -Float(p)), Float(p)) }
            let (s2, z) = u.withUnsafeBufferPointer { ProgressiveRowQuant.group(UnsafeBufferPointer(rebasing: $0[0..<n]), ratio: ratio(o, g)) }
            sc[o * ng + g] = s2; zr[o * ng + g] = z
          }
        }
      }
    case .sym(let b):
      qm = Float((1 << (b - 1)) - 1)
      for o in 0..<out {
        var m: Float = 0
        for i in 0..<inp { m = max(m, abs(w[o * inp + i])) }
        var s = fp16Round(m * ratio(o, 0) / qm)
        if s == 0 { s = 1 }
        sc[o] = s
      }
      zr = []
    }
    scale = sc; zero = zr; rowScale = rs; qmax = qm
  }

  var groupSize: Int { format.groupSize(inFeatures) }
  var groups: Int { (inFeatures + groupSize - 1) / groupSize }

  /// The value GPTQ works on (progressive works on u = w/s1, unclamped: deepcompressor's GPTQ clamps a column to
  /// ±P only to quantize it and takes the error against the unclamped value).
  @inline(__always) public func toDomain(_ x: Float, row o: Int) -> Float {
    if case .progressive = format { return x / rowScale[o] }
    return x
  }
  @inline(__always) public func fromDomain(_ x: Float, row o: Int) -> Float {
    if case .progressive = format { return x * rowScale[o] }
    return x
  }

  /// Code of a domain value x of row o, input column i; and its dequantized domain value.
  @inline(__always) public func quantize(_ x: Float, row o: Int, column i: Int) -> (code: UInt8, value: Float) {
    let g = o * groups + i / groupSize
    switch format {
    case .asym(_, _, let pre):
      let s = scale[g], z = zero[g]
      // PreScale: z = zp·s exactly, so z / s is the integer zero point.
      let q = min(max(rne(pre ? x / s + z / s : (x + z) / s), 0), qmax)
      return (UInt8(q), q * s - z)
    case .progressive(_, let p):
      let s = scale[g], z = zero[g], xc = min(max(x, -Float(p)), Float(p))
      let q = min(max(rne((xc + z) / s), 0), qmax)
      return (UInt8(q), q * s - z)
    case .sym(let b):
      let s = scale[g]
      let q = min(max(rne(x / s), -qmax), qmax)
      return (UInt8(Int(q) + (1 << (b - 1))), q * s)
    }
  }

  /// Round-to-nearest quantization of the whole weight with these parameters.
  public func rtn(_ w: [Float]) -> QuantizedWeight {
    var codes = [UInt8](repeating: 0, count: w.count)
    for o in 0..<outFeatures {
      for i in 0..<inFeatures {
        codes[o * inFeatures + i] = quantize(toDomain(w[o * inFeatures + i], row: o), row: o, column: i).code
      }
    }
    return QuantizedWeight(format: format, outFeatures: outFeatures, inFeatures: inFeatures, codes: codes,
                           scale: scale, zero: zero, rowScale: rowScale)
  }
}

// The quantized weight formats shared by the offline quantizer (QoQQuant) and the engine: what the codes mean and
// how they map back to values (deepcompressor.md §1.3).
import QoQIO

/// How a weight is quantized.
public enum WeightFormat: Sendable, Equatable, CustomStringConvertible {
  /// uint-b, asymmetric, fp16 scale; `group` nil = one group per output channel. PostScale (deepcompressor's default):
  /// a real fp16 zero in value units, ŵ = q·s − z. `preScale`: an integer zero point zp in code units, ŵ = (q − zp)·s
  /// (deepcompressor's PreScale; what compressed-tensors, GPTQ and AWQ's integer qzeros store).
  case asym(bits: Int, group: Int?, preScale: Bool = false)
  /// QoQ progressive: fp16 per-channel s1 with protective range P, then uint4 groups with int8 s2 and integer z.
  case progressive(group: Int, protective: Int)
  /// sint-b symmetric per output channel (SmoothQuant W8): s = fp16(max|w|/(2^(b−1)−1)).
  case sym(bits: Int)

  public var description: String {
    switch self {
    case .asym(let b, let g, let pre): return "uint\(b)-asym-\(g.map { "g\($0)" } ?? "per-channel")\(pre ? "-prescale" : "")"
    case .progressive(let g, let p): return "progressive-uint4-g\(g)-P\(p)"
    case .sym(let b): return "sint\(b)-sym-per-channel"
    }
  }

  /// Group width along the input for a layer with `inFeatures` inputs.
  public func groupSize(_ inFeatures: Int) -> Int {
    switch self {
    case .asym(_, let g, _): return g ?? inFeatures
    case .progressive(let g, _): return g
    case .sym: return inFeatures
    }
  }

  public var bits: Int {
    switch self {
    case .asym(let b, _, _), .sym(let b): return b
    case .progressive: return 4
    }
  }
}

/// A quantized weight: integer codes plus the parameters that map them back to values.
/// Dequantization: asym ŵ = q·scale − zero; progressive ŵ = rowScale·(q·scale − zero); sym ŵ = (q − 2^(b−1))·scale.
public struct QuantizedWeight: Sendable {
  public let format: WeightFormat
  public let outFeatures: Int
  public let inFeatures: Int
  /// (out, in) unsigned codes (sym codes are offset by 2^(b−1)).
  public var codes: [UInt8]
  /// (out, groups): fp16 scale (asym, sym) or integer s2 (progressive).
  public var scale: [Float]
  /// (out, groups): fp16 post-scale zero (asym) or integer zero (progressive); empty for sym.
  public var zero: [Float]
  /// (out): progressive s1 (fp16).
  public var rowScale: [Float]

  public var groupSize: Int { format.groupSize(inFeatures) }
  public var groups: Int { (inFeatures + groupSize - 1) / groupSize }

  public init(format: WeightFormat, outFeatures: Int, inFeatures: Int, codes: [UInt8], scale: [Float], zero: [Float],
              rowScale: [Float]) {
    self.format = format; self.outFeatures = outFeatures; self.inFeatures = inFeatures
    self.codes = codes; self.scale = scale; self.zero = zero; self.rowScale = rowScale
  }

  public func dequantized() -> [Float] {
    var w = [Float](repeating: 0, count: outFeatures * inFeatures)
    let gs = groupSize, ng = groups
    for o in 0..<outFeatures {
      for i in 0..<inFeatures {
        let q = Float(codes[o * inFeatures + i]), g = o * ng + i / gs
        switch format {
        case .asym: w[o * inFeatures + i] = q * scale[g] - zero[g]
        case .progressive: w[o * inFeatures + i] = rowScale[o] * (q * scale[g] - zero[g])
        case .sym(let b): w[o * inFeatures + i] = (q - Float(1 << (b - 1))) * scale[g]
        }
      }
    }
    return w
  }
}


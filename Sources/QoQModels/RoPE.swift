// Rotary position embedding as transformers computes it (fp32): inv_freq = 1 / θ^(2i/d), angle = pos·inv_freq,
// rotate_half pairing (i, i + d/2). Llama 3 frequency scaling (rope_type "llama3") adjusts inv_freq.
import Foundation

public final class RotaryEmbedding: @unchecked Sendable {
  let half: Int
  let invFreq: [Float]
  /// cos/sin tables, (positions, d/2), grown on demand.
  private(set) var cosTable: [Float] = []
  private(set) var sinTable: [Float] = []
  private(set) var positions = 0

  public init(headDim d: Int, theta: Double, scaling: RopeScaling?) {
    half = d / 2
    var inv = (0..<half).map { i -> Float in
      1 / powf(Float(theta), Float(2 * i) / Float(d))
    }
    if let s = scaling, s.ropeType == "llama3" {
      let old = Float(s.originalMaxPositionEmbeddings)
      let lowWavelen = old / Float(s.lowFreqFactor), highWavelen = old / Float(s.highFreqFactor)
      let factor = Float(s.factor)
      inv = inv.map { f in
        let wavelen = 2 * Float.pi / f
        if wavelen < highWavelen { return f }
        if wavelen > lowWavelen { return f / factor }
        let smooth = (old / wavelen - Float(s.lowFreqFactor)) / Float(s.highFreqFactor - s.lowFreqFactor)
        return (1 - smooth) * f / factor + smooth * f
      }
    }
    invFreq = inv
  }

  public func ensure(_ n: Int) {
    guard n > positions else { return }
    let newN = max(n, positions * 2, 64)
    cosTable.reserveCapacity(newN * half)
    sinTable.reserveCapacity(newN * half)
    for p in positions..<newN {
      for i in 0..<half {
        let a = Float(p) * invFreq[i]
        cosTable.append(cos(a))
        sinTable.append(sin(a))
      }
    }
    positions = newN
  }

  /// Rotates `heads` vectors of size 2·half at `x` (stride 2·half) for position `pos`.
  public func apply(_ x: UnsafeMutablePointer<Float>, heads: Int, pos: Int) {
    cosTable.withUnsafeBufferPointer { cb in
      sinTable.withUnsafeBufferPointer { sb in
        let c = cb.baseAddress! + pos * half, s = sb.baseAddress! + pos * half
        for h in 0..<heads {
          let v = x + h * 2 * half
          for i in 0..<half {
            let a = v[i], b = v[i + half]
            v[i] = a * c[i] - b * s[i]
            v[i + half] = b * c[i] + a * s[i]
          }
        }
      }
    }
  }
}

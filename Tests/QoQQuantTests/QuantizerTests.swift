import Foundation
import Testing
@testable import QoQIO
@testable import QoQQuant
@testable import QoQFormat
import QoQTestSupport

@Suite struct QuantizerTests {
  @Test func asymGroupHandComputed() {
    // min −1, max 2: s = fp16(3/15) = 0.199951171875, z = fp16(1) = 1.
    let w: [Float] = [-1, 0, 0.5, 2]
    let qz = WeightQuantizer(weight: w, out: 1, inp: 4, format: .asym(bits: 4, group: nil))
    #expect(qz.scale == [0.199951171875] && qz.zero == [1])
    let q = qz.rtn(w)
    #expect(q.codes == [0, 5, 8, 15])
    let s: Float = 0.199951171875
    #expect(q.dequantized() == [0 * s - 1, 5 * s - 1, 8 * s - 1, 15 * s - 1])
  }

  @Test func preScaleHandComputed() {
    // deepcompressor's PreScale: s = fp16(3/15), zp = round(1/s) = round(5.0012) = 5, q = clamp(round(w/s + zp)),
    // ŵ = (q − zp)·s; the zero is held as zp·s (exact in fp32). PostScale on the same row gives z = 1 (above).
    let w: [Float] = [-1, 0, 0.5, 2]
    let s: Float = 0.199951171875
    let qz = WeightQuantizer(weight: w, out: 1, inp: 4, format: .asym(bits: 4, group: nil, preScale: true))
    #expect(qz.scale == [s] && qz.zero == [5 * s])
    let q = qz.rtn(w)
    #expect(q.codes == [0, 5, 8, 15])
    #expect(q.dequantized() == [-5 * s, 0, 3 * s, 10 * s])
    let plan = try? QuantPlan(try Recipe.load(files: [recipesDir + "/rtn-w4a16-g128.yaml"], flags: ["--wgts-zero-point", "PreScale"]))
    #expect(plan?.weightFormat == .asym(bits: 4, group: 128, preScale: true))
    #expect(throws: QoQError.self) { try QuantPlan(try Recipe.load(files: [recipesDir + "/rtn-w4a16-g128.yaml"], flags: ["--wgts-zero-point", "Mid"])) }
  }

  @Test func roundHalfToEvenAndZeroScale() {
    // Range [0, 15] → s = 1, z = 0: 2.5 → 2 and 3.5 → 4 (ties to even).
    let w: [Float] = [0, 2.5, 3.5, 15]
    let q = WeightQuantizer(weight: w, out: 1, inp: 4, format: .asym(bits: 4, group: nil)).rtn(w)
    #expect(q.codes == [0, 2, 4, 15])
    // A constant row: scale 0 → 1, z = −3, reproduced exactly.
    let c: [Float] = [3, 3, 3, 3]
    let qc = WeightQuantizer(weight: c, out: 1, inp: 4, format: .asym(bits: 4, group: nil))
    #expect(qc.scale == [1] && qc.zero == [-3])
    #expect(qc.rtn(c).dequantized() == c)
  }

  @Test func groupsAreIndependent() {
    let w: [Float] = [0, 1, 0, 100, -5, 5, 0, 0]  // 2 rows × 4, groups of 2
    let q = WeightQuantizer(weight: w, out: 2, inp: 4, format: .asym(bits: 4, group: 2))
    #expect(q.scale.count == 4)
    #expect(q.scale[0] == fp16Round(1.0 / 15) && q.scale[1] == fp16Round(100.0 / 15))
    #expect(q.zero[2] == 5 && q.scale[3] == 1)
  }

  @Test func progressiveHandComputed() {
    // s1 = fp16(0.01) = 0.01000213623046875; u = w/s1 = [119.97, −59.99, 29.99, 0];
    // s2 = round(179.96/15) = 12; z = round(59.99) = 60; q = round((u + 60)/12) = [15, 0, 7 (7.499), 5].
    let w: [Float] = [1.2, -0.6, 0.3, 0]
    let qz = WeightQuantizer(weight: w, out: 1, inp: 4, format: .progressive(group: 4, protective: 120))
    let s1: Float = 0.01000213623046875
    #expect(qz.rowScale == [s1])
    #expect(qz.scale == [12] && qz.zero == [60])
    let q = qz.rtn(w)
    #expect(q.codes == [15, 0, 7, 5])
    #expect(q.dequantized() == [s1 * 120, s1 * -60, s1 * 24, 0])
    // Every intermediate q·s2 − z lies in the int8 range.
    for (i, c) in q.codes.enumerated() { #expect(abs(Float(c) * q.scale[i / 4] - q.zero[i / 4]) <= 127) }
  }

  @Test func protectiveRangeIs120PostScale() {
    #expect(protectiveRange(postScale: true) == 120)
  }

  @Test func int8PerTokenHandComputed() {
    var x: [Float] = [1, -2, 0.5, 0, 0, 0]
    fakeQuantizePerToken(&x, rows: 2, width: 3)
    let s = fp16Round(Float(2) / 127)  // 0.0157470703125
    #expect(x[0] == 64 * s && x[1] == -127 * s && x[2] == 32 * s)
    #expect(x[3] == 0 && x[4] == 0 && x[5] == 0)  // zero scale → 1, zeros stay zero
  }

  @Test func kvGroupsHandComputed() {
    // Two groups of 2 per token; each group gets its own (s, z).
    var x: [Float] = [0, 1.5, -4, 4]
    fakeQuantizeAsymGroups(&x, rows: 1, width: 4, group: 2, bits: 4)
    let s1 = fp16Round(Float(1.5) / 15), s2 = fp16Round(Float(8) / 15)
    #expect(x[0] == 0 && x[1] == 15 * s1)
    #expect(x[2] == 0 * s2 - 4 && x[3] == 15 * s2 - 4)
  }

  @Test func symPerChannel() {
    let w: [Float] = [0.5, -1.27, 0.01]
    let q = WeightQuantizer(weight: w, out: 1, inp: 3, format: .sym(bits: 8)).rtn(w)
    let s = fp16Round(Float(1.27) / 127)
    #expect(q.scale == [s])
    #expect(q.dequantized() == [(0.5 / s).rounded(.toNearestOrEven) * s, -127 * s, (0.01 / s).rounded(.toNearestOrEven) * s])
  }
}

@Suite struct GPTQTests {
  /// With uncorrelated inputs (H ∝ I) GPTQ has no error to propagate, so it equals round-to-nearest.
  @Test(arguments: [WeightFormat.asym(bits: 4, group: nil), .asym(bits: 4, group: 8), .progressive(group: 8, protective: 120)])
  func identityHessianGivesRTN(_ f: WeightFormat) throws {
    let out = 6, n = 32
    let w = randomFloats(out * n, seed: 5, scale: 0.1)
    var h = [Double](repeating: 0, count: n * n)
    for i in 0..<n { h[i * n + i] = 2 }
    let qz = WeightQuantizer(weight: w, out: out, inp: n, format: f)
    let r = try gptq(weight: w, hessian: h, quantizer: qz)
    #expect(r.weight.codes == qz.rtn(w).codes)
  }

  /// The accumulated Hessian is 2/N Σ x xᵀ, every element (mirrored from the lower triangle), on sizes that leave
  /// partial 128-row blocks and 32-column panels, and over more than one 512-token chunk, against Double sums.
  @Test(arguments: [(1, 5), (3, 17), (17, 513), (129, 1100), (300, 77)])
  func hessianMatchesDirectSum(_ size: Int, _ tokens: Int) {
    let x = randomFloats(tokens * size, seed: UInt64(size * 31 + tokens))
    let acc = HessianAccumulator(size: size)
    // Two calls, so the sum also runs across calls.
    let split = tokens / 3
    x.withUnsafeBufferPointer { acc.add($0.baseAddress!, rows: split); acc.add($0.baseAddress! + split * size, rows: tokens - split) }
    #expect(acc.rows == tokens)
    let h = acc.hessian(sequences: 3)
    // Σ x_i x_j in Double; the error is measured against sqrt(H_ii·H_jj), the scale of an fp32 sum of these terms.
    var d = [Double](repeating: 0, count: size * size)
    for t in 0..<tokens { for i in 0..<size { for j in 0..<size { d[i * size + j] += Double(x[t * size + i]) * Double(x[t * size + j]) } } }
    var worst = 0.0
    for i in 0..<size {
      for j in 0..<size {
        let scale = (d[i * size + i] * d[j * size + j]).squareRoot() * 2 / 3
        worst = max(worst, abs(h[i * size + j] - d[i * size + j] * 2 / 3) / max(1e-12, scale))
      }
    }
    #expect(worst < 1e-5, "worst difference \(worst) of sqrt(H_ii·H_jj)")
  }

  /// On correlated inputs GPTQ's output error ‖X(W − Ŵ)ᵀ‖ is below RTN's.
  @Test func reducesOutputErrorOnCorrelatedInputs() throws {
    let out = 16, n = 48, tokens = 400
    let w = randomFloats(out * n, seed: 9, scale: 0.05)
    let base = randomFloats(tokens * 4, seed: 10)
    var x = [Float](repeating: 0, count: tokens * n)
    let mix = randomFloats(4 * n, seed: 11)
    for t in 0..<tokens { for i in 0..<n { var s: Float = 0; for j in 0..<4 { s += base[t * 4 + j] * mix[j * n + i] }; x[t * n + i] = s + 0.05 * Float((t * 7 + i) % 5) } }
    let acc = HessianAccumulator(size: n)
    x.withUnsafeBufferPointer { acc.add($0.baseAddress!, rows: tokens) }
    let h = acc.hessian(sequences: 4)
    // The accumulated Hessian equals 2/N Σ x xᵀ computed directly.
    var direct = 0.0
    for t in 0..<tokens { direct += Double(x[t * n + 3]) * Double(x[t * n + 7]) }
    #expect(abs(h[3 * n + 7] - direct * 2 / 4) <= 1e-4 * max(1, abs(direct)))
    let qz = WeightQuantizer(weight: w, out: out, inp: n, format: .asym(bits: 4, group: 16))
    func outErr(_ wq: [Float]) -> Double {
      var e = 0.0
      for t in 0..<tokens { for o in 0..<out { var d = 0.0; for i in 0..<n { d += Double(x[t * n + i]) * Double(w[o * n + i] - wq[o * n + i]) }; e += d * d } }
      return e
    }
    let g = try gptq(weight: w, hessian: h, quantizer: qz)
    let eG = outErr(g.weight.dequantized()), eR = outErr(qz.rtn(w).dequantized())
    #expect(eG < 0.8 * eR, "GPTQ \(eG) vs RTN \(eR)")
  }
}

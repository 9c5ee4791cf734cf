import Foundation
import Testing
@testable import QoQFormat
@testable import QoQQuant
import QoQTestSupport

@Suite struct RangeSearchTests {
  @Test func candidateListAndSubsample() {
    let r = RangeSearch.ratios(maxShrink: 0.2, numGrids: 80)
    #expect(r.count == 81 && r[0] == 1 && abs(r[1] - 0.99) < 1e-6 && abs(r[80] - 0.2) < 1e-6)
    // 128 sequences × 1024 tokens = 2048 batches of 64 → every 256th batch: 8 batches, 512 rows, evenly spaced.
    let rows = RangeSearch.subsampleRows(total: 128 * 1024)
    #expect(rows.count == 512 && rows[0] == 0 && rows[64] == 256 * 64 && rows[511] == 7 * 256 * 64 + 63)
    #expect(RangeSearch.subsampleRows(total: 300) == Array(0..<300))
  }

  /// The chosen ratio per group minimises Σ_t (x_t,g · (ŵ_g − w_g))², computed here independently in Double.
  @Test(arguments: [WeightFormat.asym(bits: 4, group: nil), .asym(bits: 4, group: 8)])
  func productsErrorMatchesBruteForce(_ f: WeightFormat) {
    let out = 5, inp = 24, t = 40
    var w = randomFloats(out * inp, seed: 3, scale: 0.1)
    w[7] = 0.9; w[30] = -0.8  // outliers make clipping worthwhile
    let x = randomFloats(t * inp, seed: 4)
    let cands = RangeSearch.ratios(maxShrink: 0.5, numGrids: 10)
    let got = RangeSearch.productsError(weight: w, out: out, inp: inp, format: f, inputs: x, candidates: cands)
    let gs = f.groupSize(inp), ng = inp / gs
    for o in 0..<out {
      for g in 0..<ng {
        var best: Float = 1, bestE = Double.infinity
        for r in cands {
          let wq = WeightQuantizer(weight: w, out: out, inp: inp, format: f, ratios: [r]).rtn(w).dequantized()
          var e = 0.0
          for s in 0..<t {
            var p = 0.0
            for i in (g * gs)..<((g + 1) * gs) { p += Double(x[s * inp + i]) * Double(wq[o * inp + i] - w[o * inp + i]) }
            e += p * p
          }
          if e < bestE * (1 - 1e-9) { bestE = e; best = r }
        }
        #expect(got[o * ng + g] == best, "row \(o) group \(g)")
      }
    }
    #expect(got.contains { $0 < 1 })  // the outliers get clipped somewhere
  }

  @Test func smoothAttentionCandidates() {
    let c = SmoothStage.alphaBetaCandidates(alpha: 0.5, beta: -2, grids: 20)
    #expect(c.count == 39 && c[0] == (0, 0) && c[1] == (0.05, 0) && c[20] == (0.05, 0.95))
    #expect(SmoothStage.alphaBetaCandidates(alpha: 0.5, beta: 0, grids: 20).count == 20)
  }
}

import Foundation
import Testing
@testable import QoQFormat
@testable import QoQQuant
import QoQIO
import QoQTestSupport

@Suite struct RangeSearchTests {
  @Test func candidateListAndSubsample() throws {
    let r = RangeSearch.ratios(maxShrink: 0.2, numGrids: 80)
    #expect(r.count == 81 && r[0] == 1 && abs(r[1] - 0.99) < 1e-6 && abs(r[80] - 0.2) < 1e-6)
    // 128 sequences × 1024 tokens = 2048 batches of 64 → every 256th batch: 8 batches, 512 rows, evenly spaced.
    let rows = RangeSearch.subsampleRows(lengths: [Int](repeating: 1024, count: 128))
    #expect(rows.count == 512 && rows[0] == 0 && rows[64] == 256 * 64 && rows[511] == 7 * 256 * 64 + 63)
    // deepcompressor's repartition by hand: a tensor's last partial chunk is dropped (300 rows → 4 chunks of 64), per
    // tensor ([100, 100] → rows 0–63 and 100–163); a tensor of ≤ 64 rows is one chunk; 15 chunks (960 rows) are over 512
    // but 15 / 8 = 1 keeps all of them; 17 chunks keep every 2nd: 9 chunks, the last at rows 1024–1087.
    #expect(RangeSearch.subsampleRows(lengths: [300]) == Array(0..<256))
    #expect(RangeSearch.subsampleRows(lengths: [100, 100]) == Array(0..<64) + Array(100..<164))
    #expect(RangeSearch.subsampleRows(lengths: [40]) == Array(0..<40))
    #expect(RangeSearch.subsampleRows(lengths: [1000]) == Array(0..<960))
    let odd = RangeSearch.subsampleRows(lengths: [17 * 64])
    #expect(odd.count == 9 * 64 && odd[64] == 128 && odd.last == 17 * 64 - 1)
    #expect(RangeSearch.subsampleRows(lengths: [0, 0]).isEmpty)
    // element_batch_size 1: 512 single rows, every 32nd of 32 × 512 (element_batch_size / element_size from the recipe).
    #expect(RangeSearch.subsampleRows(lengths: [Int](repeating: 512, count: 32), batch: 1, size: 512) == (0..<512).map { $0 * 32 })
    let awq = [BaselineTests.recipesDir + "/awq.yaml"]
    let plan = try QuantPlan(try Recipe.load(files: awq, flags: ["--wgts-calib-range-element-batch-size", "1"]))
    #expect(plan.clipElementBatch == 1 && plan.clipElementSize == 512)
    #expect(throws: QoQError.self) { try QuantPlan(try Recipe.load(files: awq, flags: ["--wgts-calib-range-element-batch-size", "0"])) }
  }

  /// The searches' outputs and errors computed a few sequences at a time (sample_size -1 means all of them, issue
  /// #20) equal one pass over every sequence: a forward that depends on each sequence as a whole (its running sum), and
  /// an error summed by hand in Double. Awkward counts: 1, 3, 5 and 17 sequences of uneven lengths, chunks of 1, 4, 7.
  @Test(arguments: [1, 3, 5, 17])
  func chunkedSearchEqualsOnePass(_ n: Int) {
    let width = 3
    let lengths = (0..<n).map { 1 + ($0 * 7) % 5 }
    let h = randomFloats(lengths.reduce(0, +) * width, seed: UInt64(n))
    func forward(_ x: [Float], _ ls: [Int]) -> [Float] {  // per sequence: 2 × the running sum over its rows
      var y = [Float](repeating: 0, count: x.count), row = 0
      for t in ls {
        var acc = [Float](repeating: 0, count: width)
        for r in row..<(row + t) { for j in 0..<width { acc[j] += x[r * width + j]; y[r * width + j] = 2 * acc[j] } }
        row += t
      }
      return y
    }
    let whole = forward(h, lengths)
    let reference = whole.map { $0 + 0.25 }
    var byHand = 0.0  // ≈ 0.0625 per element: the offset, up to the rounding of y + 0.25
    for i in 0..<whole.count { let d = Double(whole[i] - reference[i]); byHand += d * d }
    #expect(abs(byHand - 0.0625 * Double(whole.count)) < 1e-3 * Double(whole.count))
    for chunk in [1, 4, 7] {
      #expect(RangeSearch.chunkedOutputs(h: h, lengths: lengths, width: width, chunk: chunk, forward) == whole)
      let e = RangeSearch.outputError(h: h, lengths: lengths, width: width, reference: reference, chunk: chunk, forward)
      #expect(e == byHand, "chunk \(chunk): \(e) vs \(byHand)")
    }
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

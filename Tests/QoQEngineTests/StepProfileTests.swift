// The step profile (issue #18 item 4): off, it records nothing; on, it counts every step, times every phase a decode
// step runs, and leaves the outputs unchanged (the hand-written decode loop is the reference).
import Testing
@testable import QoQEngine
import QoQKernels
import QoQTestSupport

@Suite(.serialized) struct StepProfileTests {
  @Test func recordsEveryPhaseOnlyWhenEnabled() throws {
    let (m, _) = try EngineTests.model()
    let prompt: [Int32] = [3, 14, 15, 92, 65]
    let want = try EngineTests.manualGreedy(m, prompt, 4)
    func generate() throws -> (tokens: [Int32], steps: Int) {
      var o = EngineOptions(); o.pageSize = 16; o.numBlocks = 8
      let e = try Engine(model: m, tokenizer: nil, options: o)
      _ = try e.add(prompt: prompt, params: EngineTests.greedy(4), ignoreEOS: true)
      var out: [Int32] = []
      while e.hasUnfinished { for ev in try e.step() { if case .finished(_, _, _, let t, _) = ev { out = t } } }
      return (out, e.stepsRun)
    }
    let prof = m.profile
    prof.reset()
    let off = try generate()
    #expect(off.tokens == want)
    #expect(prof.steps == 0 && prof.nanos.allSatisfy { $0 == 0 }, "a disabled profile recorded \(prof.nanos)")

    prof.enabled = true
    defer { prof.enabled = false; prof.reset() }
    let on = try generate()
    #expect(on.tokens == want)
    #expect(prof.steps == on.steps && on.steps == 4, "\(prof.steps) profiled steps of \(on.steps)")
    // Every phase of a decode step ran on this model (RMSNorm without int8 input where it is FP: still timed).
    for p in StepProfile.Phase.allCases {
      #expect(prof.nanos[p.rawValue] > 0, "\(p.name) was not timed")
    }
  }
}

// Required 1: no page leak and no lost request under any mix of arrivals, finishes, stop tokens, cancels and
// preemption, for both policies, over many seeds and small pools.
import XCTest
import QoQIO
@testable import QoQScheduler

final class SchedulerRandomTests: XCTestCase {
  func testNoLeakUnderRandomTraffic() throws {
    var preemptions: [SchedulerPolicy: Int] = [:], totalCancels = 0, totalRejectedAtAdd = 0
    var reasons: [FinishReason: Int] = [:]
    for seed in 0..<1000 {
      var rng = SplitMix64(seed: UInt64(seed))
      let policy: SchedulerPolicy = seed % 3 == 2 ? .qserveV0 : .chunked
      let bs = [1, 2, 4, 8][rng.int(4)]
      let numBlocks = 2 + rng.int(11)
      let poolTokens = bs * numBlocks
      let maxModelLen = max(2, poolTokens / 2 + rng.int(poolTokens * 2))
      let cfg = SchedulerConfig(numBlocks: numBlocks, maxModelLen: maxModelLen, blockSize: bs,
                                maxNumSeqs: 1 + rng.int(6), maxBatchedTokens: 1 + rng.int(24), policy: policy)
      let s = try Scheduler(config: cfg)
      let r = FakeRunner(s, vocab: 30, stopToken: 0)
      let nReq = 1 + rng.int(12)
      var accepted: [Int: (prompt: [Int32], maxTokens: Int)] = [:]
      var cancelled = Set<Int>()
      var next = 0, steps = 0
      let ctx = "seed \(seed) \(cfg)"
      while next < nReq || s.hasUnfinished {
        // Random arrivals between steps; some prompts are too long on purpose.
        while next < nReq && rng.int(3) == 0 || (next < nReq && !s.hasUnfinished) {
          let len = 1 + rng.int(min(poolTokens, maxModelLen) + 2)
          let prompt = fakePrompt(seed * 100 + next, length: len, vocab: 30)
          let maxTokens = 1 + rng.int(20)
          do {
            try s.add(id: next, prompt: prompt, maxTokens: maxTokens)
            accepted[next] = (prompt, maxTokens)
          } catch is QoQError {
            totalRejectedAtAdd += 1
          }
          next += 1
        }
        // Random cancels of waiting or running requests.
        if !accepted.isEmpty && rng.int(20) == 0 {
          let id = Array(accepted.keys).sorted()[rng.int(accepted.count)]
          let live = s.finishReason(of: id) == nil
          XCTAssertEqual(s.cancel(id: id), live, ctx)
          if live { cancelled.insert(id); totalCancels += 1 }
        }
        r.step()
        XCTAssertLessThanOrEqual(cfg.numBlocks - s.blocks.numFree, cfg.numBlocks, ctx)
        steps += 1
        if steps > 20_000 { XCTFail("livelock: \(ctx)"); break }
        if r.broken { break }
      }
      XCTAssertEqual(s.blocks.numFree, numBlocks, "page leak: \(ctx)")
      XCTAssertNil(s.invariantViolation(), ctx)
      preemptions[policy, default: 0] += r.preemptions
      for (id, req) in accepted {
        guard let reason = s.finishReason(of: id) else { XCTFail("request \(id) never finished: \(ctx)"); continue }
        reasons[reason, default: 0] += 1
        let gen = s.generated(of: id)!
        // Whatever happened to it, what was generated is what the model says for its history.
        XCTAssertEqual(gen, r.expectedGeneration(prompt: req.prompt, count: gen.count), "request \(id): \(ctx)")
        XCTAssertLessThanOrEqual(gen.count, req.maxTokens, ctx)
        XCTAssertLessThanOrEqual(req.prompt.count + gen.count, min(maxModelLen, poolTokens + 1), ctx)
        switch reason {
        case .cancelled: XCTAssertTrue(cancelled.contains(id), ctx)
        case .stop: XCTAssertEqual(gen.last, 0, ctx)
        case .length:
          XCTAssertTrue(gen.count == req.maxTokens || req.prompt.count + gen.count == maxModelLen
                        || req.prompt.count + gen.count == poolTokens + 1, "request \(id): \(ctx)")
        case .rejected: XCTAssertEqual(policy, .qserveV0, ctx)
        }
      }
    }
    // The traffic must have exercised what the test is about.
    XCTAssertGreaterThan(preemptions[.chunked, default: 0], 100)
    XCTAssertGreaterThan(preemptions[.qserveV0, default: 0], 100)
    XCTAssertGreaterThan(totalCancels, 100)
    XCTAssertGreaterThan(totalRejectedAtAdd, 100)
    for reason in [FinishReason.stop, .length, .cancelled] {
      XCTAssertGreaterThan(reasons[reason, default: 0], 20, "\(reason)")
    }
    print("random traffic: \(preemptions) preemptions, \(totalCancels) cancels, reasons \(reasons)")
  }
}

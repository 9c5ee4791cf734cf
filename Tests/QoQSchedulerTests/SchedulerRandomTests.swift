// Required 1: no page leak and no lost request under any mix of arrivals, finishes, stop tokens, cancels and
// preemption, for both policies, over many seeds and small pools; every other seed with the prefix cache on and
// prompts that share prefixes (shared pages under cancel and preemption).
import XCTest
import QoQIO
@testable import QoQScheduler

final class SchedulerRandomTests: XCTestCase {
  func testNoLeakUnderRandomTraffic() throws {
    var preemptions: [SchedulerPolicy: Int] = [:], totalCancels = 0, totalRejectedAtAdd = 0
    var reasons: [FinishReason: Int] = [:]
    var hitTokens = 0, sharedPageSteps = 0
    for seed in 0..<1000 {
      var rng = SplitMix64(seed: UInt64(seed))
      let policy: SchedulerPolicy = seed % 3 == 2 ? .qserveV0 : .chunked
      let bs = [1, 2, 4, 8][rng.int(4)]
      let numBlocks = 2 + rng.int(11)
      let poolTokens = bs * numBlocks
      let maxModelLen = max(2, poolTokens / 2 + rng.int(poolTokens * 2))
      let caching = seed % 2 == 1
      let cfg = SchedulerConfig(numBlocks: numBlocks, maxModelLen: maxModelLen, blockSize: bs,
                                maxNumSeqs: 1 + rng.int(6), maxBatchedTokens: 1 + rng.int(24), policy: policy,
                                enablePrefixCaching: caching)
      // A few long "system prompts" that requests start with (cut at a random length) when caching is on.
      let bases = (0..<3).map { fakePrompt(seed * 100 + 90 + $0, length: poolTokens + 2, vocab: 30) }
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
          var prompt = fakePrompt(seed * 100 + next, length: len, vocab: 30)
          if caching && rng.int(3) != 0 {
            let k = rng.int(len + 1)
            prompt = Array(bases[rng.int(3)][0..<k] + prompt[k...])
          }
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
        let plan = r.step()
        XCTAssertLessThanOrEqual(cfg.numBlocks - s.blocks.numFree, cfg.numBlocks, ctx)
        let tables = plan.chunks.flatMap(\.blockTable)
        if Set(tables).count < tables.count { sharedPageSteps += 1 }
        steps += 1
        if steps > 20_000 { XCTFail("livelock: \(ctx)"); break }
        if r.broken { break }
      }
      XCTAssertEqual(s.blocks.numFree, numBlocks, "page leak: \(ctx)")
      XCTAssertEqual(s.blocks.numFree - s.blocks.numIdleCached + s.blocks.numCached, numBlocks,
                     "every idle page is free or cached: \(ctx)")
      XCTAssertEqual(s.prefixHitTokens, r.cacheHitTokens, ctx)
      if !caching { XCTAssertEqual(s.prefixHitTokens, 0, ctx) }
      hitTokens += r.cacheHitTokens
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
    XCTAssertGreaterThan(hitTokens, 1000, "the shared prompts must hit the prefix cache")
    XCTAssertGreaterThan(sharedPageSteps, 40, "pages must be shared between running requests")
    print("random traffic: \(preemptions) preemptions, \(totalCancels) cancels, reasons \(reasons), "
          + "\(hitTokens) prefix-cache hit tokens, \(sharedPageSteps) steps with shared pages")
  }
}

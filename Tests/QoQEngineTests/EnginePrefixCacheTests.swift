// Prefix caching in the engine (issue #18): requests that share leading tokens reuse each other's KV pages, and
// their greedy outputs equal the hand-written decode loop (an independent reference: one sequence, fresh pool) and
// the engine's own outputs with the cache off.
import Testing
@testable import QoQEngine
import QoQIO
import QoQScheduler
import QoQTestSupport

@Suite struct EnginePrefixCacheTests {
  @Test func sharedPrefixesGiveTheSameOutputs() throws {
    let (m, _) = try EngineTests.model()
    let n = 6
    // A 40-token "system prompt" (2.5 pages of 16) and requests that extend it; one is the system prompt alone.
    let system = (0..<40).map { Int32(($0 * 13 + 5) % 100) }
    let prompts = [system + [1, 2, 3], system + [7], system, Array(system[0..<33]) + [9, 9], system + [1, 2, 3, 4, 5]]
    let want = try prompts.map { try EngineTests.manualGreedy(m, $0, n) }
    for caching in [true, false] {
      var o = EngineOptions(); o.pageSize = 16; o.numBlocks = 64; o.prefixCaching = caching
      let e = try Engine(model: m, tokenizer: nil, options: o)
      var out: [Int: [Int32]] = [:], cached: [Int: Int] = [:]
      // The first request alone fills the cache; the others arrive together.
      for (i, p) in prompts.enumerated() {
        let id = try e.add(prompt: p, params: EngineTests.greedy(n), ignoreEOS: true)
        #expect(id == i)
        if i == 0 || i == prompts.count - 1 {
          while e.hasUnfinished {
            for ev in try e.step() { if case .finished(let id, _, _, let t, let c) = ev { out[id] = t; cached[id] = c } }
          }
        }
      }
      for i in prompts.indices { #expect(out[i] == want[i], "request \(i), prefix caching \(caching)") }
      // Each request's `.finished` reports the prompt tokens it took from the cache (OpenAI's cached_tokens).
      #expect(cached == (caching ? [0: 0, 1: 32, 2: 32, 3: 32, 4: 32] : [0: 0, 1: 0, 2: 0, 3: 0, 4: 0]), "\(cached)")
      #expect(e.scheduler.blocks.numFree == 64, "pages leaked")
      if caching {
        // Requests 1–3 take 2 pages, 2 pages (40 tokens: the last one is computed) and 2 pages; request 4 takes the
        // first request's 2 full pages too.
        #expect(e.scheduler.prefixHitTokens == 4 * 32, "\(e.scheduler.prefixHitTokens)")
      } else {
        #expect(e.scheduler.prefixHitTokens == 0)
      }
    }
  }

  /// A request that asks for its prompt's log-probabilities computes every position, even when the prefix is cached.
  @Test func promptLogprobsBypassTheCache() throws {
    let (m, _) = try EngineTests.model()
    var o = EngineOptions(); o.pageSize = 16; o.numBlocks = 32
    let e = try Engine(model: m, tokenizer: nil, options: o)
    let prompt = (0..<40).map { Int32($0 % 50) }
    try e.add(prompt: prompt, params: EngineTests.greedy(1), ignoreEOS: true)
    _ = try e.runToCompletion()
    try e.add(prompt: prompt, params: EngineTests.greedy(1), ignoreEOS: true, logprobs: LogprobRequest(prompt: 0))
    var scored = 0
    for ev in try e.runToCompletion() { if case .logprobs(_, true, let entries) = ev { scored += entries.count } }
    #expect(scored == prompt.count - 1, "every prompt position after the first is scored")
    #expect(e.scheduler.prefixHitTokens == 0)
  }
}

// Prefix caching (issue #18): the BlockManager's content-addressed pages and LRU list, and the scheduler admitting
// requests after their longest cached prefix. The fake engine (FakeRunner) reads every cached position back through
// the block table and checks it against the request's own tokens, and its outputs against a model run by hand.
import XCTest
import QoQIO
@testable import QoQScheduler

final class PrefixCacheTests: XCTestCase {
  /// The chained key, against values computed by an independent Python implementation of the same definition
  /// (FNV-1a over the parent hash and the ids as 8 little-endian bytes each, then SplitMix64's finalizer).
  func testPageKeyMatchesHandComputedValues() {
    let a = PageKey.chained(parent: nil, tokens: [1, 2, 3])
    XCTAssertEqual(a.hash, 0x1afa_c8bf_a4ee_8a5f)
    XCTAssertEqual(PageKey.chained(parent: a.hash, tokens: [4]).hash, 0x51ec_150a_0f8b_2519)
    XCTAssertEqual(PageKey.chained(parent: nil, tokens: [-1]).hash, 0xae79_2fff_753b_cbe9)
    XCTAssertEqual(a.tokens, [1, 2, 3])
    XCTAssertNotEqual(PageKey.chained(parent: 1, tokens: [4]).hash, PageKey.chained(parent: 2, tokens: [4]).hash)
  }

  /// Idle cached pages count as free, come back on a hit, and are evicted least recently released first.
  func testLRUEvictionAndHits() {
    let m = BlockManager(numBlocks: 3)
    let keys = (0..<3).map { PageKey.chained(parent: nil, tokens: [Int32($0)]) }
    let pages = (0..<3).map { _ in m.allocate()! }
    XCTAssertEqual(pages, [0, 1, 2])
    for (b, k) in zip(pages, keys) { XCTAssertTrue(m.register(b, key: k)) }
    XCTAssertFalse(m.register(0, key: keys[1]), "a page holds one key")
    XCTAssertEqual(m.numCached, 3)
    for b in [Int32(1), 0, 2] { m.release(b) }          // LRU order: 1, 0, 2
    XCTAssertEqual(m.numFree, 3)
    XCTAssertEqual(m.numIdleCached, 3)
    XCTAssertEqual(m.lookup(keys[0]), 0)
    XCTAssertNil(m.lookup(PageKey(hash: keys[0].hash, tokens: [7])), "same hash, other tokens: a miss")
    m.retain(0)                                         // a hit takes page 0 off the list
    XCTAssertEqual(m.refCount(0), 1)
    XCTAssertEqual(m.numFree, 2)
    XCTAssertEqual(m.allocate(), 1, "least recently released goes first")
    XCTAssertNil(m.lookup(keys[1]), "evicted")
    XCTAssertEqual(m.evictions, 1)
    XCTAssertEqual(m.allocate(), 2)
    XCTAssertNil(m.allocate(), "page 0 is owned")
    XCTAssertTrue(m.register(1, key: keys[1]))
    XCTAssertFalse(m.register(2, key: keys[1]), "a key maps to one page: the later copy stays private")
    m.release(1); m.release(2)
    XCTAssertEqual(m.numFree, 2)
    XCTAssertEqual(m.allocate(), 2, "an uncached free page is used before evicting a cached one")
    m.release(0)
    m.dropIdleCache()
    XCTAssertEqual(m.numCached, 0)
    XCTAssertEqual(m.numFree, 2)
    XCTAssertNil(m.lookup(keys[0]))
  }

  /// Traced by hand (pages of 4): A computes 10 tokens and finishes; B starts with A's first 8 tokens and is admitted
  /// after them on A's two pages; C is exactly those 8 tokens and takes one page only (its last token must be
  /// computed to give logits); with the cache off the same requests compute everything, with the same outputs.
  func testHitsTracedByHand() throws {
    let a = fakePrompt(1, length: 10)
    let b = Array(a[0..<8]) + [3, 2, 1], c = Array(a[0..<8])
    var outputs: [[Int32]] = []
    for caching in [true, false] {
      let s = try Scheduler(config: SchedulerConfig(numBlocks: 16, maxModelLen: 100, blockSize: 4,
                                                    enablePrefixCaching: caching))
      let r = FakeRunner(s, stopToken: nil)
      try s.add(id: 1, prompt: a, maxTokens: 2)
      var p = r.step()
      XCTAssertEqual(p.chunks.map { [$0.id, $0.start, $0.tokens.count] }, [[1, 0, 10]])
      r.runToCompletion()
      XCTAssertEqual(s.blocks.numCached, caching ? 2 : 0, "A's two full pages")
      try s.add(id: 2, prompt: b, maxTokens: 3)
      try s.add(id: 3, prompt: c, maxTokens: 3)
      p = r.step()
      if caching {
        XCTAssertEqual(p.chunks.map { [$0.id, $0.start, $0.tokens.count] }, [[2, 8, 3], [3, 4, 4]])
        XCTAssertEqual(p.chunks.map(\.blockTable), [[0, 1, 2], [0, 3]])
        XCTAssertEqual(s.blocks.refCount(0), 2)
        XCTAssertEqual(s.cachedTokens(of: 2), 8)
        XCTAssertEqual(s.prefixHitTokens, 12)
        XCTAssertEqual(s.prefixQueriedTokens, 10 + 11 + 8)
      } else {
        XCTAssertEqual(p.chunks.map { [$0.id, $0.start, $0.tokens.count] }, [[2, 0, 11], [3, 0, 8]])
        XCTAssertEqual(s.prefixHitTokens, 0)
      }
      r.runToCompletion()
      XCTAssertEqual(s.blocks.numFree, 16)
      XCTAssertNil(s.invariantViolation())
      for (id, prompt) in [(2, b), (3, c)] {
        XCTAssertEqual(s.generated(of: id), r.expectedGeneration(prompt: prompt, count: 3))
      }
      outputs.append(s.generated(of: 2)! + s.generated(of: 3)!)
    }
    XCTAssertEqual(outputs[0], outputs[1])
  }

  /// A multi-turn conversation: each request is the previous one's prompt, its answer and a new turn. Pages filled
  /// by generated tokens are cached too, so each turn computes little more than its new tokens.
  func testMultiTurnReusesGeneratedPages() throws {
    let s = try Scheduler(config: SchedulerConfig(numBlocks: 64, maxModelLen: 1000, blockSize: 4, enablePrefixCaching: true))
    let r = FakeRunner(s, stopToken: nil)
    var history = fakePrompt(7, length: 9)
    var computed = 0   // positions the previous turn computed: its history and all but its last answer token
    for turn in 0..<4 {
      try s.add(id: turn, prompt: history, maxTokens: 6)
      let p = r.step()
      let first = try XCTUnwrap(p.chunks.first)
      // The previous turn's full pages are cached, its answer's included; the last token is always computed.
      XCTAssertEqual(first.start, min(computed / 4, (history.count - 1) / 4) * 4, "turn \(turn)")
      r.runToCompletion()
      let answer = try XCTUnwrap(s.generated(of: turn))
      XCTAssertEqual(answer, r.expectedGeneration(prompt: history, count: 6))
      computed = history.count + answer.count - 1
      history += answer + fakePrompt(100 + turn, length: 5)
    }
    XCTAssertGreaterThan(r.cacheHitTokens, 30)
    XCTAssertNil(s.invariantViolation())
  }

  /// Prompt log-probabilities need every position: such a request computes its whole prompt (and still registers its
  /// pages for others); a failed step's pages never reach the cache.
  func testNoCacheRequestsAndFailedSteps() throws {
    let s = try Scheduler(config: SchedulerConfig(numBlocks: 16, maxModelLen: 100, blockSize: 4, enablePrefixCaching: true))
    let r = FakeRunner(s, stopToken: nil)
    let a = fakePrompt(3, length: 9)
    try s.add(id: 1, prompt: a, maxTokens: 1)
    r.runToCompletion()
    try s.add(id: 2, prompt: a, maxTokens: 1, usePrefixCache: false)
    XCTAssertEqual(r.step().chunks.first?.start, 0)
    r.runToCompletion()
    // A step that the engine could not run: its request fails and its new pages are not cached.
    let b = fakePrompt(4, length: 9)
    try s.add(id: 3, prompt: b, maxTokens: 5)
    let plan = s.schedule()
    XCTAssertEqual(plan.chunks.map(\.id), [3])
    s.fail(id: 3)
    XCTAssertEqual(s.finishReason(of: 3), .cancelled)
    try s.add(id: 4, prompt: b, maxTokens: 1)
    XCTAssertEqual(s.schedule().chunks.first?.start, 0, "nothing of the failed request was cached")
    s.fail(id: 4)
    XCTAssertEqual(s.blocks.numFree, 16)
    XCTAssertNil(s.invariantViolation())
    s.resetPrefixCache()
    XCTAssertEqual(s.blocks.numCached, 0)
  }
}

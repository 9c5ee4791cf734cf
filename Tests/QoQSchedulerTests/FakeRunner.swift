// A fake engine for scheduler tests. It keeps a paged KV store (one token id per slot) and a per-request list of
// the token ids at each computed position, checks every promise a plan makes, and produces the next token
// greedily as a deterministic function of the full history *read back through the block table*: if the scheduler
// fed a wrong token, a wrong position or another sequence's page, the outputs change and the tests see it.
import XCTest
import QoQIO
@testable import QoQScheduler

/// The fake model: FNV-1a over the whole history, modulo the vocabulary.
func fakeNextToken(_ history: [Int32], vocab: Int32) -> Int32 {
  var h: UInt64 = 0xcbf2_9ce4_8422_2325
  for t in history {
    h ^= UInt64(UInt32(bitPattern: t))
    h = h &* 0x100_0000_01b3
  }
  return Int32(truncatingIfNeeded: h % UInt64(vocab))
}

final class FakeRunner {
  let scheduler: Scheduler
  let vocab: Int32
  let stopToken: Int32?
  /// Per request: the token ids at positions 0 ..< count, as written by the chunks handed out so far.
  var kv: [Int: [Int32]] = [:]
  /// The paged store: slot b·blockSize + k holds the token id at position k of page b (-1 = never written).
  var pool: [Int32]
  var steps = 0
  var preemptions = 0
  /// Positions taken from the prefix cache (chunks that start after a cached prefix).
  var cacheHitTokens = 0
  var maxHeldPages = 0
  var maxPlanTokens = 0
  var maxChunksPerPlan = 0
  /// Request ids in the order of their first chunk.
  var firstScheduled: [Int] = []
  var plans: [StepPlan] = []
  /// Set once the bookkeeping is found broken, so that loops stop instead of repeating the failure.
  var broken = false

  init(_ scheduler: Scheduler, vocab: Int32 = 40, stopToken: Int32? = 0) {
    self.scheduler = scheduler
    self.vocab = vocab
    self.stopToken = stopToken
    pool = [Int32](repeating: -1, count: scheduler.config.numBlocks * scheduler.config.blockSize)
  }

  /// One engine step: schedule, check the plan, "run" it, commit the sampled tokens.
  @discardableResult
  func step(file: StaticString = #filePath, line: UInt = #line) -> StepPlan {
    let cfg = scheduler.config, bs = cfg.blockSize
    let plan = scheduler.schedule()
    steps += 1
    plans.append(plan)
    XCTAssertLessThanOrEqual(plan.numTokens, cfg.maxBatchedTokens, "token budget", file: file, line: line)
    XCTAssertLessThanOrEqual(plan.chunks.count, cfg.maxNumSeqs, "batch cap", file: file, line: line)
    XCTAssertLessThanOrEqual(scheduler.numRunning, cfg.maxNumSeqs, "running cap", file: file, line: line)
    XCTAssertEqual(Set(plan.chunks.map(\.id)).count, plan.chunks.count, "one chunk per request", file: file, line: line)
    maxPlanTokens = max(maxPlanTokens, plan.numTokens)
    maxChunksPerPlan = max(maxChunksPerPlan, plan.chunks.count)
    for id in plan.preempted {
      XCTAssertFalse(plan.chunks.contains { $0.id == id }, "preempted \(id) also scheduled", file: file, line: line)
      kv[id] = []
      preemptions += 1
    }
    for r in plan.rejected { kv[r.id] = nil }
    var pagesWritten = Set<Int32>()
    for c in plan.chunks {
      var mine = kv[c.id] ?? []
      let end = c.start + c.tokens.count
      let all = scheduler.tokens(of: c.id)!
      XCTAssertFalse(c.tokens.isEmpty, "empty chunk", file: file, line: line)
      if mine.isEmpty && c.start > 0 {
        // A prefix-cache hit: positions 0 ..< start were computed by earlier requests; read them back through the
        // block table (the check below compares them with this request's tokens).
        XCTAssertTrue(scheduler.config.enablePrefixCaching, "chunk of \(c.id) starts at \(c.start) without a cache", file: file, line: line)
        XCTAssertEqual(c.start % bs, 0, "a cache hit ends on a page boundary", file: file, line: line)
        mine = (0..<c.start).map { pool[Int(c.blockTable[$0 / bs]) * bs + $0 % bs] }
        XCTAssertEqual(mine, Array(all[0..<c.start]), "cached pages of \(c.id) hold other tokens", file: file, line: line)
        cacheHitTokens += c.start
      }
      XCTAssertEqual(c.start, mine.count, "chunk of \(c.id) does not continue its KV", file: file, line: line)
      XCTAssertEqual(c.blockTable.count, (end + bs - 1) / bs, "block table size of \(c.id)", file: file, line: line)
      XCTAssertLessThanOrEqual(end, all.count, file: file, line: line)
      XCTAssertEqual(c.tokens, Array(all[c.start..<min(end, all.count)]), "chunk tokens of \(c.id)",
                     file: file, line: line)
      XCTAssertEqual(c.needsLogits, end == all.count, "needsLogits of \(c.id)", file: file, line: line)
      // Pages this chunk writes: owned by it alone, not in the cache, and written by no other chunk of the step.
      // (Full cached pages before them may be shared with other block tables: they are only read.)
      for p in (c.start / bs)..<((end + bs - 1) / bs) {
        let b = c.blockTable[p]
        XCTAssertTrue(pagesWritten.insert(b).inserted, "page \(b) written by two chunks", file: file, line: line)
        XCTAssertEqual(scheduler.blocks.refCount(b), 1, "page \(b) written while shared", file: file, line: line)
        XCTAssertFalse(scheduler.blocks.isCached(b), "cached page \(b) written", file: file, line: line)
      }
      if !firstScheduled.contains(c.id) { firstScheduled.append(c.id) }
      // Write this chunk's K/V (token ids) into the pages.
      for (k, t) in c.tokens.enumerated() {
        let pos = c.start + k
        pool[Int(c.blockTable[pos / bs]) * bs + pos % bs] = t
      }
      kv[c.id] = mine + c.tokens
    }
    if let v = scheduler.invariantViolation() {
      XCTFail(v, file: file, line: line)
      broken = true
    }
    let held = cfg.numBlocks - scheduler.blocks.numFree
    XCTAssertLessThanOrEqual(held, cfg.numBlocks, file: file, line: line)
    maxHeldPages = max(maxHeldPages, held)
    // "Attention": read every position back through the block table, then sample.
    for c in plan.chunks where c.needsLogits {
      let end = c.start + c.tokens.count
      let history = (0..<end).map { pool[Int(c.blockTable[$0 / bs]) * bs + $0 % bs] }
      XCTAssertEqual(history, kv[c.id]!, "paged KV of \(c.id) differs from its tokens", file: file, line: line)
      let t = fakeNextToken(history, vocab: vocab)
      scheduler.commit(id: c.id, token: t)
      if t == stopToken { scheduler.finish(id: c.id, reason: .stop) }
      if scheduler.finishReason(of: c.id) != nil { kv[c.id] = nil }
    }
    return plan
  }

  /// Steps until nothing is left; fails (instead of hanging) on a livelock.
  func runToCompletion(maxSteps: Int = 100_000, file: StaticString = #filePath, line: UInt = #line) {
    var n = 0
    while scheduler.hasUnfinished && !broken {
      step(file: file, line: line)
      n += 1
      if n > maxSteps { XCTFail("no completion after \(maxSteps) steps", file: file, line: line); return }
    }
  }

  /// What the fake model must have generated for a prompt when nothing goes wrong.
  func expectedGeneration(prompt: [Int32], count: Int) -> [Int32] {
    var h = prompt
    for _ in 0..<count { h.append(fakeNextToken(h, vocab: vocab)) }
    return Array(h[prompt.count...])
  }
}

/// A deterministic prompt for request `id`.
func fakePrompt(_ id: Int, length: Int, vocab: Int32 = 40) -> [Int32] {
  var rng = SplitMix64(seed: UInt64(id) &* 7919 &+ 17)
  return (0..<length).map { _ in Int32(1 + rng.int(Int(vocab) - 1)) }
}

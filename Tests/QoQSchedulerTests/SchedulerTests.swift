// Scheduler behaviour against the fake engine (FakeRunner.swift): hand-traced plans, preemption, FCFS, caps,
// the qserve-v0 policy and input errors. The randomized leak test is in SchedulerRandomTests.swift.
import XCTest
import QoQIO
@testable import QoQScheduler

func makeScheduler(blockSize: Int = 4, numBlocks: Int = 64, maxModelLen: Int = 1000, maxNumSeqs: Int = 256,
                   maxBatchedTokens: Int = 2048, policy: SchedulerPolicy = .chunked) -> Scheduler {
  try! Scheduler(config: SchedulerConfig(numBlocks: numBlocks, maxModelLen: maxModelLen, blockSize: blockSize,
                                         maxNumSeqs: maxNumSeqs, maxBatchedTokens: maxBatchedTokens, policy: policy))
}

/// Expects a QoQError whose message contains `words`.
func assertQoQError(_ words: String, file: StaticString = #filePath, line: UInt = #line, _ body: () throws -> Void) {
  do {
    try body()
    XCTFail("expected an error mentioning \"\(words)\"", file: file, line: line)
  } catch let e as QoQError {
    XCTAssertTrue(e.message.contains(words), "\"\(e.message)\" does not mention \"\(words)\"", file: file, line: line)
  } catch {
    XCTFail("not a QoQError: \(error)", file: file, line: line)
  }
}

final class SchedulerTests: XCTestCase {
  /// Chunked policy, traced by hand: prefill chunks fill the budget, decodes go first, a mid-prefill sequence
  /// continues before a new one is admitted, and only a chunk reaching the last token asks for logits.
  func testChunkedStepsByHand() throws {
    let s = makeScheduler(blockSize: 4, maxBatchedTokens: 8)
    let r = FakeRunner(s, stopToken: nil)
    let a = fakePrompt(1, length: 10), b = fakePrompt(2, length: 10)
    try s.add(id: 1, prompt: a, maxTokens: 5)
    var p = r.step()
    XCTAssertEqual(p.chunks, [ScheduledChunk(id: 1, start: 0, tokens: Array(a[0..<8]), blockTable: [0, 1],
                                             needsLogits: false)])
    try s.add(id: 2, prompt: b, maxTokens: 5)
    p = r.step()
    XCTAssertEqual(p.chunks.map { [$0.id, $0.start, $0.tokens.count] }, [[1, 8, 2], [2, 0, 6]])
    XCTAssertEqual(p.chunks.map(\.needsLogits), [true, false])
    XCTAssertEqual(p.chunks.map(\.blockTable), [[0, 1, 2], [3, 4]])
    p = r.step()  // A decodes first, B finishes its prompt with the rest of the budget.
    XCTAssertEqual(p.chunks.map { [$0.id, $0.start, $0.tokens.count] }, [[1, 10, 1], [2, 6, 4]])
    XCTAssertEqual(p.chunks.map(\.needsLogits), [true, true])
    p = r.step()
    XCTAssertEqual(p.chunks.map { [$0.id, $0.start, $0.tokens.count] }, [[1, 11, 1], [2, 10, 1]])
    r.runToCompletion()
    XCTAssertEqual(s.generated(of: 1), r.expectedGeneration(prompt: a, count: 5))
    XCTAssertEqual(s.generated(of: 2), r.expectedGeneration(prompt: b, count: 5))
    XCTAssertEqual(s.finishReason(of: 1), .length)
    XCTAssertEqual(s.blocks.numFree, s.blocks.numBlocks)
  }

  /// Traced by hand: when the pool runs dry the youngest running sequence is preempted (pages released, back to
  /// the front of the queue, not re-admitted in the same step) and later re-prefilled with its generated tokens.
  func testPreemptionByHand() throws {
    let s = makeScheduler(blockSize: 2, numBlocks: 6)
    let r = FakeRunner(s, stopToken: nil)
    for id in 1...3 { try s.add(id: id, prompt: fakePrompt(id, length: 3), maxTokens: 3) }
    var p = r.step()  // three prompts: 2 pages each
    XCTAssertEqual(p.chunks.map(\.id), [1, 2, 3])
    p = r.step()      // position 3: still inside the second page of each
    XCTAssertEqual(p.chunks.map(\.id), [1, 2, 3])
    XCTAssertEqual(s.blocks.numFree, 0)
    p = r.step()      // position 4 needs a third page for 1 and for 2: 3, the youngest, goes (not 2)
    XCTAssertEqual(p.preempted, [3])
    XCTAssertEqual(p.chunks.map { [$0.id, $0.start] }, [[1, 4], [2, 4]])
    XCTAssertEqual(s.numWaiting, 1)
    XCTAssertEqual(s.finishReason(of: 1), .length, "3 tokens generated")
    p = r.step()      // 3 comes back: prompt + its 2 generated tokens in one chunk, which yields token 3
    XCTAssertEqual(p.chunks.map { [$0.id, $0.start, $0.tokens.count] }, [[3, 0, 5]])
    XCTAssertTrue(p.chunks[0].needsLogits)
    r.runToCompletion()
    XCTAssertEqual(s.generated(of: 3), r.expectedGeneration(prompt: fakePrompt(3, length: 3), count: 3))
    XCTAssertEqual(s.blocks.numFree, 6)
  }

  /// Required 2: a preempted request's greedy output equals its output in a run without preemption.
  func testPreemptedOutputEqualsUnpreempted() throws {
    for policy in [SchedulerPolicy.chunked, .qserveV0] {
      func run(numBlocks: Int) throws -> (FakeRunner, [Int: [Int32]]) {
        // qserve-v0 re-prefills prompt + generated tokens in one step: the budget must hold 4 + 4 + 14 of them.
        let s = makeScheduler(blockSize: 4, numBlocks: numBlocks, maxBatchedTokens: policy == .chunked ? 12 : 24,
                              policy: policy)
        let r = FakeRunner(s, stopToken: nil)
        for id in 0..<5 { try s.add(id: id, prompt: fakePrompt(id, length: 4 + id), maxTokens: 14) }
        r.runToCompletion()
        return (r, Dictionary(uniqueKeysWithValues: (0..<5).map { ($0, s.generated(of: $0)!) }))
      }
      let (small, tight) = try run(numBlocks: 8)  // 32 slots for 5 sequences of up to 22 tokens
      let (big, roomy) = try run(numBlocks: 200)
      XCTAssertGreaterThan(small.preemptions, 0, "\(policy): the small pool must force preemption")
      XCTAssertEqual(big.preemptions, 0)
      XCTAssertEqual(tight, roomy, "\(policy)")
      for id in 0..<5 {
        XCTAssertEqual(roomy[id], big.expectedGeneration(prompt: fakePrompt(id, length: 4 + id), count: 14))
      }
    }
  }

  /// Required 3: greedy outputs do not depend on the batch: alone, all together, random arrival orders and
  /// arrival times, under different budgets and both policies.
  func testOutputsIndependentOfBatch() throws {
    let lengths = [1, 7, 13, 3, 20, 9]
    let maxTokens = [6, 11, 3, 15, 8, 12]
    func run(_ ids: [Int], arriveAt: [Int: Int], budget: Int, policy: SchedulerPolicy) throws -> [Int: [Int32]] {
      // Chunked: a pool tight enough to preempt. qserve-v0: room for all (a re-prefill over 20 tokens would be
      // rejected, which is a different output by design).
      let s = makeScheduler(blockSize: 4, numBlocks: policy == .chunked ? 24 : 48, maxBatchedTokens: budget,
                            policy: policy)
      let r = FakeRunner(s)
      var pending = ids, t = 0
      while (!pending.isEmpty || s.hasUnfinished) && !r.broken {
        while let id = pending.first, arriveAt[id, default: 0] <= t {
          try s.add(id: id, prompt: fakePrompt(id, length: lengths[id]), maxTokens: maxTokens[id])
          pending.removeFirst()
        }
        r.step()
        t += 1
        XCTAssertLessThan(t, 10_000)
      }
      return Dictionary(uniqueKeysWithValues: ids.map { ($0, s.generated(of: $0)!) })
    }
    let all = Array(lengths.indices)
    var alone: [Int: [Int32]] = [:]
    for id in all { alone[id] = try run([id], arriveAt: [:], budget: 2048, policy: .chunked)[id] }
    XCTAssertTrue(alone.values.contains { $0.count > 1 }, "the stop token must not end every request at once")
    for policy in [SchedulerPolicy.chunked, .qserveV0] {
      for budget in [20, 2048] + (policy == .chunked ? [1, 5] : []) {
        XCTAssertEqual(try run(all, arriveAt: [:], budget: budget, policy: policy), alone, "\(policy) \(budget)")
        var rng = SplitMix64(seed: UInt64(budget))
        for _ in 0..<3 {
          let order = all.shuffled(using: &rng)
          var at: [Int: Int] = [:]
          var t = 0
          for id in order { t += rng.int(4); at[id] = t }
          XCTAssertEqual(try run(order, arriveAt: at, budget: budget, policy: policy), alone,
                         "\(policy) \(budget) \(order)")
        }
      }
    }
  }

  /// Required 4: FCFS. With room for one sequence at a time (batch cap 1, or pages for one), requests start in
  /// arrival order; every plan respects the token budget and the batch cap (checked by FakeRunner on every step).
  func testFCFSAndCaps() throws {
    let ids = [5, 3, 9, 1, 7]
    // Batch cap 1.
    var s = makeScheduler(blockSize: 4, numBlocks: 50, maxNumSeqs: 1)
    var r = FakeRunner(s, stopToken: nil)
    for id in ids { try s.add(id: id, prompt: fakePrompt(id, length: 6), maxTokens: 4) }
    r.runToCompletion()
    XCTAssertEqual(r.firstScheduled, ids)
    XCTAssertEqual(r.maxChunksPerPlan, 1)
    // Pages for one: each sequence needs 3 pages of 4 (8 + 4 tokens), the pool has 3.
    s = makeScheduler(blockSize: 4, numBlocks: 3)
    r = FakeRunner(s, stopToken: nil)
    for id in ids { try s.add(id: id, prompt: fakePrompt(id, length: 8), maxTokens: 4) }
    r.runToCompletion()
    XCTAssertEqual(r.firstScheduled, ids)
    XCTAssertEqual(r.preemptions, 0, "the oldest is never preempted for a younger one")
    // Token budget and batch cap under load, with the budget actually used to the full.
    s = makeScheduler(blockSize: 4, numBlocks: 100, maxNumSeqs: 3, maxBatchedTokens: 7)
    r = FakeRunner(s)
    for id in 0..<12 { try s.add(id: id, prompt: fakePrompt(id, length: 1 + id % 9), maxTokens: 6) }
    var maxRunning = 0
    while s.hasUnfinished { r.step(); maxRunning = max(maxRunning, s.numRunning) }
    XCTAssertEqual(r.maxPlanTokens, 7)
    XCTAssertEqual(maxRunning, 3)
    XCTAssertEqual(r.firstScheduled, Array(0..<12))
  }

  /// Required 5: qserve-v0 steps are pure prefill (whole prompts, start 0) or pure decode (one token each), and
  /// a new arrival stalls the running decodes for a prefill step.
  func testQServeV0PrefillOrDecode() throws {
    let s = makeScheduler(blockSize: 4, numBlocks: 30, maxBatchedTokens: 24, policy: .qserveV0)
    let r = FakeRunner(s, stopToken: nil)
    var prefillWhileRunning = false, prefill = 0, decode = 0
    for t in 0..<200 {
      if t % 3 == 0 && t < 30 { try s.add(id: t, prompt: fakePrompt(t, length: 1 + t % 17), maxTokens: 7) }
      let runningBefore = s.numRunning
      let p = r.step()
      if p.chunks.isEmpty { continue }
      if p.chunks.allSatisfy({ $0.start == 0 }) {
        prefill += 1
        XCTAssertTrue(p.chunks.allSatisfy { $0.needsLogits }, "whole prompts only")
        if runningBefore > 0 { prefillWhileRunning = true }
      } else {
        decode += 1
        XCTAssertTrue(p.chunks.allSatisfy { $0.tokens.count == 1 && $0.start > 0 }, "mixed step \(p.chunks)")
      }
    }
    XCTAssertFalse(s.hasUnfinished)
    XCTAssertGreaterThan(prefill, 1)
    XCTAssertGreaterThan(decode, 1)
    XCTAssertTrue(prefillWhileRunning)
    XCTAssertEqual(s.blocks.numFree, 30)
  }

  /// Required 6: bad requests are refused with a message naming the problem; the others still run.
  func testBadInput() throws {
    let s = makeScheduler(blockSize: 4, numBlocks: 5, maxModelLen: 16)
    let r = FakeRunner(s, stopToken: nil)
    try s.add(id: 1, prompt: fakePrompt(1, length: 5), maxTokens: 4)
    assertQoQError("duplicate") { try s.add(id: 1, prompt: [1, 2], maxTokens: 4) }
    assertQoQError("empty prompt") { try s.add(id: 2, prompt: [], maxTokens: 4) }
    assertQoQError("maxTokens") { try s.add(id: 3, prompt: [1], maxTokens: 0) }
    assertQoQError("maxModelLen") { try s.add(id: 4, prompt: fakePrompt(4, length: 16), maxTokens: 1) }
    let big = makeScheduler(blockSize: 4, numBlocks: 5, maxModelLen: 100)
    assertQoQError("whole pool has 5 pages") { try big.add(id: 5, prompt: fakePrompt(5, length: 21), maxTokens: 1) }
    let v0 = makeScheduler(maxBatchedTokens: 8, policy: .qserveV0)
    assertQoQError("maxBatchedTokens") { try v0.add(id: 6, prompt: fakePrompt(6, length: 9), maxTokens: 1) }
    try s.add(id: 7, prompt: fakePrompt(7, length: 15), maxTokens: 9)  // 15 < 16: fits, 1 token of room
    XCTAssertEqual(s.numWaiting, 2, "refused requests leave no trace")
    r.runToCompletion()
    XCTAssertEqual(s.generated(of: 1), r.expectedGeneration(prompt: fakePrompt(1, length: 5), count: 4))
    XCTAssertEqual(s.generated(of: 7)?.count, 1)
    XCTAssertEqual(s.finishReason(of: 7), .length, "context full")
    XCTAssertNil(s.finishReason(of: 2))
    XCTAssertEqual(s.blocks.numFree, 5)
  }

  /// Config errors name the field.
  func testConfigValidation() {
    assertQoQError("numBlocks") { _ = try Scheduler(config: SchedulerConfig(numBlocks: 0, maxModelLen: 10)) }
    assertQoQError("blockSize") {
      _ = try Scheduler(config: SchedulerConfig(numBlocks: 1, maxModelLen: 10, blockSize: 0))
    }
    assertQoQError("maxNumSeqs") {
      _ = try Scheduler(config: SchedulerConfig(numBlocks: 1, maxModelLen: 10, maxNumSeqs: -1))
    }
    assertQoQError("maxBatchedTokens") {
      _ = try Scheduler(config: SchedulerConfig(numBlocks: 1, maxModelLen: 10, maxBatchedTokens: 0))
    }
    assertQoQError("maxModelLen") { _ = try Scheduler(config: SchedulerConfig(numBlocks: 1, maxModelLen: 1)) }
    XCTAssertEqual(SchedulerPolicy(rawValue: "qserve-v0"), .qserveV0)
  }

  /// cancel() frees pages at once, works for waiting and running requests, and is false for unknown or finished
  /// ones; a commit arriving after the cancel is ignored.
  func testCancel() throws {
    let s = makeScheduler(blockSize: 4, numBlocks: 10, maxNumSeqs: 1)
    try s.add(id: 1, prompt: fakePrompt(1, length: 9), maxTokens: 50)
    try s.add(id: 2, prompt: fakePrompt(2, length: 9), maxTokens: 50)
    // Scheduled directly (no FakeRunner) so that request 1's token is still pending when it is cancelled.
    XCTAssertEqual(s.schedule().chunks.map(\.needsLogits), [true])
    XCTAssertEqual(s.blocks.numFree, 7)
    XCTAssertTrue(s.cancel(id: 2), "waiting")
    XCTAssertTrue(s.cancel(id: 1), "running, token pending")
    XCTAssertEqual(s.blocks.numFree, 10)
    s.commit(id: 1, token: 3)
    XCTAssertEqual(s.tokens(of: 1)?.count, 9)
    XCTAssertEqual(s.finishReason(of: 1), .cancelled)
    XCTAssertEqual(s.finishReason(of: 2), .cancelled)
    XCTAssertFalse(s.cancel(id: 1))
    XCTAssertFalse(s.cancel(id: 99))
    XCTAssertFalse(s.hasUnfinished)
    XCTAssertTrue(s.schedule().isEmpty)
    XCTAssertTrue(s.forget(id: 1))
    XCTAssertNil(s.tokens(of: 1))
    try s.add(id: 1, prompt: [1], maxTokens: 1)  // a forgotten id can be reused
    XCTAssertFalse(s.forget(id: 1), "unfinished")
  }

  /// A sequence that outgrows the whole pool stops with `length` instead of livelocking (it could never compute
  /// its next position even alone); maxModelLen caps prompt + generated tokens.
  func testLengthLimits() throws {
    var s = makeScheduler(blockSize: 4, numBlocks: 2, maxModelLen: 1000)
    var r = FakeRunner(s, stopToken: nil)
    try s.add(id: 1, prompt: fakePrompt(1, length: 6), maxTokens: 100)
    r.runToCompletion(maxSteps: 100)
    XCTAssertEqual(s.tokens(of: 1)?.count, 9, "8 positions fit the pool; the 9th token is never computed")
    XCTAssertEqual(s.finishReason(of: 1), .length)
    s = makeScheduler(blockSize: 4, numBlocks: 20, maxModelLen: 10)
    r = FakeRunner(s, stopToken: nil)
    try s.add(id: 1, prompt: fakePrompt(1, length: 6), maxTokens: 100)
    r.runToCompletion(maxSteps: 100)
    XCTAssertEqual(s.tokens(of: 1)?.count, 10)
    XCTAssertEqual(s.finishReason(of: 1), .length)
  }
}

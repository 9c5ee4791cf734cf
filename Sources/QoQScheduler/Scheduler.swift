// In-flight batching as pure logic (qserve.md §1.4 and §1.8). The engine loop is:
//   let plan = scheduler.schedule(); run plan.chunks; for each needsLogits chunk: sample, commit (or finish).
// The scheduler decides which positions of which sequences are computed and which KV pages they go to; it never
// sees tensors. Preemption is by recompute only (QServe's swap path is a no-op, §1.5).
import QoQIO

/// One request. A class so that the queues can hold ids while the state is mutated in place.
final class SeqState {
  let id: Int
  /// Arrival order (add() calls); FCFS priority and "youngest" for preemption both use it.
  let arrival: Int
  let promptCount: Int
  let maxTokens: Int
  /// Prompt + generated tokens.
  var tokens: [Int32]
  /// Leading positions whose K/V are in the pages (as promised by the plans handed out so far).
  var computed = 0
  var blockTable: [Int32] = []
  /// A needsLogits chunk was handed out and its token has not been committed yet: nothing to schedule until then.
  var awaitingToken = false
  var finishReason: FinishReason?

  init(id: Int, arrival: Int, prompt: [Int32], maxTokens: Int) {
    self.id = id
    self.arrival = arrival
    self.promptCount = prompt.count
    self.maxTokens = maxTokens
    self.tokens = prompt
  }
}

public final class Scheduler {
  public let config: SchedulerConfig
  public let blocks: BlockManager
  var seqs: [Int: SeqState] = [:]
  /// FCFS queue, front at index 0; preempted sequences go back to the front.
  var waiting: [Int] = []
  /// Ascending arrival, so index 0 is the oldest and the last element the youngest (the preemption victim).
  var running: [Int] = []
  private var nextArrival = 0
  /// min(maxNumSeqs, maxBatchedTokens): every running decode then fits the budget of every step.
  let runCap: Int
  /// Tokens the whole pool can hold. A sequence longer than this could never run even alone.
  let poolTokens: Int

  public init(config: SchedulerConfig) throws {
    try config.validate()
    self.config = config
    blocks = BlockManager(numBlocks: config.numBlocks)
    runCap = min(config.maxNumSeqs, config.maxBatchedTokens)
    poolTokens = config.numBlocks * config.blockSize
  }

  // MARK: requests

  /// Queues a request (FCFS). Throws a QoQError for input that could never be served.
  public func add(id: Int, prompt: [Int32], maxTokens: Int) throws {
    if seqs[id] != nil { throw QoQError("request \(id): duplicate request id") }
    if prompt.isEmpty { throw QoQError("request \(id): empty prompt") }
    if maxTokens <= 0 { throw QoQError("request \(id): maxTokens must be positive (got \(maxTokens))") }
    if prompt.count >= config.maxModelLen {
      throw QoQError("request \(id): prompt of \(prompt.count) tokens does not fit the context (maxModelLen "
                     + "\(config.maxModelLen) must leave room for at least one generated token)")
    }
    if prompt.count > poolTokens {
      throw QoQError("request \(id): prompt of \(prompt.count) tokens needs \(pagesFor(prompt.count)) KV pages of "
                     + "\(config.blockSize) tokens but the whole pool has \(config.numBlocks) pages")
    }
    if config.policy == .qserveV0 && prompt.count > config.maxBatchedTokens {
      throw QoQError("request \(id): prompt of \(prompt.count) tokens exceeds maxBatchedTokens "
                     + "\(config.maxBatchedTokens) (policy qserve-v0 prefills whole prompts in one step)")
    }
    seqs[id] = SeqState(id: id, arrival: nextArrival, prompt: prompt, maxTokens: maxTokens)
    nextArrival += 1
    waiting.append(id)
  }

  /// Cancels a waiting or running request and frees its pages now. False when unknown or already finished.
  public func cancel(id: Int) -> Bool {
    guard let s = seqs[id], s.finishReason == nil else { return false }
    end(s, .cancelled)
    return true
  }

  /// After a step, for a chunk with needsLogits: appends the sampled token. Finishes the sequence with `length`
  /// once maxTokens are generated, the context (maxModelLen) is full, or it has outgrown the whole KV pool (it
  /// could never compute its next position). Ignored for a request finished or cancelled since the plan.
  public func commit(id: Int, token: Int32) {
    guard let s = seqs[id], s.finishReason == nil else { return }
    precondition(s.awaitingToken, "Scheduler.commit(\(id)): no needsLogits chunk is pending for this request")
    s.tokens.append(token)
    s.awaitingToken = false
    if s.tokens.count - s.promptCount >= s.maxTokens || s.tokens.count >= config.maxModelLen
      || s.tokens.count > poolTokens {
      end(s, .length)
    }
  }

  /// The engine decided to stop (stop token or string, its own limits): frees the pages. Ignored for a request
  /// that is unknown or already finished, so a `length` set by commit() stands (as in vLLM, length wins).
  public func finish(id: Int, reason: FinishReason) {
    guard let s = seqs[id], s.finishReason == nil else { return }
    end(s, reason)
  }

  /// Drops the record of a finished request (a server calls this after answering, so records do not pile up).
  /// False when the request is unknown or still unfinished.
  @discardableResult public func forget(id: Int) -> Bool {
    guard let s = seqs[id], s.finishReason != nil else { return false }
    seqs[id] = nil
    return true
  }

  public func tokens(of id: Int) -> [Int32]? { seqs[id]?.tokens }
  public func generated(of id: Int) -> [Int32]? {
    guard let s = seqs[id] else { return nil }
    return Array(s.tokens[s.promptCount...])
  }
  public func finishReason(of id: Int) -> FinishReason? { seqs[id]?.finishReason }
  public var hasUnfinished: Bool { !waiting.isEmpty || !running.isEmpty }
  public var numWaiting: Int { waiting.count }
  public var numRunning: Int { running.count }

  // MARK: scheduling

  /// Plans one engine step and advances every scheduled sequence as if the step ran.
  public func schedule() -> StepPlan {
    switch config.policy {
    case .chunked: return scheduleChunked()
    case .qserveV0: return scheduleQServeV0()
    }
  }

  /// Decodes first (one token each, oldest first), then prefill chunks of running sequences, then admissions
  /// of waiting ones, all within the token budget.
  private func scheduleChunked() -> StepPlan {
    var step = Step(budget: config.maxBatchedTokens)
    // 1. Decodes. Every victim is younger, hence not yet scheduled, so indices below i stay valid.
    var i = 0
    while i < running.count && step.budget > 0 {
      let s = seqs[running[i]]!
      guard !s.awaitingToken, s.computed == s.tokens.count - 1 else { i += 1; continue }
      if !makeRoom(s, at: i, upTo: s.computed + 1, &step) {
        // Even with every younger sequence preempted the page is missing (older ones hold the pool): it waits,
        // and its pages go to the older ones.
        preempt(at: i, &step)
        continue
      }
      emit(s, 1, &step)
      i += 1
    }
    // 2. Running sequences in the middle of their prefill, oldest first.
    i = 0
    while i < running.count && step.budget > 0 {
      let s = seqs[running[i]]!
      defer { i += 1 }
      guard !step.scheduled.contains(s.id), !s.awaitingToken, s.computed < s.tokens.count - 1 else { continue }
      var n = min(step.budget, s.tokens.count - s.computed)
      _ = makeRoom(s, at: i, upTo: s.computed + n, &step)
      // Older sequences and this step's decodes keep their pages; a smaller chunk still makes progress. A
      // sequence that gets nothing keeps its pages: the decodes holding the rest finish or get preempted.
      n = min(n, (s.blockTable.count + blocks.numFree) * config.blockSize - s.computed)
      if n > 0 { emit(s, n, &step) }
    }
    // 3. Admissions, FCFS: the front blocks the queue, so a long prompt is never overtaken.
    while step.budget > 0 && running.count < runCap, let id = waiting.first {
      let s = seqs[id]!
      // Just preempted (re-admitting would undo it) or its token is not committed yet.
      if step.preempted.contains(id) || s.awaitingToken { break }
      let n = min(step.budget, s.tokens.count)
      if pagesFor(n) > blocks.numFree { break }
      admit(s)
      emit(s, n, &step)
    }
    return step.plan
  }

  /// QServe's vLLM-v0 loop (§1.4): admit whole prompts while the budget, the pages and the batch cap allow; if
  /// something was admitted (or rejected) that is the whole step, otherwise decode every running sequence.
  private func scheduleQServeV0() -> StepPlan {
    var step = Step(budget: config.maxBatchedTokens)
    while running.count < runCap, let id = waiting.first {
      let s = seqs[id]!
      if step.preempted.contains(id) || s.awaitingToken { break }
      let len = s.tokens.count
      if len > config.maxBatchedTokens {
        // Only a preempted sequence can get here (add() checks prompts): its prompt + generated tokens no longer
        // fit one prefill step, so QServe marks it IGNORED.
        waiting.removeFirst()
        end(s, .rejected)
        step.plan.rejected.append((id: id, reason: "request \(id): \(len) tokens to re-prefill exceed "
                                   + "maxBatchedTokens \(config.maxBatchedTokens) (policy qserve-v0)"))
        continue
      }
      if len > step.budget || pagesFor(len) > blocks.numFree { break }
      admit(s)
      emit(s, len, &step)
    }
    if !step.plan.chunks.isEmpty || !step.plan.rejected.isEmpty { return step.plan }
    var i = 0
    while i < running.count && step.budget > 0 {
      let s = seqs[running[i]]!
      guard !s.awaitingToken, s.computed == s.tokens.count - 1 else { i += 1; continue }
      if !makeRoom(s, at: i, upTo: s.computed + 1, &step) { preempt(at: i, &step); continue }
      emit(s, 1, &step)
      i += 1
    }
    return step.plan
  }

  // MARK: helpers

  /// What one schedule() call accumulates.
  private struct Step {
    var budget: Int
    var plan = StepPlan()
    var scheduled = Set<Int>()
    var preempted = Set<Int>()
  }

  func pagesFor(_ positions: Int) -> Int { (positions + config.blockSize - 1) / config.blockSize }

  private func missingPages(_ s: SeqState, upTo positions: Int) -> Int {
    max(0, pagesFor(positions) - s.blockTable.count)
  }

  /// Preempts the youngest running sequences that are younger than `s` (index > i) and not scheduled this step
  /// until `s` has pages for positions 0 ..< upTo. False if that is not enough.
  private func makeRoom(_ s: SeqState, at i: Int, upTo positions: Int, _ step: inout Step) -> Bool {
    while missingPages(s, upTo: positions) > blocks.numFree {
      guard let j = running.indices.last(where: { $0 > i && !step.scheduled.contains(running[$0]) }) else {
        return false
      }
      preempt(at: j, &step)
    }
    return true
  }

  /// Recompute preemption: pages released, progress forgotten, back to the front of the queue with all its
  /// tokens (generated ones included), so its re-prefill ends in a needsLogits chunk that yields the next token.
  private func preempt(at index: Int, _ step: inout Step) {
    let s = seqs[running.remove(at: index)]!
    releasePages(s)
    s.computed = 0
    waiting.insert(s.id, at: 0)
    step.plan.preempted.append(s.id)
    step.preempted.insert(s.id)
  }

  private func admit(_ s: SeqState) {
    waiting.removeFirst()
    // A re-admitted preempted sequence can be older than running ones: keep `running` in arrival order.
    let at = running.firstIndex(where: { seqs[$0]!.arrival > s.arrival }) ?? running.count
    running.insert(s.id, at: at)
  }

  /// Hands out positions computed ..< computed+n of `s`; the caller made sure the pages are free.
  private func emit(_ s: SeqState, _ n: Int, _ step: inout Step) {
    let end = s.computed + n
    for _ in 0..<missingPages(s, upTo: end) {
      guard let b = blocks.allocate() else { preconditionFailure("Scheduler: page accounting is inconsistent") }
      s.blockTable.append(b)
    }
    let chunk = ScheduledChunk(id: s.id, start: s.computed, tokens: Array(s.tokens[s.computed..<end]),
                               blockTable: s.blockTable, needsLogits: end == s.tokens.count)
    s.computed = end
    if chunk.needsLogits { s.awaitingToken = true }
    step.plan.chunks.append(chunk)
    step.scheduled.insert(s.id)
    step.budget -= n
  }

  private func releasePages(_ s: SeqState) {
    for b in s.blockTable { blocks.release(b) }
    s.blockTable.removeAll()
  }

  private func end(_ s: SeqState, _ reason: FinishReason) {
    releasePages(s)
    running.removeAll { $0 == s.id }
    waiting.removeAll { $0 == s.id }
    s.awaitingToken = false
    s.finishReason = reason
  }

  /// For tests: the first broken bookkeeping invariant, or nil.
  func invariantViolation() -> String? {
    var held = 0
    var owner = [Int32: Int]()
    for (id, s) in seqs {
      if s.finishReason != nil {
        if !s.blockTable.isEmpty { return "finished request \(id) still holds pages" }
        continue
      }
      if s.blockTable.count != pagesFor(s.computed) {
        return "request \(id) holds \(s.blockTable.count) pages for \(s.computed) computed positions"
      }
      for b in s.blockTable {
        if let o = owner[b] { return "page \(b) owned by both \(o) and \(id)" }
        owner[b] = id
        if blocks.refCount(b) != 1 { return "page \(b) of request \(id) has refcount \(blocks.refCount(b))" }
      }
      held += s.blockTable.count
    }
    if held + blocks.numFree != blocks.numBlocks {
      return "\(held) held + \(blocks.numFree) free != \(blocks.numBlocks) pages"
    }
    if running.count > runCap { return "\(running.count) running > cap \(runCap)" }
    let arrivals = running.map { seqs[$0]!.arrival }
    if arrivals != arrivals.sorted() { return "running not in arrival order" }
    for id in waiting where seqs[id]!.computed != 0 || !seqs[id]!.blockTable.isEmpty {
      return "waiting request \(id) has computed positions or pages"
    }
    let live = Set(seqs.filter { $0.value.finishReason == nil }.keys)
    if Set(waiting).count != waiting.count || Set(running).count != running.count
      || !Set(waiting).isDisjoint(with: running) || Set(waiting).union(running) != live {
      return "queues do not partition the unfinished requests"
    }
    return nil
  }
}

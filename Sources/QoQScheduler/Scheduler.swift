// In-flight batching as pure logic (qserve.md §1.4 and §1.8). The engine loop is:
//   let plan = scheduler.schedule(); run plan.chunks; for each needsLogits chunk: sample, commit (or finish).
// The scheduler decides which positions of which sequences are computed and which KV pages they go to; it never
// sees tensors. Preemption is by recompute only (QServe's swap path is a no-op, §1.5). With prefix caching on, a
// request is admitted after its longest cached prefix: those pages are shared, never written, and its first chunk
// starts where they end.
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
  /// False for a request that must compute every position (prompt log-probabilities): it takes no cache hits (its
  /// own full pages are still registered for others).
  let usePrefixCache: Bool
  /// Chained content keys of the full pages of `tokens`, computed once as needed.
  var pageKeys: [PageKey] = []
  /// Leading pages of blockTable already offered to the cache (registered, a hit, or a duplicate left private).
  var registered = 0
  /// Positions taken from the cache at the last admission.
  var cachedTokens = 0

  init(id: Int, arrival: Int, prompt: [Int32], maxTokens: Int, usePrefixCache: Bool) {
    self.id = id
    self.arrival = arrival
    self.promptCount = prompt.count
    self.maxTokens = maxTokens
    self.tokens = prompt
    self.usePrefixCache = usePrefixCache
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
  /// Prefix-cache counters over admissions (vLLM's prefix_cache_queries / prefix_cache_hits): tokens looked up and
  /// tokens found.
  public private(set) var prefixQueriedTokens = 0
  public private(set) var prefixHitTokens = 0

  public init(config: SchedulerConfig) throws {
    try config.validate()
    self.config = config
    blocks = BlockManager(numBlocks: config.numBlocks)
    runCap = min(config.maxNumSeqs, config.maxBatchedTokens)
    poolTokens = config.numBlocks * config.blockSize
  }

  // MARK: requests

  /// Queues a request (FCFS). Throws a QoQError for input that could never be served. `usePrefixCache: false`
  /// makes it compute every position even when a prefix is cached.
  public func add(id: Int, prompt: [Int32], maxTokens: Int, usePrefixCache: Bool = true) throws {
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
    seqs[id] = SeqState(id: id, arrival: nextArrival, prompt: prompt, maxTokens: maxTokens, usePrefixCache: usePrefixCache)
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

  /// The engine could not run the last plan's chunk of this request: it ends (`cancelled`) and none of its pages
  /// not yet registered is offered to the prefix cache, since their K/V were not written.
  public func fail(id: Int) {
    guard let s = seqs[id], s.finishReason == nil else { return }
    s.registered = s.blockTable.count
    end(s, .cancelled)
  }

  /// Empties the prefix cache of pages no request holds (vLLM's reset_prefix_cache).
  public func resetPrefixCache() { blocks.dropIdleCache() }

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
  /// Prompt positions a request took from the prefix cache at its (last) admission (after a preemption the hit may
  /// cover generated tokens too: those are not prompt tokens).
  public func cachedTokens(of id: Int) -> Int? { seqs[id].map { min($0.cachedTokens, $0.promptCount) } }
  public var hasUnfinished: Bool { !waiting.isEmpty || !running.isEmpty }
  public var numWaiting: Int { waiting.count }
  public var numRunning: Int { running.count }

  // MARK: scheduling

  /// Plans one engine step and advances every scheduled sequence as if the step ran.
  public func schedule() -> StepPlan {
    // Positions handed out by earlier plans have been computed by now: their full pages can be shared.
    for id in running { registerComputed(seqs[id]!) }
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
      let hits = prefixHits(s), cached = hits.count * config.blockSize
      let n = min(step.budget, s.tokens.count - cached)
      if pagesFor(cached + n) - hits.count > freeBesides(hits) { break }
      admit(s, hits: hits)
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
      let hits = prefixHits(s)
      let len = s.tokens.count - hits.count * config.blockSize
      if len > config.maxBatchedTokens {
        // Only a preempted sequence can get here (add() checks prompts): its prompt + generated tokens no longer
        // fit one prefill step, so QServe marks it IGNORED.
        waiting.removeFirst()
        end(s, .rejected)
        step.plan.rejected.append((id: id, reason: "request \(id): \(len) tokens to re-prefill exceed "
                                   + "maxBatchedTokens \(config.maxBatchedTokens) (policy qserve-v0)"))
        continue
      }
      if len > step.budget || pagesFor(s.tokens.count) - hits.count > freeBesides(hits) { break }
      admit(s, hits: hits)
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
    registerComputed(s)
    releasePages(s)
    s.computed = 0
    waiting.insert(s.id, at: 0)
    step.plan.preempted.append(s.id)
    step.preempted.insert(s.id)
  }

  /// Moves the front of the queue to `running`, holding its cached prefix pages `hits` (positions 0 ..< hits·bs).
  private func admit(_ s: SeqState, hits: [Int32]) {
    for b in hits { blocks.retain(b) }
    s.blockTable = hits
    s.computed = hits.count * config.blockSize
    s.registered = hits.count
    s.cachedTokens = s.computed
    if config.enablePrefixCaching && s.usePrefixCache {
      prefixQueriedTokens += s.tokens.count
      prefixHitTokens += s.computed
    }
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

  /// Tail first, so that the cache evicts a sequence's last pages before the prefix other requests may share.
  private func releasePages(_ s: SeqState) {
    for b in s.blockTable.reversed() { blocks.release(b) }
    s.blockTable.removeAll()
    s.registered = 0
  }

  // MARK: prefix cache

  /// The key of full page i of `s` (positions i·bs ..< (i+1)·bs must be known tokens).
  private func pageKey(_ s: SeqState, _ i: Int) -> PageKey {
    let bs = config.blockSize
    while s.pageKeys.count <= i {
      let j = s.pageKeys.count
      s.pageKeys.append(PageKey.chained(parent: s.pageKeys.last?.hash, tokens: s.tokens[(j * bs)..<((j + 1) * bs)]))
    }
    return s.pageKeys[i]
  }

  /// The longest run of cached pages that starts the sequence, leaving at least its last token to compute (the
  /// step that computes it yields the next token's logits).
  private func prefixHits(_ s: SeqState) -> [Int32] {
    guard config.enablePrefixCaching && s.usePrefixCache else { return [] }
    var hits: [Int32] = []
    for i in 0..<((s.tokens.count - 1) / config.blockSize) {
      guard let b = blocks.lookup(pageKey(s, i)) else { break }
      hits.append(b)
    }
    return hits
  }

  /// Pages allocatable once `hits` are held: idle cached hits leave the free count when retained.
  private func freeBesides(_ hits: [Int32]) -> Int {
    blocks.numFree - hits.reduce(0) { $0 + (blocks.refCount($1) == 0 ? 1 : 0) }
  }

  /// Offers the full pages of `s` whose positions have all been computed to the cache (a page another request
  /// registered first under the same key stays private to `s`).
  private func registerComputed(_ s: SeqState) {
    guard config.enablePrefixCaching else { return }
    let full = min(s.computed / config.blockSize, s.blockTable.count)
    while s.registered < full {
      blocks.register(s.blockTable[s.registered], key: pageKey(s, s.registered))
      s.registered += 1
    }
  }

  private func end(_ s: SeqState, _ reason: FinishReason) {
    registerComputed(s)
    releasePages(s)
    running.removeAll { $0 == s.id }
    waiting.removeAll { $0 == s.id }
    s.awaitingToken = false
    s.finishReason = reason
  }

  /// For tests: the first broken bookkeeping invariant, or nil.
  func invariantViolation() -> String? {
    var owners = [Int32: Int]()
    for (id, s) in seqs {
      if s.finishReason != nil {
        if !s.blockTable.isEmpty { return "finished request \(id) still holds pages" }
        continue
      }
      if s.blockTable.count != pagesFor(s.computed) {
        return "request \(id) holds \(s.blockTable.count) pages for \(s.computed) computed positions"
      }
      if Set(s.blockTable).count != s.blockTable.count { return "request \(id) holds a page twice" }
      for (i, b) in s.blockTable.enumerated() {
        owners[b, default: 0] += 1
        // A cached page is read-only: every owner has computed all of its positions.
        if blocks.isCached(b) && (i + 1) * config.blockSize > s.computed {
          return "cached page \(b) is page \(i) of request \(id), which has computed only \(s.computed) positions"
        }
      }
    }
    for (b, n) in owners {
      if blocks.refCount(b) != n { return "page \(b) has \(n) owners but refcount \(blocks.refCount(b))" }
      if n > 1 && !blocks.isCached(b) { return "page \(b) is shared by \(n) requests but not cached" }
    }
    if !config.enablePrefixCaching && blocks.numCached > 0 { return "pages cached with prefix caching off" }
    if owners.count + blocks.numFree != blocks.numBlocks {
      return "\(owners.count) held + \(blocks.numFree) free != \(blocks.numBlocks) pages"
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

// Value types exchanged between the scheduler and the engine (qserve.md §1.4, §1.8).
import QoQIO

/// How steps are formed.
/// - `chunked`: token-budget steps mixing decodes and prefill chunks (vLLM v1 / Sarathi), the default because
///   a CPU prefill is slow enough that stalling every decode behind it (QServe's behaviour) hurts latency.
/// - `qserveV0`: QServe's vLLM-v0 in-flight batching, kept for parity benchmarks: a step is either a prefill of
///   whole prompts or a decode of every running sequence, never both.
public enum SchedulerPolicy: String, Sendable {
  case chunked
  case qserveV0 = "qserve-v0"
}

public struct SchedulerConfig: Sendable {
  /// Tokens per KV page.
  public var blockSize = 64
  /// Pages in the whole KV pool.
  public var numBlocks: Int
  /// Cap on the running batch. The effective cap is min(maxNumSeqs, maxBatchedTokens) so that every running
  /// decode always fits the token budget of a step (otherwise some decodes would have to skip steps).
  public var maxNumSeqs = 256
  /// Tokens computed in one step (decode tokens + prefill chunk tokens).
  public var maxBatchedTokens = 2048
  /// Context limit: prompt + generated tokens.
  public var maxModelLen: Int
  public var policy: SchedulerPolicy = .chunked
  /// Automatic prefix caching: full computed pages are registered by content and shared by later requests with the
  /// same leading tokens (BlockManager). Off here so that hand-traced plans stay simple; the engine turns it on.
  public var enablePrefixCaching = false

  public init(numBlocks: Int, maxModelLen: Int, blockSize: Int = 64, maxNumSeqs: Int = 256,
              maxBatchedTokens: Int = 2048, policy: SchedulerPolicy = .chunked, enablePrefixCaching: Bool = false) {
    self.numBlocks = numBlocks
    self.maxModelLen = maxModelLen
    self.blockSize = blockSize
    self.maxNumSeqs = maxNumSeqs
    self.maxBatchedTokens = maxBatchedTokens
    self.policy = policy
    self.enablePrefixCaching = enablePrefixCaching
  }

  /// Throws a QoQError naming the first bad field.
  public func validate() throws {
    func positive(_ v: Int, _ name: String) throws {
      if v <= 0 { throw QoQError("scheduler config: \(name) must be positive (got \(v))") }
    }
    try positive(blockSize, "blockSize")
    try positive(numBlocks, "numBlocks")
    try positive(maxNumSeqs, "maxNumSeqs")
    try positive(maxBatchedTokens, "maxBatchedTokens")
    try positive(maxModelLen, "maxModelLen")
    if maxModelLen < 2 { throw QoQError("scheduler config: maxModelLen must be at least 2 (prompt + one token)") }
    if numBlocks > Int(Int32.max) { throw QoQError("scheduler config: numBlocks \(numBlocks) exceeds Int32 page ids") }
    let (_, overflow) = numBlocks.multipliedReportingOverflow(by: blockSize)
    if overflow { throw QoQError("scheduler config: numBlocks × blockSize overflows") }
  }
}

public enum FinishReason: String, Sendable {
  /// The engine saw a stop token or stop string.
  case stop
  /// maxTokens generated, or the context (maxModelLen, or the whole KV pool) is full.
  case length
  /// cancel() while waiting or running.
  case cancelled
  /// The scheduler can never run it (qserve-v0: a re-prefill longer than maxBatchedTokens).
  case rejected
}

/// Work for one sequence in one step.
public struct ScheduledChunk: Sendable, Equatable {
  /// Request id.
  public let id: Int
  /// Position of tokens[0] in the sequence: positions 0 ..< start already have K/V in the pages.
  public let start: Int
  /// Token ids at positions start ..< start + tokens.count; their K/V are written this step.
  public let tokens: [Int32]
  /// The sequence's pages in order; covers positions 0 ..< start + tokens.count (page i holds positions
  /// i·blockSize ..< (i+1)·blockSize).
  public let blockTable: [Int32]
  /// The chunk ends at the sequence's last known token: the engine computes logits for its last position,
  /// samples, and calls commit (or finish).
  public let needsLogits: Bool

  public init(id: Int, start: Int, tokens: [Int32], blockTable: [Int32], needsLogits: Bool) {
    self.id = id
    self.start = start
    self.tokens = tokens
    self.blockTable = blockTable
    self.needsLogits = needsLogits
  }
}

/// One engine step. The scheduler has already advanced each chunk's sequence as if the step ran: the plan is a
/// promise the engine keeps.
public struct StepPlan: Sendable {
  public var chunks: [ScheduledChunk]
  /// Sequences preempted by recompute this step: their pages are gone (the engine must not read them) and they
  /// will be re-prefilled from position 0. A preempted id never has a chunk in the same plan.
  public var preempted: [Int]
  /// Requests the scheduler gave up on this step (finish reason `rejected`), with the reason.
  public var rejected: [(id: Int, reason: String)]

  public init(chunks: [ScheduledChunk] = [], preempted: [Int] = [], rejected: [(id: Int, reason: String)] = []) {
    self.chunks = chunks
    self.preempted = preempted
    self.rejected = rejected
  }

  /// Tokens computed this step (≤ maxBatchedTokens).
  public var numTokens: Int { chunks.reduce(0) { $0 + $1.tokens.count } }
  public var isEmpty: Bool { chunks.isEmpty && preempted.isEmpty && rejected.isEmpty }
}

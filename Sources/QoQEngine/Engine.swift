// The serving loop (qserve.md §1.1 LLMEngine): requests in, one `step()` at a time — the scheduler plans the step,
// the model runs it over the paged KV pool, each finishing chunk's logits go through its request's own sampler,
// stop conditions are checked, text is detokenized incrementally. Bad requests are refused at `add` with a
// message; they never disturb the others.
import Foundation
import QoQIO
import QoQKernels
import QoQScheduler
import QoQTokenizers

public struct EngineOptions: Sendable {
  public var pageSize = 64
  /// KV pool size in pages; nil: from `kvCacheBytes`.
  public var numBlocks: Int?
  public var kvCacheBytes = 1 << 30
  public var maxNumSeqs = 64
  /// Tokens per step (prefill chunks + decode tokens).
  public var maxBatchedTokens = 512
  public var policy: SchedulerPolicy = .chunked
  public var integerScores = true
  public init() {}
}

public enum EngineEvent: Sendable, Equatable {
  /// A sampled token and the text it completes (may be empty while a UTF-8 sequence or a possible stop string is
  /// held back).
  case token(id: Int, token: Int32, text: String)
  case finished(id: Int, reason: FinishReason, text: String, tokens: [Int32])
  case rejected(id: Int, reason: String)
}

public final class Engine {
  public let model: EngineModel
  public let tokenizer: Tokenizer?
  public let scheduler: Scheduler
  public let options: EngineOptions
  let pool: KVPool
  let ws: Workspace
  struct Request {
    var sampler: Sampler
    var stopIds: Set<Int32>
    var emitted = ""    // text already reported
    var promptCount: Int
  }
  var requests: [Int: Request] = [:]
  var nextId = 0
  public private(set) var stepsRun = 0
  /// Requests preempted (pages freed, to be recomputed) so far.
  public private(set) var preemptions = 0

  public init(model: EngineModel, tokenizer: Tokenizer?, options o: EngineOptions = EngineOptions()) throws {
    guard o.pageSize == model.kvFormat.pageSize else {
      throw QoQError("engine page size \(o.pageSize) differs from the model's KV page format (\(model.kvFormat.pageSize))")
    }
    let perBlock = KVPool.bytesPerBlock(model.kvFormat, layers: model.config.numHiddenLayers)
    let blocks = o.numBlocks ?? (o.kvCacheBytes / perBlock)
    guard blocks >= 1 else { throw QoQError("--kv-cache-bytes \(o.kvCacheBytes) holds no page (one page is \(perBlock) bytes)") }
    model.rope.ensure(min(model.maxContext, blocks * o.pageSize))
    self.model = model; self.tokenizer = tokenizer; options = o
    scheduler = try Scheduler(config: SchedulerConfig(numBlocks: blocks, maxModelLen: model.maxContext, blockSize: o.pageSize,
                                                      maxNumSeqs: o.maxNumSeqs, maxBatchedTokens: o.maxBatchedTokens, policy: o.policy))
    pool = try KVPool(format: model.kvFormat, layers: model.config.numHiddenLayers, numBlocks: blocks)
    ws = Workspace(config: model.config)
  }

  /// Queues a request; returns its id. Throws (and changes nothing) on a bad prompt or bad sampling values.
  /// `ignoreEOS` keeps generating past the model's end-of-sequence tokens (benchmarks).
  @discardableResult
  public func add(prompt: [Int32], params: SamplingParams, ignoreEOS: Bool = false) throws -> Int {
    let V = model.config.vocabSize
    try params.validate(vocabSize: V)
    guard !prompt.isEmpty else { throw QoQError("the prompt is empty") }
    if let bad = prompt.first(where: { $0 < 0 || Int($0) >= V }) { throw QoQError("prompt token id \(bad) is outside the vocabulary (0..<\(V))") }
    guard prompt.count < model.maxContext else {
      throw QoQError("the prompt has \(prompt.count) tokens; the context is \(model.maxContext) (prompt + generated tokens)")
    }
    let id = nextId
    try scheduler.add(id: id, prompt: prompt, maxTokens: params.maxTokens)
    nextId += 1
    var stops = Set(params.stopTokenIds)
    if !ignoreEOS {
      stops.formUnion(model.config.eosTokenIds.map { Int32($0) })
      stops.formUnion(tokenizer?.eosTokenIds ?? [])
    }
    requests[id] = Request(sampler: Sampler(params: params, seed: params.seed ?? UInt64(id) &* 0x9E37_79B9_7F4A_7C15),
                           stopIds: stops, promptCount: prompt.count)
    return id
  }

  /// Cancels a request (waiting or running); its pages are freed at once.
  @discardableResult public func cancel(_ id: Int) -> Bool {
    guard scheduler.cancel(id: id) else { return false }
    requests[id] = nil
    scheduler.forget(id: id)
    return true
  }

  public var hasUnfinished: Bool { scheduler.hasUnfinished }

  /// Runs one step; returns what happened to each request touched.
  public func step() throws -> [EngineEvent] {
    let plan = scheduler.schedule()
    preemptions += plan.preempted.count
    var events: [EngineEvent] = plan.rejected.map { .rejected(id: $0.id, reason: $0.reason) }
    for r in plan.rejected { requests[r.id] = nil; scheduler.forget(id: r.id) }
    if plan.chunks.isEmpty { return events }
    let chunks = plan.chunks.map {
      SequenceChunk(start: $0.start, tokens: $0.tokens, blockTable: $0.blockTable, logits: $0.needsLogits ? .last : .none)
    }
    let logits = try model.step(chunks, pool: pool, workspace: ws, integerScores: options.integerScores)
    stepsRun += 1
    let V = model.config.vocabSize
    var row = 0
    for ch in plan.chunks where ch.needsLogits {
      defer { row += 1 }
      guard var req = requests[ch.id], let history = scheduler.tokens(of: ch.id) else { continue }
      let token = req.sampler.sample(Array(logits[(row * V)..<((row + 1) * V)]), history: history)
      scheduler.commit(id: ch.id, token: token)
      var reason: FinishReason? = scheduler.finishReason(of: ch.id)
      if req.stopIds.contains(token) { reason = .stop }
      let generated = scheduler.generated(of: ch.id) ?? []
      var text = try decodeText(reason == .stop && req.stopIds.contains(token) ? Array(generated.dropLast()) : generated)
      if let cut = stopStringMatch(text, stops: req.sampler.params.stopStrings) {
        text = String(text.unicodeScalars[..<cut]); reason = .stop
      }
      // Report only text that can no longer change: no trailing partial UTF-8, no possible stop-string prefix.
      var stable = text
      if reason == nil {
        if stable.hasSuffix("\u{FFFD}") { stable = String(stable.unicodeScalars.dropLast()) }
        let hold = stopStringHoldback(stable, stops: req.sampler.params.stopStrings)
        if hold > 0 { stable = String(stable.unicodeScalars.dropLast(hold)) }
      }
      var delta = ""
      if stable.unicodeScalars.count > req.emitted.unicodeScalars.count, stable.hasPrefix(req.emitted) {
        delta = String(stable.unicodeScalars.dropFirst(req.emitted.unicodeScalars.count)); req.emitted = stable
      }
      events.append(.token(id: ch.id, token: token, text: delta))
      if let r = reason {
        if scheduler.finishReason(of: ch.id) == nil { scheduler.finish(id: ch.id, reason: r) }
        let toks = r == .stop && req.stopIds.contains(token) ? Array(generated.dropLast()) : generated
        events.append(.finished(id: ch.id, reason: scheduler.finishReason(of: ch.id) ?? r, text: text, tokens: toks))
        requests[ch.id] = nil
        scheduler.forget(id: ch.id)
      } else {
        requests[ch.id] = req
      }
    }
    return events
  }

  func decodeText(_ ids: [Int32]) throws -> String {
    guard let t = tokenizer else { return "" }
    return try t.decode(ids, skipSpecialTokens: true)
  }

  /// Runs until every request has finished; returns all events in order.
  public func runToCompletion(onEvent: ((EngineEvent) -> Void)? = nil) throws -> [EngineEvent] {
    var all: [EngineEvent] = []
    while hasUnfinished {
      let ev = try step()
      for e in ev { onEvent?(e) }
      all += ev
    }
    return all
  }
}

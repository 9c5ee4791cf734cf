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
  /// Context per request (prompt + generated tokens), at most the model's; nil: the model's (`-c/--ctx-size`).
  public var maxContext: Int?
  /// Automatic prefix caching (`--no-prefix-caching` turns it off): a request starts after the longest run of
  /// full KV pages that an earlier request computed for the same leading tokens.
  public var prefixCaching = true
  public init() {}
}

public enum EngineEvent: Sendable, Equatable {
  /// A sampled token and the text it completes (may be empty while a UTF-8 sequence or a possible stop string is
  /// held back).
  case token(id: Int, token: Int32, text: String)
  /// The end of a request: its text and tokens, and how many of its prompt tokens came from the prefix cache
  /// (`cached`, OpenAI's usage.prompt_tokens_details.cached_tokens).
  case finished(id: Int, reason: FinishReason, text: String, tokens: [Int32], cached: Int)
  case rejected(id: Int, reason: String)
  /// Log-probabilities (of the raw model distribution, before temperature) asked for at `add`: of prompt tokens
  /// (`prompt`, positions 1… in order, possibly over several events) or of the token about to be reported by the
  /// next `.token` event.
  case logprobs(id: Int, prompt: Bool, entries: [TokenLogprob])
}

/// One position's log-probability and the `top` most likely alternatives (best first).
public struct TokenLogprob: Sendable, Equatable {
  public var token: Int32
  public var logprob: Float
  public var top: [TopLogprob]
  public init(token: Int32, logprob: Float, top: [TopLogprob]) { self.token = token; self.logprob = logprob; self.top = top }
}

public struct TopLogprob: Sendable, Equatable {
  public var token: Int32
  public var logprob: Float
  public init(token: Int32, logprob: Float) { self.token = token; self.logprob = logprob }
}

/// What a request wants besides tokens: log-probabilities of its generated tokens and/or of its prompt (each with
/// that many top alternatives, 0…20), as OpenAI's `logprobs` and `echo` ask.
public struct LogprobRequest: Sendable, Equatable {
  public var generated: Int?
  public var prompt: Int?
  public init(generated: Int? = nil, prompt: Int? = nil) { self.generated = generated; self.prompt = prompt }
  public static let maxTop = 20
}

public final class Engine {
  public let model: EngineModel
  public let tokenizer: Tokenizer?
  public let scheduler: Scheduler
  public let options: EngineOptions
  /// The context of one request: the model's, or less with EngineOptions.maxContext.
  public let maxContext: Int
  let pool: KVPool
  let ws: Workspace
  struct Request {
    var sampler: Sampler
    var stopIds: Set<Int32>
    /// Text streamed so far, and its length in scalars.
    var emitted = ""
    var emittedScalars = 0
    /// Decoded text not streamed yet: the trailing scalars that could still begin a stop string.
    var pending = ""
    var detokenizer = IncrementalDetokenizer()
    /// The request's stop strings, fed each step only the newly stable scalars (linear time in the text).
    var stopMatcher: StopStringMatcher
    var promptCount: Int
    var logprobs = LogprobRequest()
    /// Prompt positions whose log-probability has been reported (1…): a recompute after preemption repeats none.
    var promptScored = 1
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
    let perBlock = try KVPool.bytesPerBlock(model.kvFormat, layers: model.config.numHiddenLayers)
    guard o.kvCacheBytes > 0, o.maxNumSeqs > 0, o.maxBatchedTokens > 0 else {
      throw QoQError("--kv-cache-bytes, --max-num-seqs and --max-num-batched-tokens must be positive")
    }
    let blocks = o.numBlocks ?? (o.kvCacheBytes / perBlock)
    guard blocks >= 1 else { throw QoQError("--kv-cache-bytes \(o.kvCacheBytes) holds no page (one page is \(perBlock) bytes)") }
    // The budget is checked before anything is allocated: page ids are Int32, and the pool must fit in memory.
    guard blocks <= Int(Int32.max) else { throw QoQError("--num-kv-blocks \(blocks) exceeds the limit of \(Int32.max) pages") }
    let poolBytes = try checkedMul(blocks, perBlock, "the KV pool (--num-kv-blocks × page bytes)")
    let physical = Int(sysconf(Int32(_SC_PHYS_PAGES))) &* Int(sysconf(Int32(_SC_PAGESIZE)))
    if physical > 0 && poolBytes > physical {
      throw QoQError("a KV pool of \(blocks) pages needs \(poolBytes) bytes, more than this machine's memory (\(physical) bytes); " +
                     "lower --num-kv-blocks or --kv-cache-bytes")
    }
    if let c = o.maxContext, c < 2 { throw QoQError("--ctx-size \(c) leaves no room for a prompt and a generated token") }
    let context = min(model.maxContext, o.maxContext ?? Int.max)
    model.rope.ensure(min(context, try checkedMul(blocks, o.pageSize, "KV pages × page size")))
    self.model = model; self.tokenizer = tokenizer; options = o; maxContext = context
    scheduler = try Scheduler(config: SchedulerConfig(numBlocks: blocks, maxModelLen: context, blockSize: o.pageSize,
                                                      maxNumSeqs: o.maxNumSeqs, maxBatchedTokens: o.maxBatchedTokens, policy: o.policy,
                                                      enablePrefixCaching: o.prefixCaching))
    pool = try KVPool(format: model.kvFormat, layers: model.config.numHiddenLayers, numBlocks: blocks)
    ws = Workspace(config: model.config)
  }

  /// Queues a request; returns its id. Throws (and changes nothing) on a bad prompt or bad sampling values.
  /// `ignoreEOS` keeps generating past the model's end-of-sequence tokens (benchmarks).
  @discardableResult
  public func add(prompt: [Int32], params: SamplingParams, ignoreEOS: Bool = false, logprobs: LogprobRequest = LogprobRequest()) throws -> Int {
    let V = model.config.vocabSize
    try params.validate(vocabSize: V)
    for n in [logprobs.generated, logprobs.prompt].compactMap({ $0 }) where n < 0 || n > LogprobRequest.maxTop {
      throw QoQError("logprobs \(n) is outside 0…\(LogprobRequest.maxTop)")
    }
    guard !prompt.isEmpty else { throw QoQError("the prompt is empty") }
    if let bad = prompt.first(where: { $0 < 0 || Int($0) >= V }) { throw QoQError("prompt token id \(bad) is outside the vocabulary (0..<\(V))") }
    guard prompt.count < maxContext else {
      throw QoQError("the prompt has \(prompt.count) tokens; the context is \(maxContext) (prompt + generated tokens)")
    }
    let id = nextId
    // Prompt log-probabilities need every prompt position's logits: such a request computes its whole prompt.
    try scheduler.add(id: id, prompt: prompt, maxTokens: params.maxTokens, usePrefixCache: logprobs.prompt == nil)
    nextId += 1
    var stops = Set(params.stopTokenIds)
    if !ignoreEOS {
      stops.formUnion(model.config.eosTokenIds.map { Int32($0) })
      stops.formUnion(tokenizer?.eosTokenIds ?? [])
    }
    requests[id] = Request(sampler: Sampler(params: params, seed: params.seed ?? UInt64(id) &* 0x9E37_79B9_7F4A_7C15),
                           stopIds: stops, stopMatcher: StopStringMatcher(params.stopStrings), promptCount: prompt.count,
                           logprobs: logprobs)
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

  /// Ends a request now with `reason` (a server's time limit), frees its pages, and returns its `.finished` event
  /// with the text generated so far; nil for an unknown or already finished request.
  public func finishEarly(_ id: Int, reason: FinishReason) throws -> EngineEvent? {
    let cached = scheduler.cachedTokens(of: id) ?? 0
    guard requests[id] != nil, let generated = scheduler.generated(of: id), scheduler.cancel(id: id) else { return nil }
    var text = try decodeText(generated)
    if text.hasSuffix("\u{FFFD}") { text = String(text.unicodeScalars.dropLast()) }
    requests[id] = nil
    scheduler.forget(id: id)
    return .finished(id: id, reason: reason, text: text, tokens: generated, cached: cached)
  }

  /// Runs one step; returns what happened to each request touched.
  public func step() throws -> [EngineEvent] {
    let profile = model.profile
    var t = profile.start()
    let plan = scheduler.schedule()
    preemptions += plan.preempted.count
    var events: [EngineEvent] = plan.rejected.map { .rejected(id: $0.id, reason: $0.reason) }
    for r in plan.rejected { requests[r.id] = nil; scheduler.forget(id: r.id) }
    if plan.chunks.isEmpty { return events }
    // A request that wants its prompt's log-probabilities gets every row of its prompt chunks.
    let wantsAll = plan.chunks.map { ch in
      guard let r = requests[ch.id], r.logprobs.prompt != nil else { return false }
      return ch.start + 1 < r.promptCount && ch.start + ch.tokens.count >= r.promptScored
    }
    let chunks = zip(plan.chunks, wantsAll).map { ch, all in
      SequenceChunk(start: ch.start, tokens: ch.tokens, blockTable: ch.blockTable, logits: all ? .all : ch.needsLogits ? .last : .none)
    }
    let logits: [Float]
    profile.mark(.schedule, &t)
    do {
      logits = try model.step(chunks, pool: pool, workspace: ws, integerScores: options.integerScores)
    } catch {
      // The plan's K/V were not (all) written: its requests end, and none of their new pages reaches the cache.
      for ch in plan.chunks { scheduler.fail(id: ch.id); requests[ch.id] = nil; scheduler.forget(id: ch.id) }
      throw error
    }
    stepsRun += 1
    profile.countStep()
    t = profile.start()
    let V = model.config.vocabSize
    var next = 0   // first logits row of the current chunk
    for (ch, all) in zip(plan.chunks, wantsAll) where all || ch.needsLogits {
      let first = next
      next += all ? ch.tokens.count : 1
      guard var req = requests[ch.id], let history = scheduler.tokens(of: ch.id) else { continue }
      if all, let top = req.logprobs.prompt {
        // Row i (position start+i) predicts the prompt token at start+i+1.
        var entries: [TokenLogprob] = []
        for i in 0..<ch.tokens.count {
          let p = ch.start + i + 1
          guard p >= req.promptScored, p < req.promptCount else { continue }
          entries.append(logits.withUnsafeBufferPointer { tokenLogprob($0.baseAddress! + (first + i) * V, V, token: history[p], top: top) })
          req.promptScored = p + 1
        }
        if !entries.isEmpty { events.append(.logprobs(id: ch.id, prompt: true, entries: entries)) }
        requests[ch.id] = req
      }
      guard ch.needsLogits else { continue }
      let row = all ? first + ch.tokens.count - 1 : first
      let token = logits.withUnsafeBufferPointer { lb in
        req.sampler.sample(row: UnsafeBufferPointer(rebasing: lb[(row * V)..<((row + 1) * V)]), history: history,
                           generatedFrom: req.promptCount)
      }
      scheduler.commit(id: ch.id, token: token)
      profile.mark(.sample, &t)
      if let top = req.logprobs.generated {
        let e = logits.withUnsafeBufferPointer { tokenLogprob($0.baseAddress! + row * V, V, token: token, top: top) }
        events.append(.logprobs(id: ch.id, prompt: false, entries: [e]))
      }
      var reason: FinishReason? = scheduler.finishReason(of: ch.id)
      let stopToken = req.stopIds.contains(token)
      if stopToken { reason = .stop }
      let all = scheduler.tokens(of: ch.id) ?? []  // no copy: the generated ids are a slice of it
      let generated = all[min(req.promptCount, all.count)...]
      let textIds = stopToken ? generated.dropLast() : generated
      // Only the new text is decoded and fed to the stop strings (linear in the length of the output).
      let piece = try req.detokenizer.next(textIds, flush: reason != nil, decode: decodeText)
      req.pending += piece
      if !piece.isEmpty, let cut = req.stopMatcher.feed(piece.unicodeScalars) {
        // The stop string starts at scalar `cut` of the whole text; it was held back, so it is in `pending`.
        req.pending = String(req.pending.unicodeScalars.prefix(max(0, cut - req.emittedScalars)))
        reason = .stop
      }
      // Stream what can no longer change: all of it when the request ends, else all but a possible stop-string prefix.
      let hold = reason == nil ? req.stopMatcher.holdback : 0
      let waiting = req.pending.unicodeScalars.count
      var delta = ""
      if waiting > hold {
        delta = String(req.pending.unicodeScalars.prefix(waiting - hold))
        req.pending = String(req.pending.unicodeScalars.dropFirst(waiting - hold))
        req.emitted += delta
        req.emittedScalars += waiting - hold
      }
      let text = req.emitted
      events.append(.token(id: ch.id, token: token, text: delta))
      if let r = reason {
        if scheduler.finishReason(of: ch.id) == nil { scheduler.finish(id: ch.id, reason: r) }
        let toks = Array(stopToken ? generated.dropLast() : generated)
        events.append(.finished(id: ch.id, reason: scheduler.finishReason(of: ch.id) ?? r, text: text, tokens: toks,
                                cached: scheduler.cachedTokens(of: ch.id) ?? 0))
        requests[ch.id] = nil
        scheduler.forget(id: ch.id)
      } else {
        requests[ch.id] = req
      }
      profile.mark(.detokenize, &t)
    }
    return events
  }

  /// The log-softmax of one logits row at `token`, and the `top` best tokens (ties: lower id first).
  func tokenLogprob(_ row: UnsafePointer<Float>, _ V: Int, token: Int32, top: Int) -> TokenLogprob {
    let lse = Float(logSumExp(row, V))
    var best: [(Int32, Float)] = []
    if top > 0 {
      best.reserveCapacity(top + 1)
      for v in 0..<V where best.count < top || row[v] > best[best.count - 1].1 {
        var i = best.count
        while i > 0 && row[v] > best[i - 1].1 { i -= 1 }
        best.insert((Int32(v), row[v]), at: i)
        if best.count > top { best.removeLast() }
      }
    }
    return TokenLogprob(token: token, logprob: row[Int(token)] - lse, top: best.map { TopLogprob(token: $0.0, logprob: $0.1 - lse) })
  }

  /// Ids the model can sample but the tokenizer does not know (a vocabulary padded past the tokenizer, as in Qwen2 and
  /// many others) decode to nothing, as in transformers, instead of failing the request.
  func decodeText(_ ids: [Int32]) throws -> String {
    guard let t = tokenizer else { return "" }
    let known = t.vocabSize
    return try t.decode(ids.allSatisfy { Int($0) < known } ? ids : ids.filter { Int($0) < known }, skipSpecialTokens: true)
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

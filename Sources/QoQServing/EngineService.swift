// The engine behind a server: one dedicated thread owns the Engine (it is not thread-safe) and steps it whenever
// requests are in flight; clients submit from any thread and receive their request's events on an AsyncStream.
// A client that goes away cancels its request (its pages are freed at the next step boundary). Admission is
// bounded: beyond `maxQueued` waiting requests, submit throws `.queueFull` (HTTP 429).
import Foundation
import QoQEngine
import QoQIO
import QoQScheduler

public enum ServiceError: Error, Equatable, Sendable {
  case queueFull(Int)
  case draining
  case invalid(String)
}

public final class EngineService: @unchecked Sendable {
  public let engine: Engine
  public let metrics: ServingMetrics
  public let maxQueued: Int
  /// Wall-clock cap per request from arrival; a request past it finishes with `length` and the text so far.
  public let requestTimeout: TimeInterval?
  private let lock = NSCondition()
  private var incoming: [(prompt: [Int32], params: SamplingParams, ignoreEOS: Bool, logprobs: LogprobRequest,
                          cont: AsyncStream<EngineEvent>.Continuation, ticket: Ticket)] = []
  private var cancels: [Ticket] = []
  private var streams: [Int: (AsyncStream<EngineEvent>.Continuation, Ticket)] = [:]   // engine id → client
  private var draining = false
  /// Scheduler figures copied by the engine thread under the lock (the scheduler itself is only touched there).
  private var stats = (waiting: 0, running: 0, pagesUsed: 0)
  private var prefixStats = (queried: 0, hits: 0, cachedPages: 0)
  private var stopped = false
  private var thread: Thread?

  /// Identifies a submitted request before and after the engine gave it an id.
  public final class Ticket: @unchecked Sendable {
    var engineId: Int?
    var arrival = Date()
    var firstToken: Date?
    var lastToken: Date?
    var cancelled = false
    var promptTokens = 0
    var generatedTokens = 0
  }

  /// One line per finished request (id, outcome, tokens in and out, time to first token, decode speed, total time),
  /// e.g. written to stderr by `qoq serve`; nil: no log. Called on the engine thread.
  public var requestLog: (@Sendable (String) -> Void)?

  public init(engine: Engine, maxQueued: Int = 256, requestTimeout: TimeInterval? = nil) {
    self.engine = engine; self.maxQueued = maxQueued; self.requestTimeout = requestTimeout
    metrics = ServingMetrics()
    let t = Thread { [weak self] in self?.loop() }
    t.name = "qoq-engine"
    thread = t
    t.start()
  }

  /// Queues a request; its events arrive on the returned stream, which ends after `.finished` or `.rejected`.
  /// Throws `.queueFull` beyond the queue bound and `.draining` after `drain()`; bad prompts and sampling values
  /// arrive as a `.rejected` event (the message names the problem).
  public func submit(prompt: [Int32], params: SamplingParams, ignoreEOS: Bool = false,
                     logprobs: LogprobRequest = LogprobRequest()) throws -> (Ticket, AsyncStream<EngineEvent>) {
    lock.lock(); defer { lock.unlock() }
    if draining || stopped { throw ServiceError.draining }
    let waiting = incoming.count + stats.waiting
    if waiting >= maxQueued { throw ServiceError.queueFull(maxQueued) }
    let ticket = Ticket()
    var cont: AsyncStream<EngineEvent>.Continuation!
    let stream = AsyncStream<EngineEvent>(bufferingPolicy: .unbounded) { cont = $0 }
    cont.onTermination = { [weak self] reason in
      if case .cancelled = reason { self?.cancel(ticket) }
    }
    incoming.append((prompt, params, ignoreEOS, logprobs, cont, ticket))
    lock.signal()
    return (ticket, stream)
  }

  /// Cancels a request (a client disconnected); idempotent.
  public func cancel(_ t: Ticket) {
    lock.lock(); defer { lock.unlock() }
    if t.cancelled { return }
    t.cancelled = true
    cancels.append(t)
    lock.signal()
  }

  /// Stops admitting requests (submit throws `.draining`); those in flight go on.
  public func beginDrain() {
    lock.lock(); draining = true; lock.signal(); lock.unlock()
  }

  public var isDraining: Bool { lock.lock(); defer { lock.unlock() }; return draining }

  /// Stops admitting requests; returns once every request in flight has finished (SIGTERM).
  public func drain() {
    lock.lock()
    draining = true
    lock.signal()
    while !incoming.isEmpty || !streams.isEmpty { lock.wait() }
    stopped = true
    lock.signal()
    lock.unlock()
  }

  /// Queue depth, running requests and KV pages in use, read under the lock.
  public var snapshot: (queued: Int, running: Int, pagesUsed: Int, pagesTotal: Int) {
    lock.lock(); defer { lock.unlock() }
    return (incoming.count + stats.waiting, stats.running, stats.pagesUsed, engine.scheduler.blocks.numBlocks)
  }

  /// Prefix-cache counters (tokens looked up and found at admission) and the registered pages, read under the lock.
  public var prefixCacheSnapshot: (queried: Int, hits: Int, cachedPages: Int) {
    lock.lock(); defer { lock.unlock() }
    return prefixStats
  }

  private func loop() {
    while true {
      var out = Outbox()
      lock.lock()
      while incoming.isEmpty && cancels.isEmpty && !engine.hasUnfinished && !stopped { lock.wait() }
      if stopped && !engine.hasUnfinished && incoming.isEmpty { lock.unlock(); return }
      let newOnes = incoming; incoming = []
      let gone = cancels; cancels = []
      for r in newOnes {
        if r.ticket.cancelled { metrics.requests.add(1, label: "cancelled"); out.finish(r.cont); continue }
        do {
          let id = try engine.add(prompt: r.prompt, params: r.params, ignoreEOS: r.ignoreEOS, logprobs: r.logprobs)
          r.ticket.engineId = id
          r.ticket.promptTokens = r.prompt.count
          streams[id] = (r.cont, r.ticket)
          metrics.promptTokens.add(Double(r.prompt.count))
        } catch {
          metrics.requests.add(1, label: "rejected")
          out.yield(r.cont, .rejected(id: -1, reason: (error as? QoQError)?.message ?? "\(error)"))
          out.finish(r.cont)
        }
      }
      for t in gone {
        if let id = t.engineId, streams[id] != nil {
          engine.cancel(id)
          end(id, outcome: "cancelled", last: nil, at: nil, &out)
        }
      }
      if let limit = requestTimeout {
        let now = Date()
        for (id, (_, t)) in streams where now.timeIntervalSince(t.arrival) > limit {
          if let e = try? engine.finishEarly(id, reason: .length) { end(id, outcome: "timeout", last: e, at: now, &out) }
        }
      }
      updateStats()
      lock.broadcast()
      lock.unlock()
      out.deliver()
      guard engine.hasUnfinished else { continue }
      let events: [EngineEvent]
      do { events = try engine.step() } catch {
        // A failed step fails the requests in it; the service keeps running.
        var failed = Outbox()
        lock.lock()
        for (id, (c, _)) in streams {
          engine.cancel(id)   // no one reads it any more (the step's own requests are ended by the engine)
          failed.yield(c, .rejected(id: -1, reason: "engine error: \(error)")); failed.finish(c)
        }
        streams = [:]
        lock.broadcast(); lock.unlock()
        failed.deliver()
        continue
      }
      var delivered = Outbox()
      lock.lock()
      let now = Date()
      for e in events {
        switch e {
        case .token(let id, _, _):
          guard let (c, t) = streams[id] else { continue }
          if t.firstToken == nil { t.firstToken = now; metrics.ttft.observe(now.timeIntervalSince(t.arrival)) }
          else if let last = t.lastToken { metrics.itl.observe(now.timeIntervalSince(last)) }
          t.lastToken = now
          t.generatedTokens += 1
          metrics.generatedTokens.add(1)
          delivered.yield(c, e)
        case .finished(let id, let reason, _, _, _):
          end(id, outcome: reason.rawValue, last: e, at: now, &delivered)
        case .logprobs(let id, _, _):
          if let (c, _) = streams[id] { delivered.yield(c, e) }
        case .rejected(let id, _):
          end(id, outcome: "rejected", last: e, at: nil, &delivered)
        }
      }
      updateStats()
      lock.broadcast()
      lock.unlock()
      delivered.deliver()
    }
  }

  /// Ends a request's stream (engine thread, lock held): counts its outcome before the client can see the end,
  /// records its end-to-end latency when `now` is given, queues its last event and the finish, forgets it.
  private func end(_ id: Int, outcome: String, last: EngineEvent?, at now: Date?, _ out: inout Outbox) {
    guard let (c, t) = streams.removeValue(forKey: id) else { return }
    metrics.requests.add(1, label: outcome)
    if let now { metrics.e2e.observe(now.timeIntervalSince(t.arrival)) }
    if let log = requestLog {
      let end = now ?? Date(), total = end.timeIntervalSince(t.arrival)
      let ttft = t.firstToken.map { $0.timeIntervalSince(t.arrival) }
      let decode = t.firstToken.flatMap { f in t.lastToken.map { $0.timeIntervalSince(f) } } ?? 0
      let speed = t.generatedTokens > 1 && decode > 0 ? String(format: "%.1f", Double(t.generatedTokens - 1) / decode) : "-"
      log(String(format: "request %d %@: %d prompt + %d generated tokens, first token %@, %@ tok/s, %.3f s", id, outcome,
                 t.promptTokens, t.generatedTokens, ttft.map { String(format: "%.3f s", $0) } ?? "-", speed, total))
    }
    if let e = last { out.yield(c, e) }
    out.finish(c)
  }

  /// Called on the engine thread with the lock held.
  private func updateStats() {
    let sch = engine.scheduler
    stats = (sch.numWaiting, sch.numRunning, sch.blocks.numBlocks - sch.blocks.numFree)
    prefixStats = (sch.prefixQueriedTokens, sch.prefixHitTokens, sch.blocks.numCached)
  }
}

/// Stream deliveries gathered under the service's lock and performed after it is released. Resuming a client's
/// task takes the concurrency runtime's lock on that task, while a client being cancelled holds that lock when its
/// stream's onTermination calls `cancel` (which takes ours): yielding under our lock could deadlock (it did).
private struct Outbox {
  var items: [(AsyncStream<EngineEvent>.Continuation, EngineEvent?)] = []   // nil: finish
  mutating func yield(_ c: AsyncStream<EngineEvent>.Continuation, _ e: EngineEvent) { items.append((c, e)) }
  mutating func finish(_ c: AsyncStream<EngineEvent>.Continuation) { items.append((c, nil)) }
  func deliver() { for (c, e) in items { if let e { c.yield(e) } else { c.finish() } } }
}

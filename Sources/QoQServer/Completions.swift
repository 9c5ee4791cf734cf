// /v1/completions and /v1/chat/completions: parse, tokenize (chat: render the model's template), fit max_tokens
// into the context, submit to the engine, then either collect the result (JSON) or relay tokens as server-sent
// events. A client that goes away cancels its request: a stream notices on its next write (a ping is written every
// few seconds while there is nothing else to say), a JSON request when its connection closes.
import Foundation
import Hummingbird
import NIOCore
import QoQEngine
import QoQIO
import QoQScheduler
import QoQServing
import QoQTokenizers

enum Completions {
  /// What one engine request produced.
  struct Outcome {
    var text = ""
    var tokens: [Int32] = []
    var finish = "stop"
    var promptLogprobs: [TokenLogprob] = []
    var logprobs: [TokenLogprob] = []
    var error: APIError?
    /// Prompt tokens taken from the prefix cache.
    var cached = 0
  }

  /// usage.prompt_tokens_details.cached_tokens: per prompt, the fewest cached tokens among its `n` choices (each
  /// choice is its own engine request; later ones may reuse the first one's pages).
  static func cachedTokens(_ perChoice: [Int], n: Int) -> Int {
    stride(from: 0, to: perChoice.count, by: max(1, n)).reduce(0) { $0 + perChoice[$1..<min($1 + max(1, n), perChoice.count)].min()! }
  }

  typealias Submission = (ticket: EngineService.Ticket, stream: AsyncStream<EngineEvent>)

  // MARK: - /v1/completions

  static func completion(_ req: Request, _ ctx: ServerContext, _ s: ServerState) async throws -> Response {
    let r = try OpenAIParse.completion(try await OpenAIServer.readBody(req, s), limits: s.options.limits)
    try checkModel(r.model, s)
    var tokenized: [[Int32]] = [], echoTexts: [String] = []
    for p in r.prompts {
      switch p {
      case .text(let t):
        // A completion prompt is the caller's own text: special tokens in it are parsed (as vLLM and llama.cpp do) unless
        // the server runs with --prompt-specials text.
        tokenized.append(try s.tokenizer.encode(t, addSpecialTokens: true, parseSpecial: s.options.parseSpecialInPrompts))
        echoTexts.append(t)
      case .tokens(let ids):
        let c = try OpenAIServer.checkedTokens(ids.map { Int($0) }, s)
        tokenized.append(c); echoTexts.append(try s.tokenizer.decode(c))
      }
    }
    let prompts = tokenized, echoes = echoTexts
    // Choice c is prompt c / n's (c % n)-th sample, as OpenAI orders a batch with n > 1.
    var items: [([Int32], SamplingParams)] = []
    for p in prompts {
      let fitted = try fit(r.params, prompt: p.count, explicit: r.explicitMaxTokens || r.scoreOnly, s, param: "prompt")
      for k in 0..<r.n { items.append((p, reseeded(fitted, k))) }
    }
    let lp = LogprobRequest(generated: r.scoreOnly ? nil : r.logprobs, prompt: r.echo ? r.logprobs : nil)
    let subs = try submit(items, logprobs: lp, ignoreEOS: r.ignoreEOS, s)
    let head = ResponseHead(id: "cmpl-" + randomId(), model: s.options.modelId, created: Int(Date().timeIntervalSince1970))
    let n = r.n, promptTotal = prompts.reduce(0) { $0 + $1.count }

    if r.stream {
      let wantLP = r.logprobs != nil
      @Sendable func chunk(_ c: Int, _ text: String, _ logprobs: JSONValue, _ finish: String?) -> JSONValue {
        head.body("text_completion", choices: [OpenAIResponse.completionChoice(index: c, text: text, logprobs: logprobs, finish: finish)])
      }
      @Sendable func echo(_ c: Int, _ state: inout StreamState) -> [JSONValue] {
        guard r.echo, !state.echoed else { return [] }
        state.echoed = true
        state.textOffset = echoes[c / n].count
        return [chunk(c, echoes[c / n], echoLogprobs(prompts[c / n], state.promptLogprobs, wantLP, s), nil)]
      }
      return sseResponse(subs, ctx, s, build: { c, item, state in
        switch item {
        case .logprobs(_, let prompt, let entries):
          if prompt { state.promptLogprobs += entries } else { state.pending += entries }
          return []
        case .token(_, _, let text):
          var out = echo(c, &state)
          state.emitted += text
          if !text.isEmpty || wantLP {
            var lp = JSONValue.null
            if wantLP { (lp, state.textOffset) = completionLogprobs(state.pending, offset: state.textOffset, s) }
            out.append(chunk(c, text, lp, nil))
            state.pending = []
          }
          return out
        case .finished(_, let reason, let text, _, _):
          var out = echo(c, &state)
          out.append(chunk(c, r.scoreOnly ? "" : state.tail(of: text), .null, reason.rawValue))
          return out
        case .rejected: return []
        }
      }, finale: { completionTokens, cached in
        guard r.includeUsage else { return [] }
        return [head.body("text_completion", choices: [],
                          usage: OpenAIResponse.usage(prompt: promptTotal, completion: r.scoreOnly ? 0 : completionTokens,
                                                      cached: cachedTokens(cached, n: n)))]
      })
    }

    let outcomes = try await collectAll(subs, ctx, s)
    var choices: [JSONValue] = [], completionTokens = 0
    for (c, o) in outcomes.enumerated() {
      let gen = r.scoreOnly ? [] : o.tokens
      completionTokens += gen.count
      var text = r.scoreOnly ? "" : o.text
      var logprobs = JSONValue.null
      if r.logprobs != nil {
        var parts: [JSONValue] = []
        if r.echo { parts.append(echoLogprobs(prompts[c / n], o.promptLogprobs, true, s)) }
        if !r.scoreOnly { parts.append(completionLogprobs(Array(o.logprobs.prefix(gen.count)), offset: 0, s).json) }
        logprobs = joinLogprobs(parts, echoLength: r.echo ? echoes[c / n].count : 0)
      }
      if r.echo { text = echoes[c / n] + text }
      choices.append(OpenAIResponse.completionChoice(index: c, text: text, logprobs: logprobs, finish: o.finish))
    }
    let usage = OpenAIResponse.usage(prompt: promptTotal, completion: completionTokens, cached: cachedTokens(outcomes.map(\.cached), n: n))
    return jsonResponse(head.body("text_completion", choices: choices, usage: usage))
  }

  // MARK: - /v1/chat/completions

  static func chat(_ req: Request, _ ctx: ServerContext, _ s: ServerState) async throws -> Response {
    let r = try OpenAIParse.chat(try await OpenAIServer.readBody(req, s), limits: s.options.limits)
    try checkModel(r.model, s)
    // Contents are inert: only the template's markup becomes special tokens (the template placed BOS).
    let prompt = try OpenAIServer.encodeChat(r.messages, extra: r.templateVars, s)
    let params = try fit(r.params, prompt: prompt.count, explicit: r.explicitMaxTokens, s, param: "messages")
    let subs = try submit((0..<r.n).map { (prompt, reseeded(params, $0)) }, logprobs: LogprobRequest(generated: r.topLogprobs),
                          ignoreEOS: r.ignoreEOS, s)
    let head = ResponseHead(id: "chatcmpl-" + randomId(), model: s.options.modelId, created: Int(Date().timeIntervalSince1970))

    if r.stream {
      let wantLP = r.topLogprobs != nil
      @Sendable func chunk(_ c: Int, _ delta: JSONObject, _ logprobs: JSONValue, _ finish: String?) -> JSONValue {
        head.body("chat.completion.chunk", choices: [OpenAIResponse.chatChoice(index: c, "delta", delta, logprobs: logprobs, finish: finish)])
      }
      return sseResponse(subs, ctx, s, build: { c, item, state in
        var out: [JSONValue] = []
        if !state.echoed {
          out.append(chunk(c, JSONObject([("role", .string("assistant")), ("content", .string(""))]), .null, nil))
          state.echoed = true
        }
        switch item {
        case .logprobs(_, _, let entries):
          state.pending += entries
        case .token(_, _, let text):
          state.emitted += text
          if !text.isEmpty || wantLP {
            let lp: JSONValue = wantLP ? .object(JSONObject([("content", chatLogprobs(state.pending, s))])) : .null
            out.append(chunk(c, JSONObject([("content", .string(text))]), lp, nil)); state.pending = []
          }
        case .finished(_, let reason, let text, _, _):
          let tail = state.tail(of: text)
          out.append(chunk(c, tail.isEmpty ? JSONObject() : JSONObject([("content", .string(tail))]), .null, reason.rawValue))
        case .rejected: break
        }
        return out
      }, finale: { completionTokens, cached in
        guard r.includeUsage else { return [] }
        let usage = OpenAIResponse.usage(prompt: prompt.count, completion: completionTokens, cached: cachedTokens(cached, n: cached.count))
        return [head.body("chat.completion.chunk", choices: [], usage: usage)]
      })
    }

    let outcomes = try await collectAll(subs, ctx, s)
    var choices: [JSONValue] = []
    for (c, o) in outcomes.enumerated() {
      let lp: JSONValue = r.topLogprobs != nil ? .object(JSONObject([("content", chatLogprobs(Array(o.logprobs.prefix(o.tokens.count)), s))])) : .null
      let message = JSONObject([("role", .string("assistant")), ("content", .string(o.text))])
      choices.append(OpenAIResponse.chatChoice(index: c, "message", message, logprobs: lp, finish: o.finish))
    }
    let usage = OpenAIResponse.usage(prompt: prompt.count, completion: outcomes.reduce(0) { $0 + $1.tokens.count },
                                     cached: cachedTokens(outcomes.map(\.cached), n: outcomes.count))
    return jsonResponse(head.body("chat.completion", choices: choices, usage: usage))
  }

  /// The k-th of n samples: a given seed becomes seed + k, so the n choices differ yet the request is reproducible.
  static func reseeded(_ p: SamplingParams, _ k: Int) -> SamplingParams {
    var q = p
    if let s = p.seed, k > 0 { q.seed = s &+ UInt64(k) }
    return q
  }

  // MARK: - Shared steps

  static func checkModel(_ name: String?, _ s: ServerState) throws {
    if let m = name, m != s.options.modelId {
      throw APIError(404, "The model `\(m)` does not exist. This server serves `\(s.options.modelId)`.", param: "model", code: "model_not_found")
    }
  }

  /// max_tokens fitted into the context: an explicit value that does not fit is a 400 with the wording clients
  /// match; without one, the default shrinks to what is left.
  static func fit(_ p0: SamplingParams, prompt: Int, explicit: Bool, _ s: ServerState, param: String) throws -> SamplingParams {
    var p = p0
    let ctx = s.maxContext
    guard prompt > 0 else { throw APIError(400, "the prompt is empty", param: param) }
    if !explicit { p.maxTokens = min(p.maxTokens, ctx - prompt) }
    if prompt + p.maxTokens > ctx || prompt >= ctx || p.maxTokens <= 0 {
      throw APIError(400, "This model's maximum context length is \(ctx) tokens. However, you requested \(prompt + max(p.maxTokens, 1)) tokens "
                       + "(\(prompt) in the messages, \(max(p.maxTokens, 1)) in the completion). "
                       + "Please reduce the length of the messages or completion.",
                     param: param, code: "context_length_exceeded")
    }
    do { try p.validate(vocabSize: s.vocabSize) } catch let e as QoQError { throw APIError(400, e.message) }
    return p
  }

  /// Submits every prompt or none: a full queue (429) or a draining server (503) withdraws those already queued.
  static func submit(_ items: [([Int32], SamplingParams)], logprobs: LogprobRequest, ignoreEOS: Bool, _ s: ServerState) throws -> [Submission] {
    var subs: [Submission] = []
    do {
      for (prompt, p) in items { subs.append(try s.service.submit(prompt: prompt, params: p, ignoreEOS: ignoreEOS, logprobs: logprobs)) }
    } catch let e as ServiceError {
      for sub in subs { s.service.cancel(sub.ticket) }
      switch e {
      case .queueFull(let n):
        throw APIError(429, "The server is busy: \(n) requests are already waiting. Retry later.", type: "rate_limit_error", code: "queue_full")
      case .draining: throw APIError(503, "the server is shutting down", type: "unavailable_error")
      case .invalid(let m): throw APIError(400, m)
      }
    }
    return subs
  }

  /// Waits for every submission; the client closing its connection cancels them all.
  static func collectAll(_ subs: [Submission], _ ctx: ServerContext, _ s: ServerState) async throws -> [Outcome] {
    let watch = ctx.onClose { for sub in subs { s.service.cancel(sub.ticket) } }
    var outcomes: [Outcome] = []
    for sub in subs { outcomes.append(await collect(sub.stream)) }
    watch.disarm()
    if let e = outcomes.compactMap(\.error).first { throw e }
    return outcomes
  }

  static func collect(_ stream: AsyncStream<EngineEvent>) async -> Outcome {
    var o = Outcome()
    var ended = false
    for await e in stream {
      switch e {
      case .token(_, let t, _): o.tokens.append(t)
      case .logprobs(_, let prompt, let entries): if prompt { o.promptLogprobs += entries } else { o.logprobs += entries }
      case .finished(_, let reason, let text, let toks, let c):
        o.text = text; o.tokens = toks; o.finish = reason.rawValue; o.cached = c; ended = true
      case .rejected(_, let reason):
        o.error = reason.hasPrefix("engine error") ? APIError(500, reason, type: "server_error") : APIError(400, reason); ended = true
      }
    }
    if !ended { o.error = APIError(499, "the request was cancelled", type: "cancelled") }
    return o
  }

  static func randomId() -> String { String(UInt64.random(in: 0..<UInt64.max), radix: 36) }
}

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
  }

  typealias Submission = (ticket: EngineService.Ticket, stream: AsyncStream<EngineEvent>)

  // MARK: - /v1/completions

  static func completion(_ req: Request, _ ctx: ServerContext, _ s: ServerState) async throws -> Response {
    let r = try OpenAIParse.completion(try await OpenAIServer.readBody(req, s), limits: s.options.limits)
    try checkModel(r.model, s)
    var tokenized: [[Int32]] = [], echoes: [String] = []
    for p in r.prompts {
      switch p {
      case .text(let t):
        tokenized.append(try s.tokenizer.encode(t, addSpecialTokens: true, parseSpecial: true)); echoes.append(t)
      case .tokens(let ids):
        let c = try OpenAIServer.checkedTokens(ids.map { Int($0) }, s)
        tokenized.append(c); echoes.append(try s.tokenizer.decode(c))
      }
    }
    let prompts = tokenized
    var params: [SamplingParams] = []
    for p in prompts { params.append(try fit(r.params, prompt: p.count, explicit: r.explicitMaxTokens || r.scoreOnly, s, param: "prompt")) }
    let lp = LogprobRequest(generated: r.scoreOnly ? nil : r.logprobs, prompt: r.echo ? r.logprobs : nil)
    let subs = try submit(zip(prompts, params).map { ($0, $1) }, logprobs: lp, ignoreEOS: r.ignoreEOS, s)
    let id = "cmpl-" + randomId(), model = s.options.modelId, created = Int(Date().timeIntervalSince1970)

    if r.stream {
      let (ticket, stream) = subs[0]
      let promptCount = prompts[0].count, echo = r.echo ? echoes[0] : nil, wantLP = r.logprobs != nil
      return sseResponse(ticket: ticket, stream: stream, ctx, s) { item, state in
        // Returns the events to write for one engine event.
        switch item {
        case .logprobs(_, let prompt, let entries):
          if prompt { state.promptLogprobs += entries } else { state.pending += entries }
          return []
        case .token(_, _, let text):
          var out: [JSONValue] = []
          if let e = echo, !state.echoed { out.append(chunk(e, echoLogprobs(prompts[0], state.promptLogprobs, wantLP, s), nil)); state.echoed = true }
          state.emitted += text
          if !text.isEmpty || wantLP {
            out.append(chunk(text, wantLP ? completionLogprobs(state.pending, offset: 0, s) : .null, nil)); state.pending = []
          }
          return out
        case .finished(_, let reason, let text, let toks):
          var out: [JSONValue] = []
          if let e = echo, !state.echoed { out.append(chunk(e, echoLogprobs(prompts[0], state.promptLogprobs, wantLP, s), nil)); state.echoed = true }
          let tail = text.hasPrefix(state.emitted) ? String(text.unicodeScalars.dropFirst(state.emitted.unicodeScalars.count)) : ""
          out.append(chunk(r.scoreOnly ? "" : tail, .null, reason.rawValue))
          if r.includeUsage {
            out.append(.object(JSONObject([("id", .string(id)), ("object", .string("text_completion")), ("created", .int(created)),
                                           ("model", .string(model)), ("choices", .array([])),
                                           ("usage", OpenAIResponse.usage(prompt: promptCount, completion: r.scoreOnly ? 0 : toks.count))])))
          }
          return out
        case .rejected: return []
        }
      }
      @Sendable func chunk(_ text: String, _ logprobs: JSONValue, _ finish: String?) -> JSONValue {
        OpenAIResponse.completion(id: id, model: model, created: created, text: text, finish: finish, logprobs: logprobs, usage: nil)
      }
    }

    let outcomes = try await collectAll(subs, ctx, s)
    var choices: [JSONValue] = [], promptTokens = 0, completionTokens = 0
    for (i, o) in outcomes.enumerated() {
      promptTokens += prompts[i].count
      let gen = r.scoreOnly ? [] : o.tokens
      completionTokens += gen.count
      var text = r.scoreOnly ? "" : o.text
      var logprobs = JSONValue.null
      if r.logprobs != nil {
        var parts: [JSONValue] = []
        if r.echo { parts.append(echoLogprobs(prompts[i], o.promptLogprobs, true, s)) }
        if !r.scoreOnly { parts.append(completionLogprobs(Array(o.logprobs.prefix(gen.count)), offset: 0, s)) }
        logprobs = joinLogprobs(parts)
      }
      if r.echo { text = echoes[i] + text }
      choices.append(.object(JSONObject([("index", .int(i)), ("text", .string(text)), ("logprobs", logprobs),
                                         ("finish_reason", .string(o.finish))])))
    }
    return jsonResponse(.object(JSONObject([("id", .string(id)), ("object", .string("text_completion")), ("created", .int(created)),
                                            ("model", .string(model)), ("choices", .array(choices)),
                                            ("usage", OpenAIResponse.usage(prompt: promptTokens, completion: completionTokens))])))
  }

  // MARK: - /v1/chat/completions

  static func chat(_ req: Request, _ ctx: ServerContext, _ s: ServerState) async throws -> Response {
    let r = try OpenAIParse.chat(try await OpenAIServer.readBody(req, s), limits: s.options.limits)
    try checkModel(r.model, s)
    let text = try OpenAIServer.renderChat(r.messages, s)
    let prompt = try s.tokenizer.encode(text, addSpecialTokens: false, parseSpecial: true)   // the template placed BOS
    let params = try fit(r.params, prompt: prompt.count, explicit: r.explicitMaxTokens, s, param: "messages")
    let subs = try submit([(prompt, params)], logprobs: LogprobRequest(generated: r.topLogprobs), ignoreEOS: r.ignoreEOS, s)
    let id = "chatcmpl-" + randomId(), model = s.options.modelId, created = Int(Date().timeIntervalSince1970)

    if r.stream {
      let (ticket, stream) = subs[0]
      let wantLP = r.topLogprobs != nil
      return sseResponse(ticket: ticket, stream: stream, ctx, s) { item, state in
        var out: [JSONValue] = []
        if !state.echoed { out.append(chunk(.object(JSONObject([("role", .string("assistant")), ("content", .string(""))])), .null, nil)); state.echoed = true }
        switch item {
        case .logprobs(_, _, let entries):
          state.pending += entries
        case .token(_, _, let text):
          state.emitted += text
          if !text.isEmpty || wantLP {
            let lp: JSONValue = wantLP ? .object(JSONObject([("content", chatLogprobs(state.pending, s))])) : .null
            out.append(chunk(.object(JSONObject([("content", .string(text))])), lp, nil)); state.pending = []
          }
        case .finished(_, let reason, let text, let toks):
          let tail = text.hasPrefix(state.emitted) ? String(text.unicodeScalars.dropFirst(state.emitted.unicodeScalars.count)) : ""
          out.append(chunk(.object(tail.isEmpty ? JSONObject() : JSONObject([("content", .string(tail))])), .null, reason.rawValue))
          if r.includeUsage {
            out.append(.object(JSONObject([("id", .string(id)), ("object", .string("chat.completion.chunk")), ("created", .int(created)),
                                           ("model", .string(model)), ("choices", .array([])),
                                           ("usage", OpenAIResponse.usage(prompt: prompt.count, completion: toks.count))])))
          }
        case .rejected: break
        }
        return out
      }
      @Sendable func chunk(_ delta: JSONValue, _ logprobs: JSONValue, _ finish: String?) -> JSONValue {
        .object(JSONObject([("id", .string(id)), ("object", .string("chat.completion.chunk")), ("created", .int(created)), ("model", .string(model)),
                            ("choices", .array([.object(JSONObject([("index", .int(0)), ("delta", delta), ("logprobs", logprobs),
                                                                    ("finish_reason", finish.map { .string($0) } ?? .null)]))]))]))
      }
    }

    let o = try await collectAll(subs, ctx, s)[0]
    let lp: JSONValue = r.topLogprobs != nil ? .object(JSONObject([("content", chatLogprobs(Array(o.logprobs.prefix(o.tokens.count)), s))])) : .null
    let message = JSONObject([("role", .string("assistant")), ("content", .string(o.text))])
    return jsonResponse(.object(JSONObject([
      ("id", .string(id)), ("object", .string("chat.completion")), ("created", .int(created)), ("model", .string(model)),
      ("choices", .array([.object(JSONObject([("index", .int(0)), ("message", .object(message)), ("logprobs", lp),
                                              ("finish_reason", .string(o.finish))]))])),
      ("usage", OpenAIResponse.usage(prompt: prompt.count, completion: o.tokens.count)),
    ])))
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
                       + "(\(prompt) in the messages, \(max(p.maxTokens, 1)) in the completion). Please reduce the length of the messages or completion.",
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
      case .finished(_, let reason, let text, let toks): o.text = text; o.tokens = toks; o.finish = reason.rawValue; ended = true
      case .rejected(_, let reason):
        o.error = reason.hasPrefix("engine error") ? APIError(500, reason, type: "server_error") : APIError(400, reason); ended = true
      }
    }
    if !ended { o.error = APIError(499, "the request was cancelled", type: "cancelled") }
    return o
  }

  static func randomId() -> String { String(UInt64.random(in: 0..<UInt64.max), radix: 36) }
}

// Server-sent events and the logprobs shapes of both endpoints.
import Foundation
import Hummingbird
import NIOCore
import QoQEngine
import QoQIO
import QoQServing

/// Per-stream bookkeeping of the chunk builders.
struct StreamState {
  var emitted = ""                        // text already sent
  var echoed = false                      // echo chunk (completions) or role chunk (chat) sent
  var pending: [TokenLogprob] = []        // logprobs of the token about to be sent
  var promptLogprobs: [TokenLogprob] = []
  var textOffset = 0                      // characters of the choice's text sent so far (logprobs.text_offset)

  /// What the final text adds to what was already streamed (text held back for a stop string or partial UTF-8).
  func tail(of text: String) -> String {
    text.hasPrefix(emitted) ? String(text.unicodeScalars.dropFirst(emitted.unicodeScalars.count)) : ""
  }
}

enum StreamItem: Sendable {
  case event(EngineEvent)
  case ping
}

extension Completions {
  /// A `text/event-stream` response relaying every submission's events through `build` (choice index, engine
  /// event → the JSON chunks to send); once all have finished, `finale` (given the completion tokens of all
  /// choices and each choice's prompt tokens taken from the prefix cache) adds its chunks, then `data: [DONE]`. A
  /// failed write (the client went away), the connection closing, or the end of the response before every finish
  /// cancels the requests still running, which frees their pages.
  static func sseResponse(_ subs: [Submission], _ ctx: ServerContext, _ s: ServerState,
                          build: @escaping @Sendable (Int, EngineEvent, inout StreamState) -> [JSONValue],
                          finale: @escaping @Sendable (Int, [Int]) -> [JSONValue]) -> Response {
    let items = merged(subs, pingEvery: s.options.ssePingInterval)
    var headers = HTTPFields()
    headers[.contentType] = "text/event-stream"
    headers[.cacheControl] = "no-cache"
    let service = s.service
    let watch = ctx.onClose { for sub in subs { service.cancel(sub.ticket) } }
    return Response(status: .ok, headers: headers, body: ResponseBody { writer in
      var states = [StreamState](repeating: StreamState(), count: subs.count)
      var ended = [Bool](repeating: false, count: subs.count)
      var completionTokens = 0, cached = [Int](repeating: 0, count: subs.count)
      defer {
        watch.disarm()
        for (i, sub) in subs.enumerated() where !ended[i] { service.cancel(sub.ticket) }
      }
      for await (i, item) in items {
        switch item {
        case .ping:
          try await writer.write(ByteBuffer(string: ": ping\n\n"))
        case .event(let e):
          if case .rejected(_, let reason) = e {
            let err = reason.hasPrefix("engine error") ? APIError(500, reason, type: "server_error") : APIError(400, reason)
            try await writer.write(ByteBuffer(string: OpenAIResponse.sse(err.json)))
            ended[i] = true
          } else {
            let chunks = build(i, e, &states[i])
            if !chunks.isEmpty { try await writer.write(ByteBuffer(string: chunks.map(OpenAIResponse.sse).joined())) }
            if case .finished(_, _, _, let toks, let c) = e { ended[i] = true; completionTokens += toks.count; cached[i] = c }
          }
          if ended.allSatisfy({ $0 }) {
            let last = finale(completionTokens, cached)
            try await writer.write(ByteBuffer(string: last.map(OpenAIResponse.sse).joined() + OpenAIResponse.sseDone))
            try await writer.finish(nil)
            return
          }
        }
      }
      // The streams ended without every finish (cancelled elsewhere): end the response without [DONE].
    })
  }

  /// Every submission's events, tagged with its index, interleaved with a ping every `interval` seconds. Ending the
  /// consumer ends the relays, and with them the engine streams (which cancels each request unless it finished).
  static func merged(_ subs: [Submission], pingEvery interval: TimeInterval) -> AsyncStream<(Int, StreamItem)> {
    let (out, cont) = AsyncStream<(Int, StreamItem)>.makeStream(bufferingPolicy: .unbounded)
    let streams = subs.map(\.stream)
    let relay = Task {
      await withTaskGroup(of: Void.self) { g in
        for (i, stream) in streams.enumerated() {
          g.addTask { for await e in stream { cont.yield((i, .event(e))) } }
        }
      }
      cont.finish()
    }
    let pinger = Task {
      let ns = UInt64(max(0.05, interval) * 1e9)
      while !Task.isCancelled {
        try? await Task.sleep(nanoseconds: ns)
        if Task.isCancelled { break }
        cont.yield((0, .ping))
      }
    }
    cont.onTermination = { _ in relay.cancel(); pinger.cancel() }
    return out
  }

  static func tokenText(_ t: Int32, _ s: ServerState) -> String { (try? s.tokenizer.decode([t])) ?? "" }

  /// Log-probabilities as JSON numbers (never -inf, which JSON cannot carry).
  static func lpValue(_ x: Float) -> JSONValue { .double(Double(max(x, -9999))) }

  /// The legacy completions shape {tokens, token_logprobs, top_logprobs, text_offset} for generated tokens, and the
  /// offset just past them. top_logprobs maps token text → logprob for the top alternatives plus the chosen token
  /// (as vLLM does).
  static func completionLogprobs(_ entries: [TokenLogprob], offset: Int, _ s: ServerState) -> (json: JSONValue, end: Int) {
    var tokens: [JSONValue] = [], lps: [JSONValue] = [], tops: [JSONValue] = [], offsets: [JSONValue] = []
    var at = offset
    for e in entries {
      let text = tokenText(e.token, s)
      tokens.append(.string(text)); lps.append(lpValue(e.logprob)); offsets.append(.int(at))
      at += text.count
      var top = JSONObject()
      for t in e.top { let k = tokenText(t.token, s); if top[k] == nil { top[k] = lpValue(t.logprob) } }
      if top[text] == nil { top[text] = lpValue(e.logprob) }
      tops.append(.object(top))
    }
    return (.object(JSONObject([("tokens", .array(tokens)), ("token_logprobs", .array(lps)), ("top_logprobs", .array(tops)),
                                ("text_offset", .array(offsets))])), at)
  }

  /// The prompt's part of an echoed completion: the first token has no logprob (null), the others theirs.
  static func echoLogprobs(_ prompt: [Int32], _ entries: [TokenLogprob], _ want: Bool, _ s: ServerState) -> JSONValue {
    guard want, let first = prompt.first else { return .null }
    let rest = completionLogprobs(entries, offset: tokenText(first, s).count, s).json
    func list(_ k: String) -> [JSONValue] { rest[k]?.array ?? [] }
    return .object(JSONObject([("tokens", .array([.string(tokenText(first, s))] + list("tokens"))),
                               ("token_logprobs", .array([.null] + list("token_logprobs"))),
                               ("top_logprobs", .array([.null] + list("top_logprobs"))),
                               ("text_offset", .array([.int(0)] + list("text_offset")))]))
  }

  /// Concatenates the echo part and the generated part; the generated part's offsets start after the echoed text
  /// (`echoLength` characters), so they index the choice's text.
  static func joinLogprobs(_ parts: [JSONValue], echoLength: Int) -> JSONValue {
    var out: [String: [JSONValue]] = ["tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []]
    for (i, p) in parts.enumerated() where !p.isNull {
      let shift = i == parts.count - 1 && parts.count > 1 ? echoLength : 0
      for k in ["tokens", "token_logprobs", "top_logprobs"] { out[k]! += p[k]?.array ?? [] }
      out["text_offset"]! += (p["text_offset"]?.array ?? []).map { .int(($0.int ?? 0) + shift) }
    }
    return .object(JSONObject(["tokens", "token_logprobs", "top_logprobs", "text_offset"].map { ($0, .array(out[$0]!)) }))
  }

  /// The chat shape: [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}].
  static func chatLogprobs(_ entries: [TokenLogprob], _ s: ServerState) -> JSONValue {
    func one(_ t: Int32, _ lp: Float) -> JSONObject {
      let text = tokenText(t, s)
      return JSONObject([("token", .string(text)), ("logprob", lpValue(lp)), ("bytes", .array(text.utf8.map { .int(Int($0)) }))])
    }
    return .array(entries.map { e in
      var o = one(e.token, e.logprob)
      o["top_logprobs"] = .array(e.top.map { .object(one($0.token, $0.logprob)) })
      return .object(o)
    })
  }
}

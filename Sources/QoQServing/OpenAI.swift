// The OpenAI-compatible request and response shapes (anchors.md §2.3, §2.4): /v1/completions and
// /v1/chat/completions bodies parsed and validated into engine requests, every problem an OpenAI-style error with
// the right status and the parameter it concerns; responses and streaming chunks built the same way.
import Foundation
import QoQIO
import QoQScheduler

public struct APIError: Error, Equatable, Sendable {
  public var status: Int
  public var message: String
  public var type: String
  public var param: String?
  public var code: String?

  public init(_ status: Int, _ message: String, type: String = "invalid_request_error", param: String? = nil, code: String? = nil) {
    self.status = status; self.message = message; self.type = type; self.param = param; self.code = code
  }

  public var json: JSONValue {
    .object(JSONObject([("error", .object(JSONObject([
      ("message", .string(message)), ("type", .string(type)), ("param", param.map { .string($0) } ?? .null),
      ("code", code.map { .string($0) } ?? .null),
    ])))]))
  }
}

public struct ServingLimits: Sendable {
  public var maxBodyBytes = 1 << 20
  /// Most tokens one request may generate (max_tokens above it is a 400; without max_tokens, the default).
  public var maxTokens = 4096
  public var maxStopStrings = 16
  /// Most prompts in one batched /v1/completions request.
  public var maxPrompts = 64
  /// Most choices (`n`) per prompt.
  public var maxChoices = 4
  /// Sampling values a request gets when it does not set them: OpenAI's defaults, or the model's
  /// generation_config.json (`SamplingDefaults.load`), as vLLM serves them.
  public var defaults = SamplingDefaults()
  public init() {}
}

/// temperature, top_p, top_k, min_p and repetition_penalty for requests that leave them out.
public struct SamplingDefaults: Sendable, Equatable {
  public var temperature = 1.0, topP = 1.0, topK = 0, minP = 0.0, repetitionPenalty = 1.0
  public init() {}

  /// The values a model folder's generation_config.json sets (the fields vLLM's `--generation-config auto` reads);
  /// the others keep OpenAI's defaults. A missing file gives the defaults; a value out of range is an error naming it.
  public static func load(folder: String) throws -> SamplingDefaults {
    var d = SamplingDefaults()
    let path = folder + "/generation_config.json"
    guard FileManager.default.fileExists(atPath: path) else { return d }
    let v = try JSON.parseFile(path)
    func number(_ k: String, _ ok: (Double) -> Bool) throws -> Double? {
      guard let x = v[k], !x.isNull else { return nil }
      guard let n = x.double, n.isFinite, ok(n) else { throw QoQError("\(path): \(k) is out of range") }
      return n
    }
    if let t = try number("temperature", { $0 >= 0 && $0 <= 2 }) { d.temperature = t }
    if let t = try number("top_p", { $0 > 0 && $0 <= 1 }) { d.topP = t }
    if let t = try number("top_k", { $0 >= 0 && $0 <= 1e6 && $0 == $0.rounded() }) { d.topK = Int(t) }
    if let t = try number("min_p", { $0 >= 0 && $0 <= 1 }) { d.minP = t }
    if let t = try number("repetition_penalty", { $0 > 0 && $0 <= 10 }) { d.repetitionPenalty = t }
    return d
  }
}

public enum PromptInput: Equatable, Sendable {
  case text(String)
  case tokens([Int32])
}

public struct CompletionRequest: Sendable {
  public var model: String?
  /// One or more prompts (a batched request answers one choice per prompt, in order).
  public var prompts: [PromptInput]
  public var params: SamplingParams
  /// max_tokens was given (otherwise the server fits the default into the context left).
  public var explicitMaxTokens: Bool
  public var stream: Bool
  public var includeUsage: Bool
  public var echo: Bool
  public var logprobs: Int?
  /// max_tokens 0 with echo: score the prompt, generate nothing.
  public var scoreOnly: Bool
  /// vLLM's extension: keep generating past end-of-sequence tokens (benchmarks).
  public var ignoreEOS = false
  /// Choices per prompt.
  public var n = 1
  public var prompt: PromptInput { prompts[0] }
}

public struct ChatRequest: Sendable {
  public var model: String?
  public var messages: [(role: String, content: String)]
  public var params: SamplingParams
  public var explicitMaxTokens: Bool
  public var stream: Bool
  public var includeUsage: Bool
  /// logprobs true: top_logprobs (0…20) alternatives per generated token.
  public var topLogprobs: Int?
  public var ignoreEOS = false
  public var n = 1
  /// chat_template_kwargs: extra variables for the template (e.g. enable_thinking).
  public var templateVars: [String: JSONValue] = [:]
}

public enum OpenAIParse {
  public static func body(_ data: Data, limits: ServingLimits) throws -> JSONValue {
    guard data.count <= limits.maxBodyBytes else {
      throw APIError(413, "request body of \(data.count) bytes exceeds the limit of \(limits.maxBodyBytes)", code: "body_too_large")
    }
    let v: JSONValue
    do { v = try JSON.parse(data, what: "request body") } catch {
      throw APIError(400, "request body is not valid JSON: \((error as? QoQError)?.message ?? "\(error)")")
    }
    guard v.object != nil else { throw APIError(400, "request body must be a JSON object") }
    return v
  }

  /// Sampling fields shared by both endpoints.
  static func sampling(_ v: JSONValue, limits: ServingLimits, defaultMaxTokens: Int) throws -> SamplingParams {
    var p = SamplingParams()
    func number(_ k: String) throws -> Double? {
      guard let x = v[k], !x.isNull else { return nil }
      guard let d = x.double else { throw APIError(400, "\(k) must be a number", param: k) }
      return d
    }
    func integer(_ k: String) throws -> Int? {
      guard let x = v[k], !x.isNull else { return nil }
      guard let i = x.int else { throw APIError(400, "\(k) must be an integer", param: k) }
      return i
    }
    p.maxTokens = try integer("max_tokens") ?? integer("max_completion_tokens") ?? defaultMaxTokens
    guard p.maxTokens >= 0 else { throw APIError(400, "max_tokens must not be negative", param: "max_tokens") }
    guard p.maxTokens <= limits.maxTokens else {
      throw APIError(400, "max_tokens \(p.maxTokens) exceeds the server's limit of \(limits.maxTokens)", param: "max_tokens")
    }
    let d = limits.defaults
    p.temperature = Float(try number("temperature") ?? d.temperature)
    p.topP = Float(try number("top_p") ?? d.topP)
    p.topK = try integer("top_k") ?? d.topK
    p.minP = Float(try number("min_p") ?? d.minP)
    p.repetitionPenalty = Float(try number("repetition_penalty") ?? number("repeat_penalty") ?? d.repetitionPenalty)
    if let s = try integer("seed") { p.seed = UInt64(bitPattern: Int64(s)) }
    for (k, path) in [("presence_penalty", \SamplingParams.presencePenalty), ("frequency_penalty", \SamplingParams.frequencyPenalty)] {
      if let x = try number(k) {
        guard x >= -2 && x <= 2 else { throw APIError(400, "\(k) must be in -2…2", param: k) }
        p[keyPath: path] = Float(x)
      }
    }
    if let b = v["logit_bias"], !b.isNull {
      // {"token id": bias}, as OpenAI: ids as strings, biases in -100…100, at most 300 entries.
      guard let o = b.object else { throw APIError(400, "logit_bias must be an object of token id → bias", param: "logit_bias") }
      guard o.count <= 300 else { throw APIError(400, "logit_bias has more than 300 entries", param: "logit_bias") }
      for (k, x) in o.pairs {
        guard let id = Int32(k), id >= 0, let bias = x.double, bias >= -100, bias <= 100 else {
          throw APIError(400, "logit_bias entries must map a token id to a number in -100…100 (got \"\(k)\")", param: "logit_bias")
        }
        p.logitBias[id] = Float(bias)
      }
    }
    if let stop = v["stop"], !stop.isNull {
      if let s = stop.string { p.stopStrings = [s] }
      else if let a = stop.array, a.allSatisfy({ $0.string != nil }) { p.stopStrings = a.map { $0.string! } }
      else { throw APIError(400, "stop must be a string or a list of strings", param: "stop") }
      guard p.stopStrings.count <= limits.maxStopStrings else { throw APIError(400, "at most \(limits.maxStopStrings) stop strings", param: "stop") }
    }
    return p
  }

  /// `n`: choices per prompt, 1…limits.maxChoices.
  static func choices(_ v: JSONValue, limits: ServingLimits) throws -> Int {
    guard let x = v["n"], !x.isNull else { return 1 }
    guard let n = x.int, n >= 1, n <= limits.maxChoices else { throw APIError(400, "n must be an integer in 1…\(limits.maxChoices)", param: "n") }
    return n
  }

  public static func completion(_ data: Data, limits: ServingLimits = ServingLimits()) throws -> CompletionRequest {
    let v = try body(data, limits: limits)
    func promptOne(_ x: JSONValue) -> PromptInput? {
      if let t = x.string { return .text(t) }
      if let a = x.array, !a.isEmpty, a.allSatisfy({ $0.int != nil }) { return .tokens(a.map { Int32(clamping: $0.int!) }) }
      return nil
    }
    var prompts: [PromptInput]
    switch v["prompt"] {
    case .none, .some(.null): throw APIError(400, "prompt is required", param: "prompt")
    case .some(let x):
      if let one = promptOne(x) { prompts = [one] }
      else if let a = x.array, !a.isEmpty, a.allSatisfy({ $0.string != nil || $0.array != nil }) {
        // A list of strings or a list of token lists: a batch.
        let each = a.compactMap(promptOne)
        guard each.count == a.count else { throw APIError(400, "prompt must be a string, a list of token ids, or a list of those", param: "prompt") }
        prompts = each
      } else { throw APIError(400, "prompt must be a string, a list of token ids, or a list of those", param: "prompt") }
    }
    guard prompts.count <= limits.maxPrompts else { throw APIError(400, "at most \(limits.maxPrompts) prompts per request", param: "prompt") }
    if let s = v["suffix"], !s.isNull, s.string != "" { throw APIError(400, "suffix is not supported", param: "suffix") }
    let echo = try flag(v, "echo") ?? false
    var logprobs: Int?
    if let lp = v["logprobs"], !lp.isNull {
      guard let n = lp.int, n >= 0, n <= 20 else { throw APIError(400, "logprobs must be an integer in 0…20", param: "logprobs") }
      logprobs = n
    }
    let explicit = explicitMaxTokens(v)
    var p = try sampling(v, limits: limits, defaultMaxTokens: 16)
    // lm-evaluation-harness may score prompts with echo + max_tokens 0: nothing is generated.
    guard p.maxTokens > 0 || echo else { throw APIError(400, "max_tokens must be positive (0 only with echo)", param: "max_tokens") }
    let scoreOnly = p.maxTokens == 0
    if scoreOnly { p.maxTokens = 1 }
    let stream = try flag(v, "stream") ?? false
    let n = try choices(v, limits: limits)
    guard prompts.count * n <= limits.maxPrompts else {
      throw APIError(400, "at most \(limits.maxPrompts) choices (prompts × n) per request", param: "n")
    }
    return CompletionRequest(model: try model(v), prompts: prompts, params: p, explicitMaxTokens: explicit, stream: stream,
                             includeUsage: try includeUsage(v), echo: echo, logprobs: logprobs, scoreOnly: scoreOnly,
                             ignoreEOS: try flag(v, "ignore_eos") ?? false, n: n)
  }

  /// max_tokens (or max_completion_tokens) was given, rather than defaulted.
  static func explicitMaxTokens(_ v: JSONValue) -> Bool {
    !(v["max_tokens"]?.isNull ?? true) || !(v["max_completion_tokens"]?.isNull ?? true)
  }

  public static func flag(_ v: JSONValue, _ k: String) throws -> Bool? {
    guard let x = v[k], !x.isNull else { return nil }
    guard let b = x.bool else { throw APIError(400, "\(k) must be a boolean", param: k) }
    return b
  }

  static func model(_ v: JSONValue) throws -> String? {
    guard let x = v["model"], !x.isNull else { return nil }
    guard let s = x.string else { throw APIError(400, "model must be a string", param: "model") }
    return s
  }

  static func includeUsage(_ v: JSONValue) throws -> Bool {
    guard let o = v["stream_options"], !o.isNull else { return false }
    guard o.object != nil else { throw APIError(400, "stream_options must be an object", param: "stream_options") }
    return try flag(o, "include_usage") ?? false
  }

  public static func chat(_ data: Data, limits: ServingLimits = ServingLimits()) throws -> ChatRequest {
    try chat(json: try body(data, limits: limits), limits: limits)
  }

  /// A chat request from a body already parsed (and size-checked) as a JSON object.
  public static func chat(json v: JSONValue, limits: ServingLimits) throws -> ChatRequest {
    guard let ms = v["messages"]?.array, !ms.isEmpty else { throw APIError(400, "messages must be a non-empty list", param: "messages") }
    // Features the engine does not have are refused by name rather than ignored (an ignored schema would return
    // free text to a client that parses JSON, an ignored tool list a reply that never calls the tool).
    for (k, what) in [("tools", "tool calling"), ("functions", "function calling"), ("response_format", "structured output (response_format)")] {
      if let x = v[k], !x.isNull, !(k == "response_format" && x["type"]?.string == "text") {
        throw APIError(400, "\(what) is not supported by this server", param: k)
      }
    }
    var messages: [(String, String)] = []
    for (i, m) in ms.enumerated() {
      guard let role = m["role"]?.string, ["system", "user", "assistant", "tool"].contains(role) else {
        throw APIError(400, "messages[\(i)].role must be system, user, assistant or tool", param: "messages")
      }
      var content = ""
      if let s = m["content"]?.string { content = s }
      else if let parts = m["content"]?.array {
        // Text parts only; an image or audio part is refused.
        for part in parts {
          guard part["type"]?.string == "text", let t = part["text"]?.string else {
            throw APIError(400, "messages[\(i)].content: only text parts are supported", param: "messages")
          }
          content += t
        }
      } else if !(m["content"]?.isNull ?? true) || role != "assistant" {
        throw APIError(400, "messages[\(i)].content must be a string", param: "messages")
      }
      messages.append((role, content))
    }
    let explicit = explicitMaxTokens(v)
    let p = try sampling(v, limits: limits, defaultMaxTokens: limits.maxTokens)
    guard p.maxTokens > 0 else { throw APIError(400, "max_tokens must be positive", param: "max_tokens") }
    var top: Int?
    if try flag(v, "logprobs") == true {
      top = 0
      if let t = v["top_logprobs"], !t.isNull {
        guard let n = t.int, n >= 0, n <= 20 else { throw APIError(400, "top_logprobs must be an integer in 0…20", param: "top_logprobs") }
        top = n
      }
    }
    return ChatRequest(model: try model(v), messages: messages, params: p, explicitMaxTokens: explicit, stream: try flag(v, "stream") ?? false,
                       includeUsage: try includeUsage(v), topLogprobs: top, ignoreEOS: try flag(v, "ignore_eos") ?? false,
                       n: try choices(v, limits: limits), templateVars: try templateKwargs(v))
  }

  /// chat_template_kwargs: an object of plain values handed to the template (messages and the special tokens
  /// cannot be overridden).
  static func templateKwargs(_ v: JSONValue) throws -> [String: JSONValue] {
    guard let x = v["chat_template_kwargs"], !x.isNull else { return [:] }
    guard let o = x.object, o.count <= 32 else {
      throw APIError(400, "chat_template_kwargs must be an object of at most 32 entries", param: "chat_template_kwargs")
    }
    var out: [String: JSONValue] = [:]
    for (k, val) in o.pairs where !["messages", "add_generation_prompt", "bos_token", "eos_token"].contains(k) {
      switch val {
      case .bool, .int, .double, .string, .null: out[k] = val
      default: throw APIError(400, "chat_template_kwargs.\(k) must be a boolean, number or string", param: "chat_template_kwargs")
      }
    }
    return out
  }
}

/// Response bodies and streaming chunks.
/// What every response and chunk of one request shares: {id, object, created, model, choices[, usage]}.
public struct ResponseHead: Sendable {
  public let id: String, model: String, created: Int
  public init(id: String, model: String, created: Int) { self.id = id; self.model = model; self.created = created }
  public func body(_ object: String, choices: [JSONValue], usage: JSONValue? = nil) -> JSONValue {
    var o = JSONObject([("id", .string(id)), ("object", .string(object)), ("created", .int(created)), ("model", .string(model)),
                        ("choices", .array(choices))])
    if let u = usage { o["usage"] = u }
    return .object(o)
  }
}

public enum OpenAIResponse {
  /// OpenAI's usage object; `cached` (prompt tokens served from the prefix cache) as prompt_tokens_details.cached_tokens.
  public static func usage(prompt: Int, completion: Int, cached: Int? = nil) -> JSONValue {
    var o = JSONObject([("prompt_tokens", .int(prompt)), ("completion_tokens", .int(completion)), ("total_tokens", .int(prompt + completion))])
    if let cached { o["prompt_tokens_details"] = .object(JSONObject([("cached_tokens", .int(cached))])) }
    return .object(o)
  }

  /// A /v1/completions choice: a whole answer or a streamed piece.
  public static func completionChoice(index: Int, text: String, logprobs: JSONValue = .null, finish: String?) -> JSONValue {
    .object(JSONObject([("index", .int(index)), ("text", .string(text)), ("logprobs", logprobs),
                        ("finish_reason", finish.map { .string($0) } ?? .null)]))
  }

  /// A chat choice: `message` (a whole answer) or `delta` (a streamed chunk) with its content.
  public static func chatChoice(index: Int, _ key: String, _ content: JSONObject, logprobs: JSONValue = .null, finish: String?) -> JSONValue {
    .object(JSONObject([("index", .int(index)), (key, .object(content)), ("logprobs", logprobs),
                        ("finish_reason", finish.map { .string($0) } ?? .null)]))
  }

  /// One server-sent event.
  public static func sse(_ v: JSONValue) -> String { "data: " + JSON.serialize(v) + "\n\n" }
  public static let sseDone = "data: [DONE]\n\n"
}

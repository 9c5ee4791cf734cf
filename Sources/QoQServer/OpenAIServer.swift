// `qoq serve`: the engine behind an OpenAI-compatible HTTP API on Hummingbird (anchors.md §2.4, §2.7, §3.3).
// Routes: POST /v1/completions and /v1/chat/completions (JSON or server-sent events), GET /v1/models, /health,
// /metrics, and vLLM's /tokenize, /detokenize, /tokenizer_info (lm-evaluation-harness's remote tokenizer).
// Every error is OpenAI-shaped JSON ({"error": {message, type, param, code}}) with the right status; an optional API
// key guards every route but /health. The engine runs on its own thread (EngineService); handlers only parse,
// tokenize, submit and relay events.
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import QoQEngine
import QoQIO
import QoQKernels
import QoQScheduler
import QoQServing
import QoQTokenizers
import ServiceLifecycle

public struct ServerOptions: Sendable {
  public var host = "127.0.0.1"
  public var port = 8080
  /// The id clients name in `model` (requests naming another get 404); also listed by /v1/models.
  public var modelId = "qoq"
  /// Bearer token required on every route but /health; nil: no authentication.
  public var apiKey: String?
  /// /metrics without the API key (for a scraper inside a trusted network).
  public var publicMetrics = false
  public var limits = ServingLimits()
  /// Requests waiting for the engine beyond which new ones get 429 (Retry-After).
  public var maxQueued = 256
  /// Open connections accepted at once (more wait in the listen backlog).
  public var maxConnections = 512
  /// A connection idle this long (no request, no response bytes) is closed.
  public var idleTimeout: TimeInterval = 60
  /// A request head must arrive within this many seconds (of connecting, or of its first byte); its body within
  /// `bodyTimeout` of the head. Slow clients are closed (slowloris).
  public var headerTimeout: TimeInterval = 5
  public var bodyTimeout: TimeInterval = 30
  /// Connections one client address may hold at once (more are closed on arrival).
  public var maxConnectionsPerPeer = 128
  /// Wall-clock cap per request; past it the request ends with finish_reason "length" and the text so far.
  public var requestTimeout: TimeInterval = 600
  /// An SSE comment is sent this often while a stream has nothing to say (keeps proxies open, finds gone clients).
  public var ssePingInterval: TimeInterval = 10
  /// Whether special tokens spelled in a /v1/completions `prompt` become special ids (default, as vLLM) or plain text.
  /// Chat message contents are always plain text.
  public var parseSpecialInPrompts = true
  public init() {}
}

/// Everything a handler needs, shared by all connections.
final class ServerState: Sendable {
  let service: EngineService
  let tokenizer: Tokenizer
  let template: ChatTemplate
  let options: ServerOptions
  let created = Int(Date().timeIntervalSince1970)
  let bosText: String, eosText: String

  init(service: EngineService, tokenizer: Tokenizer, template: ChatTemplate, options: ServerOptions) {
    self.service = service; self.tokenizer = tokenizer; self.template = template; self.options = options
    bosText = tokenizer.bosTokenId.flatMap { try? tokenizer.decode([$0]) } ?? ""
    eosText = tokenizer.eosTokenIds.first.flatMap { try? tokenizer.decode([$0]) } ?? ""
  }

  var maxContext: Int { service.engine.maxContext }
  var vocabSize: Int { service.engine.model.config.vocabSize }
}

public enum OpenAIServer {
  /// Builds the application; `onRunning` receives the bound port (useful with port 0). Run it with
  /// `runService()` (SIGTERM/SIGINT: stop accepting, finish the requests in flight, then stop the engine).
  public static func application(service: EngineService, tokenizer: Tokenizer, template: ChatTemplate?, options: ServerOptions,
                                 logger: Logger? = nil,
                                 onRunning: @escaping @Sendable (Int) -> Void = { _ in }) -> some ApplicationProtocol {
    let state = ServerState(service: service, tokenizer: tokenizer, template: template ?? ChatTemplate.chatML, options: options)
    let router = Router(context: ServerContext.self)
    router.add(middleware: ErrorMiddleware(metrics: service.metrics))
    router.add(middleware: AuthMiddleware(key: options.apiKey, publicMetrics: options.publicMetrics))
    addRoutes(router, state)
    var log = logger ?? Logger(label: "qoq.serve")
    if logger == nil { log.logLevel = .warning }
    let peers = PeerRegistry(maxPerPeer: options.maxConnectionsPerPeer)
    let (headerTimeout, bodyTimeout) = (options.headerTimeout, options.bodyTimeout)
    var http = HTTP1Channel.Configuration(
      additionalChannelHandlers: [CloseOnInputClosed(),
                                  RequestDeadlineGuard(registry: peers, headerTimeout: headerTimeout, bodyTimeout: bodyTimeout)],
      idleTimeout: .milliseconds(Int64(options.idleTimeout * 1000)))
    http.httpDecoder = .init(maxHeaderFieldSize: 16 * 1024, maxHeaderListSize: 64 * 1024, maxHeaderFieldCount: 100)
    return Application(
      router: router, server: .http1(configuration: http),
      configuration: .init(address: .hostname(options.host, port: options.port), serverName: "qoq",
                           availableConnectionsDelegate: MaximumAvailableConnections(options.maxConnections)),
      services: [EngineDrain(service: service)],
      onServerRunning: { onRunning($0.localAddress?.port ?? options.port) },
      logger: log)
  }

  static func addRoutes(_ router: Router<ServerContext>, _ s: ServerState) {
    let health: @Sendable (Request, ServerContext) async throws -> Response = { _, _ in
      if s.service.isDraining { throw APIError(503, "the server is shutting down", type: "unavailable_error") }
      return jsonResponse(.object(JSONObject([("status", .string("ok")), ("kernels", .string(kernelISA))])))
    }
    router.get("/") { _, _ in
      var headers = HTTPFields()
      headers[.contentType] = "text/html; charset=utf-8"
      headers[.contentSecurityPolicy] = "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"
      return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: ChatPage.html(model: s.options.modelId))))
    }
    router.get("/health", use: health)
    router.get("/v1/health", use: health)
    router.get("/v1/models") { _, _ in
      let m = JSONObject([("id", .string(s.options.modelId)), ("object", .string("model")), ("created", .int(s.created)),
                          ("owned_by", .string("qoq")), ("max_model_len", .int(s.maxContext))])
      return jsonResponse(.object(JSONObject([("object", .string("list")), ("data", .array([.object(m)]))])))
    }
    router.get("/metrics") { _, _ in
      let snap = s.service.snapshot
      let body = s.service.metrics.render(queued: snap.queued, running: snap.running, pagesUsed: snap.pagesUsed, pagesTotal: snap.pagesTotal,
                                          prefix: s.service.prefixCacheSnapshot)
      var headers = HTTPFields()
      headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
      return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: body)))
    }
    for prefix in ["", "/v1"] {
      router.get("\(prefix)/tokenizer_info") { _, _ in
        var o = JSONObject([("eos_token", .string(s.eosText)), ("bos_token", s.bosText.isEmpty ? .null : .string(s.bosText)),
                            ("chat_template", .string(s.template.source)), ("model_max_length", .int(s.maxContext))])
        o["vocab_size"] = .int(s.vocabSize)
        return jsonResponse(.object(o))
      }
      router.post("\(prefix)/tokenize") { req, _ in
        let v = try OpenAIParse.body(try await readBody(req, s), limits: s.options.limits)
        let ids: [Int32]
        if let p = v["prompt"]?.string {
          let add = try OpenAIParse.flag(v, "add_special_tokens") ?? true
          ids = try s.tokenizer.encode(p, addSpecialTokens: add, parseSpecial: s.options.parseSpecialInPrompts)
        } else if v["messages"] != nil {
          // The same inert rendering as /v1/chat/completions, so the count equals what a chat request would use.
          let chat = try OpenAIParse.chat(json: v, limits: s.options.limits)
          ids = try encodeChat(chat.messages, extra: chat.templateVars, s)
        } else { throw APIError(400, "prompt must be a string (or give messages)", param: "prompt") }
        return jsonResponse(.object(JSONObject([("tokens", .array(ids.map { .int(Int($0)) })), ("count", .int(ids.count)),
                                                ("max_model_len", .int(s.maxContext))])))
      }
      router.post("\(prefix)/detokenize") { req, _ in
        let v = try OpenAIParse.body(try await readBody(req, s), limits: s.options.limits)
        guard let a = v["tokens"]?.array, a.allSatisfy({ $0.int != nil }) else {
          throw APIError(400, "tokens must be a list of token ids", param: "tokens")
        }
        let ids = try checkedTokens(a.map { $0.int! }, s)
        return jsonResponse(.object(JSONObject([("prompt", .string(try s.tokenizer.decode(ids)))])))
      }
    }
    router.post("/v1/completions") { req, ctx in try await Completions.completion(req, ctx, s) }
    router.post("/v1/chat/completions") { req, ctx in try await Completions.chat(req, ctx, s) }
  }

  /// The request body, refused (413) beyond the limit before it is read when Content-Length says so.
  static func readBody(_ req: Request, _ s: ServerState) async throws -> Data {
    let limit = s.options.limits.maxBodyBytes
    if let l = req.headers[.contentLength].flatMap({ Int($0) }), l > limit {
      throw APIError(413, "request body of \(l) bytes exceeds the limit of \(limit)", code: "body_too_large")
    }
    do {
      let buf = try await req.body.collect(upTo: limit)
      return Data(buf.readableBytesView)
    } catch let e as HTTPError where e.status == .contentTooLarge {
      throw APIError(413, "request body exceeds the limit of \(limit) bytes", code: "body_too_large")
    } catch is NIOTooManyBytesError {
      // A chunked body has no Content-Length: the limit is found while reading it.
      throw APIError(413, "request body exceeds the limit of \(limit) bytes", code: "body_too_large")
    } catch let e as HTTPParserError {
      throw APIError(400, "malformed request body (\(e))", code: "bad_request_body")
    }
  }

  static func checkedTokens(_ ids: [Int], _ s: ServerState) throws -> [Int32] {
    if let bad = ids.first(where: { $0 < 0 || $0 >= s.vocabSize }) {
      throw APIError(400, "token id \(bad) is outside the vocabulary (0..<\(s.vocabSize))", param: "tokens")
    }
    return ids.map { Int32($0) }
  }

  /// The chat prompt's token ids: the model's template over inert contents (a message cannot forge a role).
  static func encodeChat(_ messages: [(role: String, content: String)], extra: [String: JSONValue] = [:], _ s: ServerState) throws -> [Int32] {
    var vars: [String: TemplateValue] = extra.mapValues(TemplateValue.init(json:))
    vars["bos_token"] = .string(s.bosText)
    vars["eos_token"] = .string(s.eosText)
    do { return try s.template.encodeChat(messages, tokenizer: s.tokenizer, vars: vars).ids }
    catch let e as QoQError { throw APIError(400, "chat template: \(e.message)", param: "messages") }
  }
}

/// The request context: Hummingbird's core storage plus the connection, whose close cancels the request's work.
struct ServerContext: RequestContext {
  var coreContext: CoreRequestContextStorage
  let channel: any Channel
  init(source: ApplicationRequestContextSource) {
    coreContext = .init(source: source)
    channel = source.channel
  }

  /// Runs `cancel` when the client's connection closes (at most once; a no-op after the request's work is done).
  func onClose(_ cancel: @escaping @Sendable () -> Void) -> CloseWatch {
    let w = CloseWatch(cancel)
    channel.closeFuture.whenComplete { _ in w.fire() }
    return w
  }
}

/// A client that closes its side of the connection has gone away (HTTP/1 clients do not half-close while waiting
/// for an answer): close the connection, so `closeFuture` fires and that request's work is cancelled.
final class CloseOnInputClosed: ChannelInboundHandler, RemovableChannelHandler {
  typealias InboundIn = NIOAny
  func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
    if case .some(ChannelEvent.inputClosed) = event as? ChannelEvent { context.close(promise: nil) }
    context.fireUserInboundEventTriggered(event)
  }
}

final class CloseWatch: @unchecked Sendable {
  private let lock = NSLock()
  private var action: (@Sendable () -> Void)?
  init(_ a: @escaping @Sendable () -> Void) { action = a }
  func fire() { lock.lock(); let a = action; action = nil; lock.unlock(); a?() }
  /// The work finished: a later close does nothing.
  func disarm() { lock.lock(); action = nil; lock.unlock() }
}

func jsonResponse(_ v: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
  var headers = HTTPFields()
  headers[.contentType] = "application/json"
  return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: JSON.serialize(v))))
}

/// Turns every error into an OpenAI-style JSON error with its status, and counts it.
struct ErrorMiddleware: RouterMiddleware {
  typealias Context = ServerContext
  let metrics: ServingMetrics
  func handle(_ req: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
    do {
      return try await next(req, context)
    } catch let e as APIError {
      return respond(e)
    } catch let e as HTTPError {
      let msg = e.status == .notFound ? "no route for \(req.method) \(req.uri.path)" : (e.body ?? e.status.reasonPhrase)
      return respond(APIError(Int(e.status.code), msg, type: e.status.code >= 500 ? "server_error" : "invalid_request_error"))
    } catch let e as QoQError {
      return respond(APIError(400, e.message))
    } catch let e as HTTPParserError {
      return respond(APIError(400, "malformed request (\(e))", code: "bad_request"))
    } catch let e as any HTTPResponseError {
      let code = Int(e.status.code)
      return respond(APIError(code, e.status.reasonPhrase, type: code >= 500 ? "server_error" : "invalid_request_error"))
    } catch is CancellationError {
      return respond(APIError(499, "the client closed the request", type: "cancelled"))
    } catch {
      return respond(APIError(500, "internal error: \(error)", type: "server_error"))
    }
  }

  func respond(_ e: APIError) -> Response {
    metrics.httpErrors.add(1, label: String(e.status))
    var r = jsonResponse(e.json, status: HTTPResponse.Status(code: e.status))
    if e.status == 429 || e.status == 503 { r.headers[.retryAfter] = "1" }
    if e.status == 401 { r.headers[.wwwAuthenticate] = "Bearer" }
    return r
  }
}

/// `Authorization: Bearer KEY` (or `x-api-key: KEY`) on every route but /health, compared in constant time.
struct AuthMiddleware: RouterMiddleware {
  typealias Context = ServerContext
  let key: String?
  let publicMetrics: Bool
  func handle(_ req: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
    guard let key else { return try await next(req, context) }
    let path = req.uri.path
    // The chat page holds no secret (its API calls carry the key), so a browser can load it.
    if path == "/" || path == "/health" || path == "/v1/health" || (publicMetrics && path == "/metrics") { return try await next(req, context) }
    var given: String?
    if let a = req.headers[.authorization] {
      let parts = a.split(separator: " ", maxSplits: 1)
      if parts.count == 2, parts[0].lowercased() == "bearer" { given = String(parts[1]).trimmingCharacters(in: .whitespaces) }
    }
    if given == nil, let x = req.headers[HTTPField.Name("x-api-key")!] { given = x }
    guard let g = given else {
      throw APIError(401, "You didn't provide an API key. Provide it in the Authorization header (Authorization: Bearer KEY).",
                     code: "invalid_api_key")
    }
    guard constantTimeEqual(Array(g.utf8), Array(key.utf8)) else {
      throw APIError(401, "Incorrect API key provided.", code: "invalid_api_key")
    }
    return try await next(req, context)
  }
}

/// Equal-length-independent comparison: the time taken does not depend on where the bytes first differ.
func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
  var diff = UInt8(truncatingIfNeeded: a.count ^ b.count)
  for i in 0..<max(a.count, b.count) {
    diff |= (i < a.count ? a[i] : 0) ^ (i < b.count ? b[i] : 0)
  }
  return diff == 0
}

/// A service in the application's group: on graceful shutdown (after the HTTP server has stopped accepting and
/// finished its requests) the engine drains and its thread ends.
struct EngineDrain: Service {
  let service: EngineService
  func run() async throws {
    try? await gracefulShutdown()
    service.beginDrain()
    await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
      Thread.detachNewThread { service.drain(); c.resume() }
    }
  }
}

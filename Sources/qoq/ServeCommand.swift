import ArgumentParser
import Foundation
import QoQEngine
import QoQIO
import QoQModels
import QoQServer
import QoQServing
import QoQTokenizers

struct ServeCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "serve",
    abstract: "Serve a model over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, streaming, /metrics).",
    discussion: """
      Binds 127.0.0.1:8080 by default. For anything beyond a trusted host, set an API key (QOQ_API_KEY or \
      --api-key-file) and put a reverse proxy in front; the server never reads files named in requests.
      SIGTERM or SIGINT: stop accepting, finish the requests in flight, exit 0.
      """)
  @OptionGroup var threadsOption: ThreadsOption

  @Argument(help: "The model, as `vllm serve MODEL` takes it (or -m).") var model: String?
  @Option(name: [.customShort("m"), .customLong("model-path"), .customLong("model")],
          help: "Quantized checkpoint, Hugging Face model folder, .gguf file or ORG/NAME.") var modelOption: String?
  /// The model from -m or the positional argument (validate() requires exactly one).
  var modelPath: String { modelOption ?? model ?? "" }
  @Option(help: "Address to bind.") var host = "127.0.0.1"
  @Option(help: "Port (0: any free port; the bound one is printed).") var port = 8080
  @Option(help: "Model id clients pass as `model` (default: the checkpoint's folder or file name).") var servedModelName: String?
  @Option(help: "File holding the API key (first line). The QOQ_API_KEY environment variable also sets it.") var apiKeyFile: String?
  @Flag(help: "Serve /metrics without the API key.") var publicMetrics = false
  @Option(help: "Sampling defaults for requests that leave them out: auto (the model's generation_config.json, as vLLM) or none (OpenAI's).")
  var generationConfig = "auto"
  @Flag(inversion: .prefixedNo, help: "One stderr line per finished request (tokens, time to first token, tok/s).") var logRequests = true
  @Option(help: "Largest request body in bytes (413 beyond).") var maxBodyBytes = 1 << 20
  @Option(help: "Largest max_tokens a request may ask for (also the default, fitted to the context).") var maxTokensLimit = 4096
  @Option(help: "Requests waiting for the engine beyond which new ones get 429.") var maxQueued = 256
  @Option(help: "Open connections accepted at once.") var maxConnections = 512
  @Option(help: "Seconds before an idle connection is closed.") var idleTimeout: Double = 60
  @Option(help: "Seconds a client has to send a request's head (slow clients are closed).") var headerTimeout: Double = 5
  @Option(help: "Seconds a client has to send a request's body after its head.") var bodyTimeout: Double = 30
  @Option(help: "Connections one client address may hold at once.") var maxConnectionsPerPeer = 128
  @Option(help: "Seconds a request may run before it ends with finish_reason length.") var requestTimeout: Double = 600
  @Option(help: "Seconds between SSE keep-alive comments on a silent stream.") var ssePingInterval: Double = 10
  @Option(help: """
    Special tokens spelled in a /v1/completions prompt: parse (they become special ids, as in vLLM) or text. \
    Chat message contents are always text.
    """)
  var promptSpecials = "parse"
  @OptionGroup var templateOption: ChatTemplateOption
  @OptionGroup var engine: EngineArguments

  func validate() throws {
    guard (model == nil) != (modelOption == nil) else {
      throw ValidationError(model == nil ? "name the model: qoq serve MODEL or -m MODEL" : "give the model once: MODEL or -m, not both")
    }
    guard (0...65535).contains(port) else { throw ValidationError("--port must be in 0…65535") }
    guard ["parse", "text"].contains(promptSpecials) else { throw ValidationError("--prompt-specials must be parse or text") }
    guard ["auto", "none"].contains(generationConfig) else { throw ValidationError("--generation-config must be auto or none") }
    for (v, n) in [(maxBodyBytes, "--max-body-bytes"), (maxTokensLimit, "--max-tokens-limit"), (maxQueued, "--max-queued"),
                   (maxConnections, "--max-connections"),
                   (maxConnectionsPerPeer, "--max-connections-per-peer")] where v <= 0 { throw ValidationError("\(n) must be positive") }
    for (v, n) in [(idleTimeout, "--idle-timeout"), (requestTimeout, "--request-timeout"), (ssePingInterval, "--sse-ping-interval"),
                   (headerTimeout, "--header-timeout"), (bodyTimeout, "--body-timeout")]
    where !(v > 0 && v.isFinite) { throw ValidationError("\(n) must be a positive number of seconds") }
  }

  func run() async throws {
    threadsOption.apply()
    var o = ServerOptions()
    o.host = host; o.port = port; o.publicMetrics = publicMetrics; o.parseSpecialInPrompts = promptSpecials == "parse"
    o.modelId = servedModelName ?? URL(fileURLWithPath: modelPath).lastPathComponent
    o.limits.maxBodyBytes = maxBodyBytes; o.limits.maxTokens = maxTokensLimit
    o.maxQueued = maxQueued; o.maxConnections = maxConnections
    o.idleTimeout = idleTimeout; o.headerTimeout = headerTimeout; o.bodyTimeout = bodyTimeout
    o.maxConnectionsPerPeer = maxConnectionsPerPeer; o.requestTimeout = requestTimeout; o.ssePingInterval = ssePingInterval
    let service: EngineService, tokenizer: Tokenizer, template: ChatTemplate?
    do {
      if let f = apiKeyFile {
        guard let text = try? String(contentsOfFile: f, encoding: .utf8),
              let key = text.split(separator: "\n").first.map({ $0.trimmingCharacters(in: .whitespaces) }), !key.isEmpty else {
          throw QoQError("\(f): cannot read an API key from it")
        }
        o.apiKey = key
      } else if let k = ProcessInfo.processInfo.environment["QOQ_API_KEY"], !k.isEmpty {
        o.apiKey = k
      }
      let (model, tok) = try engine.loadModel(modelPath)
      let rss = String(format: "resident %.2f GiB after load, peak %.2f GiB", currentRSSGB(), peakRSSGB())
      note("engine: \(model.description); \(rss)")
      service = EngineService(engine: try Engine(model: model, tokenizer: tok, options: engine.options), maxQueued: maxQueued,
                              requestTimeout: requestTimeout)
      if logRequests { service.requestLog = { line in note(line) } }
      if generationConfig == "auto" {
        var isDir: ObjCBool = false
        let folder = try HubCache.resolve(modelPath)
        if FileManager.default.fileExists(atPath: folder, isDirectory: &isDir), isDir.boolValue {
          o.limits.defaults = try SamplingDefaults.load(folder: folder)
          let d = o.limits.defaults
          if d != SamplingDefaults() {
            note("sampling defaults from generation_config.json: temperature \(d.temperature), top_p \(d.topP), top_k \(d.topK), "
              + "min_p \(d.minP), repetition_penalty \(d.repetitionPenalty)")
          }
        }
      }
      tokenizer = tok
      template = try templateOption.load(model: modelPath)
      if template == nil { note("the model has no chat template: /v1/chat/completions uses ChatML") }
    } catch let e as QoQError {
      FileHandle.standardError.write(Data("error: \(e.message)\n".utf8))
      throw ExitCode(1)
    }
    // User text (model name, host) is interpolated, never used as a format string.
    let (name, shownHost, auth) = (o.modelId, o.host, o.apiKey == nil ? "no API key" : "API key required")
    let app = OpenAIServer.application(service: service, tokenizer: tokenizer, template: template, options: o) { port in
      note("serving \(name) on http://\(shownHost):\(port)/v1 (\(auth))")
    }
    do { try await app.runService() } catch {
      let text = "\(error)"
      let why = text.contains("Address already in use") ? "cannot listen on \(host):\(port): the address is already in use" : text
      FileHandle.standardError.write(Data("error: \(why)\n".utf8))
      throw ExitCode(1)
    }
    note("stopped")
  }
}

import ArgumentParser
import Foundation
import QoQEngine
import QoQIO
import QoQScheduler
import QoQTokenizers

struct GenerateCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "generate",
    abstract: "Generate text with the engine (W4A8 kernels for quantized checkpoints), several prompts batched in flight.")
  @OptionGroup var threadsOption: ThreadsOption

  @Option(name: [.customShort("m"), .long, .customLong("model")], help: "Quantized checkpoint, Hugging Face model folder or .gguf file.")
  var modelPath: String
  @Option(name: [.short, .long], help: "Prompt text (repeat for several prompts).") var prompt: [String] = []
  @Option(name: [.customShort("f"), .long], help: "A file whose whole text is one prompt (- reads standard input), as llama.cpp's -f.")
  var file: String?
  @Option(help: "File of prompts: one per line, or JSON lines with a \"prompt\" field (.jsonl).") var promptsFile: String?
  @Option(name: [.customShort("n"), .customLong("max-tokens"), .customLong("n-predict")], help: "Tokens to generate per prompt.")
  var maxTokens: Int = 64
  @OptionGroup var sampling: SamplingOptions
  @Option(help: "Stop string (repeatable).") var stop: [String] = []
  @Flag(help: "Wrap each prompt in a chat template even when the model has none (ChatML then).") var chat = false
  @Flag(help: "Send the prompt as plain text: no chat template (the default wraps it in the model's template when it has one).")
  var raw = false
  @Option(help: "System prompt, placed before each prompt by the chat template.") var systemPrompt: String?
  @OptionGroup var templateOption: ChatTemplateOption
  @Flag(help: "Keep going past end-of-sequence tokens.") var ignoreEos = false
  @Flag(help: "Print one JSON object per finished request instead of text.") var json = false
  @OptionGroup var engine: EngineArguments

  func validate() throws {
    guard maxTokens > 0 else { throw ValidationError("--max-tokens must be positive") }
    guard !(raw && chat) else { throw ValidationError("give --raw or --chat, not both") }
    guard !(raw && systemPrompt != nil) else { throw ValidationError("--system-prompt needs the chat template; drop --raw") }
  }

  /// --prompt values, then -f's file (or stdin), then --prompts-file's lines; with none of them, standard input when it
  /// is not a terminal.
  func prompts() throws -> [String] {
    var out = prompt
    func readAll(_ f: String) throws -> String {
      if f == "-" { return String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self) }
      guard let t = try? String(contentsOfFile: f, encoding: .utf8) else { throw QoQError("\(f): cannot read the prompt file") }
      return t
    }
    if let f = file { out.append(try readAll(f)) }
    if prompt.isEmpty && file == nil && promptsFile == nil {
      let none = QoQError("give --prompt, -f FILE or --prompts-file (or pipe the prompt into standard input)")
      guard isatty(0) == 0 else { throw none }
      let text = try readAll("-")
      guard !text.isEmpty else { throw none }
      out.append(text)
    }
    if let f = promptsFile {
      guard let text = try? String(contentsOfFile: f, encoding: .utf8) else { throw QoQError("\(f): cannot read the prompts file") }
      for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: true).enumerated() {
        if f.hasSuffix(".jsonl") {
          guard let p = try JSON.parse(Data(line.utf8), what: "\(f):\(i + 1)")["prompt"]?.string else {
            throw QoQError("\(f):\(i + 1): a JSON line needs a \"prompt\" string")
          }
          out.append(p)
        } else { out.append(String(line)) }
      }
    }
    guard !out.isEmpty else { throw QoQError("no prompts") }
    return out
  }

  func run() throws {
    threadsOption.apply()
    try runReportingErrors {
      let texts = try prompts()
      let tLoad = Date()
      let (model, tok) = try engine.loadModel(modelPath)
      let e = try Engine(model: model, tokenizer: tok, options: engine.options)
      let loadSeconds = Date().timeIntervalSince(tLoad)
      let rss = String(format: "resident %.2f GiB after load, peak %.2f GiB", currentRSSGB(), peakRSSGB())
      note("engine: \(model.description); \(rss)")
      var ids: [Int: Int] = [:]  // request id → prompt index
      var promptTokens = 0
      var rejected = 0
      // The model's own chat template (or --chat-template's) unless --raw; ChatML with --chat when it has none.
      var template: ChatTemplate?
      if !raw {
        do { template = try templateOption.load(model: modelPath) } catch let err as QoQError where templateOption.chatTemplate == nil && !chat {
          // The model's own template is one our Jinja subset cannot read: plain text, said so (--chat makes it an error).
          note("the model's chat template cannot be used (\(err.message)); sending the prompt as plain text")
        }
        if template == nil && (chat || systemPrompt != nil) { template = ChatTemplate.chatML }
      }
      note(raw ? "prompt: plain text (--raw)" : template == nil ? "prompt: plain text (the model has no chat template)"
           : "prompt: wrapped in the chat template (--raw to send it as is)")
      let bos = tok.bosTokenId.flatMap { try? tok.decode([$0]) } ?? "", eos = tok.eosTokenIds.first.flatMap { try? tok.decode([$0]) } ?? ""
      for (i, t) in texts.enumerated() {
        let vars: [String: TemplateValue] = ["bos_token": .string(bos), "eos_token": .string(eos)]
        var p = sampling.params(index: i, maxTokens: maxTokens, temp: 0, topP: 1)
        p.stopStrings = stop
        do {
          // A chat prompt is a user message, inert (only the template's markup is special; it places BOS itself).
          let system: [(role: String, content: String)] = systemPrompt.map { [(role: "system", content: $0)] } ?? []
          let messages = system + [(role: "user", content: t)]
          let toks = try template.map { try $0.encodeChat(messages, tokenizer: tok, vars: vars).ids }
            ?? tok.encode(t, addSpecialTokens: true, parseSpecial: false)
          ids[try e.add(prompt: toks, params: p, ignoreEOS: ignoreEos)] = i
          promptTokens += toks.count
        } catch let err as QoQError {
          // One bad prompt does not stop the others.
          note("prompt \(i + 1): \(err.message)")
          rejected += 1
        }
      }
      let streaming = texts.count == 1 && !json
      var generated = 0
      let t0 = Date()
      var firstToken: Double?
      _ = try e.runToCompletion { ev in
        switch ev {
        case .token(_, _, let delta):
          generated += 1
          if firstToken == nil { firstToken = Date().timeIntervalSince(t0) }
          if streaming { FileHandle.standardOutput.write(Data(delta.utf8)) }
        case .finished(let id, let reason, let text, let toks, let cached):
          let i = ids[id] ?? -1
          if json {
            let o = JSONObject([("index", .int(i)), ("prompt", .string(texts[i])), ("text", .string(text)),
                                ("tokens", .int(toks.count)), ("cached_tokens", .int(cached)),
                                ("finish_reason", .string(reason.rawValue))])
            print(JSON.serialize(.object(o)))
          } else if streaming {
            FileHandle.standardOutput.write(Data("\n".utf8))
          } else {
            print("### [\(i + 1)] \(texts[i])\n\(text)\n(\(toks.count) tokens, \(reason.rawValue))\n")
          }
        case .rejected(let id, let reason):
          note("prompt \((ids[id] ?? -1) + 1): rejected: \(reason)")
          rejected += 1
        case .logprobs: break
        }
      }
      let dt = Date().timeIntervalSince(t0)
      // llama.cpp-style breakdown. Prompt processing is timed to the first sampled token; generation after it (each
      // request's first token comes from its prefill, so it is counted there).
      let ttft = firstToken ?? dt, decoded = max(generated - ids.count, 0)
      func rate(_ n: Int, _ s: Double) -> String { s > 0 && n > 0 ? String(format: "%.2f", Double(n) / s) : "—" }
      note(String(format: "load time   = %8.2f ms", loadSeconds * 1000))
      note(String(format: "prompt eval = %8.2f ms / %5d tokens", ttft * 1000, promptTokens) + " (\(rate(promptTokens, ttft)) tokens/s)")
      note(String(format: "generation  = %8.2f ms / %5d tokens", (dt - ttft) * 1000, decoded) + " (\(rate(decoded, dt - ttft)) tokens/s)")
      note(String(format: "total       = %8.2f ms / %5d requests, %d tokens generated (%.1f tokens/s overall; %d steps, %d preemptions)",
                  (loadSeconds + dt) * 1000, ids.count, generated, Double(generated) / max(dt, 1e-9), e.stepsRun, e.preemptions))
      // A prompt that failed makes the run fail (the others' answers are printed above).
      if rejected == texts.count { throw QoQError("every prompt (\(texts.count)) was rejected") }
      if rejected > 0 { throw QoQError("\(rejected) of \(texts.count) prompts failed") }
    }
  }
}

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

  @Option(name: [.customShort("m"), .long], help: "Quantized checkpoint, Hugging Face model folder or .gguf file.") var modelPath: String
  @Option(name: [.short, .long], help: "Prompt text (repeat for several prompts).") var prompt: [String] = []
  @Option(help: "File of prompts: one per line, or JSON lines with a \"prompt\" field (.jsonl).") var promptsFile: String?
  @Option(name: [.customShort("n"), .customLong("max-tokens"), .customLong("n-predict")], help: "Tokens to generate per prompt.") var maxTokens: Int = 64
  @OptionGroup var sampling: SamplingOptions
  @Option(help: "Stop string (repeatable).") var stop: [String] = []
  @Flag(help: "Wrap each prompt in the model's chat template (tokenizer_config.json or GGUF; ChatML when it has none).") var chat = false
  @Flag(help: "Keep going past end-of-sequence tokens.") var ignoreEos = false
  @Flag(help: "Print one JSON object per finished request instead of text.") var json = false
  @OptionGroup var engine: EngineArguments

  func validate() throws {
    guard maxTokens > 0 else { throw ValidationError("--max-tokens must be positive") }
    guard !prompt.isEmpty || promptsFile != nil else { throw ValidationError("give --prompt or --prompts-file") }
  }

  func prompts() throws -> [String] {
    var out = prompt
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
      let (model, tok) = try engine.loadModel(modelPath)
      note("engine: \(model.description); resident \(String(format: "%.2f", currentRSSGB())) GiB after load, peak \(String(format: "%.2f", peakRSSGB())) GiB")
      let e = try Engine(model: model, tokenizer: tok, options: engine.options)
      var ids: [Int: Int] = [:]  // request id → prompt index
      var promptTokens = 0
      var rejected = 0
      // --chat: the model's own chat template (tokenizer_config.json or GGUF), ChatML when it has none.
      let template = chat ? (try ChatTemplate.forModel(path: modelPath) ?? ChatTemplate.chatML) : nil
      let bos = tok.bosTokenId.flatMap { try? tok.decode([$0]) } ?? "", eos = tok.eosTokenIds.first.flatMap { try? tok.decode([$0]) } ?? ""
      for (i, t) in texts.enumerated() {
        let vars: [String: TemplateValue] = ["bos_token": .string(bos), "eos_token": .string(eos)]
        var p = sampling.params(index: i, maxTokens: maxTokens, temp: 0, topP: 1)
        p.stopStrings = stop
        do {
          // --chat: the prompt is a user message, inert (only the template's markup is special; it places BOS itself).
          let toks = try template.map { try $0.encodeChat([("user", t)], tokenizer: tok, vars: vars).ids }
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
        case .finished(let id, let reason, let text, let toks):
          let i = ids[id] ?? -1
          if json {
            let o = JSONObject([("index", .int(i)), ("prompt", .string(texts[i])), ("text", .string(text)),
                                ("tokens", .int(toks.count)), ("finish_reason", .string(reason.rawValue))])
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
      note(String(format: "%d requests, %d prompt tokens, %d generated in %.2f s (%.1f tokens/s overall; first token after %.2f s; %d steps, %d preemptions)",
                  ids.count, promptTokens, generated, dt, Double(generated) / max(dt, 1e-9), firstToken ?? 0, e.stepsRun, e.preemptions))
      // Nothing was generated for anyone: that is a failure, not a run.
      if rejected == texts.count { throw QoQError("every prompt (\(texts.count)) was rejected") }
    }
  }
}

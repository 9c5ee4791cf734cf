import ArgumentParser
import Foundation
import QoQEngine
import QoQIO
import QoQScheduler
import QoQTokenizers

/// `qoq chat -m MODEL`: a multi-turn conversation in the terminal (issue #16) with the model's own chat template,
/// an optional system prompt, streamed answers and the speed of each. Lines are read from stdin, so it also runs under
/// a pipe or a script: `/reset` starts over (the system prompt stays), `/exit` (or end of input) leaves.
struct ChatCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "chat",
    abstract: "Interactive chat with the model's chat template: streamed answers, /reset, /exit.")
  @OptionGroup var threadsOption: ThreadsOption

  @Option(name: [.customShort("m"), .long, .customLong("model")], help: "Quantized checkpoint, Hugging Face model folder, .gguf file or ORG/NAME.")
  var modelPath: String
  @Option(help: "System prompt for the conversation.") var systemPrompt: String?
  @Option(name: [.customShort("n"), .customLong("max-tokens"), .customLong("n-predict")], help: "Most tokens per answer.") var maxTokens: Int = 512
  @OptionGroup var sampling: SamplingOptions
  @OptionGroup var templateOption: ChatTemplateOption
  @OptionGroup var engine: EngineArguments

  func validate() throws {
    guard maxTokens > 0 else { throw ValidationError("--max-tokens must be positive") }
  }

  func run() throws {
    threadsOption.apply()
    try runReportingErrors {
      let (model, tok) = try engine.loadModel(modelPath)
      let e = try Engine(model: model, tokenizer: tok, options: engine.options)
      let template = try templateOption.load(model: modelPath) ?? ChatTemplate.chatML
      let bos = tok.bosTokenId.flatMap { try? tok.decode([$0]) } ?? "", eos = tok.eosTokenIds.first.flatMap { try? tok.decode([$0]) } ?? ""
      let vars: [String: TemplateValue] = ["bos_token": .string(bos), "eos_token": .string(eos)]
      let system: [(role: String, content: String)] = systemPrompt.map { [("system", $0)] } ?? []
      var history = system
      var turn = 0
      let interactive = isatty(0) != 0
      note("chat with \(modelPath) (\(model.description)); /reset starts over, /exit leaves")
      while true {
        if interactive { FileHandle.standardOutput.write(Data("> ".utf8)) }
        guard let line = readLine(strippingNewline: true) else { break }
        let input = line.trimmingCharacters(in: .whitespaces)
        if input.isEmpty { continue }
        if input == "/exit" || input == "/quit" { break }
        if input == "/reset" { history = system; note("(conversation reset)"); continue }
        history.append(("user", line))
        var ids = try template.encodeChat(history, tokenizer: tok, vars: vars).ids
        // Keep the conversation within the context: drop the oldest turns (never the system prompt or this message).
        while ids.count + maxTokens > e.maxContext && history.count > system.count + 1 {
          history.remove(at: system.count)
          ids = try template.encodeChat(history, tokenizer: tok, vars: vars).ids
        }
        let p = sampling.params(index: turn, maxTokens: maxTokens, temp: 0.7, topP: 0.95)
        turn += 1
        let t0 = Date()
        var first: Double?, count = 0, answer = ""
        do {
          _ = try e.add(prompt: ids, params: p)
          _ = try e.runToCompletion { ev in
            switch ev {
            case .token(_, _, let delta):
              if first == nil { first = Date().timeIntervalSince(t0) }
              count += 1
              FileHandle.standardOutput.write(Data(delta.utf8))
            case .finished(_, _, let text, _, _): answer = text
            case .rejected(_, let reason): note("rejected: \(reason)")
            case .logprobs: break
            }
          }
        } catch let err as QoQError {
          note("error: \(err.message)")
          history.removeLast()
          continue
        }
        FileHandle.standardOutput.write(Data("\n".utf8))
        history.append(("assistant", answer))
        let dt = Date().timeIntervalSince(t0), ttft = first ?? dt
        note(String(format: "[%d prompt tokens in %.2f s (%.1f tok/s); %d generated at %.1f tok/s]", ids.count, ttft,
                    Double(ids.count) / max(ttft, 1e-9), count, Double(max(0, count - 1)) / max(dt - ttft, 1e-9)))
      }
    }
  }
}

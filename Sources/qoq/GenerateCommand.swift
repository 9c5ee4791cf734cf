import ArgumentParser
import Foundation
import QoQFormat
import QoQIO
import QoQKernels
import QoQModels
import QoQTokenizers

struct GenerateCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "generate", abstract: "Generate text from a prompt (FP or fake-quantized checkpoint; streams to stdout).")

  @Option(name: [.customShort("m"), .long], help: "Hugging Face model folder or .gguf file.") var modelPath: String
  @Option(name: [.short, .long], help: "Prompt text.") var prompt: String
  @Option(name: [.customShort("n"), .customLong("max-tokens"), .customLong("n-predict")], help: "Tokens to generate.") var maxTokens: Int = 64
  @Option(help: "Sampling temperature (0 = greedy).") var temp: Double = 0
  @Option(help: "Top-k (0 = off).") var topK: Int = 0
  @Option(help: "Top-p nucleus (1 = off).") var topP: Double = 1
  @Option(name: [.short, .long], help: "Random seed.") var seed: UInt64 = 0
  @Flag(help: "Wrap the prompt in the model's chat template (ChatML when the template is ChatML).") var chat = false
  @Flag(help: "Keep going past end-of-sequence tokens.") var ignoreEos = false

  func validate() throws {
    guard maxTokens > 0 else { throw ValidationError("--max-tokens must be positive") }
    guard temp >= 0, temp.isFinite else { throw ValidationError("--temp must be ≥ 0") }
    guard topK >= 0 else { throw ValidationError("--top-k must be ≥ 0") }
    guard topP > 0, topP <= 1 else { throw ValidationError("--top-p must be in (0, 1]") }
  }

  func run() throws {
    try runReportingErrors {
      let (loaded, _) = try AnyModelLoader.load(path: modelPath)
      let model = loaded.model, tok = loaded.tokenizer
      let text = chat ? "<|im_start|>user\n\(prompt)<|im_end|>\n<|im_start|>assistant\n" : prompt
      var ids = try tok.encode(text, addSpecialTokens: true, parseSpecial: chat)
      guard !ids.isEmpty else { throw QoQError("the prompt is empty after tokenization") }
      let eos = Set(tok.eosTokenIds + model.config.eosTokenIds.map { Int32($0) })
      let cache = KVCache(config: model.config, capacity: ids.count + maxTokens)
      var rng = SplitMix64(seed: seed)
      let promptCount = ids.count
      var printed = ""
      let t0 = Date()
      var logits = try model.lastLogits([ids], caches: [cache])[0]
      let tPrompt = Date().timeIntervalSince(t0)
      let t1 = Date()
      var generated = 0
      for _ in 0..<maxTokens {
        let next = sample(logits, temp: Float(temp), topK: topK, topP: Float(topP), rng: &rng)
        ids.append(next)
        generated += 1
        if eos.contains(next) && !ignoreEos { break }
        let textNow = try tok.decode(Array(ids[promptCount...]), skipSpecialTokens: true)
        // Hold back an incomplete UTF-8 sequence (shown as U+FFFD at the end) until it completes.
        if !textNow.hasSuffix("\u{FFFD}"), textNow.count >= printed.count, textNow.hasPrefix(printed) {
          FileHandle.standardOutput.write(Data(String(textNow.dropFirst(printed.count)).utf8))
          printed = textNow
        }
        logits = try model.lastLogits([[next]], caches: [cache])[0]
      }
      FileHandle.standardOutput.write(Data("\n".utf8))
      let tGen = Date().timeIntervalSince(t1)
      note(String(format: "prompt: %d tokens, %.1f tokens/s | generation: %d tokens, %.1f tokens/s",
                  promptCount, Double(promptCount) / tPrompt, generated, Double(generated) / max(tGen, 1e-9)))
    }
  }
}

/// Greedy when temp == 0; otherwise softmax(logits / temp) restricted to top-k and top-p.
func sample(_ logits: [Float], temp: Float, topK: Int, topP: Float, rng: inout SplitMix64) -> Int32 {
  if temp == 0 { return Int32(logits.withUnsafeBufferPointer { argmax($0.baseAddress!, logits.count) }) }
  var idx = Array(0..<logits.count)
  idx.sort { logits[$0] > logits[$1] }
  if topK > 0 { idx = Array(idx.prefix(topK)) }
  let m = logits[idx[0]]
  var p = idx.map { expf((logits[$0] - m) / temp) }
  let z = p.reduce(0, +)
  p = p.map { $0 / z }
  var cum: Float = 0, cut = p.count
  for (i, x) in p.enumerated() { cum += x; if cum >= topP { cut = i + 1; break } }
  let total = p.prefix(cut).reduce(0, +)
  var r = Float(Double(rng.next() >> 11) / Double(1 << 53)) * total
  for i in 0..<cut { r -= p[i]; if r <= 0 { return Int32(idx[i]) } }
  return Int32(idx[cut - 1])
}

import ArgumentParser
import Foundation
import QoQEngine
import QoQEval
import QoQFormat
import QoQIO
import QoQModels

struct EvalCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "eval",
    abstract: "WikiText-2 perplexity (GPTQ protocol by default, as the QoQ/AWQ/GPTQ papers report it).")
  @OptionGroup var threadsOption: ThreadsOption

  @Option(name: [.customShort("m"), .long, .customLong("model")], help: "Hugging Face model folder or .gguf file.") var modelPath: String
  @Option(help: "Text to score (default: the bundled WikiText-2 test file, data/wikitext-2-raw/wiki.test.raw).")
  var dataset: String?
  @Option(help: "Dataset format: auto (.jsonl → jsonl; .raw or a WikiText heading → wikitext; else text), wikitext, text or jsonl.")
  var datasetFormat: String = "auto"
  @Option(help: "Window length in tokens.") var seqLen: Int = 2048
  @Option(help: "Score only the first N windows.") var maxWindows: Int?
  @Option(name: .customLong("protocol"), help: "gptq (HF rows joined by \\n\\n, full windows) or llamacpp (second half of each chunk).")
  var proto: String = "gptq"
  @Flag(help: "Print the result as JSON.") var json = false
  @Flag(help: "Run through the inference engine (integer W4A8 kernels, paged KV cache) instead of the fake-quantized model.")
  var engine = false
  @Option(help: "Engine: LM head precision (fp32, bf16, int8, int4).") var lmHead: String = "fp32"
  @Flag(help: "Engine: fp32 attention scores over the KV4 pages instead of integer (int8 query) scores.") var fpScores = false
  @Option(help: "Quantized checkpoint: the same weights with the KV cache at 4, 8 or 16 bits (16 = unquantized).")
  var kvBits: Int?
  @Option(help: "Quantized checkpoint, fake-quantized path: activations at 8 or 16 bits (16 = unquantized).")
  var actBits: Int?
  @Option(name: [.customLong("tasks"), .customLong("eval-tasks")], parsing: .upToNextOption,
          help: "Zero-shot tasks instead of perplexity: NAME=FILE.jsonl (or FILE.jsonl, named after the file); see README for the format.")
  var tasks: [String] = []
  @Option(help: "Zero-shot: requests per forward.") var batchSize: Int = 8

  func validate() throws {
    guard PerplexityProtocol(rawValue: proto) != nil else { throw ValidationError("--protocol must be gptq or llamacpp") }
    guard seqLen >= 2 else { throw ValidationError("--seq-len must be at least 2") }
    guard datasetFormat == "auto" || DatasetFormat(rawValue: datasetFormat) != nil else {
      throw ValidationError("--dataset-format must be auto, wikitext, text or jsonl")
    }
    if let m = maxWindows, m <= 0 { throw ValidationError("--max-windows must be positive") }
    guard LMHeadPrecision(rawValue: lmHead) != nil else { throw ValidationError("--lm-head must be fp32, bf16, int8 or int4") }
    if let b = kvBits, ![4, 8, 16].contains(b) { throw ValidationError("--kv-bits must be 4, 8 or 16") }
    if let b = actBits, ![8, 16].contains(b) { throw ValidationError("--act-bits must be 8 or 16") }
    if actBits != nil && engine {
      throw ValidationError("--act-bits applies to the fake-quantized path; the engine runs the checkpoint's own kernels")
    }
  }

  func runTasks() throws {
    let ckpt = try ModelCheckpoint.open(modelPath)
    if let q = ckpt.quantization { note("quantized checkpoint (\(q.method)), fake-quantized") }
    let loaded = try ckpt.loaded()
    var ev = ZeroShotEvaluator(model: loaded.model, tokenizer: loaded.tokenizer)
    ev.batchSize = max(1, batchSize)
    var results: [JSONValue] = []
    var lines: [String] = ["| task | n | acc | acc_norm | perplexity |", "|---|---|---|---|---|"]
    for spec in tasks {
      let parts = spec.split(separator: "=", maxSplits: 1).map(String.init)
      let (name, file) = parts.count == 2 ? (parts[0], parts[1]) : (URL(fileURLWithPath: spec).deletingPathExtension().lastPathComponent, spec)
      guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { throw QoQError("\(file): cannot read the task file") }
      let items = try TaskFile.parse(text, name: file)
      note("\(name): \(items.count) examples")
      let t0 = Date()
      let (r, _) = try ev.evaluate(name: name, items: items)
      lines.append("| \(name) | \(r.count) | \(String(format: "%.4f ± %.4f", r.acc, r.accStderr)) | "
                   + "\(r.accNorm.map { String(format: "%.4f", $0) } ?? "—") | \(r.perplexity.map { String(format: "%.3f", $0) } ?? "—") |")
      results.append(.object(JSONObject([("task", .string(name)), ("n", .int(r.count)), ("acc", .double(r.acc)),
                                         ("acc_stderr", .double(r.accStderr)), ("acc_norm", r.accNorm.map { .double($0) } ?? .null),
                                         ("perplexity", r.perplexity.map { .double($0) } ?? .null),
                                         ("seconds", .double(Date().timeIntervalSince(t0)))])))
    }
    if json { print(JSON.serialize(.array(results), pretty: true)) } else { print(lines.joined(separator: "\n")) }
  }

  func run() throws {
    threadsOption.apply()
    try runReportingErrors {
      if !tasks.isEmpty { try runTasks(); return }
      let p = PerplexityProtocol(rawValue: proto)!
      let dataset = try self.dataset ?? BundledData.path(.wikitext2Test, flag: "--dataset")
      let data = try EvalDataset(path: dataset, format: DatasetFormat(rawValue: datasetFormat))
      // Opened once; the engine packs the checkpoint itself, the reference path builds the (fake-quantized) model.
      var ckpt = try ModelCheckpoint.open(modelPath)
      if let b = kvBits { ckpt = try ckpt.withKVBits(b == 16 ? nil : b) }
      if let b = actBits { ckpt = try ckpt.withActBits(b == 16 ? nil : b) }
      if let q = ckpt.quantization {
        note("quantized checkpoint (\(q.method)): weights \(q.weight.map { "\($0)" } ?? "fp"), "
             + "activations \(q.actBits.map { "int\($0) per token" } ?? "fp"), KV \(q.kvBits.map { "\($0)-bit" } ?? "fp")")
      }
      let tokens = try data.tokens(ckpt.tokenizer, proto: p)
      note("evaluating \(dataset) (format \(data.format.rawValue), \(p.rawValue) protocol) with seq_len \(seqLen): \(tokens.count) tokens")
      let evaluator: PerplexityEvaluator
      if engine {
        let m = try EngineModel.load(ckpt, lmHead: LMHeadPrecision(rawValue: lmHead)!)
        let scorer = EngineScorer(model: m)
        scorer.integerScores = !fpScores
        note("engine: \(m.description)\(fpScores ? ", fp32 scores" : "")")
        evaluator = PerplexityEvaluator(scorer: scorer)
      } else {
        evaluator = PerplexityEvaluator(model: try ckpt.referenceModel())
      }
      let r = try evaluator.evaluate(
        tokens: tokens, seqLen: seqLen, maxWindows: maxWindows, proto: p, bos: ckpt.tokenizer.bosTokenId) { w, n, ppl in
        Progress.update("\(Progress.bar(w, n)) window \(w)/\(n)  ppl \(String(format: "%.4f", ppl))")
      }
      Progress.done()
      if json {
        let o = JSONObject([
          ("model", .string(modelPath)), ("dataset", .string(dataset)), ("dataset_format", .string(data.format.rawValue)),
          ("protocol", .string(p.rawValue)), ("seq_len", .int(seqLen)),
          ("path", .string(engine ? "engine" : "reference")), ("lm_head", engine ? .string(lmHead) : .null),
          ("kv_bits", ckpt.quantization.map { q in q.kvBits.map { .int($0) } ?? .int(16) } ?? .null),
          ("act_bits", ckpt.quantization.map { q in q.actBits.map { .int($0) } ?? .int(16) } ?? .null),
          ("windows", .int(r.windows)), ("windows_available", .int(r.windowsAvailable)), ("tokens", .int(r.totalTokens)),
          ("perplexity", .double(r.perplexity)), ("standard_error", .double(r.standardError)),
          ("mean_ce", .array(r.meanCE.map { .double($0) })), ("seconds", .double(r.seconds)),
        ])
        var out = o
        if !r.perplexity.isFinite {
          out["error"] = .string("the perplexity is not finite (the model produced NaN or infinite logits); it is written as null")
        }
        print(JSON.serialize(.object(out), pretty: true))
      } else {
        print("\(data.format == .wikitext ? "wikitext-2" : (dataset as NSString).lastPathComponent) \(p.rawValue) seq_len=\(seqLen) "
              + "windows=\(r.windows)/\(r.windowsAvailable): perplexity \(String(format: "%.4f", r.perplexity)) "
              + "± \(String(format: "%.4f", r.standardError))  (\(String(format: "%.1f", r.seconds)) s, "
              + "\(String(format: "%.2f", r.seconds / Double(r.windows))) s/window)")
      }
    }
  }
}

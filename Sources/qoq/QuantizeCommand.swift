import ArgumentParser
import Foundation
import QoQEval
import QoQFormat
import QoQIO
import QoQKernels
import QoQModels
import QoQQuant

struct QuantizeCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "quantize",
    abstract: "Quantize with a deepcompressor-style recipe (QoQ W4A8KV4 by default in recipes/), evaluate, save.",
    discussion: """
    qoq quantize CONFIG.yaml... -m|--model-path PATH [--save-model DIR] [--skip-eval] [--eval-max-windows N] [FLAGS]
    Configs load in order on top of recipes/__default__.yaml; every recipe field is also a flag
    (quant.smooth.proj.alpha → --smooth-proj-alpha 0.05, booleans --enable-rotation / --no-enable-rotation).
    The model is streamed a decoder layer at a time; finished layers are kept under --cache-root (default
    ~/.cache/qoq/quant-cache; none = a temporary folder) so a killed run resumes where it stopped.
    """)

  @Argument(parsing: .allUnrecognized, help: "Recipe files, then recipe flags.")
  var args: [String] = []

  func run() throws {
    try runReportingErrors {
      // --results-json PATH (not a recipe field): also write the results there (used by `qoq table`).
      var args = args
      // -t/--threads N (not a recipe field): the kernels' thread count, as in the other subcommands.
      if let k = args.firstIndex(where: { $0 == "-t" || $0 == "--threads" }) {
        guard k + 1 < args.count, let t = Int(args[k + 1]), (1...1024).contains(t) else { throw QoQError("--threads needs a count in 1…1024") }
        ThreadPool.shared.setThreads(t)
        args.removeSubrange(k...(k + 1))
      }
      var resultsPath: String?
      if let k = args.firstIndex(of: "--results-json") {
        guard k + 1 < args.count else { throw QoQError("--results-json needs a path") }
        resultsPath = args[k + 1]
        args.removeSubrange(k...(k + 1))
      }
      // --force (not a recipe field): replace a --save-model folder that qoq wrote earlier, and run even when the
      // memory estimate exceeds what is free.
      let force = args.contains("--force")
      args.removeAll { $0 == "--force" }
      // --kv-ablation (not a recipe field): also evaluate the same quantized weights with KV16 and KV8 (issue #19);
      // --kv-ablation-bits 16 (or 8) evaluates only that one.
      var kvAblation = args.contains("--kv-ablation")
      args.removeAll { $0 == "--kv-ablation" }
      var ablationBits = [16, 8]
      if let k = args.firstIndex(of: "--kv-ablation-bits") {
        guard k + 1 < args.count else { throw QoQError("--kv-ablation-bits needs 16, 8 or 16,8") }
        let bits = args[k + 1].split(separator: ",").map { Int($0) }
        guard !bits.isEmpty, bits.allSatisfy({ $0 == 16 || $0 == 8 }) else {
          throw QoQError("--kv-ablation-bits takes 16, 8 or 16,8 (got \(args[k + 1]))")
        }
        ablationBits = bits.compactMap { $0 }
        kvAblation = true
        args.removeSubrange(k...(k + 1))
      }
      // The names the other subcommands use (one grammar, issue #16): -m / --model for --model-path, --dataset and
      // --max-windows for the evaluation fields.
      let aliases = ["-m": "--model-path", "--model": "--model-path", "--dataset": "--eval-dataset",
                     "--max-windows": "--eval-max-windows"]
      args = args.map { aliases[$0] ?? $0 }
      var files: [String] = []
      var i = 0
      while i < args.count && !args[i].hasPrefix("--") { files.append(args[i]); i += 1 }
      let recipe = try Recipe.load(files: files, flags: Array(args[i...]))
      let named = try ModelName.resolve(path: try recipe.string("model.path"), name: try recipe.string("model.name"),
                                        root: try recipe.string("model.root"))
      let modelPath = try HubCache.resolve(named)  // a Hugging Face id (ORG/NAME) found in the hub cache
      guard FileManager.default.fileExists(atPath: modelPath) else { throw QoQError("model \(modelPath) does not exist") }
      let save = try recipe.string("save_model") ?? ""
      if save == "true" || save == "default" { throw QoQError("--save-model takes a folder path") }
      let skipEval = try recipe.bool("skip_eval")
      let cacheSetting = try recipe.string("cache.root") ?? ""
      let env = ProcessInfo.processInfo.environment
      // `--cache-root none` (or off) disables the cache; the recipe parser reads "none" as null, so look at the flag.
      let disabled = zip(args, args.dropFirst()).contains { $0 == "--cache-root" && ["none", "off"].contains($1.lowercased()) }
      let cacheRoot: String? = disabled || cacheSetting == "none" || cacheSetting == "off" ? nil
        : cacheSetting.isEmpty ? (env["QOQ_CACHE"] ?? (env["HOME"] ?? ".") + "/.cache/qoq") + "/quant-cache" : cacheSetting
      let pipeline = try QuantizationPipeline(modelPath: modelPath, recipe: recipe, cacheRoot: cacheRoot)
      let plan = pipeline.plan
      // Refuse bad inputs before any work: calibration file, eval dataset.
      if plan.needsCalibration && plan.calib.path.isEmpty { _ = try BundledData.path(.calibration, flag: "--calib-path") }
      if !skipEval && plan.evalDataset.isEmpty { _ = try BundledData.path(.wikitext2Test, flag: "--eval-dataset") }
      if plan.needsCalibration && !FileManager.default.fileExists(atPath: plan.calib.path) {
        throw QoQError("calibration file \(plan.calib.path) does not exist (--calib-path)")
      }
      if !skipEval && !FileManager.default.fileExists(atPath: plan.evalDataset) {
        throw QoQError("evaluation dataset \(plan.evalDataset) does not exist (--eval-dataset, or --skip-eval)")
      }
      // The save folder is checked before hours of work: never the input, never a folder qoq did not write.
      let inputs = [modelPath, plan.calib.path, plan.evalDataset]
      if !save.isEmpty { try OutputFolder.check(save, force: force, inputs: inputs) }
      // What the run will cost, before it starts; refused when it cannot fit in the memory that is free.
      let estimate = plan.estimate(try pipeline.open().config, evaluate: !skipEval)
      note(plan.stagesSummary)
      note("data: calibration "
           + (plan.needsCalibration ? "\(plan.calib.numSamples) × \(plan.calib.seqLength) tokens from \(plan.calib.path)" : "none")
           + "; evaluation: "
           + (skipEval ? "skipped"
                       : "\(plan.evalWindows > 0 ? "\(plan.evalWindows)" : "all") windows × \(plan.evalSeqLen) of \(plan.evalDataset)"))
      note(estimate.summary)
      if let free = availableMemoryBytes(), estimate.peakBytes > free {
        let msg = "the run needs about \(String(format: "%.1f", Double(estimate.peakBytes) / 1e9)) GB but "
          + "\(String(format: "%.1f", Double(free) / 1e9)) GB is free"
        if !force { throw QoQError(msg + "; pass --force to run anyway") }
        note("warning: " + msg + " (--force)")
      }
      pipeline.log = { note($0) }
      pipeline.progress = { stage, done, total in
        Progress.update("\(Progress.bar(done, total)) \(stage) layer \(done)/\(total)"); if done == total { Progress.done() }
      }
      let t0 = Date()
      let out = try pipeline.run()
      let wall = Date().timeIntervalSince(t0)
      note(String(format: "quantized in %.1f s (peak RSS %.2f GB)", wall, peakRSSGB()))
      var results = JSONObject([("model", .string(modelPath)), ("quantize_seconds", .double(wall)),
                                ("peak_rss_gb", .double(peakRSSGB())),
                                ("stages", .object(JSONObject(pipeline.timings.map { ($0.0, .double($0.1)) })))])
      results["quantization"] = out.quantization.json
      let yaml = try recipe.yaml()
      // The checkpoint: into --save-model (built beside it, renamed into place), else a temporary folder.
      var evalFolder: String
      if !save.isEmpty {
        let resultsFile = { Data(JSON.serialize(.object(results), pretty: true).utf8) }
        try OutputFolder.write(save, force: force, inputs: inputs, command: "quantize") { tmp in
          try out.write(into: tmp, recipeYAML: yaml, extraFiles: [("results.json", resultsFile())])
        }
        note("saved \(save) (recipe.yaml and results.json beside the weights)")
        evalFolder = save
      } else {
        evalFolder = skipEval ? "" : try out.checkpoint()
      }
      if !skipEval {
        // Evaluated from the checkpoint itself, as `qoq eval` would load it.
        let ckpt = try ModelCheckpoint.open(evalFolder)
        let data = try EvalDataset(path: plan.evalDataset)
        note("evaluating \(plan.evalDataset) (format \(data.format.rawValue), gptq protocol)")
        let tokens = try data.tokens(out.tokenizer, proto: .gptq)
        func evaluate(_ q: QuantizationConfig, _ label: String) throws -> PerplexityResult {
          let r = try PerplexityEvaluator(model: try q.fakeQuantModel(config: ckpt.config, weights: ckpt.weights))
            .evaluate(tokens: tokens, seqLen: plan.evalSeqLen, maxWindows: plan.evalWindows > 0 ? plan.evalWindows : nil) { w, n, ppl in
              Progress.update("\(Progress.bar(w, n)) evaluating\(label) window \(w)/\(n)  ppl \(String(format: "%.4f", ppl))")
            }
          Progress.done()
          let ppl = String(format: "%.4f", r.perplexity)
          print("wikitext-2 gptq seq_len=\(r.seqLen) windows=\(r.windows)/\(r.windowsAvailable)\(label): perplexity \(ppl)")
          return r
        }
        let r = try evaluate(out.quantization, "")
        results["wikitext2_ppl"] = .double(r.perplexity)
        results["eval_windows"] = .int(r.windows)
        results["eval_seq_len"] = .int(r.seqLen)
        // The KV cost as one number: the same weights and activations with the KV cache at 16 and 8 bits.
        if kvAblation, let kb = out.quantization.kvBits {
          var ab = JSONObject()
          for bits in ablationBits where bits > kb {
            var q = out.quantization
            q.kvBits = bits == 16 ? nil : bits
            q.kvStaticScales = nil
            ab["kv\(bits)"] = .double(try evaluate(q, " (same weights, KV\(bits))").perplexity)
          }
          results["kv_ablation"] = .object(ab)
        }
        if !save.isEmpty { try atomicWrite(save + "/results.json", data: Data(JSON.serialize(.object(results), pretty: true).utf8)) }
      }
      if let rp = resultsPath {
        results["recipe"] = .string(yaml)
        try atomicWrite(rp, data: Data(JSON.serialize(.object(results), pretty: true).utf8))
        results["recipe"] = nil
      }
      if save.isEmpty {
        let dir = (try recipe.string("output.root") ?? "runs") + "/quantize-"
          + ISO8601DateFormatter().string(from: Date()).replacingOccurrences(of: ":", with: "")
        try OutputFolder.createFolder(dir)
        try atomicWrite(dir + "/recipe.yaml", data: Data(yaml.utf8))
        try atomicWrite(dir + "/results.json", data: Data(JSON.serialize(.object(results), pretty: true).utf8))
        note("resolved recipe and results in \(dir)")
      }
      print(JSON.serialize(.object(results)))
    }
  }
}

/// Peak resident memory of this process (VmHWM), in GiB; 0 where /proc is unavailable.
func peakRSSGB() -> Double { procStatusGiB("VmHWM:") }

/// Resident memory now (VmRSS), in GiB.
func currentRSSGB() -> Double { procStatusGiB("VmRSS:") }

func procStatusGiB(_ field: String) -> Double {
  guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
  for line in s.split(separator: "\n") where line.hasPrefix(field) {
    // "VmHWM:\t  123456 kB": the number may follow a tab directly, so split on any whitespace.
    let kb = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { Double($0) }.first ?? 0
    return kb / 1_048_576
  }
  return 0
}

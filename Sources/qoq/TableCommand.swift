import ArgumentParser
import Foundation
import QoQIO
import QoQModels

/// `qoq table`: the paper's accuracy table on one model — each recipe quantized and evaluated by `qoq quantize` in its
/// own process (memory returns to the system between recipes), the FP model by `qoq eval`; results are kept per recipe
/// and reused when the resolved recipe has not changed, so an interrupted table resumes.
struct TableCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "table",
    abstract: "Run several recipes on one model and write the accuracy table (method, precision, WikiText-2 perplexity) as Markdown and JSON.")

  @Option(name: [.customShort("m"), .long, .customLong("model")], help: "Hugging Face model folder, .gguf or ORG/NAME.")
  var modelPath: String
  @Option(name: .long, parsing: .upToNextOption,
          help: "Recipe files, one row each; A.yaml+B.yaml loads B on top of A for that row (e.g. recipes/kv-g64.yaml).")
  var recipes: [String]
  @Option(help: "Folder for per-recipe results, table.md and table.json.") var output: String = "runs/table"
  @Option(name: [.long, .customLong("max-windows")], help: "Windows of 2048 tokens to score (0 = all).")
  var evalMaxWindows: Int = 8
  @Option(name: [.long, .customLong("dataset")], help: "Evaluation text (default: the bundled WikiText-2 test file).")
  var evalDataset: String?
  @Option(help: "Calibration text or token-id file (default: the bundled WikiText-2 validation text).") var calibPath: String?
  @Flag(help: "KV-only ablation: each recipe with a quantized KV cache also gets rows for the same weights with KV16 and KV8.")
  var kvAblation = false
  @Option(parsing: .remaining, help: "Extra flags passed to every `qoq quantize` (after --).") var extra: [String] = []

  func validate() throws {
    guard !recipes.isEmpty else { throw ValidationError("--recipes needs at least one recipe file") }
    for spec in recipes {
      for r in spec.split(separator: "+").map(String.init) where !FileManager.default.fileExists(atPath: r) {
        throw ValidationError("recipe \(r) does not exist")
      }
    }
    guard evalMaxWindows >= 0 else { throw ValidationError("--eval-max-windows must be ≥ 0") }
  }

  /// Method label of a recipe file (the seed table's names).
  static func method(_ file: String) -> String {
    let n = URL(fileURLWithPath: file).deletingPathExtension().lastPathComponent
    if n.hasPrefix("qoq") { return "QoQ" }
    if n.hasPrefix("awq") { return "AWQ" }
    if n.hasPrefix("gptq") { return "GPTQ-R" }
    if n.hasPrefix("smoothquant") { return "SmoothQuant" }
    if n.hasPrefix("quarot") { return "QuaRot-like (rotation + GPTQ)" }
    if n.hasPrefix("rtn") { return "RTN" }
    return n
  }

  /// Precision label from a checkpoint's quantization_config: W4A8KV4 g64, W4A16 g128, W8A8KV8…
  static func precision(_ q: JSONValue?) -> String {
    guard let q else { return "?" }
    var s = "W\(q["weight"]?["bits"]?.int ?? 16)A\(q["activation"]?["bits"]?.int ?? 16)"
    if let kv = q["kv_cache"]?["bits"]?.int { s += "KV\(kv)" }
    if let g = q["weight"]?["group_size"]?.int { s += g > 0 ? " g\(g)" : " per-channel" }
    return s
  }

  func runSelf(_ args: [String], log: String) throws -> Int32 {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: CommandLine.arguments[0]).standardizedFileURL.path.hasPrefix("/")
      ? URL(fileURLWithPath: CommandLine.arguments[0])
      : URL(fileURLWithPath: FileManager.default.currentDirectoryPath + "/" + CommandLine.arguments[0])
    p.arguments = args
    FileManager.default.createFile(atPath: log, contents: nil)
    let h = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
    p.standardError = h
    p.standardOutput = h
    try p.run()
    p.waitUntilExit()
    try h.close()
    return p.terminationStatus
  }

  func run() throws {
    try runReportingErrors {
      // Refused before the output folder is claimed: a model that is neither a path nor in the hub cache.
      guard FileManager.default.fileExists(atPath: try HubCache.resolve(modelPath)) else { throw QoQError("model \(modelPath) does not exist") }
      let evalDataset = try self.evalDataset ?? BundledData.path(.wikitext2Test, flag: "--eval-dataset")
      let calibPath = try self.calibPath ?? BundledData.path(.calibration, flag: "--calib-path")
      try OutputFolder.claim(output, inputs: [modelPath, evalDataset, calibPath] + recipes, command: "table")
      var rows: [(method: String, precision: String, recipe: String, ppl: Double?, seconds: Double?)] = []
      // FP row.
      let fpPath = output + "/fp.json"
      if !FileManager.default.fileExists(atPath: fpPath) {
        note("FP model: qoq eval")
        var a = ["eval", "-m", modelPath, "--dataset", evalDataset, "--json"]
        if evalMaxWindows > 0 { a += ["--max-windows", "\(evalMaxWindows)"] }
        let status = try runSelf(a, log: output + "/fp.log")
        guard status == 0, let text = try? String(contentsOfFile: output + "/fp.log", encoding: .utf8),
              let start = text.firstIndex(of: "{") else { throw QoQError("FP evaluation failed; see \(output)/fp.log") }
        try atomicWrite(fpPath, data: Data(text[start...].utf8))
      }
      let fp = try JSON.parseFile(fpPath)
      rows.append(("FP", "FP32", "—", fp["perplexity"]?.double, nil))
      for spec in recipes {
        let files = spec.split(separator: "+").map(String.init)
        let r = files[0]
        let name = files.map { URL(fileURLWithPath: $0).deletingPathExtension().lastPathComponent }.joined(separator: "+")
        let res = output + "/\(name).json"
        let recipeText = files.map { (try? String(contentsOfFile: $0, encoding: .utf8)) ?? "" }.joined(separator: "\n---\n")
        let stamp = output + "/\(name).recipe-source"
        let flags = extra + (kvAblation ? ["--kv-ablation"] : [])
        let fresh = FileManager.default.fileExists(atPath: res)
          && (try? String(contentsOfFile: stamp, encoding: .utf8)) == recipeText + flags.joined(separator: " ")
        if fresh {
          note("\(name): already computed (\(res))")
        } else {
          note("\(name): qoq quantize \(r) (log: \(output)/\(name).log)")
          var a = ["quantize"] + files + ["--model-path", modelPath, "--calib-path", calibPath, "--eval-dataset", evalDataset,
                   "--eval-max-windows", "\(evalMaxWindows)", "--results-json", res]
          a += flags
          let status = try runSelf(a, log: output + "/\(name).log")
          guard status == 0, FileManager.default.fileExists(atPath: res) else {
            note("\(name): failed (exit \(status)); see \(output)/\(name).log")
            rows.append((Self.method(r), "?", name, nil, nil))
            continue
          }
          try atomicWrite(stamp, data: Data((recipeText + flags.joined(separator: " ")).utf8))
        }
        let j = try JSON.parseFile(res)
        rows.append((Self.method(r), Self.precision(j["quantization"]), name, j["wikitext2_ppl"]?.double, j["quantize_seconds"]?.double))
        // KV ablation rows: the same quantized weights, the KV cache at 16 and 8 bits (precision label rewritten).
        let precision = Self.precision(j["quantization"])
        for bits in [16, 8] {
          guard let ppl = j["kv_ablation"]?["kv\(bits)"]?.double,
                let kv = precision.range(of: #"KV\d+"#, options: .regularExpression) else { continue }
          rows.append((Self.method(r), precision.replacingCharacters(in: kv, with: "KV\(bits)") + " (same weights)", name, ppl, nil))
        }
      }
      var md = "| method | precision | recipe | WikiText-2 PPL (GPTQ protocol, 2048, "
        + "\(evalMaxWindows > 0 ? "\(evalMaxWindows) windows" : "all windows")) | quantize time |\n|---|---|---|---|---|\n"
      for row in rows {
        md += "| \(row.method) | \(row.precision) | \(row.recipe) | \(row.ppl.map { String(format: "%.4f", $0) } ?? "failed") | "
          + "\(row.seconds.map { String(format: "%.1f min", $0 / 60) } ?? "—") |\n"
      }
      let json: JSONValue = .array(rows.map { row in
        .object(JSONObject([("method", .string(row.method)), ("precision", .string(row.precision)), ("recipe", .string(row.recipe)),
                            ("wikitext2_ppl", row.ppl.map { .double($0) } ?? .null), ("quantize_seconds", row.seconds.map { .double($0) } ?? .null)]))
      })
      try atomicWrite(output + "/table.md", data: Data(md.utf8))
      try atomicWrite(output + "/table.json", data: Data(JSON.serialize(json, pretty: true).utf8))
      print(md, terminator: "")
    }
  }
}

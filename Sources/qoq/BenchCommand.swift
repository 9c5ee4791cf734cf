import ArgumentParser
import Foundation
import QoQEngine
import QoQFormat
import QoQIO
import QoQKernels
import QoQModels

struct BenchCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "bench",
    abstract: "Benchmarks: FP kernels and model (default), W4A8 kernels vs measured ceilings (--kernels), the engine (--engine).")
  @OptionGroup var threadsOption: ThreadsOption

  @Option(name: [.customShort("m"), .long, .customLong("model")], help: "Model folder or .gguf (omit to run kernel benchmarks only).")
  var modelPath: String?
  @Option(help: "Repetitions (median is reported).") var repeats: Int = 5
  @Option(name: .customLong("pp"), help: "Prompt length for the prefill test.") var promptTokens: Int = 512
  @Option(name: .customLong("tg"), help: "Tokens for the decode test.") var genTokens: Int = 32
  @Flag(help: "JSON output.") var json = false
  @Flag(help: "Also measure this machine's synthetic FP32 FMA peak (one thread).") var peak = false
  @Flag(help: "W4A8 kernels: GEMV against read bandwidth, GEMM against the VNNI peak (SmolLM2 and Llama-3-8B shapes).")
  var kernels = false
  @Flag(help: "Engine benchmarks on -m: pp/tg (llama-bench style) and QServe's throughput protocol over --batches.")
  var engine = false
  @Flag(help: "Engine: also time each phase of a batch-1 decode of --tg tokens (ms per step; the pool's wait for its workers beside).")
  var profile = false
  @Option(help: "QServe protocol: prompt tokens per request (random ids).") var inputLen: Int = 128
  @Option(help: "QServe protocol: generated tokens per request.") var outputLen: Int = 64
  @Option(help: "QServe protocol: batch sizes to sweep (comma-separated).") var batches: String = "1,2,4,8,16,32"
  @OptionGroup var engineArgs: EngineArguments

  func median(_ xs: [Double]) -> Double { let s = xs.sorted(); return s[s.count / 2] }

  func run() throws {
    threadsOption.apply()
    try runReportingErrors {
      var rows: [(String, Double, String)] = []
      rows.append(("threads", Double(ThreadPool.shared.threads), "count"))
      if kernels || engine {
        if kernels { rows += KernelBench.rows(repeats: repeats).map { ($0.test, $0.value, $0.unit) } }
        if engine {
          guard let path = modelPath else { throw QoQError("--engine needs -m MODEL") }
          let bs = batches.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
          guard bs.allSatisfy({ $0 > 0 }), inputLen > 0, outputLen > 0 else {
            throw QoQError("--batches, --input-len and --output-len must be positive")
          }
          let (m, _) = try engineArgs.loadModel(path)
          note("engine: \(m.description)")
          rows += try EngineBench.rows(m, engineArgs, pp: promptTokens, tg: genTokens, input: inputLen, output: outputLen,
                                       batches: bs, repeats: repeats).map { ($0.test, $0.value, $0.unit) }
          if profile { rows += try EngineBench.profileRows(m, engineArgs, tg: genTokens).map { ($0.test, $0.value, $0.unit) } }
        }
        emit(rows)
        return
      }
      if peak { rows.append(("fp32 fma peak (1 thread)", [measureFMAPeak(), measureFMAPeak(), measureFMAPeak()].sorted()[1], "GFLOPS")) }
      for (m, n, k) in [(512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048), (2048, 1536, 576), (2048, 576, 1536)] {
        var a = [Float](repeating: 0, count: m * k), c = [Float](repeating: 0, count: m * n)
        for i in 0..<a.count { a[i] = Float(i % 7) * 0.1 - 0.3 }
        let w = (0..<(n * k)).map { Float($0 % 5) * 0.1 - 0.2 }
        let p = PackedMatrix(nk: w, n: n, k: k)
        var times: [Double] = []
        for _ in 0..<(repeats + 1) {
          let t = Date()
          a.withUnsafeBufferPointer { ap in
            c.withUnsafeMutableBufferPointer { sgemm(m: m, a: ap.baseAddress!, lda: k, b: p, c: $0.baseAddress!, ldc: n) }
          }
          times.append(Date().timeIntervalSince(t))
        }
        let gf = 2.0 * Double(m * n * k) / median(Array(times.dropFirst())) / 1e9
        rows.append(("sgemm \(m)x\(n)x\(k)", gf, "GFLOPS"))
        let pb = w.withUnsafeBufferPointer { PackedMatrixBF16(nk: $0.baseAddress!, n: n, k: k) }
        var tb: [Double] = []
        for _ in 0..<(repeats + 1) {
          let t = Date()
          a.withUnsafeBufferPointer { ap in
            c.withUnsafeMutableBufferPointer { bgemm(m: m, a: ap.baseAddress!, lda: k, b: pb, c: $0.baseAddress!, ldc: n) }
          }
          tb.append(Date().timeIntervalSince(t))
        }
        rows.append(("bf16 gemm \(m)x\(n)x\(k)", 2.0 * Double(m * n * k) / median(Array(tb.dropFirst())) / 1e9, "GFLOPS"))
      }
      if let path = modelPath {
        let model = try ModelCheckpoint.open(path).referenceModel()
        let V = model.config.vocabSize
        let prompt = (0..<promptTokens).map { Int32(($0 * 7919 + 13) % V) }
        var pp: [Double] = []
        for _ in 0..<max(1, repeats / 2) {
          let cache = KVCache(config: model.config, capacity: promptTokens + genTokens)
          let t = Date()
          _ = try model.lastLogits([prompt], caches: [cache])
          pp.append(Double(promptTokens) / Date().timeIntervalSince(t))
        }
        rows.append(("prefill pp\(promptTokens)", median(pp), "tokens/s"))
        let cache = KVCache(config: model.config, capacity: promptTokens + genTokens)
        _ = try model.lastLogits([Array(prompt.prefix(16))], caches: [cache])
        let t = Date()
        for i in 0..<genTokens { _ = try model.lastLogits([[Int32((i * 31) % V)]], caches: [cache]) }
        rows.append(("decode tg\(genTokens)", Double(genTokens) / Date().timeIntervalSince(t), "tokens/s"))
      }
      emit(rows)
    }
  }

  func emit(_ rows: [(String, Double, String)]) {
    if json {
      print(JSON.serialize(.array(rows.map { .object(JSONObject([("test", .string($0.0)), ("value", .double($0.1)),
                                                                 ("unit", .string($0.2))])) }), pretty: true))
    } else {
      print("| test | value | unit |\n|---|---|---|")
      for r in rows { print("| \(r.0) | \(String(format: "%.1f", r.1)) | \(r.2) |") }
    }
  }
}

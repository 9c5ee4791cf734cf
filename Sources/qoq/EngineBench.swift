// `qoq bench --kernels` and `qoq bench --engine`: the W4A8 kernels against the machine's measured ceilings, and the
// engine under llama-bench's pp/tg tests and QServe's throughput protocol (qserve.md §5.6, §8.5).
import Foundation
import QoQEngine
import QoQIO
import QoQKernels
import QoQScheduler

typealias BenchRow = (test: String, value: Double, unit: String)

func medianOf(_ xs: [Double]) -> Double { let s = xs.sorted(); return s[s.count / 2] }

/// Kernel rows and their ceilings are all best-of-N samples: this is a shared VM whose neighbours take cycles and
/// bandwidth at random, and the best sample is the one least disturbed, for numerator and denominator alike.
enum KernelBench {
  /// Random progressive W4A8 weights of shape n × k (group 128, or 64 where 128 does not divide).
  static func weights(_ n: Int, _ k: Int) -> PackedW4A8 {
    let g = k % 128 == 0 ? 128 : 64
    var rng = SplitMix64(seed: UInt64(n * k))
    let codes = (0..<(n * k)).map { _ in UInt8(rng.int(16)) }
    let ng = n * k / g
    return PackedW4A8(progressiveCodes: codes, s2: (0..<ng).map { _ in Float(1 + rng.int(8)) }, z: (0..<ng).map { _ in Float(rng.int(100)) },
                      s1: [Float](repeating: 0.01, count: n), n: n, k: k, group: g)
  }

  static func rows(repeats: Int) -> [BenchRow] {
    var rows: [BenchRow] = []
    let threads = ThreadPool.shared.threads
    let bw = measureReadBandwidth()
    rows.append(("read bandwidth (\(threads) threads, 1 GiB)", bw, "GB/s"))
    let peak1 = [measureVNNIPeak(), measureVNNIPeak(), measureVNNIPeak()].max()!
    let peaks = UnsafeMutablePointer<Double>.allocate(capacity: threads); defer { peaks.deallocate() }
    peaks.initialize(repeating: 0, count: threads)
    var peakAll = 0.0
    for _ in 0..<3 {
      ThreadPool.shared.run(parts: threads) { t in peaks[t] = measureVNNIPeak() }
      peakAll = max(peakAll, (0..<threads).reduce(0) { $0 + peaks[$1] })
    }
    rows.append(("int8 peak (1 thread, \(kernelISA))", peak1, "GOPS"))
    rows.append(("int8 peak (\(threads) threads)", peakAll, "GOPS"))
    // GEMV (decode, M = 1): bytes of codes + group parameters streamed per call.
    let shapes: [(String, Int, Int)] = [("SmolLM2 gate_up", 3072, 576), ("SmolLM2 down", 576, 1536),
                                        ("Llama-3-8B qkv", 6144, 4096), ("Llama-3-8B o", 4096, 4096),
                                        ("Llama-3-8B gate_up", 28672, 4096), ("Llama-3-8B down", 4096, 14336)]
    for (name, n, k) in shapes {
      // Enough copies of the matrix to exceed any cache (≥ 512 MB), used in turn like a model's layers, so the GEMV
      // row measures streaming from memory, not from L3.
      let one = weights(n, k)
      let bytesOne = n * k / 2 + n * (k / one.group) * 8
      let ws = [one] + (1..<max(1, (512 << 20) / bytesOne)).map { _ in one.duplicate() }
      let w = one
      let a = QuantizedRows(capacity: 128, k: k)
      var rng = SplitMix64(seed: 3)
      for r in 0..<128 { a.setRow(r, codes: (0..<k).map { _ in Int8(rng.int(255) - 127) }, scale: 0.01) }
      let y = UnsafeMutablePointer<Float>.allocate(capacity: 128 * n); defer { y.deallocate() }
      let bytes = Double(n * k / 2 + n * (k / w.group) * 8 + n * 4)
      a.m = 1
      var ts: [Double] = []
      for _ in 0..<(repeats + 1) {
        let t = Date()
        for wi in ws { wi.forward(a, y, ldy: n) }
        ts.append(Date().timeIntervalSince(t) / Double(ws.count))
      }
      let gbs = bytes / Array(ts.dropFirst()).min()! / 1e9
      rows.append(("w4a8 gemv \(name) \(n)x\(k)", gbs, "GB/s (\(String(format: "%.0f", 100 * gbs / bw))% of read bw)"))
      for m in [32, 128] where k >= 1024 || m == 32 {
        a.m = m
        var tg: [Double] = []
        let calls = max(1, Int(2e9 / (2 * Double(m * n * k))))  // ~1 s of work per sample at ~1 TOPS
        for _ in 0..<(repeats + 1) {
          let t = Date()
          for _ in 0..<calls { w.forward(a, y, ldy: n) }
          tg.append(Date().timeIntervalSince(t) / Double(calls))
        }
        let gops = 2 * Double(m * n * k) / Array(tg.dropFirst()).min()! / 1e9
        rows.append(("w4a8 gemm M=\(m) \(name) \(n)x\(k)", gops, "GOPS (\(String(format: "%.0f", 100 * gops / peakAll))% of int8 peak)"))
      }
    }
    return rows
  }
}

enum EngineBench {
  static func randomPrompt(_ n: Int, vocab: Int, seed: UInt64) -> [Int32] {
    var rng = SplitMix64(seed: seed)
    return (0..<n).map { _ in Int32(rng.int(vocab)) }
  }

  /// Runs B requests of `input` random ids, `output` tokens each (no stop checks); returns (seconds, generated).
  static func run(_ model: EngineModel, _ args: EngineArguments, batch: Int, input: Int, output: Int,
                  policy: SchedulerPolicy, maxBatched: Int) throws -> (Double, Int) {
    var o = args.options
    o.policy = policy; o.maxNumSeqs = batch; o.maxBatchedTokens = maxBatched
    let pages = (input + output + o.pageSize - 1) / o.pageSize
    o.numBlocks = max(o.numBlocks ?? 0, batch * (pages + 1))
    let e = try Engine(model: model, tokenizer: nil, options: o)
    var p = SamplingParams(); p.maxTokens = output
    for b in 0..<batch { try e.add(prompt: randomPrompt(input, vocab: model.config.vocabSize, seed: UInt64(b + 1)), params: p, ignoreEOS: true) }
    var generated = 0
    let t = Date()
    while e.hasUnfinished { for ev in try e.step() { if case .token = ev { generated += 1 } } }
    return (Date().timeIntervalSince(t), generated)
  }

  /// Batch-1 decode of `tg` tokens with the step profile on: ms per step for each phase, their sum, and the time the
  /// calling thread waited for the pool's workers inside the GEMM and attention phases (issue #18 item 4).
  static func profileRows(_ model: EngineModel, _ args: EngineArguments, tg: Int) throws -> [BenchRow] {
    let prof = model.profile, pool = ThreadPool.shared
    _ = try run(model, args, batch: 1, input: 1, output: 2, policy: .chunked, maxBatched: args.maxNumBatchedTokens)
    prof.reset(); pool.resetWait()
    prof.enabled = true; pool.measureWait = true
    defer { prof.enabled = false; pool.measureWait = false }
    _ = try run(model, args, batch: 1, input: 1, output: tg, policy: .chunked, maxBatched: args.maxNumBatchedTokens)
    let steps = Double(max(1, prof.steps))
    let total = Double(prof.nanos.reduce(0, +)) / steps / 1e6
    var rows: [BenchRow] = []
    for p in StepProfile.Phase.allCases {
      let ms = Double(prof.nanos[p.rawValue]) / steps / 1e6
      rows.append(("profile decode: \(p.name)", ms, String(format: "ms/step (%.1f%%)", 100 * ms / max(total, 1e-12))))
    }
    rows.append(("profile decode: step total (\(Int(steps)) steps)", total, "ms/step"))
    let wait = Double(pool.waitNanos) / steps / 1e6
    rows.append(("profile decode: of which waiting for workers", wait, String(format: "ms/step (%.1f%%)", 100 * wait / max(total, 1e-12))))
    return rows
  }

  static func rows(_ model: EngineModel, _ args: EngineArguments, pp: Int, tg: Int, input: Int, output: Int,
                   batches: [Int], repeats: Int) throws -> [BenchRow] {
    var rows: [BenchRow] = []
    // One untimed warm-up step first (llama-bench warms up too): page faults, thread wake-up, first-touch buffers.
    _ = try run(model, args, batch: 1, input: min(pp, 64), output: 2, policy: .chunked, maxBatched: max(pp, args.maxNumBatchedTokens))
    // llama-bench pp: one prompt of pp random tokens in one step.
    var pps: [Double] = []
    for _ in 0..<max(1, repeats / 2) {
      let (s, _) = try run(model, args, batch: 1, input: pp, output: 1, policy: .chunked, maxBatched: max(pp, args.maxNumBatchedTokens))
      pps.append(Double(pp) / s)
    }
    rows.append(("engine pp\(pp)", medianOf(pps), "tokens/s"))
    // llama-bench tg: tg tokens one at a time from an (almost) empty cache.
    var tgs: [Double] = []
    for _ in 0..<max(1, repeats / 2) {
      let (s, n) = try run(model, args, batch: 1, input: 1, output: tg, policy: .chunked, maxBatched: args.maxNumBatchedTokens)
      tgs.append(Double(n) / s)
    }
    rows.append(("engine tg\(tg)", medianOf(tgs), "tokens/s"))
    // QServe protocol: B × output over the total time of one B × input prefill step and the decode steps.
    var best = (0.0, 0)
    for b in batches {
      let (s, n) = try run(model, args, batch: b, input: input, output: output, policy: .qserveV0, maxBatched: b * input)
      let tput = Double(n) / s
      rows.append(("engine qserve B=\(b) in=\(input) out=\(output)", tput, "tokens/s"))
      if tput > best.0 { best = (tput, b) }
    }
    if !batches.isEmpty { rows.append(("engine qserve best (B=\(best.1))", best.0, "tokens/s")) }
    return rows
  }
}

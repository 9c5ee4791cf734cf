// What a `qoq quantize` run will cost, printed before the long work starts (issue #12, item 6), and the refusal when
// the memory estimate exceeds what the machine has free (`--force` overrides). The streaming pipeline holds one
// decoder layer (fp32 in the store, its packed copy for the calibration pass, codes), the calibration activations
// between layers, one chunk's captures and GPTQ's Hessians; the embedding and head phases hold one vocab × hidden
// table. Evaluation inside `quantize` loads the whole fake-quantized model (fp32) beside nothing else.
import Foundation
import QoQModels

public struct RunEstimate: Sendable, Equatable {
  /// Parameters of the model (embeddings and head included).
  public var parameters: Int
  /// Estimated peak resident memory, bytes.
  public var peakBytes: Int
  /// Estimated wall time, seconds (order of magnitude: FLOPs at an assumed 30 GFLOPS per core).
  public var seconds: Double

  public var summary: String {
    "estimate: \(String(format: "%.2f", Double(parameters) / 1e9)) B parameters, peak memory ≈ "
      + "\(String(format: "%.1f", Double(peakBytes) / 1e9)) GB, time ≈ \(RunEstimate.duration(seconds))"
  }

  static func duration(_ s: Double) -> String {
    s < 120 ? String(format: "%.0f s", s) : s < 7200 ? String(format: "%.0f min", s / 60) : String(format: "%.1f h", s / 3600)
  }
}

extension QuantPlan {
  /// Bytes per parameter of the layer being processed: fp32 in the store, the calibration pass's packed fp32 copy
  /// (when calibration runs), the codes and the dequantized weights (measured on Llama-3-8B/70B-shaped layers).
  public static let layerBytesPerParameter = 12
  public static let layerBytesPerParameterRTN = 6
  /// Evaluation builds the whole fake-quantized fp32 model.
  public static let evalBytesPerParameter = 4

  /// The estimate for this recipe on a model of `c`; `evaluate` adds the evaluation pass; `cores` the threads.
  public func estimate(_ c: LlamaConfiguration, evaluate: Bool, cores: Int = ProcessInfo.processInfo.activeProcessorCount) -> RunEstimate {
    let h = c.hiddenSize, f = c.intermediateSize, L = c.numHiddenLayers
    // An MoE layer holds every expert's MLP and the router (E × H).
    let perLayer = h * (c.qDim + 2 * c.kvDim) + c.qDim * h + 3 * h * f * (c.numLocalExperts ?? 1) + (c.numLocalExperts ?? 0) * h
    let table = c.vocabSize * h
    let params = L * perLayer + table * (c.tieWordEmbeddings ? 1 : 2)
    let tokens = needsCalibration ? calib.numSamples * calib.seqLength : 0
    // Activations between layers (fp32 or bf16; a second stream for static KV ranges), one chunk of 4 sequences' captures
    // (inputs, outputs, the widest intermediate), GPTQ's Hessians (Double) of the widest linear input.
    let streams = kvStatic ? 2 : 1
    let between = tokens * h * (calibActivationsBF16 ? 2 : 4) * streams
    let layerBytes = tokens > 0 ? Self.layerBytesPerParameter : Self.layerBytesPerParameterRTN
    let captures = tokens > 0 ? min(4, calib.numSamples) * calib.seqLength * (3 * h + f) * 4 : 0
    var layerPhase = layerBytes * perLayer + captures
    if gptq != nil { layerPhase += 2 * max(h, f) * max(h, f) * 8 }
    // An MoE layer accumulates every expert's two input Hessians (fp32) in its one calibration pass.
    if gptq != nil, let e = c.numLocalExperts { layerPhase += e * (h * h + f * f) * 4 }
    // The searches hold their sequences' attention inputs and FP outputs (fp32, hidden wide; AWQ: every module input).
    var searchSeqs = 0
    if smoothAttn?.strategy == .gridSearch { searchSeqs = max(searchSeqs, sequences(smoothAttnSamples)) }
    let keyGrid = scaleKeysSearch && scalesKeys(c)
    if keyGrid { searchSeqs = max(searchSeqs, sequences(scaleKeysSamples)) }
    if weightFormat != nil, clipStrategy == .gridSearch, !clipProducts { searchSeqs = max(searchSeqs, sequences(clipSamples)) }
    if tokens > 0 { layerPhase += searchSeqs * calib.seqLength * h * 4 * 2 }
    if smoothProjAlphas != nil, tokens > 0 { layerPhase += sequences(smoothProjSamples) * calib.seqLength * (3 * h + f) * 4 }
    // The embedding phase: the table in fp32 and the samples' rows; the head phase: the table alone.
    let peakQuantize = max(table * 4 + between, layerPhase + between)
    let peakEval = evaluate ? Self.evalBytesPerParameter * params : 0
    let peak = max(peakQuantize, peakEval) + (256 << 20)
    // FLOPs: the calibration passes (two forwards when GPTQ runs), GPTQ's updates (2·out·in² per linear), evaluation.
    var flops = Double(tokens) * 2 * Double(L * perLayer) * (gptq != nil ? 2 : 1)
    // An MoE layer's weight range search first counts each expert's routed rows in a pass of its own.
    if c.numLocalExperts != nil, weightFormat != nil, clipStrategy == .gridSearch { flops += Double(tokens) * 2 * Double(L * perLayer) }
    if gptq != nil {
      let linears = Double(h) * Double(h) * Double(c.qDim + 2 * c.kvDim) + Double(c.qDim) * Double(c.qDim) * Double(h)
        + 2 * Double(h) * Double(h) * Double(f) + Double(f) * Double(f) * Double(h)
      flops += 2 * Double(L) * linears
    }
    // The OutputsError searches re-run the layer's attention (or its linears, for AWQ) once per candidate over the
    // sequences their sample_size names: all of them by default, as deepcompressor does.
    let seqLen = Double(calib.seqLength)
    let attnPerToken = 2 * Double(h * (c.qDim + 2 * c.kvDim) + c.qDim * h) + 2 * Double(c.qDim) * seqLen
    if let sa = smoothAttn, sa.strategy == .gridSearch, tokens > 0 {
      let cands = Double(SmoothStage.alphaBetaCandidates(alpha: sa.alpha, beta: sa.beta, grids: sa.grids).count)
      flops += Double(L) * cands * Double(sequences(smoothAttnSamples)) * seqLen * attnPerToken
    }
    if keyGrid, tokens > 0 {
      flops += Double(L) * Double(Self.keyScaleExponents.count + 1) * Double(sequences(scaleKeysSamples)) * seqLen * attnPerToken
    }
    if weightFormat != nil, clipStrategy == .gridSearch, !clipProducts, tokens > 0 {
      flops += Double(L) * 2 * Double(clipNumGrids + 1) * Double(sequences(clipSamples)) * seqLen * attnPerToken
    }
    if let alphas = smoothProjAlphas, tokens > 0 {
      flops += Double(L) * Double(alphas.count) * Double(sequences(smoothProjSamples)) * seqLen * 2 * Double(perLayer)
    }
    if evaluate {
      let windows = evalWindows > 0 ? evalWindows : 140  // WikiText-2 test ≈ 140 windows of 2048 for Llama-like tokenizers
      flops += Double(windows * evalSeqLen) * 2 * Double(params)
    }
    // GPTQ's inverse of each input's Hessian (Double, blocked and threaded: Cholesky then triangular inverse): n³ per
    // distinct input (qkv, o, gate/up, down) at ~8e9 n³-units per second per core; the sgemm-bound passes at ~70
    // GFLOPS per core. Fitted on Zen 4 (AVX-512, 2 cores): QoQ g128 on Qwen2.5-1.5B at 64 × 1024 tokens took 122 s
    // per layer (it was ~270 s at 16 × 1024 on Zen 2 with the unblocked scalar inverse, most of it the n = 8960
    // inverse).
    let cubic = gptq == nil ? 0 : Double(L) * (2 * pow(Double(h), 3) + pow(Double(c.qDim), 3) + pow(Double(f), 3))
    // Plus loading, converting and quantizing every weight: ~30 ns per parameter on one core (measured with RTN).
    // AWQ's grid search also scales, quantizes and dequantizes every weight of the layer once per α candidate (with
    // the candidate's module forwards counted above): fitted at ~200 ns per weight and candidate on one core from
    // AWQ g128 on Qwen2.5-1.5B (Xeon, AVX-512, 128 × 512: 156 s per layer; Zen 3, AVX2, 32 × 512: 138 s per layer),
    // where the FLOP model alone printed 41 and 25 min for runs of ~75 and ~65 min.
    let awqWeights = smoothProjAlphas.map { Double(L) * Double(perLayer) * Double($0.count) * 2e-7 } ?? 0
    let seconds = (flops / 70e9 + cubic / 8e9 + Double(params) * 3e-8 + awqWeights) / Double(max(1, cores))
    return RunEstimate(parameters: params, peakBytes: peak, seconds: seconds)
  }
}

/// Memory the system can give this process now (MemAvailable), bytes; nil where /proc/meminfo is unreadable.
public func availableMemoryBytes() -> Int? {
  guard let s = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) else { return nil }
  for line in s.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
    if let kb = line.split(separator: " ").compactMap({ Int($0) }).first { return kb * 1024 }
  }
  return nil
}

extension QuantPlan {
  /// The stages this plan runs, in order, for the line `qoq quantize` prints before any work (issue #16). Key
  /// centering and rotation are shown as set; `auto` resolves per model when the run starts.
  public var stagesSummary: String {
    // The objective's sequences as the run will use them: "all 128 seq" (sample_size -1) or "4 of 128 seq".
    func seqNote(_ chosen: Int) -> String {
      chosen > 0 && chosen < calib.numSamples ? "\(chosen) of \(calib.numSamples) seq" : "all \(calib.numSamples) seq"
    }
    var s: [String] = []
    if let r = rotation { s.append("Hadamard rotation\(r.random ? " (random)" : "")\(r.transforms.contains("out_proj") ? " + V/O per head" : "")") }
    if reorder { s.append("reorder") }
    if let a = smoothAttn {
      let how = a.strategy == .manual ? " α \(a.alpha)" : " (\(seqNote(smoothAttnSamples)))"
      s.append("SmoothAttention \(a.strategy.rawValue)\(how)")
    }
    if let p = smoothProj {
      let how = smoothProjAlphas != nil ? "GridSearch (\(seqNote(smoothProjSamples)))" : "Manual α \(p.alpha) β \(p.beta)"
      s.append("SmoothLinear \(how) on \(smoothProjKeys.sorted().joined(separator: ","))")
    }
    if weightFormat != nil, clipStrategy == .gridSearch {
      // ProductsError (AWQ) and QoQ's non-q/k modules judge on a 512-token subsample; q/k on whole sequences.
      s.append("weight range GridSearch (\(clipNumGrids) grids, \(clipProducts ? "512-token subsample" : seqNote(clipSamples)))")
    }
    if let w = weightFormat { s.append((gptq != nil ? "GPTQ " : "RTN ") + "weights \(w)") }
    s.append("activations " + (actBits.map { "int\($0) per token" } ?? "fp"))
    var kv = kvBits.map { "KV\($0)\(kvGroup.map { " g\($0)" } ?? "")\(kvStatic ? " static" : "")" } ?? "KV fp"
    if kvBits != nil {
      let search = scaleKeysSearch ? " (exponent GridSearch)" : ""
      kv += ", keys centered: \(centerKeys.rawValue), scaled: \(scaleKeys.rawValue)\(search), rotated: \(rotateKeys.rawValue)"
    }
    s.append(kv)
    return "plan: " + s.joined(separator: " → ")
  }
}

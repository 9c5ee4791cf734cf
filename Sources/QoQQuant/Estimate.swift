// What a `qoq quantize` run will cost, printed before the long work starts (issue #12, item 6), and the refusal when
// the memory estimate exceeds what the machine has free (`--force` overrides). The pipeline holds the model as fp32
// (the store), its quantized codes, the calibration activations of one layer, GPTQ's Hessians and a fake-quantized
// model for evaluation: about nine bytes per parameter on SmolLM2 and Qwen2 (measured peak RSS), plus activations.
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
  /// Bytes per parameter the pipeline holds at its peak without evaluation (fp32 store, codes and scales, the
  /// conversion of the source): measured 5.6–6.3 on Llama-3-8B-shaped models of 2 and 6 layers (RTN W4A16 g128);
  /// evaluation builds a fake-quantized fp32 model beside it (`evalBytesPerParameter` more).
  public static let bytesPerParameter = 6
  public static let evalBytesPerParameter = 4

  /// The estimate for this recipe on a model of `c`; `evaluate` adds the evaluation pass; `cores` the threads.
  public func estimate(_ c: LlamaConfiguration, evaluate: Bool, cores: Int = ProcessInfo.processInfo.activeProcessorCount) -> RunEstimate {
    let h = c.hiddenSize, f = c.intermediateSize, L = c.numHiddenLayers
    let perLayer = h * (c.qDim + 2 * c.kvDim) + c.qDim * h + 3 * h * f
    let embed = c.vocabSize * h * (c.tieWordEmbeddings ? 1 : 2)
    let params = L * perLayer + embed
    let tokens = needsCalibration ? calib.numSamples * calib.seqLength : 0
    // One layer's calibration activations (inputs, outputs, the widest intermediate) in fp32, and GPTQ's Hessians
    // (Double) of the widest linear input when GPTQ runs.
    var activations = tokens * (3 * h + f) * 4
    if gptq != nil { activations += 2 * max(h, f) * max(h, f) * 8 }
    let peak = (Self.bytesPerParameter + (evaluate ? Self.evalBytesPerParameter : 0)) * params + activations + (256 << 20)
    // FLOPs: the calibration passes (two forwards when GPTQ runs), GPTQ's updates (2·out·in² per linear), evaluation.
    var flops = Double(tokens) * 2 * Double(L * perLayer) * (gptq != nil ? 2 : 1)
    if gptq != nil {
      let linears = Double(h) * Double(h) * Double(c.qDim + 2 * c.kvDim) + Double(c.qDim) * Double(c.qDim) * Double(h)
        + 2 * Double(h) * Double(h) * Double(f) + Double(f) * Double(f) * Double(h)
      flops += 2 * Double(L) * linears
    }
    if evaluate {
      let windows = evalWindows > 0 ? evalWindows : 140  // WikiText-2 test ≈ 140 windows of 2048 for Llama-like tokenizers
      flops += Double(windows * evalSeqLen) * 2 * Double(params)
    }
    // Plus loading, converting and quantizing every weight: ~30 ns per parameter on one core (measured with RTN).
    let seconds = (flops / 30e9 + Double(params) * 3e-8) / Double(max(1, cores))
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

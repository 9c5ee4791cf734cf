// Random-weight checkpoints with real model shapes (issue #12): what memory and speed are measured on when no such
// model can be downloaded. Tensors are generated one at a time from a fixed seed and streamed into sharded bf16 (or
// f32) safetensors, so writing an 8B or 70B shape needs one shard of memory. Like real LLMs, a few hidden channels
// carry large activations: the RMSNorm weights of those channels are scaled up (`outlierScale`), which makes the
// q/k/v and gate/up inputs have outlier channels (what SmoothQuant/QoQ smoothing exists for).
import Foundation
import QoQIO
import QoQTokenizers

public enum SyntheticShape: String, CaseIterable, Sendable {
  case tiny, llama3_8b = "llama3-8b", llama3_70b = "llama3-70b"

  public func config(layers: Int?) throws -> LlamaConfiguration {
    switch self {
    case .tiny:
      return try LlamaConfiguration(modelType: "llama", hiddenSize: 128, intermediateSize: 256, numHiddenLayers: layers ?? 2,
                                    numAttentionHeads: 4, numKeyValueHeads: 2, rmsNormEps: 1e-5, ropeTheta: 500_000,
                                    maxPositionEmbeddings: 8192, vocabSize: 512, bosTokenId: nil, eosTokenIds: [])
    case .llama3_8b:
      return try LlamaConfiguration(modelType: "llama", hiddenSize: 4096, intermediateSize: 14336, numHiddenLayers: layers ?? 32,
                                    numAttentionHeads: 32, numKeyValueHeads: 8, rmsNormEps: 1e-5, ropeTheta: 500_000,
                                    maxPositionEmbeddings: 8192, vocabSize: 128_256, bosTokenId: nil, eosTokenIds: [])
    case .llama3_70b:
      return try LlamaConfiguration(modelType: "llama", hiddenSize: 8192, intermediateSize: 28672, numHiddenLayers: layers ?? 80,
                                    numAttentionHeads: 64, numKeyValueHeads: 8, rmsNormEps: 1e-5, ropeTheta: 500_000,
                                    maxPositionEmbeddings: 8192, vocabSize: 128_256, bosTokenId: nil, eosTokenIds: [])
    }
  }
}

public struct SyntheticCheckpoint {
  public var config: LlamaConfiguration
  public var seed: UInt64 = 0
  public var dtype: DType = .BF16
  public var outlierChannels = 4
  public var outlierScale: Float = 20
  public var maxShardBytes = 2 << 30

  public init(config: LlamaConfiguration) { self.config = config }

  /// The hidden channels that carry outliers (fixed by the seed).
  public var outliers: [Int] {
    var rng = SplitMix64(seed: seed ^ 0x0DD5)
    var set: [Int] = []
    while set.count < min(outlierChannels, config.hiddenSize) {
      let c = rng.int(config.hiddenSize)
      if !set.contains(c) { set.append(c) }
    }
    return set.sorted()
  }

  /// One tensor's values: uniform with standard deviation 1/√fan_in (norms: 1 ± 0.1, outlier channels scaled).
  public func values(_ name: String) -> [Float] {
    let shape = tensorShape(name, config)
    let n = shape.reduce(1, *)
    var h: UInt64 = 0xCBF2_9CE4_8422_2325
    for b in name.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
    var rng = SplitMix64(seed: seed ^ h)
    if name.hasSuffix("norm.weight") {
      var v = (0..<n).map { _ in 1 + 0.1 * (Float(rng.next() >> 40) / Float(1 << 23) - 1) }
      if name.hasSuffix("layernorm.weight") { for c in outliers { v[c] *= outlierScale } }
      return v
    }
    let fanIn = shape.count == 2 ? shape[1] : 1
    let a = Float(3).squareRoot() / Float(fanIn).squareRoot()
    return (0..<n).map { _ in (Float(rng.next() >> 40) / Float(1 << 23) - 1) * a }
  }

  /// Writes config.json, a byte-level tokenizer (256 byte tokens; ids beyond decode to nothing) and the sharded
  /// weights into `folder` (a temporary folder of OutputFolder.write).
  public func write(to folder: String, progress: ((Int, Int, String) -> Void)? = nil) throws {
    let writer = ShardedSafeTensorsWriter(folder: folder, maxShardBytes: maxShardBytes,
                                          metadata: ["format": "pt", "qoq_synthetic_seed": String(seed)])
    let names = expectedTensorNames(config)
    for (i, name) in names.enumerated() {
      progress?(i, names.count, name)
      let v = values(name)
      let data: Data = dtype == .BF16 ? v.map { f32ToBF16($0).littleEndian }.withUnsafeBytes { Data($0) } : v.withUnsafeBytes { Data($0) }
      try writer.add(TensorBlob(name: name, dtype: dtype, shape: tensorShape(name, config), data: data))
    }
    try writer.finish()
    var c = config
    c.torchDtype = dtype == .BF16 ? "bfloat16" : "float32"
    try atomicWrite(folder + "/config.json", data: try c.jsonData())
    try atomicWrite(folder + "/tokenizer.json", data: Data(JSON.serialize(Tokenizer.byteLevelJSON()).utf8))
  }
}

import Foundation
import QoQIO
import QoQModels

/// Deterministic pseudo-random floats (SplitMix64), in [-scale, scale).
public func randomFloats(_ n: Int, seed: UInt64, scale: Float = 1) -> [Float] {
  var rng = SplitMix64(seed: seed)
  return (0..<n).map { _ in (Float(rng.next() >> 40) / Float(1 << 23) - 1) * scale }
}

/// An in-memory checkpoint keyed by HF tensor names.
public final class MemoryWeights: WeightSource {
  public var tensors: [String: ([Int], [Float])]
  public init(_ t: [String: ([Int], [Float])]) { tensors = t }
  public var tensorNames: [String] { tensors.keys.sorted() }
  public func shape(_ name: String) throws -> [Int] {
    guard let t = tensors[name] else { throw QoQError("missing \(name)") }
    return t.0
  }
  public func floats(_ name: String) throws -> [Float] {
    guard let t = tensors[name] else { throw QoQError("missing \(name)") }
    return t.1
  }
}

public enum TinyFamily: String, CaseIterable, CustomStringConvertible, Sendable {
  case llamaGQA, llama3Scaled, mistral, qwen2Tied
  public var description: String { rawValue }

  public func config() throws -> LlamaConfiguration {
    switch self {
    case .llamaGQA:
      return try LlamaConfiguration(modelType: "llama", hiddenSize: 64, intermediateSize: 96, numHiddenLayers: 2,
                                    numAttentionHeads: 4, numKeyValueHeads: 2, rmsNormEps: 1e-5, ropeTheta: 10000, vocabSize: 100)
    case .llama3Scaled:
      return try LlamaConfiguration(modelType: "llama", hiddenSize: 48, intermediateSize: 80, numHiddenLayers: 2,
                                    numAttentionHeads: 3, numKeyValueHeads: 1, headDim: 16, rmsNormEps: 1e-5, ropeTheta: 500000,
                                    ropeScaling: RopeScaling(factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 16),
                                    vocabSize: 97)
    case .mistral:
      return try LlamaConfiguration(modelType: "mistral", hiddenSize: 64, intermediateSize: 128, numHiddenLayers: 3,
                                    numAttentionHeads: 8, numKeyValueHeads: 2, rmsNormEps: 1e-6, ropeTheta: 1e6, vocabSize: 120)
    case .qwen2Tied:
      return try LlamaConfiguration(modelType: "qwen2", hiddenSize: 32, intermediateSize: 64, numHiddenLayers: 2,
                                    numAttentionHeads: 4, numKeyValueHeads: 4, rmsNormEps: 1e-6, ropeTheta: 1e6,
                                    vocabSize: 90, tieWordEmbeddings: true)
    }
  }

  public func weights(seed: UInt64 = 7) throws -> MemoryWeights {
    let c = try config()
    var t: [String: ([Int], [Float])] = [:]
    var s = seed
    for name in expectedTensorNames(c) {
      let shape = tensorShape(name, c)
      let n = shape.reduce(1, *)
      s &+= 1
      if name.hasSuffix("norm.weight") {
        t[name] = (shape, randomFloats(n, seed: s, scale: 0.2).map { 1 + $0 })
      } else {
        let fanIn = shape.count == 2 ? shape[1] : 16
        t[name] = (shape, randomFloats(n, seed: s, scale: 1.5 / Float(fanIn).squareRoot()))
      }
    }
    return MemoryWeights(t)
  }

  public func model() throws -> LlamaModel { try LlamaModel(config: config(), weights: weights()) }
}

/// Tiny random Mixtral models (kept out of TinyFamily, whose tests iterate dense families). `experts` per layer,
/// `topK` per token, optional sliding window.
public enum TinyMixtral {
  /// Defaults: head_dim 32 (the engine's smallest), hidden 48 and FFN 40, widths the SIMD loops do not divide (the
  /// engine needs multiples of 32: pass 64 and 64); a vocabulary of 70 (calibration through the tiny tokenizer, whose
  /// ids reach ~260, needs 300).
  public static func config(experts: Int = 4, topK: Int = 2, slidingWindow: Int? = nil, hidden: Int = 48,
                            intermediate: Int = 40, vocab: Int = 70) throws -> LlamaConfiguration {
    try LlamaConfiguration(modelType: "mixtral", hiddenSize: hidden, intermediateSize: intermediate, numHiddenLayers: 2, numAttentionHeads: 4,
                           numKeyValueHeads: 2, headDim: 32, rmsNormEps: 1e-5, ropeTheta: 1e6, vocabSize: vocab, slidingWindow: slidingWindow,
                           numLocalExperts: experts, numExpertsPerTok: topK)
  }

  /// Weights for `c` by HF name, as TinyFamily.weights: norms near 1, linears scaled by 1/√fan-in; the router ×4 so
  /// that tokens prefer different experts clearly.
  public static func weights(_ c: LlamaConfiguration, seed: UInt64 = 7) -> MemoryWeights {
    var t: [String: ([Int], [Float])] = [:]
    var s = seed
    for name in expectedTensorNames(c) {
      let shape = tensorShape(name, c), n = shape.reduce(1, *)
      s &+= 1
      if name.hasSuffix("norm.weight") { t[name] = (shape, randomFloats(n, seed: s, scale: 0.2).map { 1 + $0 }); continue }
      let scale = (name.hasSuffix("block_sparse_moe.gate.weight") ? 6 : 1.5) / Float(shape[1]).squareRoot()
      t[name] = (shape, randomFloats(n, seed: s, scale: scale))
    }
    return MemoryWeights(t)
  }
}

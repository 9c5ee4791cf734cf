import Foundation
import Testing
@testable import QoQIO
@testable import QoQModels
@testable import QoQQuant
@testable import QoQFormat
import QoQTestSupport

let fixturesRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
  .appendingPathComponent("Fixtures").path

func int8Bytes(_ x: [Int8]) -> [UInt8] { x.map { UInt8(bitPattern: $0) } }

@Suite struct HadamardTests {
  /// Our constructions equal deepcompressor's H_k tables entry for entry (sha256 fingerprints of the tables,
  /// made by scripts/fixtures/hadamard_constructions.py --verify against the reference tables).
  @Test(arguments: [12, 20, 28, 36, 40, 60, 108, 140])
  func tablesMatchDeepcompressor(_ k: Int) throws {
    let fp = try JSON.parseFile(fixturesRoot + "/hadamard/fingerprints.json")
    let h = try #require(Hadamard.special(k))
    #expect(Hadamard.isHadamard(h, k))
    #expect(sha256Hex(int8Bytes(h)) == fp["k"]![String(k)]!["sha256_table"]!.string!)
  }

  @Test func unavailableOrdersAreReported() {
    #expect(Hadamard.special(52) == nil && Hadamard.special(156) == nil && Hadamard.special(172) == nil)
    #expect(throws: QoQError.self) { _ = try HadamardRotation(size: 52 * 16) }
    #expect(throws: QoQError.self) { _ = try HadamardRotation(size: 100) }
  }

  /// The residual rotation R for the hidden sizes of supported models has deepcompressor's sign pattern
  /// kron(H_kᵀ, Sylvester(2^m)) and scale 1/√n, and is orthonormal.
  @Test(arguments: [576, 896, 1536, 2048, 3072, 5120])
  func rotationMatchesDeepcompressor(_ n: Int) throws {
    let fp = try JSON.parseFile(fixturesRoot + "/hadamard/fingerprints.json")["n"]![String(n)]!
    let r = try HadamardRotation(size: n)
    #expect(r.k == fp["k"]!.int!)
    let m = r.matrix()
    let scale = fp["scale_f64"]!.double!
    let signs: [UInt8] = m.map { $0 > 0 ? 1 : 0xFF }
    #expect(sha256Hex(signs) == fp["sha256_sign_pattern"]!.string!)
    var worst = 0.0
    for v in m { worst = max(worst, abs(abs(v) - scale)) }
    #expect(worst < 1e-15)
    #expect(fp["first_row"]!.array!.map { $0.double! } == Array(m[0..<n]).map { $0 / scale }.map { $0.rounded() })
    // Orthonormal: a few rows are unit length and mutually orthogonal.
    for (i, j) in [(0, 1), (5, n - 1), (n / 2, 3)] {
      var d = 0.0, ni = 0.0
      for t in 0..<n { d += m[i * n + t] * m[j * n + t]; ni += m[i * n + t] * m[i * n + t] }
      #expect(abs(d) < 1e-12 && abs(ni - 1) < 1e-12)
    }
  }
}

/// Relative L2 between two logit sets.
func relDiff(_ a: [[Float]], _ b: [[Float]]) -> Double {
  var num = 0.0, den = 0.0
  for (x, y) in zip(a, b) { for i in 0..<x.count { num += Double(x[i] - y[i]) * Double(x[i] - y[i]); den += Double(y[i]) * Double(y[i]) } }
  return (num / den).squareRoot()
}

func logitsAll(_ m: LlamaModel, _ tokens: [Int32]) throws -> [[Float]] {
  let h = try m.forward([tokens], caches: [KVCache(config: m.config)])
  let l = h.withUnsafeBufferPointer { m.logits($0.baseAddress!, rows: tokens.count) }
  let V = m.config.vocabSize
  return (0..<tokens.count).map { Array(l[($0 * V)..<(($0 + 1) * V)]) }
}

/// Tiny models whose widths have Hadamard matrices: hidden 48 = 12·4, 40 = 20·2, 64; head_dim 16/8.
enum RotatableTiny {
  static func configs() throws -> [(String, LlamaConfiguration)] {
    [
      ("llama-gqa", try LlamaConfiguration(modelType: "llama", hiddenSize: 64, intermediateSize: 96, numHiddenLayers: 2,
                                           numAttentionHeads: 4, numKeyValueHeads: 2, rmsNormEps: 1e-5, vocabSize: 100)),
      ("llama-48", try LlamaConfiguration(modelType: "llama", hiddenSize: 48, intermediateSize: 80, numHiddenLayers: 2,
                                          numAttentionHeads: 3, numKeyValueHeads: 1, headDim: 16, vocabSize: 97)),
      ("mistral", try LlamaConfiguration(modelType: "mistral", hiddenSize: 64, intermediateSize: 128, numHiddenLayers: 2,
                                         numAttentionHeads: 8, numKeyValueHeads: 2, vocabSize: 120)),
      ("qwen2-tied-40", try LlamaConfiguration(modelType: "qwen2", hiddenSize: 40, intermediateSize: 64, numHiddenLayers: 2,
                                               numAttentionHeads: 5, numKeyValueHeads: 5, vocabSize: 90, tieWordEmbeddings: true)),
    ]
  }

  static func store(_ c: LlamaConfiguration, seed: UInt64 = 3) throws -> WeightStore {
    var t: [String: ([Int], [Float])] = [:]
    var s = seed
    for name in expectedTensorNames(c) {
      let shape = tensorShape(name, c), n = shape.reduce(1, *)
      s &+= 1
      if name.hasSuffix("norm.weight") { t[name] = (shape, randomFloats(n, seed: s, scale: 0.3).map { 1 + $0 }) }
      else { t[name] = (shape, randomFloats(n, seed: s, scale: 1.5 / Float(shape.count == 2 ? shape[1] : 16).squareRoot())) }
    }
    return try WeightStore(config: c, source: MemoryWeights(t))
  }
}

@Suite struct RotationStageTests {
  static let tokens: [Int32] = [3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 9, 32]

  @Test func rotationPreservesLogits() throws {
    for (name, c) in try RotatableTiny.configs() {
      let s = try RotatableTiny.store(c)
      let before = try logitsAll(try s.model(), Self.tokens)
      for random in [false, true] {
        let r = try RotatableTiny.store(c)
        var o = RotationOptions(); o.random = random
        try RotationStage.apply(r, options: o)
        #expect(!r.config.tieWordEmbeddings)
        #expect(r["model.layers.0.input_layernorm.weight"].allSatisfy { $0 == 1 } && r["model.norm.weight"].allSatisfy { $0 == 1 })
        let after = try logitsAll(try r.model(), Self.tokens)
        #expect(relDiff(after, before) < 1e-5, "\(name) random=\(random): \(relDiff(after, before))")
      }
    }
  }
}

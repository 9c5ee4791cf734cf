import Foundation
import Testing
@testable import QoQIO
@testable import QoQModels
import QoQTestSupport

func relL2(_ a: [Float], _ b: [Double]) -> Double {
  var num = 0.0, den = 0.0
  for i in 0..<a.count { num += (Double(a[i]) - b[i]) * (Double(a[i]) - b[i]); den += b[i] * b[i] }
  return (num / max(den, 1e-30)).squareRoot()
}

@Suite struct TinyModelTests {
  static let prompt: [Int32] = [5, 17, 3, 88, 42, 42, 9, 1, 63, 20, 11]

  /// Logits of every position equal the plain Double-precision reference forward.
  @Test(arguments: TinyFamily.allCases)
  func matchesScalarReference(_ f: TinyFamily) throws {
    let c = try f.config(), w = try f.weights()
    let model = try LlamaModel(config: c, weights: w)
    let ref = try referenceLogits(w, c, tokens: Self.prompt)
    let hidden = try model.forward([Self.prompt], caches: [KVCache(config: c)])
    let logits = hidden.withUnsafeBufferPointer { model.logits($0.baseAddress!, rows: Self.prompt.count) }
    for i in 0..<Self.prompt.count {
      let row = Array(logits[(i * c.vocabSize)..<((i + 1) * c.vocabSize)])
      #expect(relL2(row, ref[i]) < 1e-5, "\(f) position \(i): rel L2 \(relL2(row, ref[i]))")
    }
  }

  /// Prefill in one go, token by token with the cache, and in uneven chunks give the same logits.
  @Test(arguments: TinyFamily.allCases)
  func cacheEqualsNoCache(_ f: TinyFamily) throws {
    let model = try f.model()
    let c = model.config
    let full = try model.forward([Self.prompt], caches: [KVCache(config: c, capacity: 1)])
    let all = full.withUnsafeBufferPointer { model.logits($0.baseAddress!, rows: Self.prompt.count) }
    let cache = KVCache(config: c, capacity: 2)  // forces growth
    var stepped: [Float] = []
    for t in Self.prompt { stepped += try model.lastLogits([[t]], caches: [cache])[0] }
    #expect(stepped == all, "\(f): token-by-token differs from full prefill")
    let chunked = KVCache(config: c)
    _ = try model.forward([Array(Self.prompt[0..<4])], caches: [chunked])
    let last = try model.lastLogits([Array(Self.prompt[4...])], caches: [chunked])[0]
    #expect(last == Array(all.suffix(c.vocabSize)), "\(f): chunked prefill differs")
  }

  /// A sequence's logits do not depend on the other sequences in its batch.
  @Test(arguments: TinyFamily.allCases)
  func batchInvariance(_ f: TinyFamily) throws {
    let model = try f.model()
    let c = model.config
    let seqs: [[Int32]] = [Self.prompt, [7, 7, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17], [30]]
    let batched = try model.lastLogits(seqs, caches: seqs.map { _ in KVCache(config: c) })
    for (i, s) in seqs.enumerated() {
      let alone = try model.lastLogits([s], caches: [KVCache(config: c)])[0]
      #expect(alone == batched[i], "\(f): sequence \(i) depends on its batch")
    }
    // Decode steps batched across sequences of different lengths.
    let caches = seqs.map { _ in KVCache(config: c) }
    _ = try model.forward(seqs, caches: caches)
    let step = try model.lastLogits(seqs.map { _ in [Int32(3)] }, caches: caches)
    let solo = KVCache(config: c)
    _ = try model.forward([seqs[2]], caches: [solo])
    #expect(try model.lastLogits([[3]], caches: [solo])[0] == step[2])
  }

  @Test func rejectsBadTokensAndWeights() throws {
    let f = TinyFamily.llamaGQA
    let model = try f.model()
    #expect(throws: QoQError.self) { _ = try model.forward([[100]], caches: [KVCache(config: model.config)]) }
    #expect(throws: QoQError.self) { _ = try model.forward([[-1]], caches: [KVCache(config: model.config)]) }
    let c = try f.config()
    var failures: [String] = []
    let w1 = try f.weights(); w1.tensors.removeValue(forKey: "model.layers.1.mlp.up_proj.weight")
    if let e = expectError("missing", "missing tensor", { _ = try LlamaModel(config: c, weights: w1) }) { failures.append(e) }
    let w2 = try f.weights(); w2.tensors["model.layers.0.extra.weight"] = ([1], [0])
    if let e = expectError("unexpected", "unexpected tensor", { _ = try LlamaModel(config: c, weights: w2) }) { failures.append(e) }
    let w3 = try f.weights(); w3.tensors["model.norm.weight"] = ([3], [1, 1, 1])
    if let e = expectError("shape", "wrong shape", { _ = try LlamaModel(config: c, weights: w3) }) { failures.append(e) }
    let w4 = try f.weights(); w4.tensors["model.rotary_emb.inv_freq"] = ([2], [1, 1])  // ignorable junk loads
    _ = try LlamaModel(config: c, weights: w4)
    #expect(failures.isEmpty, "\(failures)")
  }
}

func expectError(_ needle: String, _ label: String, _ body: () throws -> Void) -> String? {
  do { try body() } catch let e as QoQError {
    return e.message.localizedCaseInsensitiveContains(needle) ? nil : "\(label): \"\(e.message)\" lacks \"\(needle)\""
  } catch { return "\(label): unexpected \(error)" }
  return "\(label): no error"
}

@Suite struct FP16EmulatedLinearTests {
  /// Hand-computed: weights and inputs round to fp16 before the product, the output rounds after it (ties to even).
  /// w = [1 + 2⁻¹², 3] → [1, 3]; x = [2049, 1] → [2048, 1] (fp16 spacing is 2 above 2048); y = 2051 → 2052 (the tie
  /// between 2050 and 2052 goes to the even mantissa). Bias 0.1 → 0.0999755859375 before it is added.
  @Test func roundsWeightsInputsAndOutputsToFP16() {
    let l = FP16EmulatedLinear(weight: [1 + 1.0 / 4096, 3], outFeatures: 1, inFeatures: 2)
    var y: [Float] = [0]
    let x: [Float] = [2049, 1]
    x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { l.forward(xp.baseAddress!, rows: 1, $0.baseAddress!) } }
    #expect(y == [2052])
    // The fp32 product would be 2049 · (1 + 2⁻¹²) + 3 ≈ 2052.5; a small case with a bias and two rows.
    let b = FP16EmulatedLinear(weight: [0.5, 0.25], outFeatures: 1, inFeatures: 2, bias: [0.1])
    var z: [Float] = [0, 0]
    let xs: [Float] = [1, 1, 2, 4]
    xs.withUnsafeBufferPointer { xp in z.withUnsafeMutableBufferPointer { b.forward(xp.baseAddress!, rows: 2, $0.baseAddress!) } }
    #expect(z == [Float(Float16(Float(Float16(0.1)) + 0.75)), Float(Float16(Float(Float16(0.1)) + 2))])
    #expect(z[0] == 0.85009765625 && z[1] == 2.099609375)
  }
}

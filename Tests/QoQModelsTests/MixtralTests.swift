import Foundation
import Testing
@testable import QoQIO
@testable import QoQModels
import QoQTestSupport

let mixtralFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
  .appendingPathComponent("Fixtures/mixtral").path

/// Mixtral (issue #14): the sparse MoE block against transformers' MixtralForCausalLM, the same weights read from
/// llama.cpp's GGUF layout, the Double-precision reference, and the cache and batch invariances.
@Suite struct MixtralTests {
  static let prompt: [Int32] = [5, 17, 3, 60, 42, 42, 9, 1, 63, 20, 11, 33, 2]
  static let shapes: [(experts: Int, topK: Int, window: Int?)] = [(4, 2, nil), (3, 1, nil), (8, 3, 32), (5, 5, nil)]

  func logits(_ model: LlamaModel, _ tokens: [Int32]) throws -> [Float] {
    let hidden = try model.forward([tokens], caches: [KVCache(config: model.config)])
    return hidden.withUnsafeBufferPointer { model.logits($0.baseAddress!, rows: tokens.count) }
  }

  /// Logits of every position equal the plain Double-precision reference forward (router, top-k, renormalisation).
  @Test(arguments: 0..<4)
  func matchesScalarReference(_ i: Int) throws {
    let s = Self.shapes[i]
    let c = try TinyMixtral.config(experts: s.experts, topK: s.topK, slidingWindow: s.window), w = TinyMixtral.weights(c)
    let model = try LlamaModel(config: c, weights: w)
    let ref = try referenceLogits(w, c, tokens: Self.prompt)
    let out = try logits(model, Self.prompt)
    for p in 0..<Self.prompt.count {
      let row = Array(out[(p * c.vocabSize)..<((p + 1) * c.vocabSize)])
      #expect(relL2(row, ref[p]) < 1e-5, "\(s) position \(p): rel L2 \(relL2(row, ref[p]))")
    }
  }

  /// The tokens of the prompt do not all go to the same experts (else the tests above would not test routing).
  @Test func tokensSpreadOverExperts() throws {
    let c = try TinyMixtral.config(), model = try LlamaModel(config: c, weights: TinyMixtral.weights(c))
    let x = try model.embed([Self.prompt], caches: [KVCache(config: c)])
    let routes = x.withUnsafeBufferPointer { model.layers[0].moe!.route($0.baseAddress!, rows: Self.prompt.count) }
    #expect(Set(routes.map(\.expert)).count == 4)
    for r in 0..<Self.prompt.count {
      let w = routes[(2 * r)..<(2 * r + 2)].map(\.weight)
      #expect(abs(w.reduce(0, +) - 1) < 1e-6 && w[0] >= w[1])
    }
  }

  /// Prefill at once, token by token and in chunks give the same bits; a sequence's logits do not depend on its batch.
  @Test func cacheAndBatchInvariance() throws {
    let c = try TinyMixtral.config(experts: 8, topK: 3), model = try LlamaModel(config: c, weights: TinyMixtral.weights(c))
    let all = try logits(model, Self.prompt)
    let cache = KVCache(config: c, capacity: 2)
    var stepped: [Float] = []
    for t in Self.prompt { stepped += try model.lastLogits([[t]], caches: [cache])[0] }
    #expect(stepped == all)
    let seqs: [[Int32]] = [Self.prompt, [7, 7, 7], [30], Array(Self.prompt.reversed())]
    let batched = try model.lastLogits(seqs, caches: seqs.map { _ in KVCache(config: c) })
    for (i, s) in seqs.enumerated() { #expect(try model.lastLogits([s], caches: [KVCache(config: c)])[0] == batched[i]) }
  }

  /// transformers' logits for tiny random Mixtral checkpoints (scripts/fixtures/make_mixtral_fixtures.py), read from
  /// the HF folder and from the GGUF gguf-py wrote of the same weights (merged 3-D experts, permuted Q/K).
  @Test(arguments: ["e4k2", "e3k1", "e8k3_sw"])
  func matchesTransformers(_ name: String) throws {
    let dir = mixtralFixtures + "/" + name
    let exp = try JSON.parseFile(dir + "/expected.json")
    let tokens = try #require(exp["tokens"]?.array).map { Int32($0.int!) }
    let want = try #require(exp["logits"]?.array).map { $0.double! }
    let c = try LlamaConfiguration.load(path: dir + "/config.json")
    #expect(c.isMoE && c.modelType == "mixtral")
    let hf = try LlamaModel(config: c, weights: try CheckpointWeights(folder: dir))
    let fromHF = try logits(hf, tokens)
    #expect(relL2(fromHF, want) < 1e-5, "\(name) HF: rel L2 \(relL2(fromHF, want))")
    // transformers' own top-k of layer 0 (a hook on its router) equals ours, set for set.
    var x = try hf.embed([tokens], caches: [KVCache(config: c)])
    let cap = LayerCapture([.mlpInput])
    try hf.runLayer(0, x: &x, lengths: [tokens.count], caches: [KVCache(config: c)], capture: cap)
    let routes = cap[.mlpInput].withUnsafeBufferPointer { hf.layers[0].moe!.route($0.baseAddress!, rows: tokens.count) }
    let theirs = try #require(exp["layer0_topk"]?.array).map { Set($0.array!.map { $0.int! }) }
    let k = c.numExpertsPerTok
    for r in 0..<tokens.count { #expect(Set(routes[(r * k)..<((r + 1) * k)].map { Int($0.expert) }) == theirs[r], "\(name) token \(r)") }
    let g = try GGUFWeights(path: dir + "/model.gguf")
    #expect(g.config.modelType == "mixtral" && g.config.numLocalExperts == c.numLocalExperts && g.config.numExpertsPerTok == c.numExpertsPerTok)
    let fromGGUF = try logits(try LlamaModel(config: g.config, weights: g), tokens)
    #expect(relL2(fromGGUF, want) < 1e-5, "\(name) GGUF: rel L2 \(relL2(fromGGUF, want))")
  }

  /// Hostile configs and checkpoints get errors that name the problem.
  @Test func badInputIsNamed() throws {
    func message(_ body: () throws -> Void) -> String {
      do { try body(); return "" } catch let e as QoQError { return e.message } catch { return "\(error)" }
    }
    #expect(message { _ = try TinyMixtral.config(experts: 4, topK: 5) }.contains("num_experts_per_tok"))
    #expect(message { _ = try TinyMixtral.config(experts: 0, topK: 1) }.contains("num_local_experts"))
    #expect(message { _ = try TinyMixtral.config(experts: 5000, topK: 1) }.contains("num_local_experts"))
    let c = try TinyMixtral.config(), w = TinyMixtral.weights(c)
    let missing = MemoryWeights(w.tensors.filter { $0.key != "model.layers.1.block_sparse_moe.experts.3.w2.weight" })
    #expect(message { _ = try LlamaModel(config: c, weights: missing) }.contains("experts.3.w2"))
    // Weights written for 4 experts read under a config that says 6: the missing experts are named.
    let six = try TinyMixtral.config(experts: 6)
    #expect(message { _ = try LlamaModel(config: six, weights: w) }.contains("experts.4"))
    // A router of the wrong shape.
    var bad = w.tensors
    bad["model.layers.0.block_sparse_moe.gate.weight"] = ([3, 48], [Float](repeating: 0, count: 144))
    #expect(message { _ = try LlamaModel(config: c, weights: MemoryWeights(bad)) }.contains("block_sparse_moe.gate.weight has shape [3, 48]"))
    // A dense model_type with experts in its config.
    let json = #"{"model_type":"llama","hidden_size":48,"intermediate_size":40,"num_hidden_layers":1,"#
      + #""num_attention_heads":4,"vocab_size":70,"num_local_experts":4}"#
    let path = NSTemporaryDirectory() + "qoq-mixtral-\(getpid()).json"
    try json.write(toFile: path, atomically: true, encoding: .utf8)
    defer { try? FileManager.default.removeItem(atPath: path) }
    #expect(message { _ = try LlamaConfiguration.load(path: path) }.contains("num_local_experts"))
  }

  /// config.json round trip keeps the expert fields.
  @Test func configRoundTrip() throws {
    let c = try TinyMixtral.config(experts: 8, topK: 2, slidingWindow: 4096)
    let back = try JSONDecoder().decode(LlamaConfiguration.self, from: try c.jsonData())
    #expect(back == c)
    let text = String(decoding: try c.jsonData(), as: UTF8.self)
    #expect(text.contains("\"num_local_experts\" : 8") && text.contains("MixtralForCausalLM"))
  }
}

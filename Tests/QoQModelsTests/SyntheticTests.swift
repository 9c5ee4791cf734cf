// Random-weight checkpoints with real shapes (issue #12): written in shards, read back by the ordinary loader, equal
// to the generator's values (bf16-rounded), deterministic for a seed, and a runnable model.
import Foundation
import Testing
@testable import QoQIO
@testable import QoQModels

@Suite struct SyntheticTests {
  @Test func shardedRoundTripAndLoads() throws {
    let dir = NSTemporaryDirectory() + "qoq-synth-\(UInt64.random(in: 0..<UInt64.max))"
    var s = SyntheticCheckpoint(config: try SyntheticShape.tiny.config(layers: 3))
    s.seed = 5
    s.maxShardBytes = 100_000  // several shards
    try OutputFolder.write(dir, force: false, command: "synth") { try s.write(to: $0) }
    let files = try FileManager.default.contentsOfDirectory(atPath: dir)
    let shards = files.filter { $0.hasPrefix("model-") && $0.hasSuffix(".safetensors") }.sorted()
    #expect(shards.count > 2 && shards.first == String(format: "model-00001-of-%05d.safetensors", shards.count), "\(files)")
    #expect(files.contains("model.safetensors.index.json") && !files.contains { $0.hasPrefix(".shard-") })
    let w = try CheckpointWeights(folder: dir)
    #expect(Set(w.names) == Set(expectedTensorNames(s.config)))
    var total = 0
    for n in w.names {
      #expect(try w.info(n).dtype == .BF16)
      total += try w.info(n).count * 2
      let want = s.values(n).map { bf16ToF32(f32ToBF16($0)) }
      #expect(try w.floats(n) == want, "\(n)")
    }
    let index = try JSON.parseFile(dir + "/model.safetensors.index.json")
    #expect(index["metadata"]?["total_size"]?.int == total)
    // Outlier channels: the layernorm weights of those hidden channels are ~20× the rest.
    let norm = try w.floats("model.layers.0.input_layernorm.weight")
    for c in s.outliers { #expect(norm[c] > 15) }
    #expect(norm.enumerated().filter { !s.outliers.contains($0.offset) }.allSatisfy { abs($0.element - 1) <= 0.11 })
    // Deterministic: the same seed gives the same values, another seed others.
    var t = s; t.seed = 6
    #expect(s.values("model.layers.1.mlp.up_proj.weight") == SyntheticCheckpoint(config: s.config).with(seed: 5).values("model.layers.1.mlp.up_proj.weight"))
    #expect(s.values("model.layers.1.mlp.up_proj.weight") != t.values("model.layers.1.mlp.up_proj.weight"))
    // A runnable model: the loader accepts it and the forward is finite.
    let loaded = try ModelLoader.load(path: dir)
    let logits = try loaded.model.lastLogits([[1, 2, 3, 4]], caches: [KVCache(config: loaded.model.config)])[0]
    #expect(logits.count == s.config.vocabSize && logits.allSatisfy(\.isFinite))
  }

  /// The real shapes: parameter counts of Llama-3-8B and -70B.
  @Test func realShapes() throws {
    func params(_ c: LlamaConfiguration) -> Int { expectedTensorNames(c).reduce(0) { $0 + tensorShape($1, c).reduce(1, *) } }
    #expect(params(try SyntheticShape.llama3_8b.config(layers: nil)) == 8_030_261_248)
    #expect(params(try SyntheticShape.llama3_70b.config(layers: nil)) == 70_553_706_496)
  }
}

extension SyntheticCheckpoint {
  func with(seed: UInt64) -> SyntheticCheckpoint { var c = self; c.seed = seed; return c }
}

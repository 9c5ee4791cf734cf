// What a quantization run leaves: the units of its work folder, written out as a checkpoint folder on request
// (`write(into:)`, used by `qoq quantize --save-model` through OutputFolder.write), or in a temporary folder owned by
// this object for evaluation and tests (`checkpoint()`). Either way the checkpoint is what the engine and `qoq eval`
// read: one on-disk format for the quantizer and the engine.
import Foundation
import QoQFormat
import QoQIO
import QoQModels
import QoQTokenizers

extension QuantizationPipeline {
  public final class Output: @unchecked Sendable {
    /// The quantized model's configuration (untied when the recipe rotates).
    public let config: LlamaConfiguration
    public let quantization: QuantizationConfig
    public let tokenizer: Tokenizer
    let work: WorkFolder
    let modelPath: String
    var temporaryCheckpoint: String?

    init(work: WorkFolder, config: LlamaConfiguration, quantization: QuantizationConfig, tokenizer: Tokenizer, modelPath: String) {
      self.work = work; self.config = config; self.quantization = quantization; self.tokenizer = tokenizer; self.modelPath = modelPath
    }

    deinit { if let t = temporaryCheckpoint { try? FileManager.default.removeItem(atPath: t) } }

    /// The work folder's units in checkpoint order.
    var units: [String] { ["embed"] + (0..<config.numHiddenLayers).map(WorkFolder.layerUnit) + ["head"] }

    /// Writes the checkpoint into `folder` (empty, owned by the caller): weights in shards of at most
    /// `maxShardBytes`, config.json with quantization_config, recipe.yaml, the tokenizer and `extraFiles`.
    public func write(into folder: String, recipeYAML: String, extraFiles: [(String, Data)] = [],
                      maxShardBytes: Int = 2 << 30) throws {
      try work.assemble(into: folder, units: units, metadata: ["format": "pt", "quantization": quantization.method],
                        maxShardBytes: maxShardBytes)
      var cfg = try JSON.parse(config.jsonData(), what: "config")
      if var o = cfg.object { o["quantization_config"] = quantization.json; cfg = .object(o) }
      try atomicWrite(folder + "/config.json", data: Data(JSON.serialize(cfg, pretty: true).utf8))
      try atomicWrite(folder + "/recipe.yaml", data: Data(recipeYAML.utf8))
      try QuantizedCheckpoint.copyTokenizer(from: modelPath, to: folder)
      for (name, data) in extraFiles { try atomicWrite(folder + "/" + name, data: data) }
    }

    /// The checkpoint in a temporary folder (written on first use, removed with this object).
    public func checkpoint(maxShardBytes: Int = 2 << 30) throws -> String {
      if let t = temporaryCheckpoint { return t }
      let dir = NSTemporaryDirectory() + "qoq-checkpoint-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
      try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
      temporaryCheckpoint = dir
      try write(into: dir, recipeYAML: "", maxShardBytes: maxShardBytes)
      return dir
    }

    /// The whole model with dequantized weights, in memory (small models: tests and the in-run evaluation).
    public func store() throws -> WeightStore {
      let dir = try checkpoint()
      return try WeightStore(config: config, source: QuantizedSource(st: try CheckpointWeights(folder: dir), config: config,
                                                                    quant: quantization))
    }

    /// The quantized linears, read back from the checkpoint.
    public func quantizedWeights() throws -> [String: QuantizedWeight] {
      guard let f = quantization.weight else { return [:] }
      let st = try CheckpointWeights(folder: try checkpoint())
      var out: [String: QuantizedWeight] = [:]
      for n in st.names where n.hasSuffix(".qweight") {
        let m = String(n.dropLast(8)), s = tensorShape(m + ".weight", config)
        out[m] = try QuantizedCheckpoint.readWeight(st, module: m, format: f, out: s[0], inp: s[1])
      }
      return out
    }

    /// The fake-quantized model (dequantized weights, quantized activations and KV), built from the checkpoint.
    public func fakeQuantModel() throws -> LlamaModel {
      let st = try CheckpointWeights(folder: try checkpoint())
      return try quantization.fakeQuantModel(config: config, weights: QuantizedSource(st: st, config: config, quant: quantization))
    }
  }
}

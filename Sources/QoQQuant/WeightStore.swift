// The model as the quantizer edits it: every tensor as an fp32 array under its HF name. Transforms (rotation,
// reordering, smoothing) and fake weight quantization rewrite these arrays; `model()` packs them into a runnable
// LlamaModel for the next calibration pass or for evaluation.
import QoQIO
import QoQModels

public final class WeightStore: WeightSource, @unchecked Sendable {
  public private(set) var config: LlamaConfiguration
  public var tensors: [String: [Float]]

  public init(config: LlamaConfiguration, source: WeightSource) throws {
    try verifyTensors(source, config)
    self.config = config
    var t: [String: [Float]] = [:]
    for name in expectedTensorNames(config) { t[name] = try source.floats(name) }
    tensors = t
  }

  public var tensorNames: [String] { tensors.keys.sorted() }
  public func shape(_ name: String) throws -> [Int] {
    guard tensors[name] != nil else { throw QoQError("no tensor \(name)") }
    return tensorShape(name, config)
  }
  public func floats(_ name: String) throws -> [Float] {
    guard let t = tensors[name] else { throw QoQError("no tensor \(name)") }
    return t
  }

  public subscript(_ name: String) -> [Float] {
    get { tensors[name]! }
    set { precondition(newValue.count == tensors[name]!.count, "\(name): size change"); tensors[name] = newValue }
  }

  /// Gives lm_head its own copy of the embedding (rotation and norm folding change them differently).
  public func untie() {
    guard config.tieWordEmbeddings else { return }
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    config.tieWordEmbeddings = false
  }

  public func model(linearFactory: LlamaModel.LinearFactory? = nil) throws -> LlamaModel {
    try LlamaModel(config: config, weights: self, linearFactory: linearFactory)
  }

  /// The names of the decoder linears of layer i, in module order.
  public func linearNames(layer i: Int) -> [String] {
    let p = "model.layers.\(i)."
    return ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"].map { p + $0 }
  }

  /// (out, in) of a linear module.
  public func linearShape(_ module: String) -> (out: Int, inp: Int) {
    let s = tensorShape(module + ".weight", config)
    return (s[0], s[1])
  }
}

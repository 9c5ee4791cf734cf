// The model as the quantizer edits it: tensors as fp32 arrays under their HF names. Transforms (rotation,
// reordering, smoothing) and fake weight quantization rewrite these arrays. The streaming quantizer opens it `lazy`:
// nothing is read up front, `load(layer:)` reads one decoder layer from the source and `drop(layer:)` releases it,
// so memory holds one layer whatever the depth. An eager store (tests, small models) holds every tensor and
// `model()` packs them into a runnable LlamaModel.
import QoQIO
import QoQModels

public final class WeightStore: WeightSource, @unchecked Sendable {
  public private(set) var config: LlamaConfiguration
  public var tensors: [String: [Float]]

  /// Where lazily loaded tensors come from (nil for an eager store).
  let source: WeightSource?

  public init(config: LlamaConfiguration, source: WeightSource, lazy: Bool = false) throws {
    try verifyTensors(source, config)
    self.config = config
    var t: [String: [Float]] = [:]
    if !lazy { for name in expectedTensorNames(config) { t[name] = try source.floats(name) } }
    tensors = t
    self.source = lazy ? source : nil
  }

  /// The HF names of layer i's tensors (weights, biases, norms).
  public func layerTensorNames(_ i: Int) -> [String] {
    let p = "model.layers.\(i)."
    return expectedTensorNames(config).filter { $0.hasPrefix(p) }
  }

  /// Reads layer i's tensors from the source (lazy store; a no-op for tensors already held).
  public func load(layer i: Int) throws {
    guard let src = source else { return }
    for n in layerTensorNames(i) where tensors[n] == nil { tensors[n] = try src.floats(n) }
  }

  /// Releases layer i's tensors (lazy store).
  public func drop(layer i: Int) {
    guard source != nil else { return }
    for n in layerTensorNames(i) { tensors[n] = nil }
  }

  /// Decoder layer i as a runnable layer built from the tensors held (`load(layer:)` first on a lazy store).
  public func decoderLayer(_ i: Int, linearFactory: LlamaModel.LinearFactory? = nil) throws -> DecoderLayer {
    try DecoderLayer(config: config, layer: i, weights: self, linearFactory: linearFactory)
  }

  /// A model that runs layer i only (LlamaModel.layerView) over the tensors held.
  public func layerModel(_ i: Int, linearFactory: LlamaModel.LinearFactory? = nil) throws -> LlamaModel {
    try LlamaModel.layerView(config: config, index: i, layer: try decoderLayer(i, linearFactory: linearFactory))
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
  /// On a lazy store without the embedding loaded, only the configuration changes (the streaming quantizer reads
  /// the head from the embedding itself).
  public func untie() {
    guard config.tieWordEmbeddings else { return }
    if let e = tensors["model.embed_tokens.weight"] { tensors["lm_head.weight"] = e }
    config.tieWordEmbeddings = false
  }

  public func model(linearFactory: LlamaModel.LinearFactory? = nil) throws -> LlamaModel {
    try LlamaModel(config: config, weights: self, linearFactory: linearFactory)
  }

  /// The names of the decoder linears of layer i, in module order; in an MoE layer each expert's w1 (gate), w3 (up)
  /// and w2 (down) in expert order. The router (block_sparse_moe.gate) is not among them: it stays at full precision.
  public func linearNames(layer i: Int) -> [String] {
    let p = "model.layers.\(i)."
    let attn = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"].map { p + $0 }
    guard let e = config.numLocalExperts else { return attn + ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"].map { p + $0 } }
    return attn + (0..<e).flatMap { x in ["w1", "w3", "w2"].map { MoEBlock.prefix(layer: i) + "experts.\(x).\($0)" } }
  }

  /// (out, in) of a linear module.
  public func linearShape(_ module: String) -> (out: Int, inp: Int) {
    let s = tensorShape(module + ".weight", config)
    return (s[0], s[1])
  }
}

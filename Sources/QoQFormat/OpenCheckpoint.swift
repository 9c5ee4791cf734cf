// One way to open a model (issue #12): a Hugging Face folder, a GGUF file, or a quantized checkpoint that
// `qoq quantize --save-model` wrote. Opening reads headers, config and tokenizer only; the weights stay mapped until a
// consumer asks: the quantizer streams `weights` a layer at a time, evaluation builds `referenceModel()` (FP, or
// fake-quantized for a quantized checkpoint), the engine packs the quantized tensors from `folder` directly.
// quantize, eval, generate, serve, bench and convert all open their model here.
import Foundation
import QoQIO
import QoQModels
import QoQTokenizers

public final class ModelCheckpoint: @unchecked Sendable {
  public enum Kind: Sendable, Equatable { case huggingFace, gguf, quantized }
  public let path: String
  public let kind: Kind
  public let config: LlamaConfiguration
  public let tokenizer: Tokenizer
  /// FP tensors by HF name (a quantized checkpoint's linears dequantized as they are read).
  public let weights: WeightSource
  /// The quantized checkpoint's configuration; nil for FP models.
  public let quantization: QuantizationConfig?
  /// The safetensors folder behind a HF or quantized checkpoint (nil for GGUF).
  public let folder: CheckpointWeights?
  /// The parsed GGUF file (nil for folders).
  public let gguf: GGUFFile?

  init(path: String, kind: Kind, config: LlamaConfiguration, tokenizer: Tokenizer, weights: WeightSource,
       quantization: QuantizationConfig?, folder: CheckpointWeights?, gguf: GGUFFile?) {
    self.path = path; self.kind = kind; self.config = config; self.tokenizer = tokenizer; self.weights = weights
    self.quantization = quantization; self.folder = folder; self.gguf = gguf
  }

  /// `path`: a folder, a .gguf file, or a Hugging Face id (ORG/NAME[@REVISION]) found in the hub cache (HubCache).
  public static func open(_ given: String) throws -> ModelCheckpoint {
    let path = try HubCache.resolve(given)
    let src = try ModelLoader.open(path: path)
    guard let st = src.folder else {
      return ModelCheckpoint(path: path, kind: .gguf, config: src.config, tokenizer: src.tokenizer, weights: src.weights,
                             quantization: nil, folder: nil, gguf: src.gguf)
    }
    let cfgPath = path + "/config.json"
    if let qj = try JSON.parseFile(cfgPath)["quantization_config"], !qj.isNull {
      let quant = try QuantizationConfig(json: qj, what: cfgPath)
      return ModelCheckpoint(path: path, kind: .quantized, config: src.config, tokenizer: src.tokenizer,
                             weights: QuantizedSource(st: st, config: src.config, quant: quant), quantization: quant, folder: st, gguf: nil)
    }
    return ModelCheckpoint(path: path, kind: .huggingFace, config: src.config, tokenizer: src.tokenizer, weights: st,
                           quantization: nil, folder: st, gguf: nil)
  }

  /// The same checkpoint with its KV cache at `bits` (4 or 8; nil = unquantized, fp16 pages in the engine) instead of
  /// the recorded setting: the KV-only ablation of issue #19 (same weights and activations), for `qoq eval --kv-bits`.
  /// Static KV scales are dropped (they belong to the recorded bit width); centering and rotation stay, as both are
  /// exact in FP. A checkpoint without KV quantization gets per-head asymmetric groups.
  public func withKVBits(_ bits: Int?) throws -> ModelCheckpoint {
    guard var q = quantization else { throw QoQError("\(path): a KV bit width applies to quantized checkpoints only") }
    if let b = bits { guard b == 4 || b == 8 else { throw QoQError("KV cache bits must be 4, 8 or 16 (got \(b))") } }
    if bits != nil && q.kvBits == nil { q.kvGroup = config.headDim; q.kvAsymmetric = true }
    q.kvBits = bits
    q.kvStaticScales = nil
    return with(quantization: q)
  }

  /// The same checkpoint with activations at `bits` (8) or unquantized (nil): with nil and KV 16 the model is the
  /// W4A16 one that exports to MLX, llama.cpp and compressed-tensors carry (they drop activation and KV quantization).
  public func withActBits(_ bits: Int?) throws -> ModelCheckpoint {
    guard var q = quantization else { throw QoQError("\(path): an activation bit width applies to quantized checkpoints only") }
    if let b = bits { guard b == 8 else { throw QoQError("activation bits must be 8 or 16 (got \(b))") } }
    q.actBits = bits
    return with(quantization: q)
  }

  /// The same checkpoint read under another quantization config (same files, same weights).
  func with(quantization q: QuantizationConfig) -> ModelCheckpoint {
    ModelCheckpoint(path: path, kind: kind, config: config, tokenizer: tokenizer, weights: weights, quantization: q,
                    folder: folder, gguf: gguf)
  }

  /// The reference model in memory: FP, or for a quantized checkpoint its fake-quantized model (dequantized weights,
  /// quantized activations and KV).
  public func referenceModel() throws -> LlamaModel {
    if let q = quantization { return try q.fakeQuantModel(config: config, weights: weights) }
    return try LlamaModel(config: config, weights: weights)
  }

  /// The reference model with its tokenizer (evaluation helpers take this pair).
  public func loaded() throws -> LoadedModel { LoadedModel(model: try referenceModel(), tokenizer: tokenizer, path: path) }
}

// Opens a model from a path: a Hugging Face folder (config.json + safetensors + tokenizer.json) or a .gguf file.
import Foundation
import QoQIO
import QoQTokenizers

public struct LoadedModel: @unchecked Sendable {
  public let model: LlamaModel
  public let tokenizer: Tokenizer
  public let path: String
  public init(model: LlamaModel, tokenizer: Tokenizer, path: String) { self.model = model; self.tokenizer = tokenizer; self.path = path }
}

/// An FP source opened but not read: its configuration, tensors (mapped), tokenizer, and the file behind it.
public struct ModelSource {
  public let config: LlamaConfiguration
  public let weights: WeightSource
  public let tokenizer: Tokenizer
  /// The parsed GGUF file, or the safetensors folder (exactly one is set).
  public let gguf: GGUFFile?
  public let folder: CheckpointWeights?
}

public enum ModelLoader {
  /// Opens a Hugging Face folder or a .gguf file without reading weights (ModelCheckpoint.open builds on it).
  public static func open(path: String) throws -> ModelSource {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
      throw QoQError("\(path): no such file or folder")
    }
    if !isDir.boolValue {
      guard path.hasSuffix(".gguf") else { throw QoQError("\(path): expected a Hugging Face model folder or a .gguf file") }
      let g = try GGUFFile(path: path)
      let src = try GGUFWeights(g)
      return ModelSource(config: src.config, weights: src, tokenizer: try Tokenizer.load(gguf: g), gguf: g, folder: nil)
    }
    let config = try LlamaConfiguration.load(path: path + "/config.json")
    let tok = try Tokenizer.load(folder: path)
    let weights = try CheckpointWeights(folder: path)
    return ModelSource(config: config, weights: weights, tokenizer: tok, gguf: nil, folder: weights)
  }

  public static func load(path: String) throws -> LoadedModel {
    let s = try open(path: path)
    return LoadedModel(model: try LlamaModel(config: s.config, weights: s.weights), tokenizer: s.tokenizer, path: path)
  }
}

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

public enum ModelLoader {
  public static func load(path: String) throws -> LoadedModel {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
      throw QoQError("\(path): no such file or folder")
    }
    if !isDir.boolValue {
      guard path.hasSuffix(".gguf") else { throw QoQError("\(path): expected a Hugging Face model folder or a .gguf file") }
      let g = try GGUFFile(path: path)
      let src = try GGUFWeights(g)
      let tok = try Tokenizer.load(gguf: g)
      return LoadedModel(model: try LlamaModel(config: src.config, weights: src), tokenizer: tok, path: path)
    }
    let config = try LlamaConfiguration.load(path: path + "/config.json")
    let tok = try Tokenizer.load(folder: path)
    let weights = try CheckpointWeights(folder: path)
    return LoadedModel(model: try LlamaModel(config: config, weights: weights), tokenizer: tok, path: path)
  }
}

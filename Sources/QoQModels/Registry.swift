// model_type → family. One dictionary literal; an unknown type fails with the supported list
// (anchors.md §1.9.2; mlx-swift-lm LLMTypeRegistry).

/// Per-family facts that differ between Llama-style architectures. Data, not branches in model code.
public struct ModelFamily: Sendable {
  public let modelType: String
  /// `architectures[0]` written to config.json.
  public let architecture: String
  /// GGUF `general.architecture` for this family.
  public let ggufArchitecture: String
  /// Whether llama.cpp's converter permuted Q/K rows (interleaved rotary pairs) for this family's GGUFs.
  public let ggufPermutesQK: Bool
  /// Whether q/k/v always carry biases (Qwen2) regardless of config.
  public let qkvBias: Bool
}

public enum ModelRegistry {
  public static let families: [String: ModelFamily] = [
    "llama": LlamaFamily.family,
    "mistral": MistralFamily.family,
    "qwen2": Qwen2Family.family,
    "mixtral": MixtralFamily.family,
  ]
  public static var supported: [String] { families.keys.sorted() }

  public static func family(_ modelType: String) throws -> ModelFamily {
    guard let f = families[modelType] else {
      throw QoQError("unsupported model_type \"\(modelType)\" (supported: \(supported.joined(separator: ", ")))")
    }
    return f
  }

  /// The family for a GGUF `general.architecture`: Llama, Mistral and Mixtral files all say "llama"; the first two
  /// read as Llama, and Mixtral where `{arch}.expert_count` is set (`experts`).
  public static func family(ggufArchitecture a: String, experts: Bool = false) throws -> ModelFamily {
    if experts {
      guard let f = families.values.first(where: { $0.ggufArchitecture == a && $0.modelType == "mixtral" }) else {
        throw QoQError("GGUF architecture \"\(a)\" with expert_count: no mixture-of-experts family reads it (supported: llama)")
      }
      return f
    }
    guard let f = families.values.first(where: { $0.ggufArchitecture == a && $0.modelType != "mistral" && $0.modelType != "mixtral" }) else {
      let names = Set(families.values.map(\.ggufArchitecture)).sorted()
      throw QoQError("unsupported GGUF architecture \"\(a)\" (supported: \(names.joined(separator: ", ")))")
    }
    return f
  }
}
import QoQIO

// Qwen 1.5 / 2 / 2.5 (transformers Qwen2ForCausalLM): the Llama graph plus q/k/v biases (no config flag),
// often tied embeddings. llama.cpp's GGUF converter does not permute Qwen2's Q/K rows.
enum Qwen2Family {
  static let family = ModelFamily(modelType: "qwen2", architecture: "Qwen2ForCausalLM", ggufArchitecture: "qwen2",
                                  ggufPermutesQK: false, qkvBias: true)
}

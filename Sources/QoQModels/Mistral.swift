// Mistral (transformers MistralForCausalLM): the Llama graph with GQA and an optional sliding window.
// Our attention is full causal; a sliding window only matters past `sliding_window` tokens (4096 for v0.1),
// so contexts longer than the window are refused by the model (see LlamaModel.maxContext).
enum MistralFamily {
  static let family = ModelFamily(modelType: "mistral", architecture: "MistralForCausalLM", ggufArchitecture: "llama",
                                  ggufPermutesQK: true, qkvBias: false)
}

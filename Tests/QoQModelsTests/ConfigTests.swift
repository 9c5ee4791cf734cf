import Foundation
import Testing
@testable import QoQIO
@testable import QoQModels
import QoQTestSupport

@Suite struct ConfigTests {
  static let base = #"{"model_type":"llama","hidden_size":64,"intermediate_size":96,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100"#

  func load(_ json: String) throws -> LlamaConfiguration {
    let p = NSTemporaryDirectory() + "cfg-\(UUID().uuidString).json"
    try Data(json.utf8).write(to: URL(fileURLWithPath: p))
    return try LlamaConfiguration.load(path: p)
  }

  @Test func defaultsAndFields() throws {
    let c = try load(Self.base + "}")
    #expect(c.numKeyValueHeads == 4 && c.headDim == 16 && c.ropeTheta == 10000 && !c.tieWordEmbeddings)
    let q = try load(#"{"model_type":"qwen2","hidden_size":64,"intermediate_size":96,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100,"tie_word_embeddings":true,"eos_token_id":[1,2],"use_sliding_window":false,"sliding_window":4096}"#)
    #expect(q.attentionBias && q.tieWordEmbeddings && q.eosTokenIds == [1, 2] && q.slidingWindow == nil)
    let l3 = try load(Self.base + #","rope_scaling":{"type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#)
    #expect(l3.ropeScaling?.factor == 8 && l3.ropeScaling?.ropeType == "llama3")
    let m = try load(#"{"model_type":"mistral","hidden_size":64,"intermediate_size":96,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100,"sliding_window":4096}"#)
    #expect(m.slidingWindow == 4096)
    // Round trip through our writer.
    let again = try JSONDecoder().decode(LlamaConfiguration.self, from: try l3.jsonData())
    #expect(again == l3)
  }

  @Test func badConfigsAreRejected() {
    let cases: [(String, String)] = [
      (#"{"model_type":"gpt_neox","hidden_size":64}"#, "unsupported model_type"),
      (Self.base.replacingOccurrences(of: #""hidden_size":64"#, with: #""hidden_size":0"#) + "}", "must be positive"),
      (Self.base.replacingOccurrences(of: #""num_attention_heads":4"#, with: #""num_attention_heads":-4"#) + "}", "must be positive"),
      (Self.base.replacingOccurrences(of: #""hidden_size":64"#, with: #""hidden_size":65"#) + "}", "not divisible"),
      (Self.base + #","num_key_value_heads":3}"#, "not a multiple"),
      (Self.base.replacingOccurrences(of: #""vocab_size":100"#, with: #""vocab_size":99999999999"#) + "}", "exceeds the limit of 4194304"),
      (Self.base + #","rope_scaling":{"type":"yarn","factor":4.0}}"#, "not supported"),
      (#"{"model_type":"llama","hidden_size":64}"#, "missing field"),
      (Self.base + #","rope_theta":"big"}"#, "wrong type"),
      ("{not json", "not valid JSON"),
      (Self.base + #","head_dim":15}"#, "even"),
    ]
    var failures: [String] = []
    for (json, needle) in cases {
      if let f = expectError(needle, json, { _ = try load(json) }) { failures.append(f) }
    }
    #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
  }

  @Test func unpermuteMatchesNumpyFormula() {
    // heads=2, head_dim=4, cols=1: GGUF row (h, i, j) holds HF row (h, j, i).
    // numpy: w.reshape(2, 2, 2, 1).swapaxes(1, 2).reshape(8, 1) maps [0..7] to [0, 2, 1, 3, 4, 6, 5, 7].
    #expect(unpermuteRows((0..<8).map(Float.init), heads: 2, cols: 1) == [0, 2, 1, 3, 4, 6, 5, 7])
  }
}

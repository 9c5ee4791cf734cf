// `qoq quantize --kv-ablation` (issue #19, item 4): the same quantized weights evaluated with KV16 and KV8 beside the
// recipe's KV4, so the KV cache's cost is one number. The KV16 figure is checked against an independent evaluation
// here: the saved checkpoint's fake-quantized model with its KV quantizer removed.
import Foundation
import Testing
import QoQEval
import QoQFormat
import QoQIO
import QoQModels
import QoQTestSupport

@Suite struct KVAblationTests {
  @Test func kvAblationRowsMatchAnIndependentEvaluation() async throws {
    let dir = scratch("kv-ablation")
    let c = try LlamaConfiguration(modelType: "llama", hiddenSize: 64, intermediateSize: 128, numHiddenLayers: 2,
                                   numAttentionHeads: 4, numKeyValueHeads: 2, rmsNormEps: 1e-5, vocabSize: 300)
    try writeTinyCheckpoint(c, to: dir + "/model")
    try writeTinyText(to: dir + "/text.txt", lines: 400)
    let r = try await runQoQ(["quantize", repoRoot + "/recipes/rtn-w4a8kv4-g64.yaml", "--model-path", dir + "/model",
                              "--wgts-group-shapes", "1,16", "--opts-group-shapes", "1,16", "--eval-dataset", dir + "/text.txt",
                              "--eval-max-seq-length", "64", "--cache-root", "none", "--save-model", dir + "/q",
                              "--results-json", dir + "/results.json", "--kv-ablation"])
    #expect(r.status == 0, "\(r.stderr)")
    let j = try JSON.parseFile(dir + "/results.json")
    let kv4 = try #require(j["wikitext2_ppl"]?.double), kv16 = try #require(j["kv_ablation"]?["kv16"]?.double)
    let kv8 = try #require(j["kv_ablation"]?["kv8"]?.double)
    #expect(r.stdout.contains("(same weights, KV16)") && r.stdout.contains("(same weights, KV8)"))
    // Independent: the checkpoint without KV quantization, evaluated here on the same tokens.
    let ckpt = try ModelCheckpoint.open(dir + "/q")
    var q = try #require(ckpt.quantization)
    #expect(q.kvBits == 4)
    q.kvBits = nil
    // The same text the quantize run evaluated (a plain .txt: read as one string, not rewritten as WikiText).
    let data = try EvalDataset(path: dir + "/text.txt")
    #expect(data.format == .text)
    let tokens = try data.tokens(ckpt.tokenizer, proto: .gptq)
    let want = try PerplexityEvaluator(model: try q.fakeQuantModel(config: c, weights: ckpt.weights))
      .evaluate(tokens: tokens, seqLen: 64).perplexity
    #expect(abs(kv16 - want) <= 1e-9 * want, "KV16 \(kv16) vs independent \(want)")
    #expect(kv4 != kv16 && kv8 != kv4, "KV4 \(kv4), KV8 \(kv8), KV16 \(kv16)")
  }
}

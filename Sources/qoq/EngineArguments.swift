import ArgumentParser
import Foundation
import QoQEngine
import QoQFormat
import QoQIO
import QoQKernels
import QoQModels
import QoQScheduler
import QoQTokenizers

/// Engine flags shared by `generate` and `bench` (names follow QServe's / vLLM's engine CLI where one exists).
struct EngineArguments: ParsableArguments {
  @Option(help: "Tokens per step: prefill chunks plus one per decoding request.") var maxNumBatchedTokens: Int = 512
  @Option(help: "Most requests running at once.") var maxNumSeqs: Int = 64
  @Option(help: "KV pool size in bytes (pages = bytes / page bytes across layers).") var kvCacheBytes: Int = 1 << 30
  @Option(help: "KV pool size in pages (overrides --kv-cache-bytes; QServe's NUM_GPU_PAGE_BLOCKS).") var numKvBlocks: Int?
  @Option(help: "Tokens per KV page.") var pageSize: Int = 64
  @Option(name: [.customShort("c"), .long], help: "Context per request, prompt + generated tokens (default: the model's).") var ctxSize: Int?
  @Option(help: "Scheduler: chunked (decodes + prefill chunks each step) or qserve-v0 (prefill-only or decode-only steps).")
  var policy: String = "chunked"
  @Option(help: "LM head precision: fp32, bf16, int8 or int4 (default: int8 for quantized checkpoints, fp32 for FP models).")
  var lmHead: String?
  @Option(help: "KV cache of FP models: fp16, kv8 or kv4 (quantized checkpoints use their own).") var kvCache: String = "fp16"
  @Flag(help: "fp32 attention scores over KV4 pages instead of integer (int8 query) scores.") var fpScores = false
  @Flag(inversion: .prefixedNo, help: "Automatic prefix caching: requests reuse the full KV pages of an earlier request's identical leading tokens.")
  var prefixCaching = true

  func validate() throws {
    guard maxNumBatchedTokens > 0 else { throw ValidationError("--max-num-batched-tokens must be positive") }
    guard maxNumSeqs > 0 else { throw ValidationError("--max-num-seqs must be positive") }
    guard kvCacheBytes > 0 else { throw ValidationError("--kv-cache-bytes must be positive") }
    if let n = numKvBlocks, n <= 0 { throw ValidationError("--num-kv-blocks must be positive") }
    guard pageSize >= 16, pageSize % 16 == 0, pageSize <= 1024 else { throw ValidationError("--page-size must be a multiple of 16 in 16…1024") }
    guard SchedulerPolicy(rawValue: policy) != nil else { throw ValidationError("--policy must be chunked or qserve-v0") }
    if let h = lmHead, LMHeadPrecision(rawValue: h) == nil { throw ValidationError("--lm-head must be fp32, bf16, int8 or int4") }
    guard KVMode(rawValue: kvCache) != nil else { throw ValidationError("--kv-cache must be fp16, kv8 or kv4") }
    if let c = ctxSize, c < 2 { throw ValidationError("--ctx-size must be at least 2 (a prompt token and a generated one)") }
  }

  /// Loads a quantized checkpoint for the integer kernels, or an FP model (HF folder or GGUF).
  func loadModel(_ path: String) throws -> (EngineModel, Tokenizer) {
    let ckpt = try ModelCheckpoint.open(path)
    let m = try EngineModel.load(ckpt, pageSize: pageSize, lmHead: lmHead.flatMap(LMHeadPrecision.init(rawValue:)),
                                 fpKV: KVMode(rawValue: kvCache)!)
    return (m, ckpt.tokenizer)
  }

  var options: EngineOptions {
    var o = EngineOptions()
    o.pageSize = pageSize; o.numBlocks = numKvBlocks; o.kvCacheBytes = kvCacheBytes; o.maxNumSeqs = maxNumSeqs
    o.maxBatchedTokens = maxNumBatchedTokens; o.policy = SchedulerPolicy(rawValue: policy)!; o.integerScores = !fpScores
    o.maxContext = ctxSize; o.prefixCaching = prefixCaching
    return o
  }
}

/// `-t/--threads N`, shared by every subcommand that computes: the kernels' thread count. The default is every CPU
/// this process may use (affinity mask, cgroup quota); QOQ_THREADS sets the default too.
struct ThreadsOption: ParsableArguments {
  @Option(name: [.short, .long], help: "Threads (default: every CPU this process may use, or QOQ_THREADS).") var threads: Int?

  func validate() throws {
    if let t = threads, !(1...1024).contains(t) { throw ValidationError("--threads must be in 1…1024") }
  }

  func apply() { if let t = threads { ThreadPool.shared.setThreads(t) } }
}

/// Sampling flags shared by `generate` and `chat` (one grammar). Unset values take the command's defaults: greedy for
/// generate, temperature 0.7 / top-p 0.95 for chat.
struct SamplingOptions: ParsableArguments {
  @Option(help: "Sampling temperature (0 = greedy; default: generate 0, chat 0.7).") var temp: Float?
  @Option(help: "Top-k (0 = off).") var topK: Int = 0
  @Option(help: "Top-p nucleus (1 = off; default: generate 1, chat 0.95).") var topP: Float?
  @Option(help: "Min-p (0 = off).") var minP: Float = 0
  @Option(help: "Repetition penalty (1 = off).") var repeatPenalty: Float = 1
  @Option(name: [.short, .long], help: "Random seed (request or answer i uses seed + i).") var seed: UInt64 = 0

  func params(index: Int, maxTokens: Int, temp defaultTemp: Float, topP defaultTopP: Float) -> SamplingParams {
    var p = SamplingParams()
    p.temperature = temp ?? defaultTemp; p.topK = topK; p.topP = topP ?? defaultTopP; p.minP = minP
    p.repetitionPenalty = repeatPenalty; p.seed = seed &+ UInt64(index); p.maxTokens = maxTokens
    return p
  }
}

/// `--chat-template FILE`, shared by generate, chat and serve: a Jinja chat template that replaces the model's own.
struct ChatTemplateOption: ParsableArguments {
  @Option(help: "Jinja chat template file to use instead of the model's (tokenizer_config.json, chat_template.jinja or GGUF).")
  var chatTemplate: String?

  /// The file's template, else the model's own (the model given as a folder, a .gguf or a Hugging Face id); nil: none.
  func load(model: String) throws -> ChatTemplate? {
    if let f = chatTemplate {
      guard let s = try? String(contentsOfFile: f, encoding: .utf8) else { throw QoQError("\(f): cannot read the chat template file") }
      do { return try ChatTemplate(s) } catch let e as QoQError { throw QoQError("\(f): \(e.message)") }
    }
    return try ChatTemplate.forModel(path: HubCache.resolve(model))
  }
}

import Foundation
import Testing
@testable import QoQEval
@testable import QoQIO
@testable import QoQModels
@testable import QoQTokenizers

let fixturesRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
  .appendingPathComponent("Fixtures").path
/// The project's data/ (WikiText-2, shipped with the checkout).
let sharedData = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
  .deletingLastPathComponent().appendingPathComponent("data").path

/// The default model as scripts/setup.sh leaves it: the GGUF and the Hugging Face folder converted from it.
enum SmolLM2 {
  static let cache: String = {
    let env = ProcessInfo.processInfo.environment
    return (env["QOQ_CACHE"] ?? (env["HOME"] ?? "/root") + "/.cache/qoq") + "/smollm2"
  }()
  static var gguf: String { cache + "/SmolLM2-135M-Instruct.Q4_1.gguf" }
  static var folder: String { cache + "/hf" }
  static var available: Bool { FileManager.default.fileExists(atPath: folder + "/model.safetensors") }
  /// In CI the model must be there (scripts/setup.sh runs first); elsewhere these tests are skipped without it.
  static func require() -> Bool {
    if available { return true }
    if ProcessInfo.processInfo.environment["CI"] == "true" { Issue.record("SmolLM2 missing in CI: run scripts/setup.sh") }
    return false
  }
  nonisolated(unsafe) static var loadedCache: LoadedModel?
  static func loaded() throws -> LoadedModel {
    if let l = loadedCache { return l }
    let l = try ModelLoader.load(path: folder)
    loadedCache = l
    return l
  }
}

let isCI = ProcessInfo.processInfo.environment["CI"] == "true"

extension Trait where Self == ConditionTrait {
  /// Runs where the model is set up (and always in CI, where its absence fails the test); skipped visibly elsewhere.
  static var needsSmolLM2: Self { .enabled(if: SmolLM2.available || isCI, "needs SmolLM2: bash scripts/setup.sh") }
}

func ints(_ v: JSONValue?) -> [Int32] { (v?.array ?? []).map { Int32($0.int!) } }

@Suite(.serialized) struct SmolLM2Tests {
  /// Logits of the converted folder match transformers (CPU torch, fp32) within 1e-3 relative L2.
  @Test(.needsSmolLM2) func logitsMatchTransformers() throws {
    guard SmolLM2.require() else { return }
    let m = try SmolLM2.loaded()
    let fx = try JSON.parseFile(fixturesRoot + "/smollm2/logits.json")
    let bin = try Data(contentsOf: URL(fileURLWithPath: fixturesRoot + "/smollm2/logits.f32.bin"))
    let V = m.model.config.vocabSize
    for p in fx["prompts"]!.array! {
      let ids = ints(p["ids"])
      #expect(try m.tokenizer.encode(p["text"]!.string!) == ids, "tokenization of \(p["name"]!.string!)")
      let hidden = try m.model.forward([ids], caches: [KVCache(config: m.model.config)])
      let logits = hidden.withUnsafeBufferPointer { m.model.logits($0.baseAddress!, rows: ids.count) }
      let off = p["logits_offset_bytes"]!.int!
      for (k, pos) in p["logits_positions"]!.array!.map({ $0.int! }).enumerated() {
        let ref: [Double] = bin.withUnsafeBytes { raw in (0..<V).map { Double(raw.loadUnaligned(fromByteOffset: off + 4 * (k * V + $0), as: Float.self)) } }
        let got = Array(logits[(pos * V)..<((pos + 1) * V)])
        var num = 0.0, den = 0.0
        for i in 0..<V { num += (Double(got[i]) - ref[i]) * (Double(got[i]) - ref[i]); den += ref[i] * ref[i] }
        #expect((num / den).squareRoot() < 1e-3, "\(p["name"]!.string!) position \(pos): rel L2 \((num / den).squareRoot())")
      }
      // Argmax at every position, except where transformers' top two are within 1e-3 (a tie at fp32 noise).
      let argmax = ints(p["argmax"]), gaps = p["top1_minus_top2"]!.array!.map { $0.double! }
      for pos in 0..<ids.count where gaps[pos] > 1e-3 {
        let row = Array(logits[(pos * V)..<((pos + 1) * V)])
        #expect(Int32(row.indices.max { row[$0] < row[$1] }!) == argmax[pos], "argmax at \(pos)")
      }
    }
  }

  /// 32-token greedy continuations equal transformers' token for token.
  @Test(.needsSmolLM2) func greedyContinuationMatches() throws {
    guard SmolLM2.require() else { return }
    let m = try SmolLM2.loaded()
    let fx = try JSON.parseFile(fixturesRoot + "/smollm2/greedy.json")
    for run in fx["runs"]!.array! {
      let prompt = ints(run["prompt_ids"]), want = ints(run["generated_ids"])
      let cache = KVCache(config: m.model.config)
      var logits = try m.model.lastLogits([prompt], caches: [cache])[0]
      var got: [Int32] = []
      for _ in 0..<want.count {
        let next = Int32(logits.indices.max { logits[$0] < logits[$1] }!)
        got.append(next)
        logits = try m.model.lastLogits([[next]], caches: [cache])[0]
      }
      #expect(got == want)
    }
  }

  /// The GGUF read directly gives the same model as the converted folder.
  @Test(.needsSmolLM2) func ggufAndFolderAgree() throws {
    guard SmolLM2.require() else { return }
    let folder = try SmolLM2.loaded()
    let direct = try ModelLoader.load(path: SmolLM2.gguf)
    #expect(direct.model.config.tieWordEmbeddings && direct.model.config.numKeyValueHeads == 3)
    let ids: [Int32] = try folder.tokenizer.encode("The capital of France is")
    #expect(try direct.tokenizer.encode("The capital of France is") == ids)
    let a = try folder.model.lastLogits([ids], caches: [KVCache(config: folder.model.config)])[0]
    let b = try direct.model.lastLogits([ids], caches: [KVCache(config: direct.model.config)])[0]
    #expect(a == b)
  }

  /// GPTQ-protocol perplexity over the first 8 windows of 2048 within 0.1% of transformers', and the whole
  /// WikiText-2 token stream equal to the reference tokenizer's.
  @Test(.needsSmolLM2) func perplexityMatchesTransformers() throws {
    guard SmolLM2.require() else { return }
    let m = try SmolLM2.loaded()
    let fx = try JSON.parseFile(fixturesRoot + "/smollm2/ppl.json")
    let raw = try String(contentsOfFile: sharedData + "/wikitext-2-raw/wiki.test.raw", encoding: .utf8)
    let tokens = try perplexityTokens(raw: raw, tokenizer: m.tokenizer, proto: .gptq)
    let stream = try Data(contentsOf: URL(fileURLWithPath: fixturesRoot + "/smollm2/wikitext2_test.tokens.u16.bin"))
    let want: [Int32] = stream.withUnsafeBytes { r in (0..<(r.count / 2)).map { Int32(r.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self)) } }
    #expect(tokens.count == fx["total_tokens"]!.int!)
    #expect(tokens == want)
    let r = try PerplexityEvaluator(model: m.model).evaluate(tokens: tokens, seqLen: 2048, maxWindows: 8)
    let ref = fx["ppl"]!.double!
    #expect(abs(r.perplexity - ref) / ref < 1e-3, "ppl \(r.perplexity) vs transformers \(ref)")
    let refCE = fx["mean_ce_per_window"]!.array!.map { $0.double! }
    for i in 0..<8 { #expect(abs(r.meanCE[i] - refCE[i]) < 1e-4, "window \(i): \(r.meanCE[i]) vs \(refCE[i])") }
  }
}

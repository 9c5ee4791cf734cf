// WikiText-2 perplexity, two protocols (anchors.md §2.6; deepcompressor.md §3.1):
// - gptq (default, what QoQ/AWQ/GPTQ papers report): HF test rows joined by "\n\n", tokenized once; n = numel / L
//   windows with stride L; per window mean CE over the L−1 shifted predictions; nll = meanCE·L;
//   ppl = exp(Σ nll / (n·L)).
// - llamacpp (llama-perplexity): wiki.test.raw as is; chunks of L with BOS in the first slot when the tokenizer adds
//   one; only the second half of each chunk is scored; ppl = exp(mean NLL over scored tokens).
import Foundation
import QoQIO
import QoQKernels
import QoQModels
import QoQTokenizers

public enum PerplexityProtocol: String, Sendable, CaseIterable { case gptq, llamacpp }

public struct PerplexityResult: Sendable {
  public var proto: PerplexityProtocol
  public var seqLen: Int
  public var windows: Int
  public var windowsAvailable: Int
  public var totalTokens: Int
  /// Per window: mean cross-entropy over the scored positions.
  public var meanCE: [Double]
  public var perplexity: Double
  /// Standard error of the perplexity (delta method over windows).
  public var standardError: Double
  public var seconds: Double
}

/// The GPTQ-protocol text: the rows of wiki.test.raw (each keeping its "\n", a blank " \n" line becoming "")
/// joined by "\n\n" — byte-identical to `"\n\n".join(load_dataset("wikitext", "wikitext-2-raw-v1")["test"]["text"])`.
public func wikitextGPTQText(raw: String) -> String {
  var rows: [Substring] = []
  var start = raw.startIndex
  let u = raw.utf8
  var i = u.startIndex
  while i < u.endIndex {
    if u[i] == UInt8(ascii: "\n") {
      let next = u.index(after: i)
      let line = raw[start..<next]
      rows.append(line == " \n" ? "" : line)
      start = next
    }
    i = u.index(after: i)
  }
  if start < raw.endIndex { rows.append(raw[start...]) }
  return rows.joined(separator: "\n\n")
}

/// Scores windows: Σ −log p(tokens[j+1] | tokens[...j]) over positions j in first..<last of one window.
public protocol WindowScorer {
  var maxContext: Int { get }
  func windowNLL(_ window: [Int32], from first: Int, to last: Int) throws -> Double
}

/// The reference model as a scorer: one forward over the window, logits in chunks of rows.
public struct ModelScorer: WindowScorer {
  public let model: LlamaModel
  /// Rows of logits computed at once (bounds memory: rows × vocab floats).
  public var logitsChunk = 256
  public init(model: LlamaModel) { self.model = model }
  public var maxContext: Int { model.maxContext }

  public func windowNLL(_ window: [Int32], from first: Int, to last: Int) throws -> Double {
    let hidden = try model.forward([window], caches: [KVCache(config: model.config, capacity: window.count)])
    let H = model.config.hiddenSize, V = model.config.vocabSize
    var total = 0.0
    var j = first
    hidden.withUnsafeBufferPointer { hb in
      while j < last {
        let rows = min(logitsChunk, last - j)
        let logits = model.logits(hb.baseAddress! + j * H, rows: rows)
        logits.withUnsafeBufferPointer { lb in
          for r in 0..<rows { total += logSumExp(lb.baseAddress! + r * V, V) - Double(lb[r * V + Int(window[j + r + 1])]) }
        }
        j += rows
      }
    }
    return total
  }
}

public struct PerplexityEvaluator {
  public let scorer: WindowScorer

  public init(model: LlamaModel) { scorer = ModelScorer(model: model) }
  public init(scorer: WindowScorer) { self.scorer = scorer }

  public func evaluate(tokens: [Int32], seqLen L: Int, maxWindows: Int? = nil, proto: PerplexityProtocol = .gptq,
                       bos: Int32? = nil, progress: ((Int, Int, Double) -> Void)? = nil) throws -> PerplexityResult {
    guard L >= 2 else { throw QoQError("--seq-len must be at least 2 (got \(L))") }
    guard L <= scorer.maxContext else { throw QoQError("--seq-len \(L) exceeds the model's context of \(scorer.maxContext)") }
    let available = tokens.count / L
    guard available > 0 else { throw QoQError("the dataset has \(tokens.count) tokens, fewer than one window of \(L)") }
    let n = min(available, maxWindows ?? available)
    guard n > 0 else { throw QoQError("--max-windows must be positive") }
    let start = Date()
    var meanCE: [Double] = []
    var sumNLL = 0.0, count = 0
    for w in 0..<n {
      var window = Array(tokens[(w * L)..<((w + 1) * L)])
      if proto == .llamacpp, let b = bos { window[0] = b }
      let first = proto == .gptq ? 0 : L / 2
      let s = try scorer.windowNLL(window, from: first, to: L - 1)
      let scored = L - 1 - first
      meanCE.append(s / Double(scored))
      switch proto {
      case .gptq: sumNLL += meanCE.last! * Double(L); count += L
      case .llamacpp: sumNLL += s; count += scored
      }
      progress?(w + 1, n, exp(sumNLL / Double(count)))
    }
    let ppl = exp(sumNLL / Double(count))
    // Delta method: SE(ppl) ≈ ppl · SE(mean CE over windows).
    var se = 0.0
    if n > 1 {
      let m = meanCE.reduce(0, +) / Double(n)
      let v = meanCE.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(n - 1)
      se = ppl * (v / Double(n)).squareRoot()
    }
    return PerplexityResult(proto: proto, seqLen: L, windows: n, windowsAvailable: available, totalTokens: tokens.count,
                            meanCE: meanCE, perplexity: ppl, standardError: se, seconds: Date().timeIntervalSince(start))
  }
}

/// Tokens of the evaluation text for a protocol. `raw` is wiki.test.raw's content.
public func perplexityTokens(raw: String, tokenizer: Tokenizer, proto: PerplexityProtocol) throws -> [Int32] {
  switch proto {
  case .gptq:
    // Tokenized once with the tokenizer's default special tokens: one BOS at the very start if it adds one.
    return try tokenizer.encode(wikitextGPTQText(raw: raw), addSpecialTokens: true, parseSpecial: false)
  case .llamacpp:
    return try tokenizer.encode(raw, addSpecialTokens: true, parseSpecial: false)
  }
}

// Zero-shot multiple-choice evaluation in lm-evaluation-harness's way (deepcompressor.md §3.2): every choice is
// scored by the log-likelihood of its continuation given the context; acc takes the best raw log-likelihood,
// acc_norm the best log-likelihood per character of the choice (lm-eval's acc_norm); LAMBADA-style items score
// whether the greedy continuation equals the target. Nothing can be downloaded here, so task data is the user's,
// one JSON object per line (JSONL):
//   multiple choice (HellaSwag, PIQA, ARC-Easy/Challenge):  {"context": "...", "choices": ["...", "..."], "gold": 1}
//   partial scoring (WinoGrande: one context per choice, one continuation):
//                                                          {"contexts": ["...", "..."], "continuation": "...", "gold": 0}
//   last-word prediction (LAMBADA):                        {"context": "...", "continuation": " word"}
// Tokenization follows lm-eval's HF path: no BOS; trailing spaces of the context move to the continuation; the
// continuation's tokens are those of encode(context + continuation) after encode(context); an empty context is
// replaced by the end-of-text token.
import Foundation
import QoQIO
import QoQKernels
import QoQModels
import QoQTokenizers

public struct TaskItem: Sendable, Equatable {
  /// (context, continuation) pairs, one per choice (one in total for LAMBADA items).
  public var pairs: [(String, String)]
  public var gold: Int
  /// Character length used by acc_norm, one per choice.
  public var normLengths: [Int]
  public var greedyTask: Bool

  public static func == (a: TaskItem, b: TaskItem) -> Bool {
    a.gold == b.gold && a.greedyTask == b.greedyTask && a.normLengths == b.normLengths
      && a.pairs.map { $0.0 + "\u{0}" + $0.1 } == b.pairs.map { $0.0 + "\u{0}" + $0.1 }
  }
}

public enum TaskFile {
  /// Parses a JSONL task file; every error names the file and line.
  public static func parse(_ text: String, name: String) throws -> [TaskItem] {
    var items: [TaskItem] = []
    for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
      let line = raw.trimmingCharacters(in: .whitespaces)
      if line.isEmpty { continue }
      let at = "\(name):\(i + 1)"
      let v: JSONValue
      do { v = try JSON.parse(Data(line.utf8), what: at) } catch { throw QoQError("\(at): not valid JSON") }
      guard v.object != nil else { throw QoQError("\(at): each line must be a JSON object") }
      if let choices = v["choices"] {
        guard let ctx = v["context"]?.string else { throw QoQError("\(at): \"context\" must be a string") }
        guard let cs = choices.array, cs.count >= 2, cs.allSatisfy({ $0.string != nil }) else {
          throw QoQError("\(at): \"choices\" must be a list of at least two strings")
        }
        let g = try gold(v, count: cs.count, at: at)
        let strs = cs.map { $0.string! }
        items.append(TaskItem(pairs: strs.map { (ctx, $0) }, gold: g, normLengths: strs.map { $0.count }, greedyTask: false))
      } else if let contexts = v["contexts"] {
        guard let cs = contexts.array, cs.count >= 2, cs.allSatisfy({ $0.string != nil }) else {
          throw QoQError("\(at): \"contexts\" must be a list of at least two strings")
        }
        guard let cont = v["continuation"]?.string, !cont.isEmpty else { throw QoQError("\(at): \"continuation\" must be a non-empty string") }
        let g = try gold(v, count: cs.count, at: at)
        items.append(TaskItem(pairs: cs.map { ($0.string!, cont) }, gold: g, normLengths: cs.map { _ in cont.count }, greedyTask: false))
      } else if let cont = v["continuation"] {
        guard let ctx = v["context"]?.string else { throw QoQError("\(at): \"context\" must be a string") }
        guard let c = cont.string, !c.isEmpty else { throw QoQError("\(at): \"continuation\" must be a non-empty string") }
        items.append(TaskItem(pairs: [(ctx, c)], gold: 0, normLengths: [c.count], greedyTask: true))
      } else {
        throw QoQError("\(at): expected \"choices\", \"contexts\" or \"continuation\"")
      }
    }
    guard !items.isEmpty else { throw QoQError("\(name): no examples") }
    return items
  }

  static func gold(_ v: JSONValue, count: Int, at: String) throws -> Int {
    guard let g = v["gold"]?.int else { throw QoQError("\(at): \"gold\" must be an integer") }
    guard g >= 0 && g < count else { throw QoQError("\(at): \"gold\" \(g) is outside 0..<\(count)") }
    return g
  }
}

/// What the model said about one (context, continuation) pair.
public struct LogLikelihood: Sendable, Equatable {
  public var logProb: Double
  public var isGreedy: Bool
  public init(logProb: Double, isGreedy: Bool) { self.logProb = logProb; self.isGreedy = isGreedy }
}

public struct TaskResult: Sendable {
  public var name: String
  public var count: Int
  public var acc: Double
  public var accStderr: Double
  public var accNorm: Double?
  public var perplexity: Double?  // LAMBADA-style: exp(−mean log-likelihood of the target)
}

public enum ZeroShotMetrics {
  /// acc / acc_norm (multiple choice) or greedy accuracy and target perplexity (LAMBADA) from the log-likelihoods
  /// of every pair of every item, in item order.
  public static func compute(name: String, items: [TaskItem], scores: [[LogLikelihood]]) -> TaskResult {
    precondition(items.count == scores.count)
    var correct = 0.0, correctNorm = 0.0, lls = 0.0
    var hits: [Double] = []
    for (it, s) in zip(items, scores) {
      if it.greedyTask {
        let hit = s[0].isGreedy ? 1.0 : 0.0
        correct += hit; hits.append(hit); lls += s[0].logProb
        continue
      }
      // argmax with the first index winning ties (numpy's argmax, as lm-eval).
      var best = 0, bestNorm = 0
      for i in 1..<s.count {
        if s[i].logProb > s[best].logProb { best = i }
        if s[i].logProb / Double(max(1, it.normLengths[i])) > s[bestNorm].logProb / Double(max(1, it.normLengths[bestNorm])) { bestNorm = i }
      }
      let hit = best == it.gold ? 1.0 : 0.0
      correct += hit; hits.append(hit)
      correctNorm += bestNorm == it.gold ? 1 : 0
    }
    let n = Double(items.count)
    let acc = correct / n
    // Sample standard error of the mean (lm-eval's stderr for acc).
    let se = n > 1 ? (hits.reduce(0) { $0 + ($1 - acc) * ($1 - acc) } / (n - 1) / n).squareRoot() : 0
    let greedy = items.first?.greedyTask ?? false
    return TaskResult(name: name, count: items.count, acc: acc, accStderr: se, accNorm: greedy ? nil : correctNorm / n,
                      perplexity: greedy ? exp(-lls / n) : nil)
  }
}

public struct ZeroShotEvaluator {
  public let model: LlamaModel
  public let tokenizer: Tokenizer
  /// Requests scored per forward (sequences batched together).
  public var batchSize = 8

  public init(model: LlamaModel, tokenizer: Tokenizer) { self.model = model; self.tokenizer = tokenizer }

  /// lm-eval's (context, continuation) tokenization.
  public func encodePair(_ context: String, _ continuation: String) throws -> (ctx: [Int32], cont: [Int32]) {
    var ctx = context, cont = continuation
    let trailing = ctx.count - String(ctx.reversed().drop { $0 == " " }.reversed()).count
    if trailing > 0 { cont = String(ctx.suffix(trailing)) + cont; ctx = String(ctx.dropLast(trailing)) }
    var c = try tokenizer.encode(ctx, addSpecialTokens: false, parseSpecial: false)
    let whole = try tokenizer.encode(ctx + cont, addSpecialTokens: false, parseSpecial: false)
    var k = whole.count >= c.count && Array(whole.prefix(c.count)) == c ? Array(whole.dropFirst(c.count)) : []
    if k.isEmpty { k = try tokenizer.encode(cont, addSpecialTokens: false, parseSpecial: false) }
    if c.isEmpty {
      guard let eot = tokenizer.eosTokenIds.first ?? model.config.eosTokenIds.first.map(Int32.init) ?? tokenizer.bosTokenId else {
        throw QoQError("an empty context needs an end-of-text token, and the tokenizer has none")
      }
      c = [eot]
    }
    return (c, k)
  }

  /// Log-likelihoods of many pairs, batched; inputs longer than the context keep their last tokens (lm-eval).
  public func score(_ pairs: [(String, String)]) throws -> [LogLikelihood] {
    let V = model.config.vocabSize, H = model.config.hiddenSize, maxLen = min(model.maxContext, model.config.maxPositionEmbeddings)
    var out = [LogLikelihood](repeating: LogLikelihood(logProb: 0, isGreedy: false), count: pairs.count)
    let encoded = try pairs.map { try encodePair($0.0, $0.1) }
    var i = 0
    while i < pairs.count {
      let j = min(pairs.count, i + batchSize)
      var seqs: [[Int32]] = [], conts: [Int] = []
      for (c, k) in encoded[i..<j] {
        let full = Array((c + k).suffix(maxLen + 1).dropLast())  // inputs: predict every continuation token
        seqs.append(full); conts.append(min(k.count, full.count))
      }
      let hidden = try model.forward(seqs, caches: seqs.map { KVCache(config: model.config, capacity: $0.count) })
      var row0 = 0
      for (b, s) in seqs.enumerated() {
        let (_, k) = encoded[i + b]
        let first = s.count - conts[b]  // first row whose prediction is a continuation token
        let logits = hidden.withUnsafeBufferPointer { model.logits($0.baseAddress! + (row0 + first) * H, rows: conts[b]) }
        var lp = 0.0, greedy = true
        logits.withUnsafeBufferPointer { lb in
          for t in 0..<conts[b] {
            let row = lb.baseAddress! + t * V, target = Int(k[k.count - conts[b] + t])
            lp += Double(row[target]) - logSumExp(row, V)
            if argmax(row, V) != target { greedy = false }
          }
        }
        out[i + b] = LogLikelihood(logProb: lp, isGreedy: greedy)
        row0 += s.count
      }
      i = j
    }
    return out
  }

  public func evaluate(name: String, items: [TaskItem]) throws -> (TaskResult, [[LogLikelihood]]) {
    let flat = items.flatMap(\.pairs)
    let s = try score(flat)
    var scores: [[LogLikelihood]] = []
    var k = 0
    for it in items { scores.append(Array(s[k..<(k + it.pairs.count)])); k += it.pairs.count }
    return (ZeroShotMetrics.compute(name: name, items: items, scores: scores), scores)
  }
}

// Per-request sampling and stop strings (qserve.md §6, §1.8 item 4). QServe itself samples greedily for every
// request; the Swift engine honours each request's parameters. Order and semantics follow llama.cpp / HF.
import Foundation
import QoQIO

public struct SamplingParams: Sendable, Equatable {
  /// 0 = greedy.
  public var temperature: Float = 0
  /// 0 = off.
  public var topK = 0
  public var topP: Float = 1
  public var minP: Float = 0
  /// > 0; HF / llama.cpp semantics: for ids in the history, a logit > 0 is divided by it, otherwise multiplied.
  public var repetitionPenalty: Float = 1
  /// OpenAI semantics, over the generated tokens only: logit −= frequency · count + presence · (count > 0). −2…2.
  public var presencePenalty: Float = 0
  public var frequencyPenalty: Float = 0
  /// Added to the logits of these ids before anything else (OpenAI's logit_bias, −100…100).
  public var logitBias: [Int32: Float] = [:]
  /// nil: the engine picks one.
  public var seed: UInt64? = nil
  public var maxTokens = 16
  public var stopTokenIds: [Int32] = []
  public var stopStrings: [String] = []

  public init() {}

  /// Throws a QoQError naming the first bad field.
  public func validate(vocabSize: Int) throws {
    if !temperature.isFinite || temperature < 0 {
      throw QoQError("sampling: temperature must be a finite number ≥ 0 (got \(temperature))")
    }
    if topK < 0 { throw QoQError("sampling: topK must be ≥ 0, 0 meaning off (got \(topK))") }
    if !(topP > 0 && topP <= 1) { throw QoQError("sampling: topP must be in (0, 1] (got \(topP))") }
    if !(minP >= 0 && minP < 1) { throw QoQError("sampling: minP must be in [0, 1) (got \(minP))") }
    if !repetitionPenalty.isFinite || repetitionPenalty <= 0 {
      throw QoQError("sampling: repetitionPenalty must be a finite number > 0 (got \(repetitionPenalty))")
    }
    for (name, v) in [("presencePenalty", presencePenalty), ("frequencyPenalty", frequencyPenalty)] where !(v >= -2 && v <= 2) {
      throw QoQError("sampling: \(name) must be in −2…2 (got \(v))")
    }
    for (t, b) in logitBias.sorted(by: { $0.key < $1.key }) {
      if t < 0 || Int(t) >= vocabSize { throw QoQError("sampling: logitBias token \(t) is outside the vocabulary 0..<\(vocabSize)") }
      if !(b >= -100 && b <= 100) { throw QoQError("sampling: logitBias for token \(t) must be in −100…100 (got \(b))") }
    }
    if maxTokens <= 0 { throw QoQError("sampling: maxTokens must be positive (got \(maxTokens))") }
    for t in stopTokenIds where t < 0 || Int(t) >= vocabSize {
      throw QoQError("sampling: stopTokenIds entry \(t) is outside the vocabulary 0..<\(vocabSize)")
    }
    if stopStrings.contains(where: \.isEmpty) { throw QoQError("sampling: stopStrings must not contain \"\"") }
  }
}

/// Draws tokens for one request with its own generator, so outputs do not depend on what else is in the batch.
public struct Sampler: Sendable {
  public let params: SamplingParams
  var rng: SplitMix64

  public init(params: SamplingParams, seed: UInt64) {
    self.params = params
    rng = SplitMix64(seed: seed)
  }

  /// Picks the next token from raw logits (vocab) given the sequence's tokens so far (for the penalties; those
  /// from `generatedFrom` on are the generated ones). Order as vLLM / llama.cpp / HF: logit bias → repetition
  /// penalty → presence and frequency penalties → greedy if temperature == 0 (ties → lowest id) → temperature →
  /// top-k → softmax → top-p → min-p → draw. NaN logits count as -inf; if nothing finite is left the result is
  /// the greedy answer, 0.
  /// The same choice from a logits row read in place: greedy decoding with no bias or penalty (what most decode steps
  /// do) takes the argmax without copying the row (NaN as -inf, ties → lowest id, as below); anything else copies it.
  public mutating func sample(row: UnsafeBufferPointer<Float>, history: [Int32], generatedFrom: Int = 0) -> Int32 {
    precondition(!row.isEmpty, "Sampler.sample: empty logits")
    guard params.temperature == 0, params.logitBias.isEmpty, params.repetitionPenalty == 1, params.presencePenalty == 0,
          params.frequencyPenalty == 0 else {
      return sample(Array(row), history: history, generatedFrom: generatedFrom)
    }
    return Int32(argmax(row))
  }

  public mutating func sample(_ logits: [Float], history: [Int32], generatedFrom: Int = 0) -> Int32 {
    precondition(!logits.isEmpty, "Sampler.sample: empty logits")
    var l = logits.map { $0.isNaN ? -Float.infinity : $0 }
    for (t, b) in params.logitBias where t >= 0 && Int(t) < l.count { l[Int(t)] += b }
    let p = params.repetitionPenalty
    if p != 1 {
      // Each id is penalized once however often it occurs (as HF's gather/scatter does).
      var seen = Set<Int32>()
      for t in history where t >= 0 && Int(t) < l.count && seen.insert(t).inserted {
        l[Int(t)] = l[Int(t)] > 0 ? l[Int(t)] / p : l[Int(t)] * p
      }
    }
    if params.presencePenalty != 0 || params.frequencyPenalty != 0 {
      var counts: [Int32: Int] = [:]
      for t in history[min(max(0, generatedFrom), history.count)...] where t >= 0 && Int(t) < l.count { counts[t, default: 0] += 1 }
      for (t, c) in counts { l[Int(t)] -= params.frequencyPenalty * Float(c) + params.presencePenalty }
    }
    let best = l.withUnsafeBufferPointer { argmax($0) }
    if params.temperature == 0 || l[best] == -Float.infinity { return Int32(best) }

    // Temperature as (l - max) / T: the maximum maps to 0, so a tiny T cannot overflow to inf - inf = NaN.
    let m = l[best], invT = 1 / params.temperature
    var cand: [Int] = []
    cand.reserveCapacity(l.count)
    for i in l.indices where l[i] > -Float.infinity { cand.append(i) }
    var scaled = [Float](repeating: -Float.infinity, count: l.count)
    for i in cand { scaled[i] = (l[i] - m) * invT }

    // Sorted by (value descending, id ascending): a deterministic order for top-k / top-p ties.
    var sorted = false
    func sortCandidates() {
      if !sorted { cand.sort { scaled[$0] != scaled[$1] ? scaled[$0] > scaled[$1] : $0 < $1 }; sorted = true }
    }
    if params.topK > 0 && params.topK < cand.count {
      sortCandidates()
      cand.removeSubrange(params.topK...)
    }

    // Softmax over the survivors; the best one has weight exp(0) = 1.
    var prob = [Float](repeating: 0, count: l.count)
    var sum: Float = 0
    for i in cand { let e = Foundation.exp(scaled[i]); prob[i] = e; sum += e }
    for i in cand { prob[i] /= sum }
    let maxProb = 1 / sum

    // Top-p and min-p each keep a prefix of the descending order (top-p: the shortest prefix reaching topP,
    // counting the token that crosses it, as llama.cpp; min-p: prob ≥ minP · maxProb). Their composition is the
    // shorter prefix, so min-p is applied first as a cheap filter and the cumulative sum still uses the
    // probabilities of the top-p step.
    if params.minP > 0 {
      let threshold = params.minP * maxProb
      cand.removeAll { prob[$0] < threshold }
    }
    if params.topP < 1 {
      sortCandidates()
      var cum: Float = 0
      var keep = cand.count
      for (k, i) in cand.enumerated() {
        cum += prob[i]
        if cum >= params.topP { keep = k + 1; break }
      }
      cand.removeSubrange(keep...)
    }

    // Draw in proportion to the surviving probabilities (renormalized implicitly by the total).
    var total: Double = 0
    for i in cand { total += Double(prob[i]) }
    let u = Double(rng.next() >> 11) * 0x1p-53 * total
    var acc: Double = 0
    for i in cand {
      acc += Double(prob[i])
      if u < acc { return Int32(i) }
    }
    return Int32(cand.last ?? best)
  }
}

/// Index of the largest value; ties go to the lowest index (strict comparison), NaN counts as -inf, all -inf (or NaN)
/// gives 0. The one argmax of the sampler: greedy rows read in place and filtered copies both use it.
func argmax(_ l: UnsafeBufferPointer<Float>) -> Int {
  var best = 0, bestValue = l[0].isNaN ? -Float.infinity : l[0]
  for i in 1..<l.count where l[i] > bestValue { best = i; bestValue = l[i] }
  return best
}

/// Scalar twin of StopStringMatcher (the engine uses the matcher; tests compare the two).
/// Stop strings over incrementally decoded text: the decoded text of the generated tokens so far
/// (so a stop string split across two decoded pieces is found once both are in). Returns where the earliest
/// occurrence of any stop string starts, if any. Matching is on Unicode scalars, like Python's `str.find` in vLLM:
/// a stop "\n" must match inside "\r\n", which is a single Character. The index is scalar-aligned; cut with
/// `String(text.unicodeScalars[..<index])`.
public func stopStringMatch(_ text: String, stops: [String]) -> String.Index? {
  let hay = Array(text.unicodeScalars)
  var best: Int?
  for stop in stops {
    let needle = Array(stop.unicodeScalars)
    if needle.isEmpty || needle.count > hay.count { continue }
    let last = min(hay.count - needle.count, (best ?? Int.max) - 1)
    if last < 0 { continue }
    for start in 0...last where hay[start] == needle[0] && hay[start..<start + needle.count].elementsEqual(needle) {
      best = start
      break
    }
  }
  guard let b = best else { return nil }
  return text.unicodeScalars.index(text.unicodeScalars.startIndex, offsetBy: b)
}

/// Streaming helper: how many trailing Unicode scalars of `text` could be the beginning of a stop string. A
/// streaming engine holds them back until the next piece decides whether they are a stop or ordinary text.
public func stopStringHoldback(_ text: String, stops: [String]) -> Int {
  let hay = Array(text.unicodeScalars)
  var hold = 0
  for stop in stops {
    let needle = Array(stop.unicodeScalars)
    // Longest proper prefix of the stop that is a suffix of the text.
    var k = min(needle.count - 1, hay.count)
    while k > hold {
      if hay[(hay.count - k)...].elementsEqual(needle[..<k]) { hold = k; break }
      k -= 1
    }
  }
  return hold
}

import XCTest
import QoQIO
@testable import QoQScheduler

final class SamplerTests: XCTestCase {
  func params(_ f: (inout SamplingParams) -> Void) -> SamplingParams {
    var p = SamplingParams()
    f(&p)
    return p
  }

  /// Draws `n` tokens and returns their frequencies.
  func frequencies(_ p: SamplingParams, _ logits: [Float], n: Int = 2000, seed: UInt64 = 42) -> [Int32: Double] {
    var s = Sampler(params: p, seed: seed)
    var counts: [Int32: Int] = [:]
    for _ in 0..<n { counts[s.sample(logits, history: []), default: 0] += 1 }
    return counts.mapValues { Double($0) / Double(n) }
  }

  /// The in-place row path (no copy for plain greedy decoding) picks what the array path picks, for greedy and sampled
  /// parameters, on rows with ties, NaNs, -inf and all-NaN rows; and a hand case: the first of two equal maxima.
  func testRowPathEqualsArrayPath() {
    var greedy = Sampler(params: SamplingParams(), seed: 1)
    let hand: [Float] = [.nan, 1, 3, 3, -.infinity]
    XCTAssertEqual(hand.withUnsafeBufferPointer { greedy.sample(row: $0, history: []) }, Int32(2))
    var rng = SplitMix64(seed: 7)
    let settings: [SamplingParams] = [params { _ in }, params { $0.repetitionPenalty = 1.3 }, params { $0.logitBias = [3: 5] },
                                      params { $0.temperature = 0.8; $0.topK = 5 }]
    for (k, p) in settings.enumerated() {
      for trial in 0..<200 {
        let n = 1 + trial % 37
        var row = (0..<n).map { _ in Float(rng.int(9)) - 4 }  // small integers: many ties
        if trial % 5 == 0 { row[rng.int(n)] = .nan }
        if trial % 7 == 0 { row[rng.int(n)] = -.infinity }
        if trial % 11 == 0 { row = [Float](repeating: .nan, count: n) }
        let history: [Int32] = [0, 1, 1, 3]
        var a = Sampler(params: p, seed: UInt64(trial)), b = a
        let viaRow = row.withUnsafeBufferPointer { a.sample(row: $0, history: history) }
        XCTAssertEqual(viaRow, b.sample(row, history: history), "setting \(k), trial \(trial): \(row)")
      }
    }
  }

  /// Checks the support set exactly and the frequencies within `tol` of the hand-computed probabilities.
  func assertDistribution(_ f: [Int32: Double], _ want: [Int32: Double], tol: Double = 0.04,
                          file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(Set(f.keys), Set(want.keys), "support", file: file, line: line)
    for (id, p) in want { XCTAssertEqual(f[id] ?? 0, p, accuracy: tol, "id \(id)", file: file, line: line) }
  }

  // Probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1.
  let logits: [Float] = [0.5, 0.3, 0.15, 0.05].map { Float(Foundation.log($0)) }

  func testGreedyArgmaxLowestIdOnTies() {
    var s = Sampler(params: SamplingParams(), seed: 1)
    XCTAssertEqual(s.sample([0.1, 3, -2, 3, 2.9], history: []), 1)
    XCTAssertEqual(s.sample([-5, -1, -1], history: []), 1)
    XCTAssertEqual(s.sample(logits, history: []), 0)
  }

  func testUnfilteredDistribution() {
    assertDistribution(frequencies(params { $0.temperature = 1 }, logits), [0: 0.5, 1: 0.3, 2: 0.15, 3: 0.05])
  }

  /// top-k = 2 keeps {0, 1}: 0.5/0.8 and 0.3/0.8. At temperature 2 the kept probabilities go as their square
  /// roots: √.5/(√.5+√.3) = 0.5635.
  func testTopK() {
    assertDistribution(frequencies(params { $0.temperature = 1; $0.topK = 2 }, logits), [0: 0.625, 1: 0.375])
    assertDistribution(frequencies(params { $0.temperature = 2; $0.topK = 2 }, logits), [0: 0.5635, 1: 0.4365])
    // topK larger than the vocabulary is no filter.
    assertDistribution(frequencies(params { $0.temperature = 1; $0.topK = 100 }, logits),
                       [0: 0.5, 1: 0.3, 2: 0.15, 3: 0.05])
  }

  /// top-p = 0.9: cumulative 0.5, 0.8, 0.95 → the token that crosses 0.9 is kept: {0, 1, 2} renormalized by 0.95.
  /// top-p = 0.75 → {0, 1}. top-p = 0.4 → {0}.
  func testTopP() {
    assertDistribution(frequencies(params { $0.temperature = 1; $0.topP = 0.9 }, logits),
                       [0: 0.5 / 0.95, 1: 0.3 / 0.95, 2: 0.15 / 0.95])
    assertDistribution(frequencies(params { $0.temperature = 1; $0.topP = 0.75 }, logits), [0: 0.625, 1: 0.375])
    assertDistribution(frequencies(params { $0.temperature = 1; $0.topP = 0.4 }, logits), [0: 1])
  }

  /// min-p = 0.2: threshold 0.2 × 0.5 = 0.1 → {0, 1, 2}; min-p = 0.35: threshold 0.175 → {0, 1}. Combined with
  /// top-p = 0.9 ({0, 1, 2}) the stricter one wins.
  func testMinP() {
    assertDistribution(frequencies(params { $0.temperature = 1; $0.minP = 0.2 }, logits),
                       [0: 0.5 / 0.95, 1: 0.3 / 0.95, 2: 0.15 / 0.95])
    assertDistribution(frequencies(params { $0.temperature = 1; $0.minP = 0.35 }, logits), [0: 0.625, 1: 0.375])
    assertDistribution(frequencies(params { $0.temperature = 1; $0.minP = 0.35; $0.topP = 0.9 }, logits),
                       [0: 0.625, 1: 0.375])
    // min-p is relative to the best probability, so it is unchanged by the renormalization after top-k = 3:
    // 0.25 · 0.5/0.95 = 0.132 ≤ 0.15/0.95 keeps {0, 1, 2}.
    assertDistribution(frequencies(params { $0.temperature = 1; $0.topK = 3; $0.minP = 0.25 }, logits),
                       [0: 0.5 / 0.95, 1: 0.3 / 0.95, 2: 0.15 / 0.95])
  }

  /// As the temperature goes to 0 the draw becomes the argmax, without overflow (inf - inf) at tiny values.
  func testTemperatureToZero() {
    var rng = SplitMix64(seed: 9)
    for _ in 0..<20 {
      let l = (0..<50).map { _ in Float(rng.int(10_000)) / 1000 + Float(rng.int(1000)) * 1e-7 }
      let best = Int32(l.firstIndex(of: l.max()!)!)  // independent of the sampler's argmax; ties → lowest id
      for t: Float in [1e-3, 1e-6, 1e-30] {
        var s = Sampler(params: params { $0.temperature = t }, seed: 5)
        for _ in 0..<20 { XCTAssertEqual(s.sample(l, history: []), best, "T = \(t)") }
      }
    }
    // A moderate temperature on the same kind of input does draw other tokens, so the check above can fail.
    let f = frequencies(params { $0.temperature = 1 }, [1, 1.1, 0.9, 1.05])
    XCTAssertEqual(f.count, 4)
  }

  /// Logit 2 for id 0 in the history, penalty 2 → 1 < 1.5: id 1 wins. A negative logit is multiplied: -1 → -2,
  /// so -1.5 wins. Repeated ids are penalized once.
  func testRepetitionPenalty() {
    var s = Sampler(params: params { $0.repetitionPenalty = 2 }, seed: 1)
    XCTAssertEqual(s.sample([2, 1.5, -1], history: []), 0)
    XCTAssertEqual(s.sample([2, 1.5, -1], history: [0]), 1)
    XCTAssertEqual(s.sample([2, 0.6, -1], history: [0, 0, 0, 0]), 0, "once: 2/2 = 1 > 0.6, not 2/2⁴")
    XCTAssertEqual(s.sample([-1, -1.5], history: []), 0)
    XCTAssertEqual(s.sample([-1, -1.5], history: [0]), 1)
    XCTAssertEqual(s.sample([-1, -1.5], history: [0, 7, -3]), 1, "out-of-vocabulary history ids are ignored")
    var mild = Sampler(params: params { $0.repetitionPenalty = 1.2 }, seed: 1)
    XCTAssertEqual(mild.sample([2, 1.5, -1], history: [0]), 0, "2/1.2 = 1.67 > 1.5")
  }

  /// OpenAI's presence/frequency penalties over the generated tokens only, and logit_bias, checked by hand.
  func testPresenceFrequencyAndLogitBias() {
    // Generated [2, 2, 1] after a prompt [0, 0]: frequency 0.5, presence 1 →
    // logit 2: 3 − 2·0.5 − 1 = 1; logit 1: 2 − 0.5 − 1 = 0.5; the prompt's 0 is not penalized: 1.
    var s = Sampler(params: params { $0.frequencyPenalty = 0.5; $0.presencePenalty = 1 }, seed: 1)
    XCTAssertEqual(s.sample([1, 2, 3, 0.9], history: [0, 0, 2, 2, 1], generatedFrom: 2), 0, "1 ties 1: lowest id")
    XCTAssertEqual(s.sample([1, 2, 3.01, 0.9], history: [0, 0, 2, 2, 1], generatedFrom: 2), 2, "1.01 > 1")
    XCTAssertEqual(s.sample([1, 2, 3, 0.9], history: [0, 0, 2, 2, 1], generatedFrom: 5), 2, "nothing generated yet: no penalty")
    var neg = Sampler(params: params { $0.presencePenalty = -2 }, seed: 1)
    XCTAssertEqual(neg.sample([1, 0, -0.5], history: [2], generatedFrom: 0), 2, "a negative presence penalty favours repeats")
    var bias = Sampler(params: params { $0.logitBias = [3: 5, 0: -100] }, seed: 1)
    XCTAssertEqual(bias.sample([10, 2, 3, 0], history: []), 3, "10 − 100 < 0 + 5")
    // Bias applies before temperature: a +100 bias makes a sampled draw certain.
    var hot = Sampler(params: params { $0.temperature = 1; $0.logitBias = [1: 100] }, seed: 7)
    for _ in 0..<50 { XCTAssertEqual(hot.sample(logits, history: []), 1) }
  }

  func testSeedReproducibility() {
    let p = params { $0.temperature = 1 }
    let l = (0..<64).map { Float($0 % 7) * 0.1 }
    func draw(_ seed: UInt64) -> [Int32] {
      var s = Sampler(params: p, seed: seed)
      return (0..<100).map { _ in s.sample(l, history: []) }
    }
    XCTAssertEqual(draw(7), draw(7))
    XCTAssertNotEqual(draw(7), draw(8))
  }

  /// NaN counts as -inf; all -inf / NaN gives 0 without trapping, greedy or not.
  func testNaNAndInfinities() {
    let nan = Float.nan, inf = Float.infinity
    var g = Sampler(params: SamplingParams(), seed: 1)
    XCTAssertEqual(g.sample([nan, 1, nan, 2], history: []), 3)
    XCTAssertEqual(g.sample([nan, nan], history: []), 0)
    XCTAssertEqual(g.sample([-inf, -inf, -inf], history: []), 0)
    let f = frequencies(params { $0.temperature = 1 }, [nan, 1, nan, 1.2, -inf])
    XCTAssertEqual(Set(f.keys), [1, 3])
    var t = Sampler(params: params { $0.temperature = 0.7; $0.topP = 0.5; $0.minP = 0.1 }, seed: 1)
    XCTAssertEqual(t.sample([nan, nan, nan], history: [1]), 0)
    XCTAssertEqual(t.sample([-inf, -inf], history: []), 0)
    XCTAssertEqual(t.sample([-inf, 3, -inf], history: [1]), 1)
  }

  func testValidate() throws {
    try SamplingParams().validate(vocabSize: 10)
    try params { $0.temperature = 0.8; $0.topK = 5; $0.topP = 1; $0.minP = 0.05; $0.stopTokenIds = [0, 9]
      $0.stopStrings = ["\n"] }.validate(vocabSize: 10)
    let bad: [(String, (inout SamplingParams) -> Void)] = [
      ("temperature", { $0.temperature = -0.1 }), ("temperature", { $0.temperature = .nan }),
      ("temperature", { $0.temperature = .infinity }), ("topK", { $0.topK = -1 }),
      ("topP", { $0.topP = 0 }), ("topP", { $0.topP = 1.01 }), ("topP", { $0.topP = .nan }),
      ("minP", { $0.minP = 1 }), ("minP", { $0.minP = -0.1 }),
      ("repetitionPenalty", { $0.repetitionPenalty = 0 }), ("repetitionPenalty", { $0.repetitionPenalty = .nan }),
      ("maxTokens", { $0.maxTokens = 0 }), ("stopTokenIds", { $0.stopTokenIds = [10] }),
      ("stopTokenIds", { $0.stopTokenIds = [-1] }), ("stopStrings", { $0.stopStrings = ["x", ""] }),
      ("presencePenalty", { $0.presencePenalty = 2.5 }), ("frequencyPenalty", { $0.frequencyPenalty = .nan }),
      ("logitBias", { $0.logitBias = [10: 1] }), ("logitBias", { $0.logitBias = [1: 101] }),
    ]
    for (field, f) in bad { assertQoQError(field) { try params(f).validate(vocabSize: 10) } }
  }

  func testStopStringMatch() {
    func offset(_ text: String, _ stops: [String]) -> Int? {
      let u = text.unicodeScalars
      return stopStringMatch(text, stops: stops).map { u.distance(from: u.startIndex, to: $0) }
    }
    XCTAssertEqual(offset("Hello world", ["wor"]), 6)
    XCTAssertEqual(offset("abc STOP def END", ["END", "STOP"]), 4, "the earliest occurrence of any stop")
    XCTAssertEqual(offset("abcabc", ["bc"]), 1, "the first occurrence")
    XCTAssertNil(offset("Hello", ["world", "Hello!"]))
    XCTAssertNil(offset("", ["x"]))
    XCTAssertNil(offset("abc", []))
    // "\r\n" is one Character; the stop "\n" still matches inside it.
    let t = "line\r\nnext"
    XCTAssertEqual(offset(t, ["\n"]), 5)
    XCTAssertEqual(String(t.unicodeScalars[..<stopStringMatch(t, stops: ["\n"])!]), "line\r")
    XCTAssertEqual(offset("naïve café ☕️ ok", ["☕️"]), 11)
  }

  /// A stop string split across two decoded pieces: not found in the first piece (but held back from
  /// streaming), found once the second arrives, and the text is cut where it starts.
  func testStopStringAcrossPieces() {
    let stops = ["world", "</s>"]
    var text = ""
    text += "Hello wo"
    XCTAssertNil(stopStringMatch(text, stops: stops))
    XCTAssertEqual(stopStringHoldback(text, stops: stops), 2, "\"wo\" may start \"world\"")
    text += "rld! more"
    let cut = stopStringMatch(text, stops: stops)!
    XCTAssertEqual(String(text.unicodeScalars[..<cut]), "Hello ")
    XCTAssertEqual(stopStringHoldback("a <", stops: stops), 1)
    XCTAssertEqual(stopStringHoldback("a </s", stops: stops), 3)
    XCTAssertEqual(stopStringHoldback("abc", stops: stops), 0)
  }
}

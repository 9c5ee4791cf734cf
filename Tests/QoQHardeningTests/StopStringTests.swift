// Class 4 (part): stop strings cost linear time per generated token. The Aho–Corasick matcher is checked against the
// naive scalar twins (stopStringMatch / stopStringHoldback) on random texts fed in random pieces, and its work is
// counted on the adversarial case that made the old search quadratic (16 stop strings of 2,000 scalars each that
// almost match the text at every position).
import Foundation
import Testing
import QoQIO
@testable import QoQScheduler

@Suite struct StopStringTests {
  /// Earliest end, longest on a tie: computed by brute force over every prefix.
  static func naiveFirstCompleted(_ scalars: [Unicode.Scalar], _ stops: [String]) -> Int? {
    let needles = stops.map { Array($0.unicodeScalars) }.filter { !$0.isEmpty }
    for end in 1...max(1, scalars.count) where end <= scalars.count {
      var best: Int?
      for n in needles where n.count <= end && Array(scalars[(end - n.count)..<end]) == n {
        best = min(best ?? Int.max, end - n.count)
      }
      if let b = best { return b }
    }
    return nil
  }

  @Test func matchesNaiveTwinOnRandomTexts() {
    var rng = SplitMix64(seed: 42)
    let alphabet: [Unicode.Scalar] = ["a", "b", "c", "\n", "é", "☕"]
    for trial in 0..<400 {
      let stops = (0..<(1 + rng.int(4))).map { _ in String(String.UnicodeScalarView((0..<(1 + rng.int(4))).map { _ in alphabet[rng.int(3)] })) }
      let text = (0..<rng.int(40)).map { _ in alphabet[rng.int(alphabet.count)] }
      var m = StopStringMatcher(stops)
      var fed = 0, found: Int?
      while fed < text.count && found == nil {
        let n = 1 + rng.int(5)
        let piece = text[fed..<min(text.count, fed + n)]
        found = m.feed(piece)
        fed = min(text.count, fed + n)
        if found == nil {
          // The hold-back equals the naive longest suffix that is a proper prefix of a stop string.
          let s = String(String.UnicodeScalarView(text[0..<fed]))
          #expect(m.holdback == stopStringHoldback(s, stops: stops), "trial \(trial): holdback of \(s.debugDescription) for \(stops)")
        }
      }
      let want = Self.naiveFirstCompleted(Array(text[0..<(found == nil ? text.count : m.consumed)]), stops)
      #expect(found == want, "trial \(trial): \(String(String.UnicodeScalarView(text)).debugDescription) stops \(stops)")
    }
  }

  @Test func handChecked() {
    var m = StopStringMatcher(["world", "</s>"])
    #expect(m.feed("Hello wo".unicodeScalars) == nil)
    #expect(m.holdback == 2)
    #expect(m.feed("rld! more".unicodeScalars) == 6)
    var crlf = StopStringMatcher(["\n"])
    #expect(crlf.feed("line\r\nnext".unicodeScalars) == 5, "\\n matches inside the single Character \\r\\n")
    var none = StopStringMatcher([])
    #expect(none.feed("abc".unicodeScalars) == nil && none.holdback == 0)
  }

  /// The adversarial case: text "aaaa…" and 16 stop strings "a…ab", "a…ac", … of 2,000 scalars. The old search did
  /// ~Σ|stop|² scalar comparisons per token for the hold-back alone (64 million); the automaton makes at most two moves
  /// per scalar fed, whatever the stop strings.
  @Test func linearWorkOnAdversarialStops() {
    let letters = Array("bcdefghijklmnopq")
    let stops = letters.map { String(repeating: "a", count: 1999) + String($0) }
    var m = StopStringMatcher(stops)
    var total = 0
    for _ in 0..<500 {  // 500 tokens of 8 scalars each
      #expect(m.feed(String(repeating: "a", count: 8).unicodeScalars) == nil)
      total += 8
    }
    #expect(m.moves <= 2 * total, "moves \(m.moves) for \(total) scalars")
    #expect(m.holdback == 1999)
    #expect(m.feed("c".unicodeScalars) == total + 1 - 2000)
  }
}

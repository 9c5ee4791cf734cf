// Stop strings in linear time (hardening issue, class 4): an Aho–Corasick automaton over the request's stop strings,
// fed only the newly decoded Unicode scalars at each step. Each step costs O(new scalars) amortized, whatever the
// number and length of the stop strings (the naive search cost O(text × Σ|stop| + Σ|stop|²) per token, so 16 long
// stop strings slowed every other request in the batch). The automaton's state also gives the streaming hold-back:
// its depth is the longest suffix of the text that is a prefix of some stop string.
// Semantics: the first occurrence to complete wins (earliest end); of several ending at the same scalar, the longest.

public struct StopStringMatcher: Sendable {
  /// Trie transitions per node (scalar value → node), failure links, node depth, and the longest stop string that
  /// ends at each node (following failure links; 0 = none).
  var next: [[UInt32: Int32]] = [[:]]
  var fail: [Int32] = [0]
  var depth: [Int32] = [0]
  var outLen: [Int32] = [0]
  var state: Int32 = 0
  /// Scalars fed so far.
  public private(set) var consumed = 0
  /// Automaton moves made so far (transitions and failure steps): at most 2 per scalar fed, which tests check.
  public private(set) var moves = 0
  public let isEmpty: Bool

  public init(_ stops: [String]) {
    isEmpty = stops.allSatisfy(\.isEmpty)
    for s in stops where !s.isEmpty {
      var node: Int32 = 0
      var d: Int32 = 0
      for u in s.unicodeScalars {
        d += 1
        if let n = next[Int(node)][u.value] { node = n; continue }
        next.append([:]); fail.append(0); depth.append(d); outLen.append(0)
        let n = Int32(next.count - 1)
        next[Int(node)][u.value] = n
        node = n
      }
      outLen[Int(node)] = max(outLen[Int(node)], d)
    }
    // Breadth-first failure links: fail(child of v by c) = goto(fail(v), c).
    var queue: [Int32] = Array(next[0].values)
    var head = 0
    while head < queue.count {
      let v = queue[head]; head += 1
      outLen[Int(v)] = max(outLen[Int(v)], outLen[Int(fail[Int(v)])])
      for (c, child) in next[Int(v)] {
        var f = fail[Int(v)]
        while f != 0 && next[Int(f)][c] == nil { f = fail[Int(f)] }
        let target = next[Int(f)][c] ?? 0
        fail[Int(child)] = target == child ? 0 : target
        queue.append(child)
      }
    }
  }

  /// Feeds scalars in order; returns the offset (in scalars from the start of everything fed) where the first
  /// completed stop string begins, or nil. After a match the matcher should not be fed again.
  public mutating func feed<S: Sequence>(_ scalars: S) -> Int? where S.Element == Unicode.Scalar {
    if isEmpty { for _ in scalars { consumed += 1 }; return nil }
    for u in scalars {
      let c = u.value
      while state != 0 && next[Int(state)][c] == nil { state = fail[Int(state)]; moves += 1 }
      state = next[Int(state)][c] ?? 0
      consumed += 1
      moves += 1
      let m = outLen[Int(state)]
      if m > 0 { return consumed - Int(m) }
    }
    return nil
  }

  /// Trailing scalars of the fed text that could still begin a stop string (held back from streaming).
  public var holdback: Int { Int(depth[Int(state)]) }
}

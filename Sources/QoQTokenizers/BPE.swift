// The BPE model: a piece's symbols are merged by merge rank (lowest first, leftmost on ties) exactly as
// `tokenizers` Word::merge_all does, with a linked list and a binary heap (O(n log n) even for hostile input).
import Foundation
import QoQIO

public final class BPEModel: @unchecked Sendable {
  /// Token bytes (UTF-8) → id. Keys are bytes, not `String`: Swift strings compare by canonical equivalence, so
  /// "é" (U+00E9) and "e\u{301}" would collide although they are different tokens.
  let vocab: [[UInt8]: Int32]
  public let idToToken: [String]
  /// (left id << 32 | right id) → (rank, merged id).
  let merges: [UInt64: (rank: Int32, id: Int32)]
  public let unkId: Int32?
  public let fuseUnk: Bool
  public let byteFallback: Bool
  public let ignoreMerges: Bool
  /// `<0xXX>` token ids, when all 256 exist (byte fallback).
  let byteTokens: [Int32]?
  // Pieces already encoded; shared by every thread that encodes (a server's handlers), so guarded by a lock.
  private var cache: [[UInt8]: [Int32]] = [:]
  private let cacheLock = NSLock()
  private let cacheLimit = 100_000

  public init(vocab tokens: [(String, Int32)], merges: [(String, String)], unkToken: String?, fuseUnk: Bool,
              byteFallback: Bool, ignoreMerges: Bool) throws {
    var maxId: Int32 = -1
    var vocab: [[UInt8]: Int32] = [:]
    vocab.reserveCapacity(tokens.count)
    for (t, id) in tokens {
      guard id >= 0 else { throw QoQError("tokenizer: negative token id \(id)") }
      maxId = max(maxId, id)
      vocab[Array(t.utf8)] = id
    }
    guard maxId < 16_000_000 else { throw QoQError("tokenizer: token id \(maxId) is implausibly large") }
    self.vocab = vocab
    var names = [String](repeating: "", count: Int(maxId) + 1)
    for (t, id) in tokens { names[Int(id)] = t }
    idToToken = names
    var m: [UInt64: (Int32, Int32)] = [:]
    m.reserveCapacity(merges.count)
    for (rank, (a, b)) in merges.enumerated() {
      let ab = Array(a.utf8), bb = Array(b.utf8)
      guard let ia = vocab[ab], let ib = vocab[bb] else {
        throw QoQError("tokenizer: merge \(rank) (\"\(a)\" \"\(b)\") uses a token missing from the vocabulary")
      }
      guard let merged = vocab[ab + bb] else {
        throw QoQError("tokenizer: merge \(rank) (\"\(a)\" \"\(b)\") produces \"\(a + b)\", missing from the vocabulary")
      }
      let key = UInt64(UInt32(ia)) << 32 | UInt64(UInt32(ib))
      if m[key] == nil { m[key] = (Int32(rank), merged) }
    }
    self.merges = m
    if let u = unkToken {
      guard let id = vocab[Array(u.utf8)] else { throw QoQError("tokenizer: unk_token \(u) is not in the vocabulary") }
      unkId = id
    } else { unkId = nil }
    self.fuseUnk = fuseUnk
    self.byteFallback = byteFallback
    self.ignoreMerges = ignoreMerges
    if byteFallback {
      var bt: [Int32] = []
      for b in 0..<256 {
        guard let id = vocab[Array(String(format: "<0x%02X>", b).utf8)] else { break }
        bt.append(id)
      }
      byteTokens = bt.count == 256 ? bt : nil
    } else { byteTokens = nil }
  }

  /// The id of a token string (exact bytes), if in the vocabulary.
  public func tokenId(_ token: String) -> Int32? { vocab[Array(token.utf8)] }

  /// Token ids of one pre-tokenized piece.
  public func encode(_ piece: String, into out: inout [Int32]) {
    let key = Array(piece.utf8)
    if key.isEmpty { return }
    cacheLock.lock()
    let hit = cache[key]
    cacheLock.unlock()
    if let c = hit { out.append(contentsOf: c); return }
    var ids: [Int32] = []
    if ignoreMerges, let id = vocab[key] {
      ids = [id]
    } else {
      // Initial symbols: one per unicode scalar; unknown scalars → byte tokens or unk.
      var syms: [Int32] = []
      var lastWasUnk = false
      var scalarBytes: [UInt8] = []
      for u in piece.unicodeScalars {
        scalarBytes.removeAll(keepingCapacity: true)
        UTF8.encode(u) { scalarBytes.append($0) }
        if let id = vocab[scalarBytes] { syms.append(id); lastWasUnk = false; continue }
        if let bt = byteTokens {
          for b in scalarBytes { syms.append(bt[Int(b)]) }
          lastWasUnk = false
        } else if let unk = unkId {
          if !(fuseUnk && lastWasUnk) { syms.append(unk) }
          lastWasUnk = true
        }
      }
      ids = mergeAll(syms)
    }
    cacheLock.lock()
    if cache.count < cacheLimit { cache[key] = ids }
    cacheLock.unlock()
    out.append(contentsOf: ids)
  }

  /// Applies merges to a symbol sequence.
  func mergeAll(_ syms: [Int32]) -> [Int32] {
    let n = syms.count
    if n < 2 { return syms }
    var ids = syms
    var prev = (0..<n).map { $0 - 1 }
    var next = (0..<n).map { $0 + 1 }
    var alive = [Bool](repeating: true, count: n)
    var heap = MergeHeap()
    func key(_ a: Int32, _ b: Int32) -> UInt64 { UInt64(UInt32(a)) << 32 | UInt64(UInt32(b)) }
    for i in 0..<(n - 1) {
      if let m = merges[key(ids[i], ids[i + 1])] { heap.push(.init(rank: m.rank, pos: Int32(i), left: ids[i], right: ids[i + 1])) }
    }
    while let top = heap.pop() {
      let i = Int(top.pos)
      guard alive[i], ids[i] == top.left else { continue }
      let j = next[i]
      guard j < n, ids[j] == top.right else { continue }
      guard let m = merges[key(top.left, top.right)] else { continue }
      ids[i] = m.id
      alive[j] = false
      next[i] = next[j]
      if next[j] < n { prev[next[j]] = i }
      let p = prev[i]
      if p >= 0, let mm = merges[key(ids[p], ids[i])] {
        heap.push(.init(rank: mm.rank, pos: Int32(p), left: ids[p], right: ids[i]))
      }
      let q = next[i]
      if q < n, let mm = merges[key(ids[i], ids[q])] {
        heap.push(.init(rank: mm.rank, pos: Int32(i), left: ids[i], right: ids[q]))
      }
    }
    var out: [Int32] = []
    var i = 0
    while i < n { out.append(ids[i]); i = next[i] }
    return out
  }
}

/// Min-heap on (rank, pos).
struct MergeHeap {
  struct Entry { var rank: Int32; var pos: Int32; var left: Int32; var right: Int32 }
  var a: [Entry] = []
  @inline(__always) static func less(_ x: Entry, _ y: Entry) -> Bool { x.rank != y.rank ? x.rank < y.rank : x.pos < y.pos }
  mutating func push(_ e: Entry) {
    a.append(e)
    var i = a.count - 1
    while i > 0 {
      let p = (i - 1) / 2
      if Self.less(a[i], a[p]) { a.swapAt(i, p); i = p } else { break }
    }
  }
  mutating func pop() -> Entry? {
    guard let first = a.first else { return nil }
    let last = a.removeLast()
    if !a.isEmpty {
      a[0] = last
      var i = 0
      while true {
        let l = 2 * i + 1, r = l + 1
        var m = i
        if l < a.count && Self.less(a[l], a[m]) { m = l }
        if r < a.count && Self.less(a[r], a[m]) { m = r }
        if m == i { break }
        a.swapAt(i, m); i = m
      }
    }
    return first
  }
}

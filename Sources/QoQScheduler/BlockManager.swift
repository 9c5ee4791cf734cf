// Paged KV bookkeeping (qserve.md §1.3): a pool of fixed-size pages, each with a reference count, plus the prefix
// cache (vLLM's automatic prefix caching, SGLang's radix cache by another name): a full page whose K/V have been
// computed can be registered under the content hash of its tokens and of every token before it; it is then shared
// read-only by any request whose prompt starts with the same tokens, and kept after its last owner lets go, until
// a new page is needed and it is the least recently released one. The scheduler owns the manager; the engine only
// ever sees page ids inside block tables. Pure logic: no tensors, no threads.

/// What identifies a full page's contents: the chained hash of tokens 0 ..< (i+1)·blockSize, and the page's own
/// tokens, compared on every hit so that a hash collision within the page is caught (a collision of the whole
/// chain, 2⁻⁶⁴ per pair, is accepted, as vLLM accepts its own).
public struct PageKey: Hashable, Sendable {
  public let hash: UInt64
  public let tokens: [Int32]
  public init(hash: UInt64, tokens: [Int32]) { self.hash = hash; self.tokens = tokens }

  /// The key of the page after `parent` (nil: the first page) holding `tokens`. FNV-1a over the parent hash and the
  /// token ids, then SplitMix64's finalizer so that nearby inputs spread over the whole table.
  public static func chained(parent: UInt64?, tokens: ArraySlice<Int32>) -> PageKey {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    func mix(_ v: UInt64) { for k in 0..<8 { h = (h ^ ((v >> (8 * UInt64(k))) & 0xFF)) &* 0x100_0000_01b3 } }
    mix(parent ?? 0x9E37_79B9_7F4A_7C15)
    for t in tokens { mix(UInt64(UInt32(bitPattern: t))) }
    h = (h ^ (h >> 30)) &* 0xBF58_476D_1CE4_E5B9
    h = (h ^ (h >> 27)) &* 0x94D0_49BB_1331_11EB
    return PageKey(hash: h ^ (h >> 31), tokens: Array(tokens))
  }
}

/// Free list, reference counts and the prefix cache over page ids `0 ..< numBlocks`.
///
/// A page is in exactly one of three states: owned (refCount > 0), cached and idle (refCount 0, registered: on the
/// LRU list, reusable by a hit or evicted by `allocate`), or free (refCount 0, unregistered). `numFree` counts the
/// last two, because both can be handed out. Misuse (double free, unknown page) is a programming error in the
/// engine, not a user input, so it traps instead of throwing.
public final class BlockManager {
  public let numBlocks: Int
  // Popped from the end. Filled in descending order so that a fresh pool hands out 0, 1, 2, ...: block tables
  // are then predictable in tests and logs.
  private var free: [Int32]
  private var refs: [Int32]
  /// The registered key of each page, and the reverse map.
  private var keyOf: [PageKey?]
  private var pageOf: [UInt64: Int32] = [:]
  /// Idle cached pages as a doubly linked list in release order (head: least recently released, evicted first).
  private var prev: [Int32], next: [Int32]
  private var head: Int32 = -1, tail: Int32 = -1
  public private(set) var numIdleCached = 0
  /// Pages taken back from the cache by `allocate` since the start.
  public private(set) var evictions = 0

  public init(numBlocks: Int) {
    precondition(numBlocks >= 0 && numBlocks <= Int(Int32.max), "BlockManager: numBlocks \(numBlocks) out of range")
    self.numBlocks = numBlocks
    free = (0..<numBlocks).reversed().map { Int32($0) }
    refs = [Int32](repeating: 0, count: numBlocks)
    keyOf = [PageKey?](repeating: nil, count: numBlocks)
    prev = [Int32](repeating: -1, count: numBlocks)
    next = [Int32](repeating: -1, count: numBlocks)
  }

  /// Pages that `allocate` can hand out: free ones and idle cached ones.
  public var numFree: Int { free.count + numIdleCached }
  /// Registered pages, owned or idle.
  public var numCached: Int { pageOf.count }

  /// Pops a page with reference count 1: a free one, else the least recently released cached one (evicted from the
  /// cache); nil when every page is owned (the caller preempts or waits).
  public func allocate() -> Int32? {
    if let b = free.popLast() { refs[Int(b)] = 1; return b }
    guard head >= 0 else { return nil }
    let b = evictHead()
    evictions += 1
    refs[Int(b)] = 1
    return b
  }

  /// One more owner of a page: an owned page, or an idle cached one taken back from the LRU list (a cache hit).
  public func retain(_ b: Int32) {
    check(b)
    if refs[Int(b)] == 0 {
      precondition(keyOf[Int(b)] != nil, "BlockManager: retain of free page \(b)")
      unlink(b)
    }
    refs[Int(b)] += 1
  }

  /// Drops one owner; with none left the page goes to the end of the LRU list if cached, else to the free list.
  public func release(_ b: Int32) {
    check(b)
    precondition(refs[Int(b)] > 0, "BlockManager: double free of page \(b)")
    refs[Int(b)] -= 1
    guard refs[Int(b)] == 0 else { return }
    if keyOf[Int(b)] != nil { append(b) } else { free.append(b) }
  }

  public func refCount(_ b: Int32) -> Int {
    check(b)
    return Int(refs[Int(b)])
  }

  // MARK: prefix cache

  /// Registers an owned page whose K/V hold exactly `key`'s tokens. False (and nothing changes) when another page
  /// already holds that key (two requests computed the same prefix at once: the later copy stays private) or the
  /// page is registered already.
  @discardableResult public func register(_ b: Int32, key: PageKey) -> Bool {
    check(b)
    precondition(refs[Int(b)] > 0, "BlockManager: register of unowned page \(b)")
    guard keyOf[Int(b)] == nil, pageOf[key.hash] == nil else { return false }
    keyOf[Int(b)] = key
    pageOf[key.hash] = b
    return true
  }

  /// The cached page holding `key` (same chained hash and same tokens), owned or idle; nil on a miss.
  public func lookup(_ key: PageKey) -> Int32? {
    guard let b = pageOf[key.hash], keyOf[Int(b)]?.tokens == key.tokens else { return nil }
    return b
  }

  public func isCached(_ b: Int32) -> Bool { check(b); return keyOf[Int(b)] != nil }

  /// Forgets every idle cached page (they become free); owned pages stay registered.
  public func dropIdleCache() {
    while head >= 0 { free.append(evictHead()) }
  }

  /// Takes the least recently released idle cached page off the LRU list and out of the cache (the list is not empty).
  private func evictHead() -> Int32 {
    let b = head
    unlink(b)
    pageOf[keyOf[Int(b)]!.hash] = nil
    keyOf[Int(b)] = nil
    return b
  }

  // MARK: LRU list

  private func append(_ b: Int32) {
    prev[Int(b)] = tail; next[Int(b)] = -1
    if tail >= 0 { next[Int(tail)] = b } else { head = b }
    tail = b
    numIdleCached += 1
  }

  private func unlink(_ b: Int32) {
    let p = prev[Int(b)], n = next[Int(b)]
    if p >= 0 { next[Int(p)] = n } else { head = n }
    if n >= 0 { prev[Int(n)] = p } else { tail = p }
    prev[Int(b)] = -1; next[Int(b)] = -1
    numIdleCached -= 1
  }

  private func check(_ b: Int32) {
    precondition(b >= 0 && Int(b) < numBlocks, "BlockManager: page \(b) outside 0..<\(numBlocks)")
  }
}

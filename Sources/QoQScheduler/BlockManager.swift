// Paged KV bookkeeping (qserve.md §1.3): a pool of fixed-size pages, each with a reference count. The scheduler
// owns one; the engine only ever sees page ids inside block tables. Pure logic: no tensors, no threads.

/// Free list plus reference counts over page ids `0 ..< numBlocks`.
///
/// Reference counts exist so that a page can be shared (a forked prefix, copy-on-write); the scheduler itself
/// gives every page exactly one owner today. Misuse (double free, unknown page) is a programming error in the
/// engine, not a user input, so it traps instead of throwing.
public final class BlockManager {
  public let numBlocks: Int
  // Popped from the end. Filled in descending order so that a fresh pool hands out 0, 1, 2, ...: block tables
  // are then predictable in tests and logs.
  private var free: [Int32]
  private var refs: [Int32]

  public init(numBlocks: Int) {
    precondition(numBlocks >= 0 && numBlocks <= Int(Int32.max), "BlockManager: numBlocks \(numBlocks) out of range")
    self.numBlocks = numBlocks
    free = (0..<numBlocks).reversed().map { Int32($0) }
    refs = [Int32](repeating: 0, count: numBlocks)
  }

  public var numFree: Int { free.count }

  /// Pops a free page with reference count 1; nil when the pool is exhausted (the caller preempts or waits).
  public func allocate() -> Int32? {
    guard let b = free.popLast() else { return nil }
    refs[Int(b)] = 1
    return b
  }

  /// One more owner of an allocated page.
  public func retain(_ b: Int32) {
    check(b)
    precondition(refs[Int(b)] > 0, "BlockManager: retain of free page \(b)")
    refs[Int(b)] += 1
  }

  /// Drops one owner; the page returns to the free list when none is left.
  public func release(_ b: Int32) {
    check(b)
    precondition(refs[Int(b)] > 0, "BlockManager: double free of page \(b)")
    refs[Int(b)] -= 1
    if refs[Int(b)] == 0 { free.append(b) }
  }

  public func refCount(_ b: Int32) -> Int {
    check(b)
    return Int(refs[Int(b)])
  }

  private func check(_ b: Int32) {
    precondition(b >= 0 && Int(b) < numBlocks, "BlockManager: page \(b) outside 0..<\(numBlocks)")
  }
}

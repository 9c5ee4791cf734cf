// FP32 KV cache of one sequence for the reference forward pass (the engine has its own paged KV4 cache).

public final class KVCache {
  /// Per layer: keys and values, (capacity, kvHeads·headDim) row-major, post-RoPE keys.
  var keys: [UnsafeMutablePointer<Float>]
  var values: [UnsafeMutablePointer<Float>]
  public private(set) var capacity: Int
  public internal(set) var length = 0
  let rowSize: Int

  public init(config c: LlamaConfiguration, capacity: Int = 256) {
    rowSize = c.kvDim
    self.capacity = max(1, capacity)
    keys = (0..<c.numHiddenLayers).map { _ in .allocate(capacity: max(1, capacity) * c.kvDim) }
    values = (0..<c.numHiddenLayers).map { _ in .allocate(capacity: max(1, capacity) * c.kvDim) }
  }

  deinit {
    for p in keys { p.deallocate() }
    for p in values { p.deallocate() }
  }

  /// Makes room for `n` positions (amortized doubling).
  func reserve(_ n: Int) {
    guard n > capacity else { return }
    var newCap = capacity
    while newCap < n { newCap *= 2 }
    for l in 0..<keys.count {
      for isKey in [true, false] {
        let old = isKey ? keys[l] : values[l]
        let p = UnsafeMutablePointer<Float>.allocate(capacity: newCap * rowSize)
        p.update(from: old, count: length * rowSize)
        old.deallocate()
        if isKey { keys[l] = p } else { values[l] = p }
      }
    }
    capacity = newCap
  }

  /// Forgets everything past `n` tokens (for re-scoring or rollback).
  public func truncate(to n: Int) { length = min(length, max(0, n)) }
}

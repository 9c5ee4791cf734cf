// Reusable float buffers for paths that would otherwise allocate, first-touch and unmap the same large sizes on every
// call (a calibration pass runs a decoder layer chunk after chunk: tens of MB of activations each time, which glibc
// maps and unmaps afresh above its mmap threshold — page faults and zeroing on every call).
import Synchronization

/// A buffer lent by `ScratchBuffers`: at least the requested count of floats, contents undefined.
public struct ScratchBuffer: @unchecked Sendable {
  public let pointer: UnsafeMutablePointer<Float>
  public let capacity: Int
}

/// Buffers are kept after use and lent again to a request they can hold (the smallest such one). Thread-safe; memory
/// is held until the owner is freed, so an owner's lifetime bounds what it keeps (a layer's calibration model keeps
/// one layer's activations while that layer's chunks run, and frees them with the model).
public final class ScratchBuffers: @unchecked Sendable {
  private let free = Mutex<[ScratchBuffer]>([])

  public init() {}

  deinit { for b in free.withLock({ $0 }) { b.pointer.deallocate() } }

  /// A buffer of at least `count` floats (count ≥ 0).
  public func take(_ count: Int) -> ScratchBuffer {
    let need = max(1, count)
    let found: ScratchBuffer? = free.withLock { list in
      var best: Int? = nil
      for (i, b) in list.enumerated() where b.capacity >= need && (best == nil || b.capacity < list[best!].capacity) { best = i }
      return best.map { list.remove(at: $0) }
    }
    return found ?? ScratchBuffer(pointer: .allocate(capacity: need), capacity: need)
  }

  /// Returns a buffer from `take` for later requests.
  public func give(_ b: ScratchBuffer) { free.withLock { $0.append(b) } }
}

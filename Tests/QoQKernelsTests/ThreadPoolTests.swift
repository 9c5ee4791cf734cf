import Foundation
import CShim
import Synchronization
import Testing
@testable import QoQKernels

/// Per-slot counters (each slot is written only by the part that owns it; a part run twice would count 2).
final class Slots: @unchecked Sendable {
  let p: UnsafeMutablePointer<Int>, n: Int
  init(_ n: Int) { self.n = n; p = .allocate(capacity: max(1, n)); p.initialize(repeating: 0, count: max(1, n)) }
  deinit { p.deallocate() }
  var all: [Int] { Array(UnsafeBufferPointer(start: p, count: n)) }
}

/// The pool hands parts to whichever thread is free (issue #18): every part runs exactly once, at most `threads` at a
/// time, ranges cover every element once, and a part that stalls (a thread the OS does not schedule) leaves the
/// remaining parts to the other threads.
@Suite struct ThreadPoolTests {
  @Test(arguments: [1, 2, 3, 5]) func everyPartRunsOnceAndConcurrencyIsBounded(_ threads: Int) {
    let pool = ThreadPool(threads: threads)
    for n in [1, 2, 3, 17, 129] {
      let counts = Slots(n)
      let active = Atomic<Int>(0), peak = Atomic<Int>(0)
      pool.run(parts: n) { t in
        let now = active.add(1, ordering: .acquiringAndReleasing).newValue
        var p = peak.load(ordering: .relaxed)
        while now > p, !peak.compareExchange(expected: p, desired: now, ordering: .relaxed).exchanged { p = peak.load(ordering: .relaxed) }
        counts.p[t] += 1
        for _ in 0..<200 { shim_pause() }
        active.subtract(1, ordering: .acquiringAndReleasing)
      }
      #expect(counts.all == [Int](repeating: 1, count: n), "threads \(threads) parts \(n)")
      #expect(peak.load(ordering: .relaxed) <= threads)
    }
  }

  @Test(arguments: [1, 2, 5]) func rangesCoverEveryElementOnce(_ threads: Int) {
    let pool = ThreadPool(threads: threads)
    for count in [0, 1, 3, 17, 129, 1000] {
      let hits = Slots(count)
      pool.parts(count) { r in for i in r { hits.p[i] += 1 } }
      #expect(hits.all == [Int](repeating: 1, count: count), "threads \(threads) count \(count)")
    }
  }

  /// One part blocks until every other part has run: with parts claimed dynamically the other threads (the caller
  /// included) take them all; with parts bound to threads this would deadlock whenever the blocked part held a thread
  /// another part needed.
  @Test func aStalledPartDoesNotHoldTheOthers() {
    let pool = ThreadPool(threads: 2)
    let n = 64
    let done = Atomic<Int>(0)
    pool.run(parts: n) { t in
      if t == 0 {
        while done.load(ordering: .acquiring) < n - 1 { shim_pause() }
      }
      done.add(1, ordering: .releasing)
    }
    #expect(done.load(ordering: .relaxed) == n)
  }

  /// The caller parks at the join when a worker's part outlasts its spin, and the worker finishing the last part
  /// wakes it: parts of 0–400 µs race the park against the finish; a lost wake-up would hang this test (time limit).
  @Test(.timeLimit(.minutes(1))) func theCallerParksAndIsWoken() {
    let pool = ThreadPool(threads: 3)
    var rng = SystemRandomNumberGenerator()
    for round in 0..<300 {
      let n = 2 + round % 5
      let sleeps = (0..<n).map { _ in UInt32.random(in: 0...400, using: &rng) }
      let counts = Slots(n)
      pool.run(parts: n) { t in
        if sleeps[t] > 0 { usleep(sleeps[t]) }
        counts.p[t] += 1
      }
      #expect(counts.all == [Int](repeating: 1, count: n), "round \(round)")
    }
    #expect(pool.parkedJoins > 0, "parts of up to 400 µs outlast the caller's spin at least once")
  }

  /// Callers on several threads at once: one gets the workers, the others run their parts inline; all complete.
  @Test func concurrentCallers() async {
    final class Counter: Sendable { let v = Atomic<Int>(0) }
    let pool = ThreadPool(threads: 3), total = Counter()
    await withTaskGroup(of: Void.self) { g in
      for _ in 0..<8 {
        g.addTask { for _ in 0..<50 { pool.run(parts: 7) { _ in total.v.add(1, ordering: .relaxed) } } }
      }
    }
    #expect(total.v.load(ordering: .relaxed) == 8 * 50 * 7)
  }
}
/// `parts(_:parallel:)`: without `parallel` one call covers 0..<count on the caller; with it, the ranges cover each
/// index exactly once; an empty count calls nothing.
@Suite struct ThreadPoolPartsTests {
  @Test func serialOrSplitCoversEveryIndexOnce() {
    let pool = ThreadPool(threads: 2)
    for count in [0, 1, 17, 129] {
      for parallel in [false, true] {
        let seen = Mutex([Int](repeating: 0, count: count)), calls = Mutex(0)
        pool.parts(count, parallel: parallel) { r in
          calls.withLock { $0 += 1 }
          seen.withLock { for i in r { $0[i] += 1 } }
        }
        #expect(seen.withLock { $0 } == [Int](repeating: 1, count: count), "count \(count), parallel \(parallel)")
        if !parallel { #expect(calls.withLock { $0 } == (count > 0 ? 1 : 0)) }
      }
    }
  }
}

/// Scratch buffers are lent again to requests they can hold (the smallest that fits), a larger request gets its own,
/// and lending from many threads at once never hands one buffer to two borrowers.
@Suite struct ScratchBuffersTests {
  @Test func reusesAndNeverSharesABuffer() {
    let s = ScratchBuffers()
    let a = s.take(100), b = s.take(1000)
    #expect(a.capacity >= 100 && b.capacity >= 1000)
    s.give(a); s.give(b)
    let c = s.take(50)
    #expect(c.pointer == a.pointer, "the smallest buffer that fits is lent")
    let d = s.take(500)
    #expect(d.pointer == b.pointer)
    let e = s.take(2000)
    #expect(e.pointer != a.pointer && e.pointer != b.pointer && e.capacity >= 2000)
    s.give(c); s.give(d); s.give(e)
    // Concurrent borrowers each write their own marker and find it intact.
    let failures = Mutex(0)
    DispatchQueue.concurrentPerform(iterations: 64) { t in
      let buf = s.take(64 + t % 5)
      for i in 0..<64 { buf.pointer[i] = Float(t) }
      usleep(100)
      if (0..<64).contains(where: { buf.pointer[$0] != Float(t) }) { failures.withLock { $0 += 1 } }
      s.give(buf)
    }
    #expect(failures.withLock { $0 } == 0)
  }
}

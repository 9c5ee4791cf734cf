// A persistent two-way parallel-for. Dispatch and TaskGroup cost 14–50 µs per hand-off on this VM (a parked vCPU
// must be woken by the hypervisor), so the worker spins for a while after each job and only then parks
// (swift-perf.md §3). Used for large GEMMs only; everything else is single-threaded.
import CShim
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public final class ThreadPool: @unchecked Sendable {
  /// Threads taking part (1 = caller only). From QOQ_THREADS, else the number of online CPUs, capped at 2.
  public private(set) var threads: Int
  private let generation = Atomic<Int>(0)
  private let finished = Atomic<Int>(0)
  /// Held by the caller currently using the worker; a second concurrent caller runs both halves itself.
  private let busy = Atomic<Bool>(false)
  private var job: ((Int) -> Void)?
  private var mutex = pthread_mutex_t()
  private var cond = pthread_cond_t()
  private var started = false
  private let spinLimit = 200_000

  public static let shared: ThreadPool = {
    let env = ProcessInfo.processInfo.environment["QOQ_THREADS"].flatMap(Int.init)
    return ThreadPool(threads: env ?? min(2, ProcessInfo.processInfo.activeProcessorCount))
  }()

  init(threads: Int) {
    self.threads = max(1, min(2, threads))
    pthread_mutex_init(&mutex, nil)
    pthread_cond_init(&cond, nil)
  }

  /// Changes the thread count (1 or 2) for later calls.
  public func setThreads(_ n: Int) { threads = max(1, min(2, n)) }

  private func startWorker() {
    started = true
    var tid = pthread_t()
    let me = Unmanaged.passRetained(self).toOpaque()
    pthread_create(&tid, nil, { arg in
      let pool = Unmanaged<ThreadPool>.fromOpaque(arg!).takeRetainedValue()
      pool.workerLoop()
      return nil
    }, me)
    pthread_detach(tid)
  }

  private func workerLoop() {
    var seen = 0
    while true {
      var spins = 0
      var g = generation.load(ordering: .acquiring)
      while g == seen {
        if spins < spinLimit {
          shim_pause()
          spins += 1
        } else {
          pthread_mutex_lock(&mutex)
          while generation.load(ordering: .acquiring) == seen { pthread_cond_wait(&cond, &mutex) }
          pthread_mutex_unlock(&mutex)
        }
        g = generation.load(ordering: .acquiring)
      }
      seen = g
      job?(1)
      finished.store(g, ordering: .releasing)
    }
  }

  /// Runs body(0) on the caller and body(1) on the worker (or both on the caller when single-threaded or when
  /// another thread is using the worker). Safe to call from several threads at once.
  public func run2(_ body: (Int) -> Void) {
    if threads < 2 || !busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged {
      body(0); body(1); return
    }
    defer { busy.store(false, ordering: .releasing) }
    if !started { startWorker() }
    withoutActuallyEscaping(body) { b in
      job = b
      let g = generation.add(1, ordering: .acquiringAndReleasing).newValue
      pthread_mutex_lock(&mutex)
      pthread_cond_signal(&cond)
      pthread_mutex_unlock(&mutex)
      b(0)
      while finished.load(ordering: .acquiring) != g { shim_pause() }
      job = nil
    }
  }
}

extension ThreadPool {
  /// Splits 0..<count into one contiguous range per thread and runs body on each (empty ranges are skipped).
  public func parts(_ count: Int, _ body: (Range<Int>) -> Void) {
    let n = threads
    run2 { t in
      guard t < n else { return }
      let lo = count * t / n, hi = count * (t + 1) / n
      if lo < hi { body(lo..<hi) }
    }
  }
}

/// The GEMMs' traversal of a thread's row blocks: runs of blocks holding ~128 KB of weights (`blockBytes` each) stay in
/// L2 while every tile of up to 4 token rows passes over them, so weights stream from memory once per call whatever
/// the token count. body(firstTokenRow, tokenRows, blockRange).
@inline(__always)
func forEachWeightRun(_ blocks: Range<Int>, blockBytes: Int, tokens m: Int, _ body: (Int, Int, Range<Int>) -> Void) {
  let run = max(1, (128 << 10) / blockBytes)
  for c0 in stride(from: blocks.lowerBound, to: blocks.upperBound, by: run) {
    for r in stride(from: 0, to: m, by: 4) { body(r, min(4, m - r), c0..<min(blocks.upperBound, c0 + run)) }
  }
}

// A persistent parallel-for over `threads` threads: the caller and threads − 1 workers. Dispatch and TaskGroup cost
// 14–50 µs per hand-off on a VM (a parked vCPU must be woken by the hypervisor), so each worker spins for a while
// after a job and only then parks (swift-perf.md §3). Used for the GEMMs and attention; the rest is single-threaded.
// The default is every CPU this process may use (affinity mask and cgroup CPU quota), never a fixed cap.
import CShim
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public final class ThreadPool: @unchecked Sendable {
  /// Threads taking part (1 = caller only): QOQ_THREADS, else `availableCPUs()`.
  public private(set) var threads: Int
  private let generation = Atomic<Int>(0)
  /// Workers done with the current generation.
  private let finished = Atomic<Int>(0)
  /// Held by the caller currently using the workers; a second concurrent caller runs every part itself.
  private let busy = Atomic<Bool>(false)
  private var job: ((Int) -> Void)?
  /// Parts of the current job (workers with a higher index only report back).
  private var parts = 0
  private var workers = 0
  private var mutex = pthread_mutex_t()
  private var cond = pthread_cond_t()
  private let spinLimit = 200_000

  public static let shared: ThreadPool = {
    let env = ProcessInfo.processInfo.environment["QOQ_THREADS"].flatMap(Int.init).flatMap { $0 > 0 ? $0 : nil }
    return ThreadPool(threads: env ?? availableCPUs())
  }()

  public init(threads: Int) {
    self.threads = max(1, min(1024, threads))
    pthread_mutex_init(&mutex, nil)
    pthread_cond_init(&cond, nil)
  }

  /// Changes the thread count for later calls (1…1024).
  public func setThreads(_ n: Int) { threads = max(1, min(1024, n)) }

  /// CPUs this process may use: the affinity mask (taskset, cpusets), bounded by a cgroup v2 CPU quota
  /// (`cpu.max`, rounded up) where one is set; the online CPU count where neither is known.
  public static func availableCPUs() -> Int {
    var n = Int(qoq_affinity_cpus())
    if n <= 0 { n = ProcessInfo.processInfo.activeProcessorCount }
    if let text = try? String(contentsOfFile: "/sys/fs/cgroup/cpu.max", encoding: .utf8) {
      let f = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
      if f.count >= 2, let quota = Double(f[0]), let period = Double(f[1]), quota > 0, period > 0 {
        n = min(n, max(1, Int((quota / period).rounded(.up))))
      }
    }
    return max(1, n)
  }

  private func startWorker(_ index: Int) {
    var tid = pthread_t()
    // The worker starts from the generation current now (before the job that needed it is published), so a thread
    // that is scheduled late still sees that job.
    let box = Unmanaged.passRetained(WorkerStart(pool: self, index: index, seen: generation.load(ordering: .acquiring))).toOpaque()
    pthread_create(&tid, nil, { arg in
      let start = Unmanaged<WorkerStart>.fromOpaque(arg!).takeRetainedValue()
      start.pool.workerLoop(start.index, seen: start.seen)
      return nil
    }, box)
    pthread_detach(tid)
  }

  private final class WorkerStart {
    let pool: ThreadPool, index: Int, seen: Int
    init(pool: ThreadPool, index: Int, seen: Int) { self.pool = pool; self.index = index; self.seen = seen }
  }

  private func workerLoop(_ index: Int, seen start: Int) {
    var seen = start
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
      if index < parts { job?(index) }
      finished.add(1, ordering: .releasing)
    }
  }

  /// Runs body(t) for every t in 0..<threads: t = 0 on the caller, the others on the workers (or all on the caller
  /// when single-threaded or when another thread is using the workers). Safe to call from several threads at once.
  public func runAll(_ body: (Int) -> Void) { run(parts: threads, body) }

  /// Runs body(t) for every t in 0..<n (n ≥ 1; workers are added as needed).
  public func run(parts n: Int, _ body: (Int) -> Void) {
    if n < 2 || !busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged {
      for t in 0..<n { body(t) }
      return
    }
    defer { busy.store(false, ordering: .releasing) }
    // Workers are created once (the first time this many are needed) and live as long as the process.
    while workers < n - 1 { workers += 1; startWorker(workers) }
    let all = workers
    withoutActuallyEscaping(body) { b in
      job = b; parts = n
      finished.store(0, ordering: .relaxed)
      generation.add(1, ordering: .acquiringAndReleasing)
      pthread_mutex_lock(&mutex)
      pthread_cond_broadcast(&cond)
      pthread_mutex_unlock(&mutex)
      b(0)
      while finished.load(ordering: .acquiring) != all { shim_pause() }
      job = nil
    }
  }
}

extension ThreadPool {
  /// Splits 0..<count into one contiguous range per thread and runs body on each (empty ranges are skipped).
  public func parts(_ count: Int, _ body: (Range<Int>) -> Void) {
    let n = threads
    run(parts: n) { t in
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

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
  /// Held by the caller currently using the workers; a second concurrent caller runs every part itself.
  private let busy = Atomic<Bool>(false)
  /// The job of the current generation (guarded by `mutex`); workers keep a reference while they drain it.
  private var current: Job?
  private var workers = 0
  private var mutex = pthread_mutex_t()
  private var cond = pthread_cond_t()
  /// Signalled (under `mutex`) when the last part of a job whose caller parked at the join is done.
  private var doneCond = pthread_cond_t()
  private let spinLimit = 200_000
  /// When set, the time the caller spends waiting for workers after its own parts is added to `waitNanos` (the
  /// engine's step profile reports it as synchronisation).
  public var measureWait = false
  public private(set) var waitNanos: UInt64 = 0
  /// Joins at which the caller parked (its workers' parts outlasted the spin): written by the caller only.
  public private(set) var parkedJoins = 0
  public func resetWait() { waitNanos = 0 }

  /// One parallel-for: parts are claimed from `next` by whichever thread is free (the caller included), so a worker
  /// that the OS has not scheduled yet — a busy neighbour on the machine — delays nothing: the others take its parts
  /// (issue #18). `body` is only called for claimed parts < count, and the caller returns only when all of them are
  /// done, so a worker that wakes late finds nothing left to claim and never calls it.
  private final class Job: @unchecked Sendable {
    /// The caller's closure, on its stack: valid until every part is done (a raw pointer, so a late worker holding the
    /// job holds no reference to it).
    let body: UnsafeRawPointer
    let count: Int
    let next = Atomic<Int>(0)
    let done = Atomic<Int>(0)
    /// Set by the caller (under the pool's mutex) before it parks at the join; the thread finishing the last part
    /// then wakes it. Both sides use sequentially consistent order: the caller stores this and loads `done`, a worker
    /// adds to `done` and loads this, so at least one of them sees the other's write and no wake-up is lost.
    let callerParked = Atomic<Bool>(false)
    unowned(unsafe) let pool: ThreadPool
    init(_ body: UnsafeRawPointer, count: Int, pool: ThreadPool) { self.body = body; self.count = count; self.pool = pool }
    func drain() {
      let f = body.assumingMemoryBound(to: ((Int) -> Void).self)
      while true {
        let p = next.add(1, ordering: .relaxed).oldValue
        if p >= count { return }
        f.pointee(p)
        let finished = done.add(1, ordering: .sequentiallyConsistent).newValue
        if finished == count && callerParked.load(ordering: .sequentiallyConsistent) { pool.wakeCaller() }
      }
    }
  }

  fileprivate func wakeCaller() {
    pthread_mutex_lock(&mutex)
    pthread_cond_broadcast(&doneCond)
    pthread_mutex_unlock(&mutex)
  }

  public static let shared: ThreadPool = {
    let env = ProcessInfo.processInfo.environment["QOQ_THREADS"].flatMap(Int.init).flatMap { $0 > 0 ? $0 : nil }
    return ThreadPool(threads: env ?? availableCPUs())
  }()

  public init(threads: Int) {
    self.threads = max(1, min(1024, threads))
    pthread_mutex_init(&mutex, nil)
    pthread_cond_init(&cond, nil)
    pthread_cond_init(&doneCond, nil)
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

  private func startWorker() {
    var tid = pthread_t()
    // The worker starts from the generation current now (before the job that needed it is published), so a thread
    // that is scheduled late still sees that job.
    let box = Unmanaged.passRetained(WorkerStart(pool: self, seen: generation.load(ordering: .acquiring))).toOpaque()
    pthread_create(&tid, nil, { arg in
      let start = Unmanaged<WorkerStart>.fromOpaque(arg!).takeRetainedValue()
      start.pool.workerLoop(seen: start.seen)
      return nil
    }, box)
    pthread_detach(tid)
  }

  private final class WorkerStart {
    let pool: ThreadPool, seen: Int
    init(pool: ThreadPool, seen: Int) { self.pool = pool; self.seen = seen }
  }

  private func workerLoop(seen start: Int) {
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
      pthread_mutex_lock(&mutex)
      let job = current
      pthread_mutex_unlock(&mutex)
      job?.drain()
    }
  }

  /// Runs body(t) for every t in 0..<threads, each exactly once (on the caller or a worker; all on the caller when
  /// single-threaded or when another thread is using the workers). Safe to call from several threads at once.
  public func runAll(_ body: (Int) -> Void) { run(parts: threads, body) }

  /// Runs body(t) for every t in 0..<n (n ≥ 1), each exactly once, at most `threads` at a time. Which thread runs
  /// a part is not fixed: per-part scratch must be indexed by t (never by thread).
  public func run(parts n: Int, _ body: (Int) -> Void) {
    if n < 2 || threads < 2 || !busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged {
      for t in 0..<n { body(t) }
      return
    }
    defer { busy.store(false, ordering: .releasing) }
    // Workers are created once (the first time this many are needed) and live as long as the process.
    while workers < min(n, threads) - 1 { workers += 1; startWorker() }
    withoutActuallyEscaping(body) { b in
      let fn = b
      withUnsafePointer(to: fn) { runJob(Job(UnsafeRawPointer($0), count: n, pool: self)) }
    }
  }

  private func runJob(_ job: Job) {
    pthread_mutex_lock(&mutex)
    current = job
    generation.add(1, ordering: .acquiringAndReleasing)
    pthread_cond_broadcast(&cond)
    pthread_mutex_unlock(&mutex)
    job.drain()
    // Parts claimed by workers: spin briefly, then park until the last one is done. Parking, not sched_yield: a worker
    // that a busy neighbour has pushed off its core waits in the other core's run queue, and only a core that goes
    // idle pulls it over (issue #18 item 5). A yielding caller keeps its core busy, so the worker waited for the
    // neighbour's time slice to end while the caller spun.
    let t0 = measureWait ? monotonicNanos() : 0
    var spins = 0
    while job.done.load(ordering: .acquiring) != job.count {
      if spins < 4096 { shim_pause(); spins += 1; continue }
      parkedJoins += 1
      pthread_mutex_lock(&mutex)
      job.callerParked.store(true, ordering: .sequentiallyConsistent)
      while job.done.load(ordering: .sequentiallyConsistent) != job.count { pthread_cond_wait(&doneCond, &mutex) }
      pthread_mutex_unlock(&mutex)
    }
    if measureWait { waitNanos &+= monotonicNanos() &- t0 }
    pthread_mutex_lock(&mutex)
    if current === job { current = nil }
    pthread_mutex_unlock(&mutex)
  }
}

extension ThreadPool {
  /// Splits 0..<count into contiguous ranges, four per thread so that a thread slowed by a neighbour leaves its
  /// share to the others, and runs body on each (empty ranges are skipped). Each element is in exactly one range.
  public func parts(_ count: Int, _ body: (Range<Int>) -> Void) {
    let n = max(1, threads < 2 ? 1 : min(count, threads * 4))
    run(parts: n) { t in
      let lo = count * t / n, hi = count * (t + 1) / n
      if lo < hi { body(lo..<hi) }
    }
  }

  /// `parts` when `parallel` (work large enough to pay for the hand-off), else body(0..<count) on the caller.
  public func parts(_ count: Int, parallel: Bool, _ body: (Range<Int>) -> Void) {
    if parallel { parts(count, body) } else if count > 0 { body(0..<count) }
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

// Prometheus metrics of the server (/metrics, text exposition format 0.0.4): counters with labels, gauges read at
// scrape time, and histograms of time-to-first-token and inter-token latency.
import Foundation

public final class Counter: @unchecked Sendable {
  let name: String, help: String
  private let lock = NSLock()
  private var values: [String: Double] = [:]
  init(_ name: String, _ help: String) { self.name = name; self.help = help }
  public func add(_ v: Double, label: String = "") { lock.lock(); values[label, default: 0] += v; lock.unlock() }
  public func value(_ label: String = "") -> Double { lock.lock(); defer { lock.unlock() }; return values[label] ?? 0 }
  func render(labelName: String) -> String {
    lock.lock(); defer { lock.unlock() }
    var s = "# HELP \(name) \(help)\n# TYPE \(name) counter\n"
    if values.isEmpty { s += "\(name) 0\n" }
    for (l, v) in values.sorted(by: { $0.key < $1.key }) { s += l.isEmpty ? "\(name) \(fmt(v))\n" : "\(name){\(labelName)=\"\(l)\"} \(fmt(v))\n" }
    return s
  }
}

public final class Histogram: @unchecked Sendable {
  let name: String, help: String
  let bounds: [Double]
  private let lock = NSLock()
  private var counts: [Int]
  private var sum = 0.0, total = 0
  init(_ name: String, _ help: String, bounds: [Double]) {
    self.name = name; self.help = help; self.bounds = bounds; counts = [Int](repeating: 0, count: bounds.count)
  }
  public func observe(_ v: Double) {
    lock.lock(); defer { lock.unlock() }
    for (i, b) in bounds.enumerated() where v <= b { counts[i] += 1 }
    sum += v; total += 1
  }
  public var count: Int { lock.lock(); defer { lock.unlock() }; return total }
  func render() -> String {
    lock.lock(); defer { lock.unlock() }
    var s = "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
    for (i, b) in bounds.enumerated() { s += "\(name)_bucket{le=\"\(fmt(b))\"} \(counts[i])\n" }
    s += "\(name)_bucket{le=\"+Inf\"} \(total)\n\(name)_sum \(fmt(sum))\n\(name)_count \(total)\n"
    return s
  }
}

func fmt(_ v: Double) -> String { v == v.rounded() && abs(v) < 1e15 ? String(Int(v)) : String(v) }

public final class ServingMetrics: @unchecked Sendable {
  public let requests = Counter("qoq_requests_total", "Finished requests by outcome (stop, length, cancelled, rejected).")
  public let promptTokens = Counter("qoq_prompt_tokens_total", "Prompt tokens admitted.")
  public let generatedTokens = Counter("qoq_generation_tokens_total", "Tokens generated.")
  public let httpErrors = Counter("qoq_http_errors_total", "HTTP error responses by status.")
  static let latencyBounds = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
  public let ttft = Histogram("qoq_time_to_first_token_seconds", "Time from arrival to the first generated token.", bounds: latencyBounds)
  public let e2e = Histogram("qoq_e2e_request_latency_seconds", "Time from arrival to the end of a request.", bounds: latencyBounds)
  public let itl = Histogram("qoq_inter_token_latency_seconds", "Time between consecutive tokens of a request.", bounds: latencyBounds)

  /// The exposition text; gauges (queue, running, pages) are passed in at scrape time.
  public func render(queued: Int, running: Int, pagesUsed: Int, pagesTotal: Int,
                     prefix: (queried: Int, hits: Int, cachedPages: Int) = (0, 0, 0)) -> String {
    var s = ""
    for (n, h, v) in [("qoq_queue_depth", "Requests waiting for admission.", queued), ("qoq_running_requests", "Requests being computed.", running),
                      ("qoq_kv_pages_used", "KV cache pages in use.", pagesUsed), ("qoq_kv_pages_total", "KV cache pages in the pool.", pagesTotal)] {
      s += "# HELP \(n) \(h)\n# TYPE \(n) gauge\n\(n) \(v)\n"
    }
    s += "# HELP qoq_kv_cache_usage_ratio KV cache pages in use over the pool (vLLM's kv_cache_usage_perc).\n"
    s += "# TYPE qoq_kv_cache_usage_ratio gauge\nqoq_kv_cache_usage_ratio \(Double(pagesUsed) / Double(max(1, pagesTotal)))\n"
    // vLLM's prefix_cache_queries / prefix_cache_hits (tokens); the hit rate is hits / queries.
    for (n, h, v) in [("qoq_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache at admission.", prefix.queried),
                      ("qoq_prefix_cache_hits_total", "Prompt tokens found in the prefix cache (not recomputed).", prefix.hits)] {
      s += "# HELP \(n) \(h)\n# TYPE \(n) counter\n\(n) \(v)\n"
    }
    s += "# HELP qoq_prefix_cache_pages KV pages registered in the prefix cache (in use or idle).\n"
    s += "# TYPE qoq_prefix_cache_pages gauge\nqoq_prefix_cache_pages \(prefix.cachedPages)\n"
    s += requests.render(labelName: "outcome") + promptTokens.render(labelName: "") + generatedTokens.render(labelName: "")
    s += httpErrors.render(labelName: "status") + ttft.render() + itl.render() + e2e.render()
    return s
  }
}

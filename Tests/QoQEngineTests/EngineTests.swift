import Foundation
import Testing
@testable import QoQEngine
import QoQFormat
import QoQIO
import QoQModels
import QoQScheduler
import QoQTokenizers
import QoQTestSupport

@Suite struct EngineTests {
  static func model() throws -> (EngineModel, Tokenizer) {
    let (_, c) = try engineConfigs()[0]
    let path = try writeQuantizedTiny(c, format: .progressive(group: 32, protective: 120), dir: engineTempDir("eng"))
    return (try EngineModel.load(quantized: path, pageSize: 16), try Tokenizer.load(folder: path))
  }
  static let prompts: [[Int32]] = [[1, 2, 3, 4, 5], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11, 12, 13, 14, 15, 16, 17, 18], [42],
                                   (0..<40).map { Int32($0 * 7 % 100) }, [5, 5, 5, 5]]

  static func greedy(_ n: Int) -> SamplingParams { var p = SamplingParams(); p.maxTokens = n; return p }

  /// Independent reference: greedy decoding by hand, one sequence, prefill then one token per step.
  static func manualGreedy(_ m: EngineModel, _ prompt: [Int32], _ n: Int) throws -> [Int32] {
    let pool = try KVPool(format: m.kvFormat, layers: m.config.numHiddenLayers, numBlocks: 8)
    let ws = Workspace(config: m.config)
    let table: [Int32] = Array(0..<8)
    var out: [Int32] = []
    var logits = try m.step([SequenceChunk(start: 0, tokens: prompt, blockTable: table, logits: .last)], pool: pool, workspace: ws)
    for i in 0..<n {
      let t = Int32(logits.indices.max { logits[$0] < logits[$1] || (logits[$0] == logits[$1] && $0 > $1) }!)
      out.append(t)
      if i + 1 < n { logits = try m.step([SequenceChunk(start: prompt.count + i, tokens: [t], blockTable: table, logits: .last)], pool: pool, workspace: ws) }
    }
    return out
  }

  func run(_ e: Engine, _ prompts: [[Int32]], _ n: Int, cancel: Int? = nil) throws -> [Int: [Int32]] {
    let ids = try prompts.map { try e.add(prompt: $0, params: Self.greedy(n), ignoreEOS: true) }
    var out: [Int: [Int32]] = [:]
    var steps = 0
    while e.hasUnfinished {
      for ev in try e.step() { if case .finished(let id, _, _, let toks, _) = ev { out[id] = toks } }
      steps += 1
      if steps == 3, let c = cancel { #expect(e.cancel(ids[c])) }
    }
    #expect(e.scheduler.blocks.numFree == e.scheduler.blocks.numBlocks, "pages leaked")
    return out
  }

  /// Greedy outputs equal the hand-written decode loop, alone or batched, with plenty of pages or so few that
  /// requests are preempted and recomputed, and with small token budgets that split prefills into chunks.
  @Test func greedyOutputsIndependentOfBatchingAndPreemption() throws {
    let (m, _) = try Self.model()
    let n = 12
    let want = try Self.prompts.map { try Self.manualGreedy(m, $0, n) }
    var opts = EngineOptions(); opts.pageSize = 16; opts.numBlocks = 64
    for (i, p) in Self.prompts.enumerated() {
      let out = try run(try Engine(model: m, tokenizer: nil, options: opts), [p], n)
      #expect(out[0] == want[i], "alone \(i)")
    }
    let batched = try run(try Engine(model: m, tokenizer: nil, options: opts), Self.prompts, n)
    for i in Self.prompts.indices { #expect(batched[i] == want[i], "batched \(i)") }
    var tight = opts; tight.numBlocks = 4; tight.maxBatchedTokens = 7
    let e = try Engine(model: m, tokenizer: nil, options: tight)
    let ids = try Self.prompts.map { try e.add(prompt: $0, params: Self.greedy(n), ignoreEOS: true) }
    var out: [Int: [Int32]] = [:]
    while e.hasUnfinished {
      for ev in try e.step() { if case .finished(let id, _, _, let toks, _) = ev { out[id] = toks } }
    }
    for (i, id) in ids.enumerated() { #expect(out[id] == want[i], "tight pool \(i)") }
    #expect(e.scheduler.blocks.numFree == 4)
    #expect(e.preemptions > 0, "the tight pool never preempted")
    // qserve-v0 policy gives the same outputs.
    var v0 = opts; v0.policy = .qserveV0
    let outV0 = try run(try Engine(model: m, tokenizer: nil, options: v0), Self.prompts, n)
    for i in Self.prompts.indices { #expect(outV0[i] == want[i], "qserve-v0 \(i)") }
  }

  /// Bad requests are refused with a message; the others still finish; a cancelled request frees its pages.
  @Test func badRequestsAndCancel() throws {
    let (m, tok) = try Self.model()
    var opts = EngineOptions(); opts.pageSize = 16; opts.numBlocks = 32
    let e = try Engine(model: m, tokenizer: tok, options: opts)
    var bad = Self.greedy(4); bad.temperature = -1
    var zero = Self.greedy(4); zero.maxTokens = 0
    var topP = Self.greedy(4); topP.topP = 0
    let cases: [([Int32], SamplingParams, String)] = [
      ([1, 2], bad, "temperature"), ([1, 2], zero, "maxTokens"), ([1, 2], topP, "topP"), ([], Self.greedy(4), "empty"),
      ([1, 500], Self.greedy(4), "outside the vocabulary"),
      ([Int32](repeating: 3, count: m.maxContext), Self.greedy(4), "context"),
    ]
    let good = try e.add(prompt: [1, 2, 3], params: Self.greedy(5), ignoreEOS: true)
    for (p, s, msg) in cases {
      do { _ = try e.add(prompt: p, params: s); Issue.record("accepted: \(msg)") } catch let err as QoQError {
        #expect(err.message.contains(msg), "\(err.message)")
      }
    }
    let victim = try e.add(prompt: [4, 5, 6], params: Self.greedy(50), ignoreEOS: true)
    var finished: [Int: FinishReason] = [:]
    var steps = 0
    while e.hasUnfinished {
      for ev in try e.step() { if case .finished(let id, let r, _, _, _) = ev { finished[id] = r } }
      steps += 1
      if steps == 2 { #expect(e.cancel(victim)); #expect(!e.cancel(victim)) }
    }
    #expect(finished[good] == .length && finished[victim] == nil)
    #expect(e.scheduler.blocks.numFree == 32)
  }

  /// Stop tokens end a request without reporting the stop token; stop strings cut the text; streamed deltas add up
  /// to the final text; the same seed gives the same sampled output.
  @Test func stopConditionsStreamingAndSeeds() throws {
    let (m, tok) = try Self.model()
    var opts = EngineOptions(); opts.pageSize = 16; opts.numBlocks = 32
    let free = try Self.manualGreedy(m, [1, 2, 3], 10)
    // Stop token: the 4th greedy token.
    var p = Self.greedy(10); p.stopTokenIds = [free[3]]
    let e = try Engine(model: m, tokenizer: tok, options: opts)
    let id = try e.add(prompt: [1, 2, 3], params: p, ignoreEOS: true)
    var streamed = ""
    var final: (FinishReason, String, [Int32])?
    for ev in try e.runToCompletion() {
      if case .token(id, _, let t) = ev { streamed += t }
      if case .finished(id, let r, let text, let toks, _) = ev { final = (r, text, toks) }
    }
    let firstStop = free.firstIndex(of: free[3])!
    #expect(final?.0 == .stop && final?.2 == Array(free[..<firstStop]))
    #expect(streamed == final?.1)
    // Stop string: the decoded text of the first two greedy tokens' second one.
    let second = try tok.decode([free[1]])
    if !second.isEmpty {
      var ps = Self.greedy(10); ps.stopStrings = [second]
      let e2 = try Engine(model: m, tokenizer: tok, options: opts)
      let id2 = try e2.add(prompt: [1, 2, 3], params: ps, ignoreEOS: true)
      for ev in try e2.runToCompletion() {
        if case .finished(id2, let r, let text, _, _) = ev {
          let firstText = try tok.decode([free[0]]).components(separatedBy: second)[0]
          #expect(r == .stop && !text.contains(second) && text == firstText)
        }
      }
    }
    // Seeds.
    func sampled(_ seed: UInt64) throws -> [Int32] {
      var s = Self.greedy(8); s.temperature = 1; s.topK = 20; s.seed = seed
      let e3 = try Engine(model: m, tokenizer: nil, options: opts)
      let i = try e3.add(prompt: [7, 7], params: s, ignoreEOS: true)
      for ev in try e3.runToCompletion() { if case .finished(i, _, _, let toks, _) = ev { return toks } }
      return []
    }
    let a = try sampled(1), b = try sampled(1), c = try sampled(2)
    #expect(a == b && a != c)
  }
}

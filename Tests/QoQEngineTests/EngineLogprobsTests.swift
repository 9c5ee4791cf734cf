import Foundation
import Testing
@testable import QoQEngine
import QoQScheduler

/// Prompt and generated-token log-probabilities (what /v1/completions echo + logprobs returns).
@Suite struct EngineLogprobsTests {
  /// Reference: one whole-prompt step with every row's logits, log-softmax and top-k computed here in Double.
  static func reference(_ m: EngineModel, _ prompt: [Int32], top: Int) throws -> [(Double, [Int32])] {
    let pool = try KVPool(format: m.kvFormat, layers: m.config.numHiddenLayers, numBlocks: 8)
    let logits = try m.step([SequenceChunk(start: 0, tokens: prompt, blockTable: Array(0..<8), logits: .all)], pool: pool,
                            workspace: Workspace(config: m.config))
    let V = m.config.vocabSize
    return (1..<prompt.count).map { p in
      let row = logits[((p - 1) * V)..<(p * V)].map(Double.init)
      let mx = row.max()!
      let lse = mx + log(row.reduce(0) { $0 + exp($1 - mx) })
      let order = row.indices.sorted { row[$0] > row[$1] || (row[$0] == row[$1] && $0 < $1) }
      return (row[Int(prompt[p])] - lse, order.prefix(top).map { Int32($0 - row.startIndex) })
    }
  }

  @Test func promptAndTokenLogprobs() throws {
    let (m, _) = try EngineTests.model()
    let prompts = EngineTests.prompts
    let want = try prompts.map { try Self.reference(m, $0, top: 3) }
    // Roomy, and tight enough that prefills are split into chunks and requests preempted and recomputed.
    for (blocks, budget) in [(64, 512), (4, 7)] {
      var o = EngineOptions(); o.pageSize = 16; o.numBlocks = blocks; o.maxBatchedTokens = budget
      let e = try Engine(model: m, tokenizer: nil, options: o)
      let ids = try prompts.map { try e.add(prompt: $0, params: EngineTests.greedy(5), ignoreEOS: true,
                                            logprobs: LogprobRequest(generated: 2, prompt: 3)) }
      var promptLP: [Int: [TokenLogprob]] = [:], genLP: [Int: [TokenLogprob]] = [:], toks: [Int: [Int32]] = [:]
      while e.hasUnfinished {
        for ev in try e.step() {
          switch ev {
          case .logprobs(let id, true, let es): promptLP[id, default: []] += es
          case .logprobs(let id, false, let es): genLP[id, default: []] += es
          case .token(let id, let t, _): toks[id, default: []].append(t)
          default: break
          }
        }
      }
      for (i, id) in ids.enumerated() {
        let got = promptLP[id] ?? []
        #expect(got.count == prompts[i].count - 1, "prompt \(i): \(got.count) entries (blocks \(blocks))")
        for (p, (g, w)) in zip(got, want[i]).enumerated() {
          #expect(g.token == prompts[i][p + 1])
          #expect(abs(Double(g.logprob) - w.0) < 1e-3, "prompt \(i) pos \(p + 1): \(g.logprob) vs \(w.0)")
          #expect(g.top.map(\.token) == w.1, "prompt \(i) pos \(p + 1) top")
          #expect(g.top.count == 3 && zip(g.top, g.top.dropFirst()).allSatisfy { $0.logprob >= $1.logprob })
        }
        // Greedy: each generated token is the most likely one, and its logprob is the best alternative's.
        let gen = genLP[id] ?? []
        #expect(gen.count == 5 && gen.map(\.token) == toks[id])
        for g in gen { #expect(g.top.count == 2 && g.top[0].token == g.token && g.top[0].logprob == g.logprob && g.logprob <= 0) }
      }
      #expect(e.scheduler.blocks.numFree == blocks)
    }
    // Out-of-range top counts are refused.
    let e = try Engine(model: m, tokenizer: nil, options: { var o = EngineOptions(); o.pageSize = 16; o.numBlocks = 8; return o }())
    #expect(throws: (any Error).self) { try e.add(prompt: [1, 2], params: EngineTests.greedy(1), logprobs: LogprobRequest(prompt: 21)) }
  }
}

// Mixtral (transformers MixtralForCausalLM): the Mistral graph whose MLP is a sparse mixture of experts
// (`block_sparse_moe`): a router `gate` (E × H, no bias), softmax over the E logits in fp32, the top k experts per
// token, their weights renormalised to sum to 1, and each chosen expert's SwiGLU MLP w2(silu(w1·x) ⊙ w3·x) weighted
// and summed. GGUF files say general.architecture "llama" with llama.expert_count, and llama.cpp permutes Q/K rows.
import Foundation
import QoQIO
import QoQKernels

enum MixtralFamily {
  static let family = ModelFamily(modelType: "mixtral", architecture: "MixtralForCausalLM", ggufArchitecture: "llama",
                                  ggufPermutesQK: true, qkvBias: false)
}

/// One expert's MLP: w1 = gate (I × H), w3 = up (I × H), w2 = down (H × I), HF names `experts.{e}.w1|w2|w3`.
public struct Expert: @unchecked Sendable {
  public let w1: LinearLayer, w2: LinearLayer, w3: LinearLayer
  public init(w1: LinearLayer, w2: LinearLayer, w3: LinearLayer) { self.w1 = w1; self.w2 = w2; self.w3 = w3 }
}

/// A sparse MoE block (`model.layers.{i}.block_sparse_moe`): the router and the experts.
public final class MoEBlock: @unchecked Sendable {
  public let gate: LinearLayer  // router, E × H, kept at full precision
  public let experts: [Expert]
  public let topK: Int

  public init(gate: LinearLayer, experts: [Expert], topK: Int) {
    precondition(topK >= 1 && topK <= experts.count)
    self.gate = gate; self.experts = experts; self.topK = topK
  }

  /// The module names of layer i's MoE block, in HF naming (prefix `model.layers.{i}.block_sparse_moe.`).
  public static func prefix(layer i: Int) -> String { "model.layers.\(i).block_sparse_moe." }

  /// Routing of n tokens (rows of h, (n, H)): for each token its top-k experts (descending weight, ties to the lower
  /// index as torch.topk on CPU) and their renormalised weights. Softmax in fp32 over all E logits, as transformers.
  public func route(_ h: UnsafePointer<Float>, rows n: Int) -> [(expert: Int32, weight: Float)] {
    let E = experts.count
    var logits = [Float](repeating: 0, count: n * E)
    logits.withUnsafeMutableBufferPointer { gate.forward(h, rows: n, $0.baseAddress!) }
    var out: [(expert: Int32, weight: Float)] = []
    out.reserveCapacity(n * topK)
    var p = [Float](repeating: 0, count: E)
    for r in 0..<n {
      for e in 0..<E { p[e] = logits[r * E + e].isNaN ? -Float.infinity : logits[r * E + e] }
      let m = p.max()!
      var z: Float = 0
      for e in 0..<E { p[e] = m == -Float.infinity ? 1 : expf(p[e] - m); z += p[e] }
      for e in 0..<E { p[e] /= z }
      // Top k by (probability descending, index ascending).
      let chosen = (0..<E).sorted { p[$0] != p[$1] ? p[$0] > p[$1] : $0 < $1 }.prefix(topK)
      let sum = chosen.reduce(Float(0)) { $0 + p[$1] }
      for e in chosen { out.append((Int32(e), p[e] / sum)) }
    }
    return out
  }

  /// y (n, H) = Σ over each token's chosen experts of weight · expert(x). x: (n, H) normed inputs. Tokens are grouped
  /// by expert and each expert runs once over its tokens, so unchosen experts cost nothing; the weighted outputs are
  /// added in expert order, as transformers' index_add_ does. `observe(e, input, downInput, m)`: expert e's m routed
  /// rows of input (m, H) and of w2's input (m, I), for calibration.
  public func forward(_ x: UnsafePointer<Float>, rows n: Int, hidden H: Int, intermediate I: Int,
                      _ y: UnsafeMutablePointer<Float>,
                      observe: ((Int, UnsafePointer<Float>, UnsafePointer<Float>, Int) -> Void)? = nil) {
    let routes = route(x, rows: n)
    y.update(repeating: 0, count: n * H)
    var tokens = [[Int]](repeating: [], count: experts.count), weights = [[Float]](repeating: [], count: experts.count)
    for r in 0..<n {
      for j in 0..<topK { let (e, w) = routes[r * topK + j]; tokens[Int(e)].append(r); weights[Int(e)].append(w) }
    }
    let cap = tokens.map(\.count).max() ?? 0
    if cap == 0 { return }
    let xe = UnsafeMutablePointer<Float>.allocate(capacity: cap * H); defer { xe.deallocate() }
    let g = UnsafeMutablePointer<Float>.allocate(capacity: cap * I); defer { g.deallocate() }
    let u = UnsafeMutablePointer<Float>.allocate(capacity: cap * I); defer { u.deallocate() }
    let o = UnsafeMutablePointer<Float>.allocate(capacity: cap * H); defer { o.deallocate() }
    for (e, rows) in tokens.enumerated() where !rows.isEmpty {
      let m = rows.count, ex = experts[e]
      for (i, r) in rows.enumerated() { (xe + i * H).update(from: x + r * H, count: H) }
      ex.w1.forward(xe, rows: m, g)
      ex.w3.forward(xe, rows: m, u)
      // Row by row: a row's SIMD/tail split must not depend on where it lands in the gathered block, so that a
      // token's result is the same whatever other tokens its expert sees (batch and cache invariance).
      for i in 0..<m { siluMul(g + i * I, u + i * I, g + i * I, I) }
      observe?(e, xe, g, m)
      ex.w2.forward(g, rows: m, o)
      for (i, r) in rows.enumerated() {
        let w = weights[e][i], dst = y + r * H, src = o + i * H
        for c in 0..<H { dst[c] += w * src[c] }
      }
    }
  }
}

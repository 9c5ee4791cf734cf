// Perplexity through the engine: each window is prefilled in chunks into its own pages, logits of every position
// come out of the integer kernels and the paged KV cache — the same code path as generation.
import QoQEval
import QoQIO
import QoQKernels

public final class EngineScorer: WindowScorer {
  public let model: EngineModel
  /// Tokens per step (bounds the logits held at once: chunk × vocab floats).
  public let chunk: Int
  public var integerScores = true
  let ws: Workspace
  var pool: KVPool?

  public init(model: EngineModel, chunk: Int = 256) {
    self.model = model; self.chunk = max(1, chunk); ws = Workspace(config: model.config)
  }
  public var maxContext: Int { model.maxContext }

  public func windowNLL(_ window: [Int32], from first: Int, to last: Int) throws -> Double {
    let P = model.kvFormat.pageSize, pages = (window.count + P - 1) / P
    if pool == nil || pool!.numBlocks < pages {
      pool = try KVPool(format: model.kvFormat, layers: model.config.numHiddenLayers, numBlocks: pages)
    }
    let table = (0..<Int32(pages)).map { $0 }, V = model.config.vocabSize
    var total = 0.0
    var start = 0
    while start < last {
      let end = min(window.count, start + chunk)
      // Positions this chunk scores; a chunk wholly before `first` (llama.cpp's protocol scores the second half of a
      // window) only fills the cache and asks for no logits.
      let lo = max(start, first), hi = min(end, last)
      let logits = try model.step([SequenceChunk(start: start, tokens: Array(window[start..<end]), blockTable: table,
                                                 logits: lo < hi ? .all : .none)],
                                  pool: pool!, workspace: ws, integerScores: integerScores)
      if lo < hi {
        logits.withUnsafeBufferPointer { lb in
          for j in lo..<hi {
            let row = lb.baseAddress! + (j - start) * V
            total += logSumExp(row, V) - Double(row[Int(window[j + 1])])
          }
        }
      }
      start = end
    }
    return total
  }
}

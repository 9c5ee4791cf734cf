// Weight range (clipping) search, deepcompressor's `calib_range` with strategy GridSearch (deepcompressor.md §1.2
// step 5): ratio 1.0 first, then r = 1 − g/N·(1 − max_shrink) for g = 1…N; each candidate quantizes the weight by
// RTN from the range [r·min, r·max].
// - o_proj, v_proj, gate/up, down: ProductsError per group — for each output channel and input group,
//   Σ_t (x_t,g · (ŵ_g − w_g))² over 512 evenly spaced calibration tokens; the best ratio is kept per group.
// - q_proj, k_proj: OutputsError of the whole attention block with only that weight quantized, one ratio per weight.
//   deepcompressor sums over every calibration sample on a GPU; here the first `attentionSamples` sequences are
//   used (a documented deviation that keeps the search within CPU budgets).
import QoQFormat
import QoQKernels
import QoQModels

public enum RangeSearch {
  /// Candidate ratios in deepcompressor's order.
  public static func ratios(maxShrink: Double, numGrids: Int) -> [Float] {
    [1] + (1...numGrids).map { Float(1 - Double($0) / Double(numGrids) * (1 - maxShrink)) }
  }

  /// Rows of the token subsample, as deepcompressor's `TensorCache.repartition` takes it (element_batch_size `batch`,
  /// element_size `size`): each cached tensor (a calibration sequence of a dense module's input; an expert's routed rows,
  /// all in one) is cut into chunks of `batch` rows, dropping its last partial chunk (a tensor of at most `batch` rows
  /// stays one chunk); if the chunks hold more than `size` rows, every k-th is kept, k = chunks / (size / chunk rows),
  /// starting with the first. With 64-row chunks of 1024-token sequences the kept rows are the first 64 tokens of a few
  /// sequences; batch 1 spreads them over every token. `lengths`: the tensors' rows, in order; returns row indices into
  /// their concatenation.
  public static func subsampleRows(lengths: [Int], batch: Int = 64, size: Int = 512) -> [Int] {
    var chunks: [Range<Int>] = [], at = 0
    for n in lengths where n > 0 {
      if batch > 0 && n > batch {
        for i in 0..<(n / batch) { chunks.append((at + i * batch)..<(at + (i + 1) * batch)) }
      } else {
        chunks.append(at..<(at + n))
      }
      at += n
    }
    guard let first = chunks.first else { return [] }
    if size > 0 && first.count * chunks.count > size {
      let k = max(1, chunks.count / max(1, size / first.count))
      chunks = stride(from: 0, to: chunks.count, by: k).map { chunks[$0] }
    }
    return chunks.flatMap { Array($0) }
  }

  /// ProductsError search. w (out, in); x (t, in) the sampled FP inputs. Returns ratios (out × groups).
  public static func productsError(weight w: [Float], out: Int, inp: Int, format: WeightFormat, inputs x: [Float],
                                   candidates: [Float]) -> [Float] {
    let gs = format.groupSize(inp), ng = (inp + gs - 1) / gs, t = x.count / inp
    var best = [Float](repeating: 1, count: out * ng), bestErr = [Double](repeating: .infinity, count: out * ng)
    var p = [Float](repeating: 0, count: t * out)
    for r in candidates {
      let qz = WeightQuantizer(weight: w, out: out, inp: inp, format: format, ratios: [r])
      let wq = qz.rtn(w).dequantized()
      var d = [Float](repeating: 0, count: out * inp)
      for i in 0..<d.count { d[i] = wq[i] - w[i] }
      for g in 0..<ng {
        let lo = g * gs, n = min(gs, inp - lo)
        d.withUnsafeBufferPointer { db in
          let packed = PackedMatrix(nk: db.baseAddress! + lo, n: out, k: n, ldw: inp)
          x.withUnsafeBufferPointer { xb in
            p.withUnsafeMutableBufferPointer { sgemm(m: t, a: xb.baseAddress! + lo, lda: inp, b: packed, c: $0.baseAddress!, ldc: out) }
          }
        }
        for o in 0..<out {
          var e = 0.0
          for s in 0..<t { let v = Double(p[s * out + o]); e += v * v }
          if e < bestErr[o * ng + g] { bestErr[o * ng + g] = e; best[o * ng + g] = r }
        }
      }
    }
    return best
  }

  /// OutputsError search of q_proj or k_proj on the attention block: one ratio for the weight.
  /// h: normalized attention inputs (N, H) of sequences with `lengths`; `reference` the FP block output.
  public static func attentionOutputs(model: LlamaModel, layer l: Int, store: WeightStore, module: String, format: WeightFormat,
                                      h: [Float], lengths: [Int], reference: [Float], candidates: [Float]) throws -> Float {
    let (out, inp) = store.linearShape(module)
    let w = store[module + ".weight"]
    let bias = store.tensors[module + ".bias"]
    let base = model.layers[l]
    var best: Float = 1, bestErr = Double.infinity
    for r in candidates {
      let wq = WeightQuantizer(weight: w, out: out, inp: inp, format: format, ratios: [r]).rtn(w).dequantized()
      let lin = DenseLinear(weight: wq, outFeatures: out, inFeatures: inp, bias: bias)
      let isQ = module.hasSuffix("q_proj")
      let layer = DecoderLayer(inputLayernorm: base.inputLayernorm, postAttentionLayernorm: base.postAttentionLayernorm,
                               qProj: isQ ? lin : base.qProj, kProj: isQ ? base.kProj : lin, vProj: base.vProj, oProj: base.oProj,
                               gateProj: base.gateProj, upProj: base.upProj, downProj: base.downProj)
      let e = try outputError(h: h, lengths: lengths, width: inp, reference: reference) {
        try model.attentionOutput(layer, h: $0, lengths: $1)
      }
      if e < bestErr { bestErr = e; best = r }
    }
    return best
  }

  /// The outputs of `forward` over sequences of `lengths` (rows of `width` in h), computed `chunk` sequences at a time
  /// so the intermediate tensors never exist for all of them at once (sample_size -1 means every calibration sequence).
  public static func chunkedOutputs(h: [Float], lengths: [Int], width: Int, chunk: Int = 4,
                                    _ forward: ([Float], [Int]) throws -> [Float]) rethrows -> [Float] {
    var out: [Float] = [], row = 0
    out.reserveCapacity(h.count)
    for s in stride(from: 0, to: lengths.count, by: chunk) {
      let ls = Array(lengths[s..<min(s + chunk, lengths.count)]), rows = ls.reduce(0, +)
      out += try forward(Array(h[(row * width)..<((row + rows) * width)]), ls)
      row += rows
    }
    return out
  }

  /// Σ (y − reference)² with y = forward(h) computed `chunk` sequences at a time (see chunkedOutputs); the reference
  /// has the outputs of every sequence, in order.
  public static func outputError(h: [Float], lengths: [Int], width: Int, reference: [Float], chunk: Int = 4,
                                 _ forward: ([Float], [Int]) throws -> [Float]) rethrows -> Double {
    var e = 0.0, row = 0, at = 0
    for s in stride(from: 0, to: lengths.count, by: chunk) {
      let ls = Array(lengths[s..<min(s + chunk, lengths.count)]), rows = ls.reduce(0, +)
      let y = try forward(Array(h[(row * width)..<((row + rows) * width)]), ls)
      precondition(at + y.count <= reference.count, "reference shorter than the outputs")
      for i in 0..<y.count { let d = Double(y[i] - reference[at + i]); e += d * d }
      at += y.count; row += rows
    }
    return e
  }
}

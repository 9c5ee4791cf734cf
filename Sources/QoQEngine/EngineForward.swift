// One model step over several sequences' chunks (prefill chunks and decode tokens mixed), reading and writing the
// paged KV cache (qserve.md §3.5 dataflow, §4.3/§4.4 attention). Every token's computation depends only on its own
// row and its sequence's pages, so results do not depend on how requests are batched together.
import Foundation
import QoQIO
import QoQKernels
import QoQModels

/// The KV pool: for every layer, a K and a V region of `numBlocks` pages (one arena; untouched pages cost no RAM).
public final class KVPool: @unchecked Sendable {
  public let format: KVPageFormat
  public let layers: Int
  public let numBlocks: Int
  let arena: UnsafeMutableRawPointer
  let layerStride: Int

  public init(format: KVPageFormat, layers: Int, numBlocks: Int) throws {
    guard numBlocks > 0 else { throw QoQError("the KV pool needs at least one page") }
    let bytes = try checkedMul(try KVPool.bytesPerBlock(format, layers: layers), numBlocks, "the KV pool")
    guard bytes < 1 << 40 else { throw QoQError("a KV pool of \(numBlocks) pages needs \(bytes) bytes") }
    self.format = format; self.layers = layers; self.numBlocks = numBlocks
    layerStride = 2 * numBlocks * format.pageBytes
    arena = .allocate(byteCount: max(64, bytes), alignment: 64)
  }
  deinit { arena.deallocate() }

  /// Bytes of one page across all layers, K and V (what one block of the scheduler costs).
  public static func bytesPerBlock(_ f: KVPageFormat, layers: Int) throws -> Int {
    try checkedMul(try checkedMul(layers, 2, "KV layers"), f.pageBytes, "KV page bytes across layers")
  }

  @inline(__always) func page(_ layer: Int, _ block: Int32, key: Bool) -> UnsafeMutableRawPointer {
    arena + layer * layerStride + ((key ? 0 : numBlocks) + Int(block)) * format.pageBytes
  }
}

/// What a step computes for one sequence: positions start ..< start + tokens.count, pages in blockTable.
public struct SequenceChunk: Sendable {
  public enum Logits: Sendable { case none, last, all }
  public var start: Int
  public var tokens: [Int32]
  public var blockTable: [Int32]
  public var logits: Logits
  public init(start: Int, tokens: [Int32], blockTable: [Int32], logits: Logits) {
    self.start = start; self.tokens = tokens; self.blockTable = blockTable; self.logits = logits
  }
}

/// Buffers reused across steps (grown on demand, never shrunk); one per engine, not shared between threads.
public final class Workspace: @unchecked Sendable {
  var capacity = 0
  var x = UnsafeMutablePointer<Float>.allocate(capacity: 1)     // (cap, H) residual stream
  var h = UnsafeMutablePointer<Float>.allocate(capacity: 1)     // (cap, H) normalized rows
  var tmp = UnsafeMutablePointer<Float>.allocate(capacity: 1)   // (cap, H) sublayer outputs
  var qkv = UnsafeMutablePointer<Float>.allocate(capacity: 1)   // (cap, Q + 2·KV)
  var attn = UnsafeMutablePointer<Float>.allocate(capacity: 1)  // (cap, Q)
  var gu = UnsafeMutablePointer<Float>.allocate(capacity: 1)    // (cap, 2·I)
  let act: UnsafeMutablePointer<Float>                          // (I) SiLU·mul staging
  var aH: QuantizedRows?, aQ: QuantizedRows?, aI: QuantizedRows?
  /// One attention scratch per thread that has taken part so far.
  private(set) var scratch: [AttentionScratch]
  let headDim: Int

  public init(config c: LlamaConfiguration) {
    headDim = c.headDim
    scratch = [AttentionScratch(headDim: c.headDim)]
    act = .allocate(capacity: c.intermediateSize)
  }

  /// n parts for the attention loop, with a scratch for each (made on first use).
  func parts(_ n: Int) -> Int {
    while scratch.count < n { scratch.append(AttentionScratch(headDim: headDim)) }
    return n
  }
  deinit { for p in [x, h, tmp, qkv, attn, gu, act] { p.deallocate() } }

  func ensure(_ n: Int, _ c: LlamaConfiguration) {
    guard n > capacity else { return }
    let cap = max(n, capacity * 2, 64)
    let H = c.hiddenSize, Q = c.qDim, W = Q + 2 * c.kvDim, I = c.intermediateSize
    for p in [x, h, tmp, qkv, attn, gu] { p.deallocate() }
    x = .allocate(capacity: cap * H); h = .allocate(capacity: cap * H); tmp = .allocate(capacity: cap * H)
    qkv = .allocate(capacity: cap * W); attn = .allocate(capacity: cap * Q); gu = .allocate(capacity: cap * 2 * I)
    aH = QuantizedRows(capacity: cap, k: H); aQ = QuantizedRows(capacity: cap, k: Q); aI = QuantizedRows(capacity: cap, k: I)
    capacity = cap
  }
}

extension EngineModel {
  /// Runs one step. Returns the logits (rows × vocab) of the requested rows, in chunk order.
  public func step(_ chunks: [SequenceChunk], pool: KVPool, workspace ws: Workspace, integerScores: Bool = true) throws -> [Float] {
    let c = config, H = c.hiddenSize, P = kvFormat.pageSize
    precondition(pool.format == kvFormat)
    for ch in chunks {
      guard !ch.tokens.isEmpty else { throw QoQError("empty chunk") }
      let end = ch.start + ch.tokens.count
      guard end <= maxContext else { throw QoQError("sequence of \(end) tokens exceeds the context of \(maxContext)") }
      guard ch.blockTable.count * P >= end, ch.blockTable.allSatisfy({ $0 >= 0 && Int($0) < pool.numBlocks }) else {
        throw QoQError("block table does not cover positions 0..<\(end)")
      }
      for t in ch.tokens where t < 0 || Int(t) >= c.vocabSize { throw QoQError("token id \(t) is outside the vocabulary (0..<\(c.vocabSize))") }
    }
    let n = chunks.reduce(0) { $0 + $1.tokens.count }
    var t = profile.start()
    ws.ensure(n, c)
    rope.ensure(chunks.map { $0.start + $0.tokens.count }.max() ?? 0)
    embedTokens.withUnsafeBufferPointer { e in
      var r = 0
      for ch in chunks { for t in ch.tokens { (ws.x + r * H).update(from: e.baseAddress! + Int(t) * H, count: H); r += 1 } }
    }
    profile.mark(.embed, &t)
    for li in 0..<layers.count { runLayer(li, chunks, n, pool, ws, integerScores, &t) }
    // Final norm and LM head on the requested rows.
    var rows: [Int] = []
    var r0 = 0
    for ch in chunks {
      switch ch.logits {
      case .none: break
      case .last: rows.append(r0 + ch.tokens.count - 1)
      case .all: rows += Array(r0..<(r0 + ch.tokens.count))
      }
      r0 += ch.tokens.count
    }
    let out = logits(rows: rows, ws)
    profile.mark(.lmHead, &t)
    return out
  }

  func logits(rows: [Int], _ ws: Workspace) -> [Float] {
    let H = config.hiddenSize, V = config.vocabSize, eps = Float(config.rmsNormEps)
    if rows.isEmpty { return [] }
    var out = [Float](repeating: 0, count: rows.count * V)
    let block = 64
    var b0 = 0
    while b0 < rows.count {
      let m = min(block, rows.count - b0)
      norm.withUnsafeBufferPointer { w in
        for i in 0..<m { rmsNorm(ws.x + rows[b0 + i] * H, w.baseAddress!, eps: eps, n: H, ws.h + i * H) }
      }
      out.withUnsafeMutableBufferPointer { ob in apply(lmHead, ws.h, rows: m, quantized: ws.aH!, ob.baseAddress! + b0 * V, ldy: V) }
      b0 += m
    }
    return out
  }

  /// y ← linear(x rows); integer kernels quantize x per token first (unless `prequantized`).
  func apply(_ l: EngineLinear, _ x: UnsafePointer<Float>, rows: Int, quantized a: QuantizedRows, _ y: UnsafeMutablePointer<Float>,
             ldy: Int, prequantized: Bool = false) {
    switch l {
    case .fp(let f): f.forward(x, rows: rows, y)
    case .int(let k):
      if !prequantized { for r in 0..<rows { a.quantizeRow(r, x + r * a.k) } }
      a.m = rows
      k.forward(a, y, ldy: ldy)
    }
  }

  func runLayer(_ li: Int, _ chunks: [SequenceChunk], _ n: Int, _ pool: KVPool, _ ws: Workspace, _ integerScores: Bool,
                _ t: inout UInt64) {
    let c = config, L = layers[li]
    let H = c.hiddenSize, Q = c.qDim, KV = c.kvDim, D = c.headDim, I = c.intermediateSize, W = Q + 2 * KV
    let eps = Float(c.rmsNormEps), P = kvFormat.pageSize
    let g = c.numAttentionHeads / c.numKeyValueHeads
    let x = ws.x, h = ws.h, qkv = ws.qkv, attn = ws.attn, gu = ws.gu, tmp = ws.tmp
    // Attention block: RMSNorm fused with INT8 quantization, fused qkv GEMM.
    L.inputLayernorm.withUnsafeBufferPointer { w in
      for r in 0..<n {
        if L.qkvProj.quantizedInput { rmsNormQuantize(x + r * H, weight: w.baseAddress!, eps: eps, out: ws.aH!, row: r, scratch: h + r * H) }
        else { rmsNorm(x + r * H, w.baseAddress!, eps: eps, n: H, h + r * H) }
      }
    }
    profile.mark(.normQuant, &t)
    apply(L.qkvProj, h, rows: n, quantized: ws.aH!, qkv, ldy: W, prequantized: true)
    profile.mark(.qkv, &t)
    // RoPE, then K/V quantized into the pages at each token's slot.
    var r0 = 0
    for ch in chunks {
      for i in 0..<ch.tokens.count {
        let row = qkv + (r0 + i) * W, pos = ch.start + i
        rope.apply(row, heads: c.numAttentionHeads, pos: pos)
        rope.apply(row + Q, heads: c.numKeyValueHeads, pos: pos)
        if let kc = L.kCenter { for j in 0..<KV { row[Q + j] -= kc[j] } }
        if let ks = L.kScale, let qs = L.qScale {
          for j in 0..<KV { row[Q + j] *= ks[j] }
          for j in 0..<Q { row[j] *= qs[j] }
        }
        if L.rotateKeys { for h in 0..<(c.numAttentionHeads + c.numKeyValueHeads) { walshHadamard(row + h * D, D) } }
        let b = ch.blockTable[pos / P]
        for kvh in 0..<c.numKeyValueHeads {
          kvFormat.store(row + Q + kvh * D, page: pool.page(li, b, key: true), head: kvh, slot: pos % P, isKey: true)
          kvFormat.store(row + Q + KV + kvh * D, page: pool.page(li, b, key: false), head: kvh, slot: pos % P, isKey: false)
        }
      }
      r0 += ch.tokens.count
    }
    profile.mark(.ropeKV, &t)
    // Attention tasks: (chunk, kv head, block of up to 16 positions); the g query heads of a KV head share its pages.
    struct Task { let chunk: Int; let row0: Int; let kvh: Int; let i0: Int; let count: Int }
    var tasks: [Task] = []
    r0 = 0
    for (ci, ch) in chunks.enumerated() {
      for kvh in 0..<c.numKeyValueHeads {
        for i0 in stride(from: 0, to: ch.tokens.count, by: 16) {
          tasks.append(Task(chunk: ci, row0: r0, kvh: kvh, i0: i0, count: min(16, ch.tokens.count - i0)))
        }
      }
      r0 += ch.tokens.count
    }
    let pages = chunks.map { ch in (ch.blockTable.map { UnsafeRawPointer(pool.page(li, $0, key: true)) },
                                    ch.blockTable.map { UnsafeRawPointer(pool.page(li, $0, key: false)) }) }
    let scale = 1 / Float(D).squareRoot(), f = kvFormat
    let parts = ws.parts(ThreadPool.shared.threads)
    ThreadPool.shared.run(parts: parts) { t in
      let sc = ws.scratch[t]
      let qbuf = UnsafeMutablePointer<Float>.allocate(capacity: 16 * g * D); defer { qbuf.deallocate() }
      let obuf = UnsafeMutablePointer<Float>.allocate(capacity: 16 * g * D); defer { obuf.deallocate() }
      for ti in stride(from: t, to: tasks.count, by: parts) {
        let tk = tasks[ti], ch = chunks[tk.chunk]
        var visible: [Int] = []
        for i in 0..<tk.count {
          for j in 0..<g {
            (qbuf + (i * g + j) * D).update(from: qkv + (tk.row0 + tk.i0 + i) * W + (tk.kvh * g + j) * D, count: D)
            visible.append(ch.start + tk.i0 + i + 1)
          }
        }
        pagedAttention(f, kPages: pages[tk.chunk].0, vPages: pages[tk.chunk].1, head: tk.kvh, q: qbuf, qStride: D,
                       nq: tk.count * g, visible: visible, scale: scale, integerScores: integerScores && !L.exactScores, out: obuf,
                       outStride: D, scratch: sc)
        for i in 0..<tk.count {
          for j in 0..<g { (attn + (tk.row0 + tk.i0 + i) * Q + (tk.kvh * g + j) * D).update(from: obuf + (i * g + j) * D, count: D) }
        }
      }
    }
    profile.mark(.attention, &t)
    apply(L.oProj, attn, rows: n, quantized: ws.aQ!, tmp, ldy: H)
    profile.mark(.oProj, &t)
    addInPlace(x, tmp, n * H)
    profile.mark(.residual, &t)
    if let moe = L.moe {  // Mixtral: route each token, run its experts (FP or integer kernels), add their weighted outputs.
      L.postAttentionLayernorm.withUnsafeBufferPointer { w in for r in 0..<n { rmsNorm(x + r * H, w.baseAddress!, eps: eps, n: H, h + r * H) } }
      profile.mark(.normQuant, &t)
      moe.forward(h, rows: n, hidden: H, intermediate: I, tmp)
      profile.mark(.down, &t)
      addInPlace(x, tmp, n * H)
      profile.mark(.residual, &t)
      return
    }
    // MLP block: RMSNorm + quantization, fused gate/up GEMM, SiLU·mul fused with quantization, down.
    L.postAttentionLayernorm.withUnsafeBufferPointer { w in
      for r in 0..<n {
        if L.gateUpProj.quantizedInput { rmsNormQuantize(x + r * H, weight: w.baseAddress!, eps: eps, out: ws.aH!, row: r, scratch: h + r * H) }
        else { rmsNorm(x + r * H, w.baseAddress!, eps: eps, n: H, h + r * H) }
      }
    }
    profile.mark(.normQuant, &t)
    apply(L.gateUpProj, h, rows: n, quantized: ws.aH!, gu, ldy: 2 * I, prequantized: true)
    profile.mark(.gateUp, &t)
    if L.downProj.quantizedInput {
      for r in 0..<n { siluMulQuantize(gu + r * 2 * I, width: I, out: ws.aI!, row: r, scratch: ws.act) }
      ws.aI!.m = n
      profile.mark(.siluQuant, &t)
      apply(L.downProj, gu, rows: n, quantized: ws.aI!, tmp, ldy: H, prequantized: true)
    } else {
      for r in 0..<n { siluMul(gu + r * 2 * I, gu + r * 2 * I + I, gu + r * I, I) }  // compact in place: row r → (N, I)
      profile.mark(.siluQuant, &t)
      apply(L.downProj, gu, rows: n, quantized: ws.aI!, tmp, ldy: H)
    }
    profile.mark(.down, &t)
    addInPlace(x, tmp, n * H)
    profile.mark(.residual, &t)
  }
}

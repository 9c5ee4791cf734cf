// Paged KV storage formats (qserve.md §4.1, §4.2, §8.3 item 5). One page holds `pageSize` tokens of every KV head
// of one layer, for K or for V. KV4/KV8 are asymmetric per (token, head), exactly the fake quantizer the accuracy
// was measured with (deepcompressor: s = fp16((max−min)/qmax) (0 → 1), z = fp16(−min),
// q = clamp(rne((x+z)/s), 0, qmax), x̂ = q·s − z). Scales and zeros are stored as fp32 holding fp16 values
// (QServe stores fp16: 4 more bytes per token and head here, no conversion in the hot loop).
// Layouts (H heads, D head dim, P tokens per page):
//   K kv4: codes [H][D/8][P][4 B], 4 bytes of token t in chunk c: byte j = ch 8c+j (low) | ch 8c+4+j (high), so one
//          64-byte load covers 16 tokens × 8 channels and vpdpbusd gives 16 token scores per instruction;
//          then scales [H][P], zeros [H][P].
//   K kv8: codes [H][D/4][P][4 B] (byte j = ch 4c+j), scales, zeros.      K fp16: [H][D][P] (tokens contiguous).
//   V kv4: codes [H][P][D/2], byte j = ch j (low) | ch j+D/2 (high); scales, zeros.
//   V kv8: codes [H][P][D], scales, zeros.                                 V fp16: [H][P][D].

public enum KVMode: String, Sendable, CaseIterable {
  case kv4, kv8, fp16
  public var bits: Int { switch self { case .kv4: 4; case .kv8: 8; case .fp16: 16 } }
}

public struct KVPageFormat: Sendable, Equatable {
  public let mode: KVMode
  public let heads: Int
  public let headDim: Int
  public let pageSize: Int

  public init(mode: KVMode, heads: Int, headDim: Int, pageSize: Int = 64) {
    precondition(headDim % 32 == 0 && pageSize % 16 == 0 && heads > 0, "head dim must be a multiple of 32, page size of 16")
    self.mode = mode; self.heads = heads; self.headDim = headDim; self.pageSize = pageSize
  }

  var codeBytesPerHead: Int { pageSize * headDim * mode.bits / 8 }
  /// Bytes of one page (one layer, K or V).
  public var pageBytes: Int { heads * codeBytesPerHead + (mode == .fp16 ? 0 : heads * pageSize * 8) }
  func scales(_ page: UnsafeRawPointer) -> UnsafePointer<Float> {
    (page + heads * codeBytesPerHead).assumingMemoryBound(to: Float.self)
  }
  func zeros(_ page: UnsafeRawPointer) -> UnsafePointer<Float> { scales(page) + heads * pageSize }

  /// Quantizes and stores x (D values of head h) as token `slot` of a K page (`isKey`) or a V page.
  public func store(_ x: UnsafePointer<Float>, page: UnsafeMutableRawPointer, head h: Int, slot t: Int, isKey: Bool) {
    let D = headDim, P = pageSize, codes = page + h * codeBytesPerHead
    if mode == .fp16 {
      let c = codes.assumingMemoryBound(to: UInt16.self)
      for d in 0..<D { c[isKey ? d * P + t : t * D + d] = Float16(x[d]).bitPattern }
      return
    }
    let qmax = Float((1 << mode.bits) - 1)
    var lo = Float.infinity, hi = -Float.infinity
    for d in 0..<D { lo = min(lo, x[d]); hi = max(hi, x[d]) }
    var s = Float(Float16((hi - lo) / qmax))
    if s == 0 || !s.isFinite { s = 1 }
    let z = Float(Float16(-lo))
    let sp = UnsafeMutablePointer(mutating: scales(page)), zp = UnsafeMutablePointer(mutating: zeros(page))
    sp[h * P + t] = s; zp[h * P + t] = z
    let b = codes.assumingMemoryBound(to: UInt8.self)
    // NaN (a broken model's activations) stores code 0 instead of trapping in the conversion.
    func q(_ d: Int) -> UInt8 { let v = ((x[d] + z) / s).rounded(.toNearestOrEven); return v.isNaN ? 0 : UInt8(min(max(v, 0), qmax)) }
    switch (mode, isKey) {
    case (.kv4, true):
      for c in 0..<(D / 8) { for j in 0..<4 { b[(c * P + t) * 4 + j] = q(8 * c + j) | q(8 * c + 4 + j) << 4 } }
    case (.kv8, true):
      for d in 0..<D { b[((d / 4) * P + t) * 4 + d % 4] = q(d) }
    case (.kv4, false):
      for j in 0..<(D / 2) { b[t * D / 2 + j] = q(j) | q(j + D / 2) << 4 }
    case (.kv8, false):
      for d in 0..<D { b[t * D + d] = q(d) }
    default: break
    }
  }

  /// The stored (dequantized) value of channel d of token t, head h: the scalar reference of every reader.
  public func load(page: UnsafeRawPointer, head h: Int, slot t: Int, channel d: Int, isKey: Bool) -> Float {
    let D = headDim, P = pageSize, codes = page + h * codeBytesPerHead
    if mode == .fp16 {
      return Float(Float16(bitPattern: codes.assumingMemoryBound(to: UInt16.self)[isKey ? d * P + t : t * D + d]))
    }
    let b = codes.assumingMemoryBound(to: UInt8.self)
    let q: UInt8
    switch (mode, isKey) {
    case (.kv4, true): let byte = b[((d / 8) * P + t) * 4 + d % 4]; q = d % 8 < 4 ? byte & 0xF : byte >> 4
    case (.kv8, true): q = b[((d / 4) * P + t) * 4 + d % 4]
    case (.kv4, false): let byte = b[t * D / 2 + d % (D / 2)]; q = d < D / 2 ? byte & 0xF : byte >> 4
    default: q = b[t * D + d]
    }
    return Float(q) * scales(page)[h * P + t] - zeros(page)[h * P + t]
  }
}

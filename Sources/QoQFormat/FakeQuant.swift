// Runtime pieces of fake quantization: linears whose inputs are quantized per token (INT8/INT4 activations) and
// the KV-cache quantizer. The model code stays unaware of them (it sees LinearLayer and KVTransform).
import QoQKernels
import QoQModels

/// Quantizes its input per token (symmetric, ±(2^(b−1)−1)) and then applies the wrapped linear.
public final class ActQuantLinear: LinearLayer, @unchecked Sendable {
  public let inner: LinearLayer
  public let bits: Int
  public var inFeatures: Int { inner.inFeatures }
  public var outFeatures: Int { inner.outFeatures }

  public init(_ inner: LinearLayer, bits: Int) { self.inner = inner; self.bits = bits }

  public func forward(_ x: UnsafePointer<Float>, rows: Int, _ y: UnsafeMutablePointer<Float>) {
    let n = rows * inFeatures
    let q = UnsafeMutablePointer<Float>.allocate(capacity: max(1, n)); defer { q.deallocate() }
    q.update(from: x, count: n)
    fakeQuantizePerToken(q, rows: rows, width: inFeatures, bits: bits)
    inner.forward(q, rows: rows, y)
  }
}

/// KV cache fake quantization: per token, groups of `group` channels, asymmetric uint-b (KV4) or symmetric
/// int-b (KV8 for SmoothQuant recipes).
public final class KVFakeQuant: KVTransform, @unchecked Sendable {
  public let bits: Int
  public let group: Int
  public let asymmetric: Bool

  public init(bits: Int, group: Int, asymmetric: Bool = true) { self.bits = bits; self.group = group; self.asymmetric = asymmetric }

  public func apply(_ x: UnsafeMutablePointer<Float>, rows: Int, width: Int) {
    if asymmetric { fakeQuantizeAsymGroups(x, rows: rows, width: width, group: group, bits: bits) }
    else { fakeQuantizeSymGroups(x, rows: rows, width: width, group: group, bits: bits) }
  }
}

/// Key centering (issue #19): post-RoPE keys minus a calibrated per-channel constant c are quantized, then c is added
/// back. Exact without quantization — q·(k − c) = q·k − q·c shifts every score of a query by the same amount, which
/// softmax ignores — so the engine may keep k − c in its cache. It removes what a constant K bias leaves after RoPE
/// on the slowly rotating channels (Qwen2's K biases reach ±350 there), which otherwise sets every KV4 group's range.
public final class CenteredKeys: KVTransform, @unchecked Sendable {
  public let inner: KVTransform
  public let center: [Float]  // (kv_heads · head_dim)

  public init(_ inner: KVTransform, center: [Float]) { self.inner = inner; self.center = center }

  public func apply(_ x: UnsafeMutablePointer<Float>, rows: Int, width: Int) {
    precondition(width == center.count, "key center has \(center.count) channels, keys have \(width)")
    for r in 0..<rows { for i in 0..<width { x[r * width + i] -= center[i] } }
    inner.apply(x, rows: rows, width: width)
    for r in 0..<rows { for i in 0..<width { x[r * width + i] += center[i] } }
  }
}

/// Key rotation (issue #19, beyond deepcompressor; QuaRot's online K rotation): each head of the keys is rotated by the
/// normalized Walsh–Hadamard matrix H before quantization and back after, k̂ = Hᵀ·Q(H·k). The engine keeps H·k in its
/// cache and rotates the query the same way; (H·q)·(H·k) = q·k, so it is exact without quantization. It spreads what
/// centering and SmoothAttention leave of K's outlier channels over all head_dim channels of the KV4 group. Wrapped
/// by CenteredKeys when both are on: the cache holds H·(k − c).
public final class RotatedKeys: KVTransform, @unchecked Sendable {
  public let inner: KVTransform
  public let headDim: Int

  public init(_ inner: KVTransform, headDim: Int) { self.inner = inner; self.headDim = headDim }

  public func apply(_ x: UnsafeMutablePointer<Float>, rows: Int, width: Int) {
    precondition(width % headDim == 0, "keys of width \(width) are not whole heads of \(headDim)")
    for h in stride(from: 0, to: rows * width, by: headDim) { walshHadamard(x + h, headDim) }
    inner.apply(x, rows: rows, width: width)
    for h in stride(from: 0, to: rows * width, by: headDim) { walshHadamard(x + h, headDim) }
  }
}

/// Key scaling (issue #19, beyond deepcompressor): each post-RoPE key channel j is multiplied by a calibrated s_j > 0
/// before quantization and divided by it after, k̂ = Q(k·s)/s. The engine keeps k·s in its cache and divides the query
/// by the same s (its query heads share their KV head's s); (q/s)·(k·s) = q·k, so it is exact without quantization.
/// Unlike SmoothAttention, whose scales must be equal on each rotary pair to fold into q_proj/k_proj, s acts after
/// RoPE, channel by channel: s_j = (E[q_j²] / E[(k_j − c_j)²])^¼ balances each channel's share of the score error
/// against its share of the KV4 range (c: the keys' mean when the quantizer scales them). Wrapped by CenteredKeys and
/// wrapping RotatedKeys: the cache holds H·(s·(k − c)).
public final class ScaledKeys: KVTransform, @unchecked Sendable {
  public let inner: KVTransform
  public let scale: [Float]  // (kv_heads · head_dim), positive and finite

  public init(_ inner: KVTransform, scale: [Float]) { self.inner = inner; self.scale = scale }

  public func apply(_ x: UnsafeMutablePointer<Float>, rows: Int, width: Int) {
    precondition(width == scale.count, "key scale has \(scale.count) channels, keys have \(width)")
    for r in 0..<rows { for i in 0..<width { x[r * width + i] *= scale[i] } }
    inner.apply(x, rows: rows, width: width)
    for r in 0..<rows { for i in 0..<width { x[r * width + i] /= scale[i] } }
  }
}

/// The key side of the KV fake quantizer kq, outermost first: centering, scaling, rotation (the cache holds
/// H·(s·(k − c))). Shared by checkpoint loading and the quantizer's SmoothAttention search.
public func keyTransform(_ kq: KVTransform, headDim: Int, rotate: Bool, scale: [Float]?, center: [Float]?) -> KVTransform {
  let kr: KVTransform = rotate ? RotatedKeys(kq, headDim: headDim) : kq
  let ks: KVTransform = scale.map { ScaledKeys(kr, scale: $0) } ?? kr
  return center.map { CenteredKeys(ks, center: $0) } ?? ks
}

/// Static symmetric per-tensor KV fake quantization with a calibrated scale (SmoothQuant's static KV8):
/// x̂ = s·clamp(rne(x/s), −qmax, qmax), qmax = 2^(b−1) − 1.
public final class StaticKVQuant: KVTransform, @unchecked Sendable {
  public let scale: Float
  public let bits: Int
  public init(scale: Float, bits: Int = 8) { self.scale = scale; self.bits = bits }
  public func apply(_ x: UnsafeMutablePointer<Float>, rows: Int, width: Int) {
    let q = Float((1 << (bits - 1)) - 1)
    for i in 0..<(rows * width) { x[i] = scale * min(max(rne(x[i] / scale), -q), q) }
  }
}

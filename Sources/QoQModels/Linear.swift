// Linear layers behind one small protocol: model code calls `forward` and never tests the weight format
// (anchors.md §1.9.4). The FP path packs weights once at load into SGEMM panels.
import QoQKernels

public protocol LinearLayer: AnyObject, Sendable {
  var inFeatures: Int { get }
  var outFeatures: Int { get }
  /// y[rows × out] = x[rows × in] · Wᵀ (+ bias). Row-major, contiguous.
  func forward(_ x: UnsafePointer<Float>, rows: Int, _ y: UnsafeMutablePointer<Float>)
}

/// The dense MLP slots of an MoE layer (DecoderLayer.moe holds its experts): calling one is a programming error, as
/// every path that handles dense MLPs only refuses MoE models up front.
public final class NoDenseMLP: LinearLayer, @unchecked Sendable {
  public let inFeatures = 0, outFeatures = 0
  public init() {}
  public func forward(_ x: UnsafePointer<Float>, rows: Int, _ y: UnsafeMutablePointer<Float>) {
    preconditionFailure("an MoE layer has no dense MLP; this path must refuse MoE models (issue #14)")
  }
}

/// FP32 weights [out × in] packed for `sgemm`, optional bias.
public final class DenseLinear: LinearLayer, @unchecked Sendable {
  public let inFeatures: Int
  public let outFeatures: Int
  let packed: PackedMatrix
  public let bias: [Float]?

  public init(weight: [Float], outFeatures: Int, inFeatures: Int, bias: [Float]? = nil) {
    precondition(weight.count == outFeatures * inFeatures)
    precondition(bias == nil || bias!.count == outFeatures)
    self.inFeatures = inFeatures
    self.outFeatures = outFeatures
    packed = PackedMatrix(nk: weight, n: outFeatures, k: inFeatures)
    self.bias = bias
  }

  public func forward(_ x: UnsafePointer<Float>, rows: Int, _ y: UnsafeMutablePointer<Float>) {
    let accumulate = prefillBias(bias, rows: rows, outFeatures, y)
    sgemm(m: rows, a: x, lda: inFeatures, b: packed, c: y, ldc: outFeatures, accumulate: accumulate)
  }
}

/// Weights stored as bf16 panels, products in bf16 with fp32 accumulation (`bgemm`): twice the FP32 rate, for
/// calibration passes that choose `model.dtype: torch.bfloat16` (deepcompressor runs them in the model dtype).
public final class BF16Linear: LinearLayer, @unchecked Sendable {
  public let inFeatures: Int
  public let outFeatures: Int
  let packed: PackedMatrixBF16
  let bias: [Float]?

  public init(weight: [Float], outFeatures: Int, inFeatures: Int, bias: [Float]? = nil) {
    precondition(weight.count == outFeatures * inFeatures)
    precondition(bias == nil || bias!.count == outFeatures)
    self.inFeatures = inFeatures
    self.outFeatures = outFeatures
    packed = weight.withUnsafeBufferPointer { PackedMatrixBF16(nk: $0.baseAddress!, n: outFeatures, k: inFeatures) }
    self.bias = bias
  }

  public func forward(_ x: UnsafePointer<Float>, rows: Int, _ y: UnsafeMutablePointer<Float>) {
    let accumulate = prefillBias(bias, rows: rows, outFeatures, y)
    bgemm(m: rows, a: x, lda: inFeatures, b: packed, c: y, ldc: outFeatures, accumulate: accumulate)
  }
}

/// fp16 emulated in fp32: weights, inputs and outputs rounded to fp16 (round to nearest even), products accumulated in
/// fp32 as a GPU's fp16 GEMM does. For calibration passes with `model.dtype: torch.float16`, deepcompressor's default
/// model dtype, so that the difference fp16 makes to the statistics and Hessians can be measured (issue #20).
public final class FP16EmulatedLinear: LinearLayer, @unchecked Sendable {
  public let inFeatures: Int
  public let outFeatures: Int
  let dense: DenseLinear

  public init(weight: [Float], outFeatures: Int, inFeatures: Int, bias: [Float]? = nil) {
    self.inFeatures = inFeatures
    self.outFeatures = outFeatures
    dense = DenseLinear(weight: weight.map(f16Round), outFeatures: outFeatures, inFeatures: inFeatures, bias: bias?.map(f16Round))
  }

  public func forward(_ x: UnsafePointer<Float>, rows: Int, _ y: UnsafeMutablePointer<Float>) {
    let n = rows * inFeatures
    let xr = UnsafeMutablePointer<Float>.allocate(capacity: max(n, 1))
    defer { xr.deallocate() }
    for i in 0..<n { xr[i] = f16Round(x[i]) }
    dense.forward(xr, rows: rows, y)
    for i in 0..<(rows * outFeatures) { y[i] = f16Round(y[i]) }
  }
}

/// Copies the bias into every output row so the GEMM can accumulate onto it; returns whether it did.
@inline(__always)
func prefillBias(_ bias: [Float]?, rows: Int, _ out: Int, _ y: UnsafeMutablePointer<Float>) -> Bool {
  guard let b = bias else { return false }
  b.withUnsafeBufferPointer { bp in for r in 0..<rows { (y + r * out).update(from: bp.baseAddress!, count: out) } }
  return true
}

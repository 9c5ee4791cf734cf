// Row-wise vector kernels used by the FP forward pass. Each has a scalar twin in `Reference`.
import Foundation

@inline(__always)
func hsum(_ v: V16) -> Float { v.sum() }

/// Σ x[i]·y[i] with 4 SIMD16 accumulators.
public func dot(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, _ n: Int) -> Float {
  var a0 = V16(), a1 = V16(), a2 = V16(), a3 = V16()
  var i = 0
  while i + 64 <= n {
    a0 = a0.addingProduct(loadV(x + i), loadV(y + i))
    a1 = a1.addingProduct(loadV(x + i + 16), loadV(y + i + 16))
    a2 = a2.addingProduct(loadV(x + i + 32), loadV(y + i + 32))
    a3 = a3.addingProduct(loadV(x + i + 48), loadV(y + i + 48))
    i += 64
  }
  while i + 16 <= n { a0 = a0.addingProduct(loadV(x + i), loadV(y + i)); i += 16 }
  var s = hsum((a0 + a1) + (a2 + a3))
  while i < n { s += x[i] * y[i]; i += 1 }
  return s
}

/// out = x / sqrt(mean(x²) + eps) · weight (HF LlamaRMSNorm, fp32). `out` may alias `x`.
public func rmsNorm(_ x: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, eps: Float, n: Int,
                    _ out: UnsafeMutablePointer<Float>) {
  let ss = dot(x, x, n)
  let inv = 1 / (ss / Float(n) + eps).squareRoot()
  let vinv = V16(repeating: inv)
  var i = 0
  while i + 16 <= n { storeV(loadV(weight + i) * (loadV(x + i) * vinv), out + i); i += 16 }
  while i < n { out[i] = weight[i] * (x[i] * inv); i += 1 }
}

/// In-place softmax over n values (max-subtracted, fp32).
public func softmaxInPlace(_ x: UnsafeMutablePointer<Float>, _ n: Int) {
  if n == 0 { return }
  var m = -Float.infinity
  for i in 0..<n { m = max(m, x[i]) }
  var s: Float = 0
  for i in 0..<n { let e = expf(x[i] - m); x[i] = e; s += e }
  let inv = 1 / s
  for i in 0..<n { x[i] *= inv }
}

/// log Σ exp(x[i]) computed stably in Double (for cross-entropy).
public func logSumExp(_ x: UnsafePointer<Float>, _ n: Int) -> Double {
  var m = -Float.infinity
  for i in 0..<n { m = max(m, x[i]) }
  var s = 0.0
  for i in 0..<n { s += exp(Double(x[i] - m)) }
  return Double(m) + log(s)
}

/// out[i] = silu(gate[i]) · up[i], silu(g) = g / (1 + e^-g). `out` may alias either input.
public func siluMul(_ gate: UnsafePointer<Float>, _ up: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, _ n: Int) {
  for i in 0..<n {
    let g = gate[i]
    out[i] = g / (1 + expf(-g)) * up[i]
  }
}

/// y[i] += x[i].
public func addInPlace(_ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ n: Int) {
  var i = 0
  while i + 16 <= n { storeV(loadV(y + i) + loadV(x + i), y + i); i += 16 }
  while i < n { y[i] += x[i]; i += 1 }
}

/// Index of the largest value (first one on ties), as torch.argmax does.
public func argmax(_ x: UnsafePointer<Float>, _ n: Int) -> Int {
  var best = 0
  var bv = -Float.infinity
  for i in 0..<n where x[i] > bv { bv = x[i]; best = i }
  return best
}

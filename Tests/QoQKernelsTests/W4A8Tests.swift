import Testing
@testable import QoQKernels
import QoQIO
import QoQTestSupport

@Suite struct W4A8Tests {
  /// Random progressive weights within QoQ's guarantees (q·s2 − z ∈ int8) and int8 activations: the VNNI kernel's
  /// integer accumulators equal the scalar twin's exactly, on awkward row counts, both group sizes.
  @Test(arguments: [(1, 128, 64), (3, 256, 128), (17, 640, 64), (129, 128, 128), (33, 1536, 64)])
  func integerAccumulatorsEqualScalarTwin(_ s: (Int, Int, Int)) {
    let (rows, k, group) = s
    var rng = SplitMix64(seed: UInt64(rows * k + group))
    let ng = k / group
    var codes = [UInt8](repeating: 0, count: rows * k), s2 = [Int8](repeating: 1, count: rows * ng), z = [Int8](repeating: 0, count: rows * ng)
    for r in 0..<rows {
      for g in 0..<ng {
        // Pick s2 ∈ [1, 8] and z so that q·s2 − z stays in [−128, 127] for q ∈ 0…15.
        let sc = Int8(1 + rng.int(8)), zz = Int8(rng.int(Int(sc) * 15 + 1) - 0)
        s2[r * ng + g] = sc; z[r * ng + g] = min(zz, 127)
        for i in 0..<group { codes[r * k + g * group + i] = UInt8(rng.int(16)) }
      }
    }
    let x: [Int8] = (0..<k).map { _ in Int8(rng.int(255) - 127) }
    let w = W4A8Packed(codes: codes, s2: s2, z: z, s1: [Float](repeating: 1, count: rows), rows: rows, k: k, group: group)
    var fast = [Int32](repeating: 0, count: rows), ref = fast
    x.withUnsafeBufferPointer { xb in
      let sums = groupSums(xb.baseAddress!, k: k, group: group)
      w4a8Gemv(w, x: xb.baseAddress!, xsum: sums, acc: &fast)
      w4a8GemvReference(w, x: xb.baseAddress!, xsum: sums, acc: &ref)
    }
    #expect(fast == ref)
    // Independent check of one row straight from the unpacked codes.
    var direct: Int32 = 0
    for i in 0..<k { direct += (Int32(codes[i]) * Int32(s2[i / group]) - Int32(z[i / group])) * Int32(x[i]) }
    #expect(ref[0] == direct)
  }
}

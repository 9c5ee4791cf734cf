import Foundation
import Testing
@testable import QoQKernels
import QoQFormat
import QoQIO
import QoQTestSupport

/// A sequence of L tokens of H heads stored into pages of the given format.
final class PagedSequence {
  let f: KVPageFormat
  let pages: [UnsafeMutableRawPointer]
  let vpages: [UnsafeMutableRawPointer]
  let k: [Float], v: [Float]   // (L, H, D) raw values

  init(_ f: KVPageFormat, length L: Int, seed: UInt64) {
    self.f = f
    let n = max(1, (L + f.pageSize - 1) / f.pageSize)
    pages = (0..<n).map { _ in let p = UnsafeMutableRawPointer.allocate(byteCount: f.pageBytes, alignment: 64); p.initializeMemory(as: UInt8.self, repeating: 0xAB, count: f.pageBytes); return p }
    vpages = (0..<n).map { _ in let p = UnsafeMutableRawPointer.allocate(byteCount: f.pageBytes, alignment: 64); p.initializeMemory(as: UInt8.self, repeating: 0xCD, count: f.pageBytes); return p }
    // Keys with an outlier channel, as real keys have.
    var kk = randomFloats(L * f.heads * f.headDim, seed: seed, scale: 2)
    for i in stride(from: 3, to: kk.count, by: f.headDim) { kk[i] *= 8 }
    k = kk; v = randomFloats(L * f.heads * f.headDim, seed: seed + 1)
    let D = f.headDim
    for t in 0..<L {
      for h in 0..<f.heads {
        k.withUnsafeBufferPointer { f.store($0.baseAddress! + (t * f.heads + h) * D, page: pages[t / f.pageSize], head: h, slot: t % f.pageSize, isKey: true) }
        v.withUnsafeBufferPointer { f.store($0.baseAddress! + (t * f.heads + h) * D, page: vpages[t / f.pageSize], head: h, slot: t % f.pageSize, isKey: false) }
      }
    }
  }
  deinit { for p in pages + vpages { p.deallocate() } }
  var kp: [UnsafeRawPointer] { pages.map { UnsafeRawPointer($0) } }
  var vp: [UnsafeRawPointer] { vpages.map { UnsafeRawPointer($0) } }
}

@Suite struct PagedAttentionTests {
  /// Stored KV4/KV8 values equal the quantizer's own fake quantization (QoQFormat.fakeQuantizeAsymGroups, the
  /// function the accuracy was measured with) bit for bit; fp16 equals Float16 rounding.
  @Test(arguments: KVMode.allCases)
  func storedValuesEqualFakeQuantizer(_ mode: KVMode) {
    let f = KVPageFormat(mode: mode, heads: 2, headDim: 64, pageSize: 16)
    let s = PagedSequence(f, length: 37, seed: 11)
    for (isKey, raw) in [(true, s.k), (false, s.v)] {
      var want = raw
      if mode == .fp16 { want = raw.map { Float(Float16($0)) } } else {
        want.withUnsafeMutableBufferPointer { fakeQuantizeAsymGroups($0.baseAddress!, rows: 37 * 2, width: 64, group: 64, bits: mode.bits) }
      }
      for t in 0..<37 {
        for h in 0..<2 {
          for d in 0..<64 {
            let got = f.load(page: isKey ? s.pages[t / 16] : s.vpages[t / 16], head: h, slot: t % 16, channel: d, isKey: isKey)
            #expect(got == want[(t * 2 + h) * 64 + d])
          }
        }
      }
    }
  }

  /// The fast kernel equals the scalar twin (fp32 scores for every mode, integer scores for KV4) on awkward lengths,
  /// causal visibility and GQA groups; and the fp32 twin equals a Double attention over the dequantized values.
  @Test(arguments: [(KVMode.kv4, 1, 64), (.kv4, 17, 32), (.kv4, 130, 128), (.kv8, 65, 64), (.fp16, 129, 64), (.kv8, 3, 32)])
  func kernelMatchesTwin(_ c: (KVMode, Int, Int)) {
    let (mode, L, D) = c
    let f = KVPageFormat(mode: mode, heads: 3, headDim: D, pageSize: 64)
    let s = PagedSequence(f, length: L, seed: UInt64(L * D))
    let nq = 5
    let q = randomFloats(nq * D, seed: 99, scale: 1.5)
    let visible = (0..<nq).map { max(1, L - 2 * $0) }
    let scratch = AttentionScratch(headDim: D)
    for integer in [false, true] {
      var fast = [Float](repeating: .nan, count: nq * D), ref = fast
      q.withUnsafeBufferPointer { qb in
        pagedAttention(f, kPages: s.kp, vPages: s.vp, head: 1, q: qb.baseAddress!, qStride: D, nq: nq, visible: visible,
                       scale: 1 / Float(D).squareRoot(), integerScores: integer, out: &fast, outStride: D, scratch: scratch)
        pagedAttentionReference(f, kPages: s.kp, vPages: s.vp, head: 1, q: qb.baseAddress!, qStride: D, nq: nq, visible: visible,
                                scale: 1 / Float(D).squareRoot(), integerScores: integer, out: &ref, outStride: D)
      }
      for i in 0..<(nq * D) { #expect(abs(fast[i] - ref[i]) <= 2e-5 * (1 + abs(ref[i])), "\(mode) int=\(integer) \(i)") }
      if !integer {
        // Independent Double attention on the dequantized K/V.
        for i in 0..<nq {
          var sc = (0..<visible[i]).map { t -> Double in
            var a = 0.0
            for d in 0..<D { a += Double(q[i * D + d]) * Double(f.load(page: s.pages[t / 64], head: 1, slot: t % 64, channel: d, isKey: true)) }
            return a / Double(D).squareRoot()
          }
          let m = sc.max()!
          sc = sc.map { exp($0 - m) }
          let z = sc.reduce(0, +)
          for d in 0..<D {
            var o = 0.0
            for t in 0..<visible[i] { o += sc[t] / z * Double(f.load(page: s.vpages[t / 64], head: 1, slot: t % 64, channel: d, isKey: false)) }
            #expect(abs(Double(ref[i * D + d]) - o) < 1e-5)
          }
        }
      }
    }
  }
}

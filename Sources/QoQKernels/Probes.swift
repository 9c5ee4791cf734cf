// Machine ceilings measured at run time (qserve.md §8.2): the denominators of the kernel efficiency claims.
import CShim
import Foundation
#if QOQ_AVX512 || QOQ_AVX2
import _Builtin_intrinsics.intel
#endif

/// vpdpbusd peak of one thread, in int8 GOPS (2 ops per multiply-accumulate, 64 per instruction): 12 independent
/// accumulator chains. AVX2 builds time vpmaddubsw instead (32 multiply-adds per ymm, the multiply of the AVX2
/// kernels; their widening vpmaddwd comes on top). 0 on builds with neither.
public func measureVNNIPeak(iterations: Int = 10_000_000) -> Double {
  #if QOQ_AVX512
  let a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2)
  var c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0, c8 = c0, c9 = c0, c10 = c0, c11 = c0
  let t = Date()
  for _ in 0..<iterations {
    c0 = _mm512_dpbusd_epi32(c0, a, b); c1 = _mm512_dpbusd_epi32(c1, a, b); c2 = _mm512_dpbusd_epi32(c2, a, b)
    c3 = _mm512_dpbusd_epi32(c3, a, b); c4 = _mm512_dpbusd_epi32(c4, a, b); c5 = _mm512_dpbusd_epi32(c5, a, b)
    c6 = _mm512_dpbusd_epi32(c6, a, b); c7 = _mm512_dpbusd_epi32(c7, a, b); c8 = _mm512_dpbusd_epi32(c8, a, b)
    c9 = _mm512_dpbusd_epi32(c9, a, b); c10 = _mm512_dpbusd_epi32(c10, a, b); c11 = _mm512_dpbusd_epi32(c11, a, b)
  }
  let dt = Date().timeIntervalSince(t)
  var s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(c0, c1), _mm512_add_epi32(c2, c3)),
                           _mm512_add_epi32(_mm512_add_epi32(c4, c5), _mm512_add_epi32(c6, c7)))
  s = _mm512_add_epi32(s, _mm512_add_epi32(_mm512_add_epi32(c8, c9), _mm512_add_epi32(c10, c11)))
  let sink = _mm512_reduce_add_epi32(s)
  return sink == 1 ? 0 : Double(iterations) * 12 * 64 * 2 / dt / 1e9
  #elseif QOQ_AVX2
  // Each chain feeds its own output back as the unsigned operand, so nothing can be hoisted out of the loop.
  let b = _mm256_set1_epi8(-2)
  var c0 = _mm256_set1_epi8(3), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0, c8 = c0, c9 = c0, c10 = c0, c11 = c0
  let t = Date()
  for _ in 0..<iterations {
    c0 = _mm256_maddubs_epi16(c0, b); c1 = _mm256_maddubs_epi16(c1, b); c2 = _mm256_maddubs_epi16(c2, b)
    c3 = _mm256_maddubs_epi16(c3, b); c4 = _mm256_maddubs_epi16(c4, b); c5 = _mm256_maddubs_epi16(c5, b)
    c6 = _mm256_maddubs_epi16(c6, b); c7 = _mm256_maddubs_epi16(c7, b); c8 = _mm256_maddubs_epi16(c8, b)
    c9 = _mm256_maddubs_epi16(c9, b); c10 = _mm256_maddubs_epi16(c10, b); c11 = _mm256_maddubs_epi16(c11, b)
  }
  let dt = Date().timeIntervalSince(t)
  var s = _mm256_add_epi16(_mm256_add_epi16(_mm256_add_epi16(c0, c1), _mm256_add_epi16(c2, c3)),
                           _mm256_add_epi16(_mm256_add_epi16(c4, c5), _mm256_add_epi16(c6, c7)))
  s = _mm256_add_epi16(s, _mm256_add_epi16(_mm256_add_epi16(c8, c9), _mm256_add_epi16(c10, c11)))
  let sink = unsafeBitCast(s, to: SIMD16<Int16>.self).wrappedSum()
  return sink == 1 ? 0 : Double(iterations) * 12 * 32 * 2 / dt / 1e9
  #else
  return 0
  #endif
}

/// Streaming read bandwidth (GB/s) over a buffer much larger than the caches, the thread pool's threads each
/// streaming its half. Two loops (plain 512-bit loads into 4 accumulators; loads feeding vpdpbusd, the access pattern
/// of the GEMV) and the best of `rounds` runs of each: the most this machine was seen to stream, an honest
/// denominator for the GEMV.
public func measureReadBandwidth(bytes: Int = 1 << 30, rounds: Int = 5) -> Double {
  let n = bytes / 512 * 512
  let buf = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 64); defer { buf.deallocate() }
  buf.initializeMemory(as: UInt8.self, repeating: 1, count: n)
  var best = 0.0
  let parts = ThreadPool.shared.threads
  for variant in 0..<2 {
    for _ in 0..<rounds {
      let t = Date()
      ThreadPool.shared.run(parts: parts) { tid in
        guard tid < parts else { return }
        let lo = n / 512 * tid / parts * 512, hi = n / 512 * (tid + 1) / parts * 512
        #if QOQ_AVX512
        var a = _mm512_setzero_si512(), b = a, c = a, d = a
        var p = lo
        if variant == 0 {
          while p + 256 <= hi {
            a = _mm512_add_epi32(a, _mm512_load_si512(buf + p)); b = _mm512_add_epi32(b, _mm512_load_si512(buf + p + 64))
            c = _mm512_add_epi32(c, _mm512_load_si512(buf + p + 128)); d = _mm512_add_epi32(d, _mm512_load_si512(buf + p + 192))
            p += 256
          }
        } else {
          let m = _mm512_set1_epi8(15), x = _mm512_set1_epi32(0x0102_0304)
          while p + 64 <= hi {
            let v = _mm512_load_si512(buf + p)
            a = _mm512_dpbusd_epi32(a, _mm512_and_si512(v, m), x); b = _mm512_dpbusd_epi32(b, _mm512_and_si512(_mm512_srli_epi16(v, 4), m), x)
            p += 64
          }
        }
        if _mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a, b), _mm512_add_epi32(c, d))) == 1 { print("") }
        #elseif QOQ_AVX2
        // The same two loops with 256-bit loads (the second feeds vpmaddubsw as the AVX2 GEMV does).
        var a = _mm256_setzero_si256(), b = a, c = a, d = a
        var p = lo
        if variant == 0 {
          while p + 128 <= hi {
            a = _mm256_add_epi32(a, load256(buf, p)); b = _mm256_add_epi32(b, load256(buf, p + 32))
            c = _mm256_add_epi32(c, load256(buf, p + 64)); d = _mm256_add_epi32(d, load256(buf, p + 96))
            p += 128
          }
        } else {
          let x = _mm256_set1_epi32(0x0102_0304)
          while p + 64 <= hi {
            a = _mm256_add_epi16(a, nibbleDot(load256(buf, p), x, x)); b = _mm256_add_epi16(b, nibbleDot(load256(buf, p + 32), x, x))
            p += 64
          }
        }
        let t = unsafeBitCast(_mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(c, d)), to: SIMD8<Int32>.self)
        if t.wrappedSum() == 1 { print("") }
        #else
        var s: UInt64 = 0
        var p = lo
        while p + 8 <= hi { s &+= buf.load(fromByteOffset: p, as: UInt64.self); p += 8 }
        if s == 1 { print("") }
        #endif
      }
      best = max(best, Double(n) / Date().timeIntervalSince(t) / 1e9)
    }
  }
  return best
}

/// The kernel variant this build runs: "avx512" (VNNI; vdpbf16ps where `cpuHasDPBF16`), "avx2" (vpmaddubsw/FMA) or
/// "portable" (scalar twins).
public var kernelISA: String { String(cString: qoq_build_isa()) }

/// Monotonic clock in nanoseconds (CLOCK_MONOTONIC): cheap enough to time phases of an engine step.
@inline(__always) public func monotonicNanos() -> UInt64 {
  var ts = timespec()
  clock_gettime(CLOCK_MONOTONIC, &ts)
  return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

// The byte layouts of QServe's W4A8 checkpoints (qserve.md §2.4, deepcompressor.md §4.2) and TinyChat's W4A16
// checkpoints (deepcompressor.md §4.3), both directions.
import QoQIO

/// Which converter's s2/zero column interleave a QServe checkpoint uses (the weight bytes are the same).
public enum S2Order: String, Sendable, CaseIterable {
  /// qserve's checkpoint_converter.py (the published mit-han-lab/*-QServe* checkpoints): inside every 32 output
  /// channels, channel n is stored at 4·(n mod 8) + (n mod 32) div 8.
  case qserve
  /// deepcompressor v0.1's backend/qserve: channel n at 16·(n div 16 mod 2) + 2·(n mod 8) + (n div 8 mod 2).
  case deepcompressor

  /// Storage column of output channel n.
  public func column(_ n: Int) -> Int {
    let b = n / 32 * 32
    switch self {
    case .qserve: return b + 4 * (n % 8) + (n % 32) / 8
    case .deepcompressor: return b + 16 * ((n / 16) % 2) + 2 * (n % 8) + (n / 8) % 2
    }
  }
}

public enum QServePacking {
  /// Byte index and nibble (0 low, 1 high) of code (n, k) in the [N, K/2] qweight buffer.
  @inline(__always) static func place(_ n: Int, _ k: Int, K: Int) -> (Int, Int) {
    let nt = n / 32, r = n % 32, np = r / 16, nps = (r % 16) / 8, nl = r % 8
    let kt = k / 32, c = k % 32, kps = c / 16, kl = (c % 16) / 4, rk = c % 4
    let idx = (((((nt * (K / 32) + kt) * 8 + nl) * 4 + kl) * 2 + kps) * 2 + nps) * 4 + rk
    return (idx, np)
  }

  /// codes (N, K) in 0…15 → qweight bytes (N·K/2). N and K must be multiples of 32.
  public static func pack(_ codes: [UInt8], n N: Int, k K: Int) throws -> [UInt8] {
    guard N % 32 == 0, K % 32 == 0, codes.count == N * K else { throw QoQError("QServe packing needs N and K multiples of 32 (got \(N)×\(K))") }
    var out = [UInt8](repeating: 0, count: N * K / 2)
    for n in 0..<N {
      for k in 0..<K {
        let (i, hi) = place(n, k, K: K)
        out[i] |= hi == 1 ? codes[n * K + k] << 4 : codes[n * K + k] & 0xF
      }
    }
    return out
  }

  public static func unpack(_ bytes: [UInt8], n N: Int, k K: Int) throws -> [UInt8] {
    guard N % 32 == 0, K % 32 == 0, bytes.count == N * K / 2 else { throw QoQError("QServe qweight of \(bytes.count) bytes does not fit \(N)×\(K)") }
    var codes = [UInt8](repeating: 0, count: N * K)
    for n in 0..<N {
      for k in 0..<K {
        let (i, hi) = place(n, k, K: K)
        codes[n * K + k] = hi == 1 ? bytes[i] >> 4 : bytes[i] & 0xF
      }
    }
    return codes
  }

  /// values (N, groups) → stored (groups, N) with the column interleave.
  public static func interleave(_ v: [Int8], n N: Int, groups g: Int, order: S2Order) -> [Int8] {
    var out = [Int8](repeating: 0, count: g * N)
    for n in 0..<N { let col = order.column(n); for j in 0..<g { out[j * N + col] = v[n * g + j] } }
    return out
  }

  /// stored (groups, N) → values (N, groups).
  public static func deinterleave(_ s: [Int8], n N: Int, groups g: Int, order: S2Order) -> [Int8] {
    var out = [Int8](repeating: 0, count: g * N)
    for n in 0..<N { let col = order.column(n); for j in 0..<g { out[n * g + j] = s[j * N + col] } }
    return out
  }
}

/// TinyChat's W4A16 layout (llm-awq's pack_intweight(interleave=4, kstride=64)).
public enum TinyChatPacking {
  /// codes (N, K) → int16 words (N/4 · K), as UInt16 bit patterns. N % 4 == 0, K % 64 == 0.
  public static func pack(_ codes: [UInt8], n N: Int, k K: Int) throws -> [UInt16] {
    guard N % 4 == 0, K % 64 == 0, codes.count == N * K else { throw QoQError("TinyChat packing needs N % 4 == 0 and K % 64 == 0 (got \(N)×\(K))") }
    var out = [UInt16](repeating: 0, count: N * K / 4)
    forEachWord(n: N, k: K) { code, word in
      out[word] = UInt16(codes[code] & 0xF) | UInt16(codes[code + 8] & 0xF) << 4
        | UInt16(codes[code + 16] & 0xF) << 8 | UInt16(codes[code + 24] & 0xF) << 12
    }
    return out
  }

  public static func unpack(_ words: [UInt16], n N: Int, k K: Int) throws -> [UInt8] {
    guard N % 4 == 0, K % 64 == 0, words.count == N * K / 4 else { throw QoQError("TinyChat qweight does not fit \(N)×\(K)") }
    var codes = [UInt8](repeating: 0, count: N * K)
    forEachWord(n: N, k: K) { code, word in
      for j in 0..<4 { codes[code + 8 * j] = UInt8((words[word] >> (4 * j)) & 0xF) }
    }
    return codes
  }

  /// The layout both directions walk: each int16 word holds the 4-bit codes at `code`, +8, +16, +24 of one row
  /// (row n, 32-input half h of 64-input block c64, lane b), and lives at `word` (rows interleaved by 4).
  static func forEachWord(n N: Int, k K: Int, _ body: (_ code: Int, _ word: Int) -> Void) {
    for n in 0..<N {
      let R = n / 4, i = n % 4
      for c64 in 0..<(K / 64) {
        for h in 0..<2 {
          for b in 0..<8 { body(n * K + c64 * 64 + h * 32 + b, ((R * (K / 64) + c64) * 4 + i) * 16 + h * 8 + b) }
        }
      }
    }
  }

  /// Rows of the transposed scale/zero tensors for group 128: ng rounded up to a multiple of 8 (86 → 88).
  public static func paddedGroups(_ ng: Int) -> Int { (ng + 7) / 8 * 8 }
}

// Hadamard rotations (deepcompressor.md §1.2): n = k·2^m with k the first of [172, 156, 140, 108, 60, 52, 36, 28,
// 40, 20, 12] dividing n with a power-of-two quotient (else k = 1); R = kron(H_kᵀ, Sylvester(2^m)) / √n.
// H_k is built by construction (no tables are shipped) and equals deepcompressor's table entry for entry: Paley I
// for k = 12, 20, 60, 108, 140; Paley II for 28, 36; doubling of 20 for 40. k = 52, 156, 172 are not available.
import QoQFormat
import QoQIO

public enum Hadamard {
  static let specialOrders = [172, 156, 140, 108, 60, 52, 36, 28, 40, 20, 12]

  static func isPowerOfTwo(_ n: Int) -> Bool { n > 0 && n & (n - 1) == 0 }
  static func isPrime(_ q: Int) -> Bool {
    if q < 2 { return false }
    var d = 2
    while d * d <= q { if q % d == 0 { return false }; d += 1 }
    return true
  }

  /// Sylvester's construction in natural order (scipy.linalg.hadamard), ±1 entries.
  public static func sylvester(_ n: Int) -> [Int8] {
    precondition(isPowerOfTwo(n))
    var h: [Int8] = [1]
    var size = 1
    while size < n {
      var next = [Int8](repeating: 0, count: 4 * size * size)
      for i in 0..<size {
        for j in 0..<size {
          let v = h[i * size + j]
          next[i * 2 * size + j] = v
          next[i * 2 * size + j + size] = v
          next[(i + size) * 2 * size + j] = v
          next[(i + size) * 2 * size + j + size] = -v
        }
      }
      h = next
      size *= 2
    }
    return h
  }

  /// Quadratic character χ over GF(q), q prime.
  static func chi(_ a: Int, _ q: Int) -> Int {
    let x = ((a % q) + q) % q
    if x == 0 { return 0 }
    var r = 1, b = x, e = (q - 1) / 2
    while e > 0 { if e & 1 == 1 { r = r * b % q }; b = b * b % q; e >>= 1 }
    return r == 1 ? 1 : -1
  }

  /// The table H_k deepcompressor stores for special order k (the kron uses H_kᵀ), built by construction; nil for
  /// orders without one here (52, 156 and 172 are Williamson matrices that only exist as stored data).
  /// Verified entry for entry against deepcompressor's tables (Tests/Fixtures/hadamard/fingerprints.json).
  public static func special(_ k: Int) -> [Int8]? {
    // Paley I, q = k − 1 ≡ 3 (mod 4): H[0][0] = 1, H[0][c] = −1, H[r][0] = 1, H[r][r] = 1, H[r][c] = χ(r − c).
    if isPrime(k - 1) && (k - 1) % 4 == 3 {
      let q = k - 1
      var h = [Int8](repeating: 0, count: k * k)
      for r in 0..<k {
        for c in 0..<k {
          let v: Int
          if r == 0 { v = c == 0 ? 1 : -1 } else if c == 0 { v = 1 } else if r == c { v = 1 } else { v = chi(r - c, q) }
          h[r * k + c] = Int8(v)
        }
      }
      return h
    }
    // Paley II, q = k/2 − 1 ≡ 1 (mod 4): C (p = q+1) with C[0][0] = 0, C[0][j] = C[j][0] = 1, C[i][j] = χ(j − i);
    // H = [[C+I, C−I], [C−I, −C−I]] (symmetric).
    if k % 2 == 0 && isPrime(k / 2 - 1) && (k / 2 - 1) % 4 == 1 {
      let q = k / 2 - 1, p = q + 1
      func cm(_ i: Int, _ j: Int) -> Int { (i == 0 && j == 0) ? 0 : (i == 0 || j == 0) ? 1 : chi(j - i, q) }
      var h = [Int8](repeating: 0, count: k * k)
      for r in 0..<k {
        for c in 0..<k {
          let (br, ir, bc, ic) = (r / p, r % p, c / p, c % p)
          let x = cm(ir, ic), d = ir == ic ? 1 : 0
          let v = br == 0 && bc == 0 ? x + d : br == 1 && bc == 1 ? -x - d : x - d
          h[r * k + c] = Int8(v)
        }
      }
      return h
    }
    // k = 40: doubling of the k = 20 table, [[H, H], [H, −H]].
    if k == 40, let half = special(20) {
      let m = 20
      var h = [Int8](repeating: 0, count: k * k)
      for i in 0..<m {
        for j in 0..<m {
          let v = half[i * m + j]
          h[i * k + j] = v; h[i * k + j + m] = v; h[(i + m) * k + j] = v; h[(i + m) * k + j + m] = -v
        }
      }
      return h
    }
    return nil
  }

  /// The (k, 2^m) split deepcompressor would use, restricted to orders we can build; nil if none.
  public static func factor(_ n: Int) -> (k: Int, m: Int)? {
    if isPowerOfTwo(n) { return (1, n) }
    for k in specialOrders where n % k == 0 && isPowerOfTwo(n / k) && special(k) != nil { return (k, n / k) }
    return nil
  }

  /// Whether H_k Hᵀ_k = k·I (used by tests and as a guard).
  public static func isHadamard(_ h: [Int8], _ k: Int) -> Bool {
    for i in 0..<k {
      for j in 0..<k {
        var s = 0
        for t in 0..<k { s += Int(h[i * k + t]) * Int(h[j * k + t]) }
        if s != (i == j ? k : 0) { return false }
      }
    }
    return true
  }
}

/// x ↦ x·R for row vectors, R = kron(H_kᵀ, Sylvester(p)) / √n, in Double, via a fast Walsh–Hadamard transform on
/// the power-of-two part and a k×k product on the rest. Orthonormal, so Rᵀ = R⁻¹.
public struct HadamardRotation: Sendable {
  public let n: Int
  public let k: Int
  public let p: Int
  let hk: [Int8]  // k×k
  let scale: Double

  public init(size n: Int) throws {
    guard let (k, p) = Hadamard.factor(n) else {
      throw QoQError("no Hadamard matrix of order \(n) can be built here (n = k·2^m with k in \(Hadamard.specialOrders) needed); "
                     + "use --rotation-random")
    }
    self.n = n; self.k = k; self.p = p
    hk = k == 1 ? [1] : Hadamard.special(k)!
    scale = 1 / Double(n).squareRoot()
  }

  /// y = x·R (x and y may alias).
  public func apply(_ x: UnsafeMutablePointer<Double>) {
    // 1. x viewed as (k, p): each row times Sylvester(p) (FWHT, natural order).
    for a in 0..<k {
      let row = x + a * p
      var h = 1
      while h < p {
        var i = 0
        while i < p {
          for j in i..<(i + h) { let u = row[j], v = row[j + h]; row[j] = u + v; row[j + h] = u - v }
          i += 2 * h
        }
        h *= 2
      }
    }
    // 2. y[c, d] = Σ_a H_k[c][a] · t[a][d]  (kron with H_kᵀ on the left index).
    if k > 1 {
      let t = UnsafeMutablePointer<Double>.allocate(capacity: n); defer { t.deallocate() }
      t.update(from: x, count: n)
      for c in 0..<k {
        for d in 0..<p {
          var s = 0.0
          for a in 0..<k { s += Double(hk[c * k + a]) * t[a * p + d] }
          x[c * p + d] = s
        }
      }
    }
    for i in 0..<n { x[i] *= scale }
  }

  /// The dense matrix R (n × n) (for tests and for writing rotation.pt-style outputs).
  public func matrix() -> [Double] {
    var m = [Double](repeating: 0, count: n * n)
    var e = [Double](repeating: 0, count: n)
    for i in 0..<n {
      for j in 0..<n { e[j] = j == i ? 1 : 0 }
      e.withUnsafeMutableBufferPointer { apply($0.baseAddress!) }
      for j in 0..<n { m[i * n + j] = e[j] }
    }
    return m
  }
}

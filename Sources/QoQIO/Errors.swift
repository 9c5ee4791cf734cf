// Errors shared by every QoQ module. Messages name the file and the problem, so a user can act on them.
import Foundation

/// An error with a human-readable message; every parser and loader throws these instead of trapping.
public struct QoQError: Error, CustomStringConvertible, Equatable, Sendable {
  public let message: String
  public init(_ message: String) { self.message = message }
  public var description: String { message }
}

/// Size arithmetic that throws instead of trapping on overflow (anchors.md §3.2).
@inline(__always)
public func checkedMul(_ a: Int, _ b: Int, _ what: @autoclosure () -> String) throws -> Int {
  let (r, o) = a.multipliedReportingOverflow(by: b)
  if o || a < 0 || b < 0 { throw QoQError("\(what()): size overflows (\(a) × \(b))") }
  return r
}

@inline(__always)
public func checkedAdd(_ a: Int, _ b: Int, _ what: @autoclosure () -> String) throws -> Int {
  let (r, o) = a.addingReportingOverflow(b)
  if o || a < 0 || b < 0 { throw QoQError("\(what()): size overflows (\(a) + \(b))") }
  return r
}

/// Product of a shape, checked for negative dimensions and overflow.
public func checkedCount(_ shape: [Int], _ what: @autoclosure () -> String) throws -> Int {
  var n = 1
  for d in shape {
    if d < 0 { throw QoQError("\(what()): negative dimension in shape \(shape)") }
    n = try checkedMul(n, d, what())
  }
  return n
}

/// SplitMix64: the small seeded generator used wherever the project needs reproducible randomness (calibration
/// shuffles, random rotation signs, sampling, fuzzing, test data).
public struct SplitMix64: RandomNumberGenerator, Sendable {
  public var state: UInt64
  public init(seed: UInt64) { state = seed }
  public mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
  /// Uniform in [0, n).
  public mutating func int(_ n: Int) -> Int { n <= 1 ? 0 : Int(next() % UInt64(n)) }
}

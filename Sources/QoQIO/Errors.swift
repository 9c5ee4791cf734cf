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

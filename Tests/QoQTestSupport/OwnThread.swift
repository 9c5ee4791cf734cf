import Foundation

/// Runs CPU-heavy synchronous work on a thread of its own and awaits its result. Swift Testing runs tests on the
/// cooperative pool, which has one thread per core; a test that computes for minutes on it starves every async test
/// running beside it (the in-process HTTP server's handlers among them). Expectations belong on the caller's side:
/// the work returns values, the test checks them.
public func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
  try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, Error>) in
    let t = Thread { c.resume(with: Result { try body() }) }
    t.stackSize = 16 << 20
    t.start()
  }
}

// Runs the built `qoq` binary as a user would: exit status, stdout and stderr. scripts/test.sh builds it before
// `swift test`; a missing binary fails the test that needs it (never a silent pass).
import Foundation
import Testing

let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
  .deletingLastPathComponent().path

/// The `qoq` executable beside the test bundle (same build configuration), else .build/debug/qoq.
let qoqBinary: String? = {
  let fm = FileManager.default
  var candidates: [String] = []
  if let exe = CommandLine.arguments.first {
    var dir = URL(fileURLWithPath: exe).deletingLastPathComponent()
    if dir.lastPathComponent.hasSuffix(".xctest") || dir.path.contains(".xctest/") {
      while dir.path.contains(".xctest") { dir = dir.deletingLastPathComponent() }
    }
    candidates.append(dir.path + "/qoq")
  }
  candidates.append(repoRoot + "/.build/debug/qoq")
  return candidates.first { fm.isExecutableFile(atPath: $0) }
}()

struct CLIResult {
  var status: Int32
  var stdout: String
  var stderr: String
  /// True when the process ended by a signal (a crash), not by exit.
  var crashed: Bool
}

/// Runs `qoq args…` with an optional environment override; output is read through files so large outputs cannot
/// block the child. The wait releases the test's thread (the cooperative pool has one thread per core; blocking it
/// for a child's lifetime starves every other async test).
func runQoQ(_ args: [String], env: [String: String] = [:], stdin: String? = nil) async throws -> CLIResult {
  try await withCheckedThrowingContinuation { (c: CheckedContinuation<CLIResult, Error>) in
    do {
      try startQoQ(args, env: env, stdin: stdin) { c.resume(returning: $0) }
    } catch { c.resume(throwing: error) }
  }
}

/// The same, blocking (for one-time setup outside the tests' tasks).
func runQoQSync(_ args: [String], env: [String: String] = [:]) throws -> CLIResult {
  let done = DispatchSemaphore(value: 0)
  nonisolated(unsafe) var result: CLIResult?
  try startQoQ(args, env: env, stdin: nil) { result = $0; done.signal() }
  done.wait()
  return result!
}

func startQoQ(_ args: [String], env: [String: String], stdin: String?, then: @escaping @Sendable (CLIResult) -> Void) throws {
  guard let bin = qoqBinary else {
    throw HardeningTestError("the qoq binary is not built (run `swift build --product qoq` first; scripts/test.sh does)")
  }
  let p = Process()
  p.executableURL = URL(fileURLWithPath: bin)
  p.arguments = args
  var e = ProcessInfo.processInfo.environment
  e["QOQ_PROGRESS"] = "0"  // quiet unless a test asks for progress
  for (k, v) in env { e[k] = v }
  p.environment = e
  let dir = scratch("cli-\(UUID().uuidString.prefix(8))")
  let outPath = dir + "/out", errPath = dir + "/err"
  FileManager.default.createFile(atPath: outPath, contents: nil)
  FileManager.default.createFile(atPath: errPath, contents: nil)
  p.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
  p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
  if let s = stdin {
    let inPath = dir + "/in"
    FileManager.default.createFile(atPath: inPath, contents: Data(s.utf8))
    p.standardInput = try FileHandle(forReadingFrom: URL(fileURLWithPath: inPath))
  } else {
    p.standardInput = FileHandle.nullDevice
  }
  p.terminationHandler = { p in
    let out = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
    let err = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
    then(CLIResult(status: p.terminationStatus, stdout: out, stderr: err, crashed: p.terminationReason == .uncaughtSignal))
  }
  try p.run()
}

struct HardeningTestError: Error, CustomStringConvertible {
  let description: String
  init(_ d: String) { description = d }
}

/// A fresh folder for one test.
func scratch(_ name: String) -> String {
  let d = NSTemporaryDirectory() + "qoq-hard-\(getpid())/" + name
  try? FileManager.default.removeItem(atPath: d)
  try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
  return d
}

func write(_ text: String, to path: String) {
  try? FileManager.default.createDirectory(atPath: URL(fileURLWithPath: path).deletingLastPathComponent().path,
                                           withIntermediateDirectories: true)
  FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
}

func read(_ path: String) -> String? { try? String(contentsOfFile: path, encoding: .utf8) }

// `qoq`: one binary, subcommands (anchors.md §1.9.9). Results go to stdout, progress to stderr.
import ArgumentParser
import Foundation
import QoQIO
import QoQKernels

@main
struct QoQ: AsyncParsableCommand {
  /// QOQ_REPORT_PEAK_RSS=1: print the process's peak resident memory (VmHWM) on stderr at exit, whatever the exit
  /// path (the hardening tests bound the memory a hostile input may cost with it).
  static func main() async {
    if ProcessInfo.processInfo.environment["QOQ_REPORT_PEAK_RSS"] == "1" {
      atexit { FileHandle.standardError.write(Data("peak_rss_kb=\(Int(peakRSSGB() * 1_048_576))\n".utf8)) }
    }
    if let message = unknownSubcommandMessage(Array(CommandLine.arguments.dropFirst())) {
      FileHandle.standardError.write(Data((message + "\n").utf8))
      Foundation.exit(2)
    }
    do {
      var command = try parseAsRoot()
      try await fetchNamedModels(command)
      if var asyncCommand = command as? AsyncParsableCommand { try await asyncCommand.run() } else { try command.run() }
    } catch {
      exit(withError: error)
    }
  }

  static let configuration = CommandConfiguration(
    commandName: "qoq",
    abstract: "Load, quantize (QoQ W4A8KV4), evaluate and run Llama-family models.",
    version: "qoq (kernels: \(kernelISA)\(cpuHasDPBF16 ? ", bf16 dot products" : ""))",
    subcommands: [QuantizeCommand.self, ConvertCommand.self, EvalCommand.self, GenerateCommand.self, ChatCommand.self, TokenizeCommand.self,
                  TableCommand.self,
                  BenchCommand.self, ServeCommand.self, SynthCommand.self])
}

/// `qoq genrate …` → "unknown command 'genrate'. Did you mean 'generate'?" (ArgumentParser alone would complain about
/// the first option instead). nil when the first argument is an option or a known command.
func unknownSubcommandMessage(_ args: [String]) -> String? {
  guard let first = args.first, !first.hasPrefix("-") else { return nil }
  let names = QoQ.configuration.subcommands.compactMap { $0.configuration.commandName } + ["help"]
  guard !names.contains(first) else { return nil }
  let ranked = names.map { ($0, editDistance(first.lowercased(), $0)) }.sorted { $0.1 < $1.1 }
  let hint = ranked[0].1 <= max(2, first.count / 3) ? " Did you mean '\(ranked[0].0)'?" : ""
  return "error: unknown command '\(first)'.\(hint) Commands: \(names.joined(separator: ", "))."
}

/// Levenshtein distance (insertions, deletions, substitutions), for command suggestions.
func editDistance(_ a: String, _ b: String) -> Int {
  let x = Array(a), y = Array(b)
  if x.isEmpty || y.isEmpty { return max(x.count, y.count) }
  var prev = Array(0...y.count), cur = [Int](repeating: 0, count: y.count + 1)
  for i in 1...x.count {
    cur[0] = i
    for j in 1...y.count { cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x[i - 1] == y[j - 1] ? 0 : 1)) }
    swap(&prev, &cur)
  }
  return prev[y.count]
}

/// Runs a body and turns its errors into a clean exit with a one-line message (no stack trace, no Foundation dump).
func runReportingErrors(_ body: () throws -> Void) throws {
  do { try body() } catch let e as QoQError {
    FileHandle.standardError.write(Data("error: \(e.message)\n".utf8))
    throw ExitCode(1)
  } catch let e as ExitCode {
    throw e
  } catch {
    FileHandle.standardError.write(Data("error: \(describeFileError(error))\n".utf8))
    throw ExitCode(1)
  }
}

/// Progress on stderr: on a terminal one line redrawn in place; in a log (stderr redirected) a line every
/// QOQ_PROGRESS_INTERVAL seconds (default 30), plus the first and the last step of each task, so a long job is never
/// silent (issue #16). `bar` adds elapsed time and an ETA from the task's own pace. QOQ_PROGRESS=1 forces the
/// terminal form, QOQ_PROGRESS=0 turns progress off.
enum Progress {
  static let mode: String = ProcessInfo.processInfo.environment["QOQ_PROGRESS"] ?? (isatty(2) != 0 ? "1" : "log")
  static let interval: Double = ProcessInfo.processInfo.environment["QOQ_PROGRESS_INTERVAL"].flatMap(Double.init) ?? 30
  private static let lock = NSLock()
  nonisolated(unsafe) private static var lastLog = Date.distantPast
  nonisolated(unsafe) private static var start = Date(), lastDone = -1, lastTotal = -1, forceNext = false

  static func update(_ s: String) {
    lock.lock(); defer { lock.unlock() }
    switch mode {
    case "0": return
    case "1": FileHandle.standardError.write(Data("\r\u{1B}[K\(s)".utf8))
    default:
      let now = Date()
      guard forceNext || now.timeIntervalSince(lastLog) >= interval else { return }
      forceNext = false; lastLog = now
      FileHandle.standardError.write(Data((s + "\n").utf8))
    }
  }
  static func done() { if mode == "1" { FileHandle.standardError.write(Data("\n".utf8)) } }

  static func bar(_ done: Int, _ total: Int, width: Int = 30) -> String {
    lock.lock(); defer { lock.unlock() }
    let now = Date()
    if total != lastTotal || done < lastDone { start = now; forceNext = true }  // a new task
    if done >= total { forceNext = true }
    lastDone = done; lastTotal = total
    let f = total > 0 ? min(width, done * width / total) : 0
    let elapsed = now.timeIntervalSince(start)
    var timing = " " + clock(elapsed)
    if done > 0 && done < total { timing += ", ETA " + clock(elapsed / Double(done) * Double(total - done)) }
    return "[" + String(repeating: "#", count: f) + String(repeating: ".", count: width - f) + "]" + timing
  }

  static func clock(_ t: Double) -> String {
    let s = Int(t.rounded())
    return s >= 3600 ? String(format: "%dh%02dm", s / 3600, s / 60 % 60) : s >= 60 ? String(format: "%dm%02ds", s / 60, s % 60) : "\(s)s"
  }
}

func note(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }

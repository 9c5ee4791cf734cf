import Foundation
import QoQModels
import QoQTestSupport
import Testing

/// `qoq chat` driven through its stdin as a user would type (issue #16): two turns, /reset, /exit; the conversation
/// grows between turns and starts over after /reset.
@Suite struct ChatCommandTests {
  static func tinyModel() throws -> String {
    let dir = NSTemporaryDirectory() + "qoq-chat-\(UInt64.random(in: 0..<UInt64.max))/model"
    let c = try LlamaConfiguration(modelType: "llama", hiddenSize: 64, intermediateSize: 96, numHiddenLayers: 2, numAttentionHeads: 2,
                                   numKeyValueHeads: 1, headDim: 32, rmsNormEps: 1e-5, vocabSize: 300)
    try writeTinyCheckpoint(c, to: dir)
    return dir
  }

  /// "[N prompt tokens in …" lines of stderr, as numbers.
  static func promptSizes(_ stderr: String) -> [Int] {
    stderr.split(separator: "\n").compactMap { l in
      guard l.hasPrefix("[") else { return nil }
      return Int(l.dropFirst().prefix { $0.isNumber })
    }
  }

  @Test func turnsResetAndExit() async throws {
    let dir = try Self.tinyModel()
    let r = try await runQoQ(["chat", "-m", dir, "-n", "4", "--temp", "0", "--system-prompt", "Be brief."],
                             stdin: "hello\nand again\n/reset\nhello\n/exit\nnever read\n")
    #expect(r.status == 0 && !r.crashed, "\(r.stderr)")
    let sizes = Self.promptSizes(r.stderr)
    #expect(sizes.count == 3, "\(r.stderr)")
    if sizes.count == 3 {
      #expect(sizes[1] > sizes[0])   // the second turn carries the first question and answer
      #expect(sizes[2] == sizes[0])  // after /reset the same first message costs the same again
    }
    #expect(r.stderr.contains("(conversation reset)"))
    #expect(r.stdout.split(separator: "\n", omittingEmptySubsequences: false).count >= 3)
    // End of input leaves as /exit does.
    let eof = try await runQoQ(["chat", "-m", dir, "-n", "2", "--temp", "0"], stdin: "hi\n")
    #expect(eof.status == 0 && Self.promptSizes(eof.stderr).count == 1)
    let bad = try await runQoQ(["chat", "-m", dir + "/missing"], stdin: "hi\n")
    #expect(bad.status == 1 && bad.stderr.contains("missing"))
  }
}

/// Progress in a log (stderr not a terminal): the first and last step of a task always, the rest at most every
/// QOQ_PROGRESS_INTERVAL seconds, with elapsed time and an ETA; QOQ_PROGRESS=0 silences it (issue #16).
@Suite struct ProgressLogTests {
  @Test func longJobsAreNotSilentInALog() async throws {
    let dir = try ChatCommandTests.tinyModel()
    let text = dir + "/../text.txt"
    try String(repeating: "the quick brown fox jumps over the lazy dog. ", count: 40).write(toFile: text, atomically: true, encoding: .utf8)
    let args = ["eval", "-m", dir, "--dataset", text, "--seq-len", "32", "--max-windows", "5"]
    let r = try await runQoQ(args, env: ["QOQ_PROGRESS": "log", "QOQ_PROGRESS_INTERVAL": "1000"])
    #expect(r.status == 0, "\(r.stderr)")
    let lines = r.stderr.split(separator: "\n").filter { $0.contains(" window ") }
    #expect(lines.count == 2, "\(r.stderr)")
    #expect(lines.first?.contains("window 1/5") == true && lines.first?.contains("ETA") == true)
    #expect(lines.last?.contains("window 5/5") == true)
    #expect(r.stderr.contains("format text"))
    let every = try await runQoQ(args, env: ["QOQ_PROGRESS": "log", "QOQ_PROGRESS_INTERVAL": "0"])
    #expect(every.stderr.split(separator: "\n").filter { $0.contains(" window ") }.count == 5)
    let off = try await runQoQ(args, env: ["QOQ_PROGRESS": "0"])
    #expect(off.status == 0 && !off.stderr.contains(" window "))
  }
}

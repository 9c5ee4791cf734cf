import Foundation
import Testing

/// The CLI's grammar as a user meets it (issue #16): a mistyped command gets a suggestion and exit status 2, every
/// command that takes a model accepts -m, option typos are named, errors exit non-zero.
@Suite struct CLIGrammarTests {
  @Test func mistypedCommandsGetASuggestion() async throws {
    for (typo, want) in [("genrate", "generate"), ("qunatize", "quantize"), ("evl", "eval"), ("serv", "serve"), ("covnert", "convert")] {
      let r = try await runQoQ([typo, "-m", "x"])
      #expect(r.status == 2 && !r.crashed, "\(typo)")
      #expect(r.stderr.contains("unknown command '\(typo)'") && r.stderr.contains("Did you mean '\(want)'?"), "\(typo): \(r.stderr)")
    }
    let far = try await runQoQ(["frobnicate"])
    #expect(far.status == 2 && far.stderr.contains("unknown command 'frobnicate'") && !far.stderr.contains("Did you mean"))
    #expect(far.stderr.contains("generate") && far.stderr.contains("quantize"))  // the list of commands
  }

  @Test func everyModelCommandTakesDashM() async throws {
    // A missing model is reported as such (not as an unknown option) by every command that opens one.
    for cmd in [["eval"], ["generate", "-p", "hi"], ["tokenize", "-p", "hi"], ["bench", "--engine"], ["serve", "--port", "0"]] {
      let r = try await runQoQ(cmd + ["-m", "/nonexistent/model-dir"])
      #expect(r.status != 0 && !r.crashed, "\(cmd)")
      #expect(!r.stderr.contains("Unknown option '-m'") && r.stderr.contains("/nonexistent/model-dir"), "\(cmd): \(r.stderr)")
    }
  }

  @Test func optionTyposAreNamed() async throws {
    let r = try await runQoQ(["eval", "-m", "x", "--max-window", "3"])
    #expect(r.status != 0 && r.stderr.contains("--max-windows"))
    let ok = try await runQoQ(["--version"])
    #expect(ok.status == 0 && ok.stdout.contains("qoq"))
  }
}

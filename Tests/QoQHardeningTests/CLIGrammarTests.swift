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
    // A missing model is reported as such (not as an unknown option) by every command that opens one, whichever of
    // -m, --model or --model-path names it; quantize and table included, serve also positionally (as vLLM).
    let recipe = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
      .deletingLastPathComponent().appendingPathComponent("recipes/rtn-w4a16-g128.yaml").path
    let out = FileManager.default.temporaryDirectory.appendingPathComponent("qoq-grammar-\(UUID().uuidString)").path
    let commands: [[String]] = [["eval"], ["generate", "-p", "hi"], ["chat"], ["tokenize", "-p", "hi"], ["bench", "--engine"],
                                ["serve", "--port", "0"], ["quantize", recipe, "--skip-eval"], ["table", "--recipes", recipe, "--output", out]]
    for cmd in commands {
      for flag in ["-m", "--model", "--model-path"] {
        let r = try await runQoQ(cmd + [flag, "/nonexistent/model-dir"], stdin: "")
        #expect(r.status != 0 && !r.crashed, "\(cmd) \(flag)")
        #expect(!r.stderr.contains("Unknown option") && !r.stderr.contains("unknown option") && !r.stderr.contains("unexpected argument")
                && r.stderr.contains("/nonexistent/model-dir"), "\(cmd) \(flag): \(r.stderr)")
      }
    }
    try? FileManager.default.removeItem(atPath: out)
    let positional = try await runQoQ(["serve", "/nonexistent/model-dir", "--port", "0"])
    #expect(positional.status != 0 && positional.stderr.contains("/nonexistent/model-dir"), "\(positional.stderr)")
    let none = try await runQoQ(["serve", "--port", "0"])
    #expect(none.status != 0 && none.stderr.contains("qoq serve MODEL or -m MODEL"), "\(none.stderr)")
    let twice = try await runQoQ(["serve", "a", "-m", "b"])
    #expect(twice.status != 0 && twice.stderr.contains("not both"), "\(twice.stderr)")
  }

  /// eval, quantize and table share --dataset and --max-windows (quantize and table also as --eval-*).
  @Test func datasetFlagsAreShared() async throws {
    for cmd in [["eval", "-m", "/nonexistent/model-dir"], ["quantize", "--model-path", "/nonexistent/model-dir"],
                ["table", "-m", "/nonexistent/model-dir", "--recipes", "/nonexistent/r.yaml"]] {
      let r = try await runQoQ(cmd + ["--dataset", "/nonexistent/text.txt", "--max-windows", "2"])
      #expect(r.status != 0 && !r.crashed, "\(cmd)")
      #expect(!r.stderr.lowercased().contains("unknown option"), "\(cmd): \(r.stderr)")
    }
  }

  /// The GGUF table types (issue #15) are checked before any file is opened: only with --to gguf, only known types.
  @Test func ggufTableTypesAreValidated() async throws {
    let cases: [([String], String)] = [
      (["convert", "/nonexistent/ckpt", "-o", "/nonexistent/out", "--token-embedding-type", "q8_0"], "applies to --to gguf only"),
      (["convert", "/nonexistent/ckpt", "-o", "/nonexistent/out", "--to", "gguf", "--output-tensor-type", "q4_k"], "f32, f16, bf16, q8_0"),
    ]
    for (args, message) in cases {
      let r = try await runQoQ(args)
      #expect(r.status != 0 && !r.crashed && r.stderr.contains(message), "\(args): \(r.stderr)")
    }
  }

  @Test func optionTyposAreNamed() async throws {
    let r = try await runQoQ(["eval", "-m", "x", "--max-window", "3"])
    #expect(r.status != 0 && r.stderr.contains("--max-windows"))
    let ok = try await runQoQ(["--version"])
    #expect(ok.status == 0 && ok.stdout.contains("qoq"))
  }
}

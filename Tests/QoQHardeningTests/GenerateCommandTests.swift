import Foundation
import QoQIO
import QoQTestSupport
import Testing

/// `qoq generate` as a newcomer uses it (issue #16): the model's chat template by default (--raw turns it off), a
/// system prompt, --chat-template FILE, -f FILE and standard input, -c/--ctx-size, the llama.cpp-style breakdown, and
/// a non-zero exit when any prompt fails. The tiny model's tokenizer is byte level without merges, so a text of n
/// bytes is n tokens and every prompt size below is counted by hand.
@Suite struct GenerateCommandTests {
  static let template = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"

  static func modelWithTemplate() throws -> String {
    let dir = try ChatCommandTests.tinyModel()
    let cfg = JSONObject([("chat_template", .string(template))])
    try Data(JSON.serialize(.object(cfg)).utf8).write(to: URL(fileURLWithPath: dir + "/tokenizer_config.json"))
    return dir
  }

  /// The prompt token count of the "prompt eval = … ms / N tokens" line.
  static func promptTokens(_ stderr: String) -> Int? {
    guard let line = stderr.split(separator: "\n").first(where: { $0.hasPrefix("prompt eval") }),
          let slash = line.range(of: "/") else { return nil }
    return Int(line[slash.upperBound...].trimmingCharacters(in: .whitespaces).prefix { $0.isNumber })
  }

  @Test func templateByDefaultRawSystemPromptAndTemplateFile() async throws {
    let dir = try Self.modelWithTemplate()
    let base = ["generate", "-m", dir, "-n", "2"]
    let chat = try await runQoQ(base + ["-p", "hi"])
    #expect(chat.status == 0, "\(chat.stderr)")
    #expect(Self.promptTokens(chat.stderr) == 19, "\(chat.stderr)")  // "[user]hi[assistant]"
    #expect(chat.stderr.contains("wrapped in the chat template"))
    for l in ["load time", "prompt eval", "generation", "total"] { #expect(chat.stderr.contains(l), "\(l)") }
    let raw = try await runQoQ(base + ["-p", "hi", "--raw"])
    #expect(raw.status == 0 && Self.promptTokens(raw.stderr) == 2, "\(raw.stderr)")
    let sys = try await runQoQ(base + ["-p", "hi", "--system-prompt", "S"])
    #expect(sys.status == 0 && Self.promptTokens(sys.stderr) == 28, "\(sys.stderr)")  // "[system]S" + the 19
    let file = dir + "/../t.jinja"
    try "{% for m in messages %}{{ m['content'] }}{% endfor %}".write(toFile: file, atomically: true, encoding: .utf8)
    let own = try await runQoQ(base + ["-p", "hi", "--chat-template", file])
    #expect(own.status == 0 && Self.promptTokens(own.stderr) == 2, "\(own.stderr)")
    let missing = try await runQoQ(base + ["-p", "hi", "--chat-template", file + ".missing"])
    #expect(missing.status == 1 && missing.stderr.contains("cannot read the chat template file"))
    let both = try await runQoQ(base + ["-p", "hi", "--raw", "--chat"])
    #expect(both.status != 0 && both.stderr.contains("--raw or --chat"))
    // A model without a template: plain text unless --chat (ChatML then).
    let plain = try ChatCommandTests.tinyModel()
    let p = try await runQoQ(["generate", "-m", plain, "-n", "2", "-p", "hi"])
    #expect(p.status == 0 && Self.promptTokens(p.stderr) == 2 && p.stderr.contains("no chat template"), "\(p.stderr)")
    let ml = try await runQoQ(["generate", "-m", plain, "-n", "2", "-p", "hi", "--chat"])
    // "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n": 12 + 5 + 2 + 10 + 1 + 12 + 10 bytes.
    #expect(ml.status == 0 && Self.promptTokens(ml.stderr) == 52, "\(ml.stderr)")
  }

  @Test func promptsFromFilesAndStdinAndTheContextLimit() async throws {
    let dir = try ChatCommandTests.tinyModel()
    let text = dir + "/../prompt.txt"
    try "hello\nworld".write(toFile: text, atomically: true, encoding: .utf8)
    let f = try await runQoQ(["generate", "-m", dir, "-n", "2", "-f", text])
    #expect(f.status == 0 && Self.promptTokens(f.stderr) == 11, "\(f.stderr)")  // the whole file, newline included
    let dash = try await runQoQ(["generate", "-m", dir, "-n", "2", "-f", "-"], stdin: "abc")
    #expect(dash.status == 0 && Self.promptTokens(dash.stderr) == 3, "\(dash.stderr)")
    let piped = try await runQoQ(["generate", "-m", dir, "-n", "2"], stdin: "wxyz")
    #expect(piped.status == 0 && Self.promptTokens(piped.stderr) == 4, "\(piped.stderr)")
    // -c 8: a 10-token prompt does not fit; a 5-token prompt gets at most 3 tokens whatever -n asks.
    let long = try await runQoQ(["generate", "-m", dir, "-n", "2", "-c", "8", "-p", "0123456789"])
    #expect(long.status == 1 && long.stderr.contains("the context is 8"), "\(long.stderr)")
    let capped = try await runQoQ(["generate", "-m", dir, "-n", "50", "-c", "8", "-p", "hello", "--json", "--ignore-eos"])
    #expect(capped.status == 0, "\(capped.stderr)")
    let obj = try JSON.parse(Data(capped.stdout.utf8), what: "stdout")
    #expect(obj["tokens"]?.int == 3 && obj["finish_reason"]?.string == "length", "\(capped.stdout)")
    let bad = try await runQoQ(["generate", "-m", dir, "-c", "1", "-p", "x"])
    #expect(bad.status != 0 && bad.stderr.contains("--ctx-size"))
  }
}

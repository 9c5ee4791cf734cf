import Foundation
import Testing
@testable import QoQTokenizers
import QoQIO

@Suite struct ChatTemplateTests {
  static let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures/chat/templates.json").path

  /// SmolLM2, ChatML, Qwen2, Mistral, Llama-2, Llama-3 and a whitespace-control template render exactly as Python's
  /// jinja2 renders them in transformers' environment (trim_blocks, lstrip_blocks), over six conversations with and
  /// without the generation prompt; raise_exception cases are errors here too.
  @Test func rendersLikeJinja2() throws {
    let f = try JSON.parseFile(Self.fixture)
    let templates = f["templates"]!.object!
    let convs = f["conversations"]!.array!
    var checked = 0
    for c in f["cases"]!.array! {
      let name = c["template"]!.string!
      let t = try ChatTemplate(templates[name]!.string!)
      let conv = convs[c["conversation"]!.int!]
      let vars: [String: TemplateValue] = ["messages": TemplateValue(json: conv), "add_generation_prompt": .bool(c["add_generation_prompt"]!.bool!),
                                           "bos_token": .string("<s>"), "eos_token": .string("</s>")]
      if c["error"]?.bool == true {
        #expect(throws: QoQError.self, "\(name) conversation \(c["conversation"]!.int!)") { _ = try t.render(vars) }
      } else {
        let got = try t.render(vars)
        #expect(got == c["rendered"]!.string!, "\(name) conversation \(c["conversation"]!.int!) agp \(c["add_generation_prompt"]!.bool!)")
      }
      checked += 1
    }
    #expect(checked == 84)
  }

  /// Unsupported constructs are clear errors, not wrong renderings.
  @Test func unsupportedConstructsAreErrors() {
    for bad in ["{% macro x() %}{% endmacro %}", "{{ x | wordwrap }}", "{% if x %}", "{{ 'unterminated }}", "{% for %}{% endfor %}"] {
      #expect(throws: QoQError.self, "\(bad)") { _ = try ChatTemplate(bad).render(["x": .string("a")]) }
    }
  }

  /// Templates come from model files: hostile ones end in an error, never a hang, a crash or unbounded memory.
  @Test func hostileTemplatesAreBounded() throws {
    let big = TemplateValue.string(String(repeating: "x", count: 4096))
    let cases: [(String, [String: TemplateValue], String)] = [
      ("{{ ½ }}", [:], "unexpected character"),                       // a non-ASCII numeral (the lexer used to spin)
      ("{{ 99999999999999999999999 }}", [:], "too large"),
      ("{{ 9223372036854775807 + 1 }}", [:], "overflow"),
      ("{{ 4000000000 * 4000000000 }}", [:], "overflow"),
      ("{{ " + String(repeating: "(", count: 300) + "1" + String(repeating: ")", count: 300) + " }}", [:], "nested"),
      ("{{ " + String(repeating: "not ", count: 300) + "x }}", [:], "nested"),
      ("{% for c in s %}{{ s }}{% endfor %}", ["s": big], "output exceeds"),
      ("{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}", ["s": big], "loop iterations"),
      ("{% set t = s ~ s %}{% for c in s %}{% set t = t + t %}{% endfor %}", ["s": .string(String(repeating: "y", count: 5 << 20))], "exceeds"),
    ]
    for (src, vars, msg) in cases {
      do {
        _ = try ChatTemplate(src).render(vars)
        Issue.record("accepted \(src.prefix(60))")
      } catch let e as QoQError {
        #expect(e.message.contains(msg), "\(src.prefix(60)): \(e.message)")
      }
    }
    // Python's modulo sign rule holds with the overflow-checked arithmetic.
    #expect(try ChatTemplate("{{ -7 % 3 }} {{ 7 % -3 }} {{ 6 % 3 }}").render([:]) == "2 -2 0")
  }
}

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
}

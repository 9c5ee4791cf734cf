import Foundation
import Testing
@testable import QoQEval
@testable import QoQModels
import QoQTestSupport

@Suite struct PerplexityTests {
  /// Both protocols on a tiny model equal the perplexity computed by hand from the plain reference forward.
  @Test(arguments: [PerplexityProtocol.gptq, .llamacpp])
  func protocolsMatchHandComputation(_ proto: PerplexityProtocol) throws {
    let f = TinyFamily.llamaGQA
    let c = try f.config(), w = try f.weights()
    let model = try LlamaModel(config: c, weights: w)
    let L = 12
    let tokens: [Int32] = (0..<(3 * L + 5)).map { Int32(($0 * 37 + 11) % c.vocabSize) }
    let bos: Int32 = 1
    let r = try PerplexityEvaluator(model: model).evaluate(tokens: tokens, seqLen: L, maxWindows: 2, proto: proto, bos: bos)
    #expect(r.windows == 2 && r.windowsAvailable == 3)
    var total = 0.0, count = 0.0
    for wdx in 0..<2 {
      var win = Array(tokens[(wdx * L)..<((wdx + 1) * L)])
      if proto == .llamacpp { win[0] = bos }
      let logits = try referenceLogits(w, c, tokens: win)
      let first = proto == .gptq ? 0 : L / 2
      var s = 0.0
      for j in first..<(L - 1) {
        let row = logits[j], m = row.max()!
        s += m + log(row.reduce(0) { $0 + exp($1 - m) }) - row[Int(win[j + 1])]
      }
      let scored = Double(L - 1 - first)
      #expect(abs(r.meanCE[wdx] - s / scored) < 1e-5)
      if proto == .gptq { total += s / scored * Double(L); count += Double(L) } else { total += s; count += scored }
    }
    #expect(abs(r.perplexity - exp(total / count)) / exp(total / count) < 1e-5)
  }

  @Test func gptqTextIsTheHFJoin() throws {
    // Blank lines (" \n") become empty rows; rows keep their "\n"; rows are joined by "\n\n".
    #expect(wikitextGPTQText(raw: " \n = A = \n \n b c\n") == "\n\n = A = \n\n\n\n\n b c\n")
  }

  /// The real file: pinned size and sha256 from data/README.md.
  @Test func gptqTextOfTheRealFile() throws {
    let path = sharedData + "/wikitext-2-raw/wiki.test.raw"
    let text = wikitextGPTQText(raw: try String(contentsOfFile: path, encoding: .utf8))
    #expect(text.utf8.count == 1_296_370)
    #expect(sha256Hex(Array(text.utf8)) == "696cca6b65a171b0a358a4be6732cdfdf2dd6164a32e20fd70e3c13fc4dfae83")
  }

  @Test func badArgumentsAreRefused() throws {
    let model = try TinyFamily.llamaGQA.model()
    let ev = PerplexityEvaluator(model: model)
    #expect(throws: QoQError.self) { _ = try ev.evaluate(tokens: [1, 2, 3], seqLen: 8) }
    #expect(throws: QoQError.self) { _ = try ev.evaluate(tokens: [1, 2, 3], seqLen: 1) }
    #expect(throws: QoQError.self) { _ = try ev.evaluate(tokens: Array(repeating: 1, count: 20), seqLen: 4, maxWindows: 0) }
  }
}
import QoQIO

import Foundation
import Testing
@testable import QoQEval
import QoQIO
import QoQModels
import QoQTokenizers
import QoQTestSupport

@Suite struct ZeroShotTests {
  /// acc, acc_norm and their standard error from given log-likelihoods equal lm-eval's formulas computed
  /// independently with numpy (scripts/fixtures/make_zeroshot_fixtures.py), ties included.
  @Test func metricsMatchFixture() throws {
    let f = try JSON.parseFile(fixturesRoot + "/zeroshot/metrics.json")
    let mc = try #require(f["multiple_choice"])
    var items: [TaskItem] = [], scores: [[LogLikelihood]] = []
    for e in mc["items"]!.array! {
      let choices = e["choices"]!.array!.map { $0.string! }
      items.append(TaskItem(pairs: choices.map { ("ctx", $0) }, gold: e["gold"]!.int!, normLengths: choices.map(\.count), greedyTask: false))
      scores.append(e["lls"]!.array!.map { LogLikelihood(logProb: $0.double!, isGreedy: false) })
    }
    let r = ZeroShotMetrics.compute(name: "mc", items: items, scores: scores)
    #expect(abs(r.acc - mc["acc"]!.double!) < 1e-12)
    #expect(abs(r.accNorm! - mc["acc_norm"]!.double!) < 1e-12)
    #expect(abs(r.accStderr - mc["acc_stderr"]!.double!) < 1e-12)
    let lam = try #require(f["lambada"])
    let li = lam["items"]!.array!
    let lr = ZeroShotMetrics.compute(name: "lambada", items: li.map { _ in TaskItem(pairs: [("c", " w")], gold: 0, normLengths: [2], greedyTask: true) },
                                     scores: li.map { [LogLikelihood(logProb: $0["ll"]!.double!, isGreedy: $0["greedy"]!.bool!)] })
    #expect(abs(lr.acc - lam["acc"]!.double!) < 1e-12)
    #expect(abs(lr.perplexity! - lam["perplexity"]!.double!) < 1e-9 * lam["perplexity"]!.double!)
  }

  /// Continuation log-likelihoods equal Σ log softmax of a plain Double reference forward over the same tokens, for
  /// batched requests of different lengths; lm-eval's trailing-space rule moves the space into the continuation.
  @Test func logLikelihoodsMatchReferenceForward() throws {
    let c = try LlamaConfiguration(modelType: "llama", hiddenSize: 32, intermediateSize: 48, numHiddenLayers: 2,
                                   numAttentionHeads: 4, numKeyValueHeads: 2, rmsNormEps: 1e-5, ropeTheta: 10000, vocabSize: 256)
    let dir = NSTemporaryDirectory() + "qoq-zeroshot-\(UInt64.random(in: 0..<UInt64.max))"
    try writeTinyCheckpoint(c, to: dir)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let loaded = try ModelLoader.load(path: dir)
    let st = try CheckpointWeights(folder: dir)
    var t: [String: ([Int], [Float])] = [:]
    for n in st.names { t[n] = (try st.info(n).shape, try st.floats(n)) }
    let mem = MemoryWeights(t)
    var ev = ZeroShotEvaluator(model: loaded.model, tokenizer: loaded.tokenizer)
    ev.batchSize = 3
    let pairs = [("The fox ", "jumps"), ("a", "bc"), ("hello world", " again and again"), ("x", "y"), ("quick brown", " fox")]
    let got = try ev.score(pairs)
    let (cx, kx) = try ev.encodePair("The fox ", "jumps")
    #expect(try loaded.tokenizer.decode(kx) == " jumps" && loaded.tokenizer.decode(cx) == "The fox")
    for (i, p) in pairs.enumerated() {
      let (ctx, cont) = try ev.encodePair(p.0, p.1)
      let seq = ctx + cont
      let logits = try referenceLogits(mem, c, tokens: Array(seq.dropLast()))
      var lp = 0.0, greedy = true
      for (j, target) in cont.enumerated() {
        let row = logits[ctx.count - 1 + j]
        let m = row.max()!
        lp += row[Int(target)] - (m + log(row.reduce(0) { $0 + exp($1 - m) }))
        if row.firstIndex(of: m)! != Int(target) { greedy = false }
      }
      #expect(abs(got[i].logProb - lp) < 1e-4 * max(1, abs(lp)), "pair \(i): \(got[i].logProb) vs \(lp)")
      #expect(got[i].isGreedy == greedy)
    }
  }

  /// Malformed task files are refused with the file and line named.
  @Test func malformedTaskFilesNameTheLine() throws {
    let good = #"{"context": "a", "choices": ["b", "c"], "gold": 1}"#
    let cases: [(String, String)] = [
      ("{not json", "t.jsonl:2: not valid JSON"),
      (#"{"context": "a", "choices": ["b"], "gold": 0}"#, "t.jsonl:2: \"choices\" must be a list of at least two strings"),
      (#"{"context": "a", "choices": ["b", "c"], "gold": 5}"#, "t.jsonl:2: \"gold\" 5 is outside 0..<2"),
      (#"{"context": "a", "choices": ["b", "c"]}"#, "t.jsonl:2: \"gold\" must be an integer"),
      (#"{"contexts": ["a", "b"], "gold": 0}"#, "t.jsonl:2: \"continuation\" must be a non-empty string"),
      (#"[1, 2]"#, "t.jsonl:2: each line must be a JSON object"),
      (#"{"question": "?"}"#, "t.jsonl:2: expected \"choices\", \"contexts\" or \"continuation\""),
    ]
    for (bad, msg) in cases {
      do { _ = try TaskFile.parse(good + "\n" + bad + "\n", name: "t.jsonl"); Issue.record("accepted: \(bad)") } catch let e as QoQError {
        #expect(e.message == msg)
      }
    }
    #expect(throws: QoQError.self) { _ = try TaskFile.parse("\n\n", name: "empty.jsonl") }
    let items = try TaskFile.parse(good + "\n" + #"{"contexts": ["x ", "y "], "continuation": "z", "gold": 1}"# + "\n" + #"{"context": "p", "continuation": " q"}"#, name: "t")
    #expect(items.count == 3 && items[1].pairs[1].0 == "y " && items[2].greedyTask && items[0].normLengths == [1, 1])
  }
}

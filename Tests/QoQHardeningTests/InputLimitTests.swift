// Class 2 (no arithmetic trap on any input), class 6 (small ones) and class 7 (CPU features). Every hostile value is
// built here, handed to the library and to the real binary: a named error and exit 1, never a signal.
import Foundation
import Testing
import QoQIO
@testable import QoQKernels
import QoQModels
import QoQTestSupport
@testable import QoQTokenizers

@Suite(.serialized) struct InputLimitTests {
  static func tinyConfig() throws -> LlamaConfiguration {
    try LlamaConfiguration(modelType: "llama", hiddenSize: 128, intermediateSize: 128, numHiddenLayers: 2,
                           numAttentionHeads: 4, numKeyValueHeads: 2, rmsNormEps: 1e-5, maxPositionEmbeddings: 64, vocabSize: 300)
  }

  static func tinyModel(_ name: String) throws -> String {
    let dir = scratch("limits-\(name)") + "/model"
    try writeTinyCheckpoint(try tinyConfig(), to: dir)
    return dir
  }

  /// Replaces config.json fields with raw JSON values (which may be beyond what a JSON library would write).
  static func patchConfig(_ dir: String, _ fields: [String: String]) throws {
    guard var o = try JSON.parseFile(dir + "/config.json").object else { throw QoQError("config is not an object") }
    for k in fields.keys { o[k] = nil }
    var text = JSON.serialize(.object(o))
    text.removeLast()  // "}"
    for (k, v) in fields { text += ",\"\(k)\": \(v)" }
    try (text + "}").write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
  }

  struct ConfigCase: CustomStringConvertible, Sendable {
    var fields: [String: String]
    var message: String
    var description: String { fields.map { "\($0.key)=\($0.value.prefix(20))" }.joined(separator: ",") }
  }

  static let configCases: [ConfigCase] = [
    ConfigCase(fields: ["num_hidden_layers": "1000000"], message: "num_hidden_layers = 1000000 exceeds the limit of 1024"),
    ConfigCase(fields: ["num_attention_heads": "2147483648"], message: "exceeds the limit"),
    ConfigCase(fields: ["head_dim": "4096"], message: "head_dim = 4096 exceeds the limit of 1024"),
    ConfigCase(fields: ["vocab_size": "9223372036854775807"], message: "vocab_size"),
    ConfigCase(fields: ["intermediate_size": "-5"], message: "intermediate_size must be positive"),
    ConfigCase(fields: ["eos_token_id": "1099511627776"], message: "outside the vocabulary"),
    ConfigCase(fields: ["eos_token_id": "[1, 2, -7]"], message: "outside the vocabulary"),
    ConfigCase(fields: ["bos_token_id": "300"], message: "outside the vocabulary"),
    ConfigCase(fields: ["rope_scaling": #"{"rope_type": "llama3", "factor": -2}"#], message: "rope_scaling.factor"),
    ConfigCase(fields: ["hidden_size": "1e300"], message: "hidden_size"),
    ConfigCase(fields: ["max_position_embeddings": "99999999999"], message: "max_position_embeddings"),
  ]

  @Test(arguments: configCases) func hostileConfigValues(_ c: ConfigCase) async throws {
    let dir = try Self.tinyModel("cfg-\(UUID().uuidString.prefix(6))")
    try Self.patchConfig(dir, c.fields)
    #expect(throws: QoQError.self) { _ = try LlamaConfiguration.load(path: dir + "/config.json") }
    let r = try await runQoQ(["generate", "-m", dir, "-p", "hi", "-n", "2"], env: ["QOQ_REPORT_PEAK_RSS": "1"])
    #expect(!r.crashed && r.status == 1, "\(c): exit \(r.status)")
    #expect(r.stderr.contains(c.message), "\(c): \(r.stderr)")
    // Refused before anything is sized from it: the process stays at its baseline.
    let peak = PickleTests.peakKB(r.stderr) * 1024
    #expect(peak > 0 && peak <= Baseline.bytes, "\(c): peak RSS \(peak) bytes (baseline \(Baseline.bytes))")
  }

  /// Tokenizer ids from files beyond Int32 (post-processor, added tokens) are refused by name, not trapped.
  @Test func hostileTokenizerIds() throws {
    for (patch, needle) in [(#""ids": [4294967296]"#, "outside 0…2147483647"), (#""ids": [-1]"#, "outside 0…2147483647")] {
      let json = #"{"model":{"type":"BPE","vocab":{"a":0,"b":1},"merges":[]},"added_tokens":[{"id":2,"content":"<s>","special":true}],"post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],"special_tokens":{"<s>":{"id":"<s>","#
        + patch + #","tokens":["<s>"]}}}}"#
      let v = try Array(json.utf8).withUnsafeBytes { try JSON.parse($0, what: "t") }
      do { _ = try Tokenizer.load(tokenizerJSON: v, config: nil, what: "t"); Issue.record("\(patch) loaded") } catch let e as QoQError {
        #expect(e.message.contains(needle), "\(e.message)")
      }
    }
    let bad = #"{"model":{"type":"BPE","vocab":{"a":0},"merges":[]},"added_tokens":[{"id":9999999999,"content":"<s>","special":true}]}"#
    let v = try Array(bad.utf8).withUnsafeBytes { try JSON.parse($0, what: "t") }
    #expect(throws: QoQError.self) { _ = try Tokenizer.load(tokenizerJSON: v, config: nil, what: "t") }
  }

  /// A GGUF whose bos/eos token id is beyond Int32 (the SentencePiece fixture with its bos id patched to 2^32 - 1).
  @Test func hostileGGUFTokenIds() throws {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures").path
    for key in ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"] {
      var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: root + "/tokenizers/spm/tokenizer.gguf")))
      let k = Array(key.utf8)
      guard let at = (0..<(bytes.count - k.count)).first(where: { bytes[$0..<($0 + k.count)].elementsEqual(k) }) else {
        Issue.record("\(key) not in the fixture"); continue
      }
      // key bytes, then the value type (u32 = 4), then the value.
      let type = bytes[(at + k.count)..<(at + k.count + 4)]
      #expect(Array(type) == [4, 0, 0, 0], "\(key) is not a u32 in the fixture")
      for i in 0..<4 { bytes[at + k.count + 4 + i] = 0xFF }
      let path = scratch("gguf-ids") + "/t.gguf"
      FileManager.default.createFile(atPath: path, contents: Data(bytes))
      do { _ = try Tokenizer.load(gguf: GGUFFile(path: path)); Issue.record("\(key) = 2^32-1 loaded") } catch let e as QoQError {
        #expect(e.message.contains("\(key) = 4294967295 is not a token id"), "\(e.message)")
      }
    }
  }

  /// Size flags: checked against the budget before anything is allocated.
  @Test func hostileEngineFlags() async throws {
    let dir = try Self.tinyModel("flags")
    for (flags, needle) in [(["--num-kv-blocks", "4611686018427387904"], "exceeds the limit"),
                            (["--num-kv-blocks", "2000000000"], "more than this machine's memory"),
                            (["--kv-cache-bytes", "9223372036854775807"], "exceeds the limit"),
                            (["--max-num-seqs", "0"], "must be positive"), (["--page-size", "17"], "page-size")] {
      let r = try await runQoQ(["generate", "-m", dir, "-p", "hi", "-n", "2"] + flags, env: ["QOQ_REPORT_PEAK_RSS": "1"])
      #expect(!r.crashed && r.status != 0, "\(flags): exit \(r.status)")
      // The budget is checked before the pool is allocated: the tiny model (a few MB) plus the baseline.
      let peak = PickleTests.peakKB(r.stderr) * 1024
      #expect(peak <= Baseline.bytes + (64 << 20), "\(flags): peak RSS \(peak) bytes")
      #expect(r.stderr.contains(needle), "\(flags): \(r.stderr)")
    }
  }

  /// A safetensors header declaring a 64-dimensional tensor is refused before anything is sized from it.
  @Test func deepTensorShapeIsRefused() throws {
    let header = #"{"w":{"dtype":"F32","shape":["# + Array(repeating: "1", count: 64).joined(separator: ",") + #"],"data_offsets":[0,4]}}"#
    var bytes: [UInt8] = []
    withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { bytes += $0 }
    bytes += Array(header.utf8) + [0, 0, 0, 0]
    let path = scratch("deep") + "/model.safetensors"
    FileManager.default.createFile(atPath: path, contents: Data(bytes))
    do { _ = try SafeTensorsFile(path: path); Issue.record("a 64-dimensional tensor loaded") } catch let e as QoQError {
      #expect(e.message.contains("64 dimensions (the limit is 16)"), "\(e.message)")
    }
  }

  /// NaN or infinity in a weight is refused at load with the tensor's name.
  @Test func nonFiniteWeightsAreRefused() async throws {
    for bad in [Float.nan, .infinity] {
      let dir = scratch("nan-\(bad)") + "/model"
      let c = try Self.tinyConfig()
      try writeTinyCheckpoint(c, to: dir)
      let st = try SafeTensorsFile(path: dir + "/model.safetensors")
      var blobs: [TensorBlob] = []
      for n in st.names {
        var v = try st.floats(n)
        if n == "model.layers.1.mlp.down_proj.weight" { v[17] = bad }
        blobs.append(TensorBlob(name: n, shape: try st.info(n).shape, floats: v))
      }
      try SafeTensorsWriter.write(blobs, to: dir + "/model.safetensors")
      let r = try await runQoQ(["generate", "-m", dir, "-p", "hi", "-n", "2"])
      #expect(!r.crashed && r.status == 1)
      #expect(r.stderr.contains("model.layers.1.mlp.down_proj.weight") && r.stderr.contains("non-finite"), "\(r.stderr)")
    }
  }

  /// NaN activations reaching the KV page store or the int8 activation quantizer store code 0 instead of trapping.
  @Test func nanActivationsDoNotTrap() {
    for mode in [KVMode.kv4, .kv8] {
      let f = KVPageFormat(mode: mode, heads: 1, headDim: 32, pageSize: 16)
      let page = UnsafeMutableRawPointer.allocate(byteCount: f.pageBytes, alignment: 64)
      defer { page.deallocate() }
      var x = [Float](repeating: .nan, count: 32)
      x[3] = 1
      x.withUnsafeBufferPointer { f.store($0.baseAddress!, page: page, head: 0, slot: 5, isKey: true) }
      _ = f.load(page: page, head: 0, slot: 5, channel: 3, isKey: true)
    }
    #expect(int8Code(.nan) == 0 && int8Code(1e30) == 127 && int8Code(-.infinity) == -127 && int8Code(2.5) == 2)
  }

  /// Class 6: user text never reaches a format string; generate fails when every prompt is rejected; JSON has no nan.
  @Test func smallOnes() async throws {
    let dir = try Self.tinyModel("small")
    // Every prompt longer than the 64-token context: rejected, exit 1.
    let long = String(repeating: "word ", count: 200)
    let g = try await runQoQ(["generate", "-m", dir, "-p", long, "-p", long, "-n", "2"])
    #expect(!g.crashed && g.status == 1 && g.stderr.contains("every prompt (2) was rejected"), "\(g.status) \(g.stderr)")
    // One good prompt among bad ones: its answer is printed, and the run still exits 1 naming the failures (issue #16).
    let ok = try await runQoQ(["generate", "-m", dir, "-p", long, "-p", "hi", "-n", "2"])
    #expect(ok.status == 1 && ok.stdout.contains("### [2] hi") && ok.stderr.contains("1 of 2 prompts failed"), "\(ok.stderr)")
    // JSON: non-finite numbers are null.
    #expect(JSON.serialize(.object(JSONObject([("p", .double(.nan)), ("q", .double(-.infinity))]))) == #"{"p":null,"q":null}"#)
    // The serve banner with format specifiers in the name and path: printed literally, no crash.
    let weird = scratch("fmt") + "/model-%@-%d-%n"
    try FileManager.default.copyItem(atPath: dir, toPath: weird)
    let srv = try ServerProcess(["--served-model-name", "name %@ %s %n %d"], model: weird)
    srv.stop()
    #expect(srv.banner.contains("serving name %@ %s %n %d on http://127.0.0.1:"), "\(srv.banner)")
    #expect(srv.process.terminationReason == .exit, "serve crashed")
  }

  /// Class 7: a CPU that lacks a feature this build needs stops with a message naming it (simulated: the start-up
  /// check reads QOQ_CPU_PRETEND_MISSING).
  @Test func missingCPUFeatureIsNamed() async throws {
    let r = try await runQoQ(["--help"], env: ["QOQ_CPU_PRETEND_MISSING": "avx2,avx512_vnni"])
    #if arch(x86_64)
    if r.status == 0 {
      // A portable build needs nothing: say so visibly.
      Issue.record("this build requires no CPU feature (QOQ_ISA=portable?); the start-up check had nothing to refuse")
      return
    }
    #expect(!r.crashed && r.status == 1)
    #expect(r.stderr.contains("needs CPU features this CPU lacks") && r.stderr.contains("avx2"), "\(r.stderr)")
    #endif
  }
}

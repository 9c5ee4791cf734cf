import Foundation
import Testing
@testable import QoQInterop
import QoQFormat
import QoQIO
import QoQModels
import QoQQuant
import QoQTestSupport
import QoQTokenizers

let tokenizerFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
  .appendingPathComponent("Fixtures/tokenizers").path

/// A tiny quantized checkpoint with q/k/v biases (Qwen2), RTN in `format`.
func quantizedTinyWithBiases(_ c: LlamaConfiguration, format: WeightFormat) throws -> String {
  let dir = tmp("qb")
  try writeTinyCheckpoint(c, to: dir + "/fp")
  let st = try CheckpointWeights(folder: dir + "/fp")
  var fp: [String: [Float]] = [:], q: [String: QuantizedWeight] = [:], b: [String: [Float]] = [:]
  for n in st.names {
    let v = try st.floats(n)
    if n.contains("_proj.") && n.hasSuffix(".bias") { b[String(n.dropLast(5))] = v; continue }
    if n.contains("_proj.") {
      let s = tensorShape(n, c)
      q[String(n.dropLast(7))] = WeightQuantizer(weight: v, out: s[0], inp: s[1], format: format).rtn(v)
    } else { fp[n] = n.hasSuffix("norm.weight") ? v.map { _ in 1 } : v }
  }
  let qc = QuantizationConfig(method: "rtn", weight: format, actBits: nil, kvBits: nil, kvGroup: nil)
  try QuantizedCheckpoint.write(to: dir + "/q", config: c, quantization: qc, fp: fp, quantized: q, biases: b, recipeYAML: "",
                                tokenizerFrom: dir + "/fp", overwrite: true)
  return dir + "/q"
}

/// GGUF export (issue #15). The reference for the weights is ggml's own block layout (hand-computed bytes below) and
/// our GGUF reader, whose Q4_1/Q8_0 dequantization matches gguf-py (GGUFTests.dequantizationMatchesGGUFPy); the
/// reference for the tokenizer is the metadata llama.cpp's converter wrote for SmolLM2 (Fixtures/tokenizers/smollm2)
/// and the ids of Hugging Face tokenizers (expected.json).
@Suite struct GGUFExportTests {
  /// One Q4_1 block by hand: d = 0.5 (fp16 0x3800), m = −1 (0xBC00), element j in the low nibble of byte j, element
  /// j + 16 in the high nibble; ggml's dequantization gives q·0.5 − 1.
  @Test func q4_1BlockByHand() throws {
    let codes = (0..<32).map { UInt8($0 % 16) }
    let w = QuantizedWeight(format: .asym(bits: 4, group: 32), outFeatures: 1, inFeatures: 32, codes: codes, scale: [0.5], zero: [1],
                            rowScale: [])
    var r = FP16Rounding()
    let d = [UInt8](q4_1Blocks(w, rowOrder: nil, rounding: &r))
    #expect(d.count == 20)
    #expect(d[0] == 0x00 && d[1] == 0x38 && d[2] == 0x00 && d[3] == 0xBC)
    #expect(d[4] == 0x00 && d[5] == 0x11 && d[19] == 0xFF)  // (0 | 0<<4), (1 | 1<<4), (15 | 15<<4)
    #expect(r.blocks == 1 && r.inexact == 0)
    let deq = try d.withUnsafeBytes { try dequantize($0, type: .Q4_1, count: 32, what: "block") }
    #expect(deq == codes.map { Float($0) * 0.5 - 1 })
  }

  /// Q8_0 by hand: d = 0.25 (0x3400), qs = code − 128 as int8.
  @Test func q8_0BlockByHand() throws {
    let codes = (0..<32).map { UInt8(128 + $0 - 16) }
    let w = QuantizedWeight(format: .sym(bits: 8), outFeatures: 1, inFeatures: 32, codes: codes, scale: [0.25], zero: [], rowScale: [])
    var r = FP16Rounding()
    let d = [UInt8](q8_0Blocks(w, rowOrder: nil, rounding: &r))
    #expect(d.count == 34 && d[0] == 0x00 && d[1] == 0x34 && d[2] == 0xF0 && d[33] == 0x0F)  // −16 and 15
    let deq = try d.withUnsafeBytes { try dequantize($0, type: .Q8_0, count: 32, what: "block") }
    #expect(deq == (0..<32).map { Float($0 - 16) * 0.25 })
  }

  /// Q8_0 quantization (the tables' `q8_0` type) byte for byte against gguf-py's `quants.quantize`
  /// (Fixtures/gguf/q8_0_quantize.json: ordinary values, an all-zero block, .5 ties rounded away from zero, a tiny and
  /// a large block); NaN, infinity and a scale beyond fp16 are refused by name.
  @Test func q8_0QuantizeMatchesGGUFPy() throws {
    let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().path
    let f = try JSON.parseFile(dir + "/Fixtures/gguf/q8_0_quantize.json")
    let x = f["input_f32_bits"]!.array!.map { Float(bitPattern: UInt32($0.int!)) }
    let hex = Array(f["q8_0_hex"]!.string!.utf8)
    let expected = stride(from: 0, to: hex.count, by: 2).map { UInt8(String(decoding: hex[$0..<$0 + 2], as: UTF8.self), radix: 16)! }
    #expect(x.count == 4 * 96 && expected.count == x.count / 32 * 34)
    let ours = try x.withUnsafeBufferPointer { try quantizeQ8_0($0, what: "fixture") }
    #expect([UInt8](ours) == expected)
    for (v, word) in [(Float.nan, "nan"), (.infinity, "inf"), (1e7, "overflows")] {
      var b = [Float](repeating: 1, count: 32)
      b[5] = v
      #expect { try b.withUnsafeBufferPointer { try quantizeQ8_0($0, what: "t") } } throws: { "\($0)".contains(word) }
    }
    #expect(throws: QoQError.self) { try [Float](repeating: 1, count: 31).withUnsafeBufferPointer { try quantizeQ8_0($0, what: "t") } }
  }

  /// --token-embedding-type / --output-tensor-type q8_0: both tables are Q8_0 blocks that read back within ggml's rounding
  /// (half a step, max|x|/254 per block, plus the fp16 rounding of d), the linears and norms unchanged, the file smaller;
  /// a tied model has no output tensor and says so.
  @Test func tablesAsQ8_0() throws {
    let c = try fixtureConfig()
    let src = try quantizedTiny(c, format: .asym(bits: 4, group: 32), kvBits: nil)
    let f32 = tmp("f32"), q8 = tmp("q8")
    _ = try Interop.exportGGUF(from: src, to: f32, dtype: .f32, overwrite: false)
    let notes = try Interop.exportGGUF(from: src, to: q8, dtype: .f32, embeddings: .q8_0, output: .q8_0, overwrite: false)
    #expect(notes.contains { $0.contains("Q8_0 tables") })
    let g = try GGUFFile(path: q8 + "/model.gguf"), ref = try GGUFFile(path: f32 + "/model.gguf")
    #expect(try g.tensor("token_embd.weight").type == .Q8_0 && g.tensor("output.weight").type == .Q8_0)
    #expect(try g.tensor("blk.0.attn_norm.weight").type == .F32 && g.tensor("blk.0.attn_q.weight").type == .Q4_1)
    let ours = try CheckpointWeights(folder: src)
    for (n, gn) in [("model.embed_tokens.weight", "token_embd.weight"), ("lm_head.weight", "output.weight")] {
      let w = try ours.floats(n), back = try g.floats(gn)
      #expect(back.count == w.count && back != w)
      for b in 0..<(w.count / 32) {
        let blk = b * 32..<(b + 1) * 32, amax = w[blk].map(abs).max()!
        #expect(blk.allSatisfy { abs(back[$0] - w[$0]) <= amax / 254 + amax * 1e-3 }, "\(n) block \(b)")
      }
    }
    #expect(try g.floats("blk.1.attn_q.weight") == ref.floats("blk.1.attn_q.weight"))
    let size = { (p: String) in try FileManager.default.attributesOfItem(atPath: p + "/model.gguf")[.size] as! Int }
    #expect(try size(q8) < size(f32))
    var tied = c
    tied.tieWordEmbeddings = true
    let tsrc = try quantizedTiny(tied, format: .asym(bits: 4, group: 32), kvBits: nil)
    let tnotes = try Interop.exportGGUF(from: tsrc, to: tmp("tied"), dtype: .f16, output: .q8_0, overwrite: false)
    #expect(tnotes.contains { $0.contains("tied") })
  }

  /// Every linear of the exported GGUF, read back through our GGUF loader (which undoes llama.cpp's Q/K permutation),
  /// equals the checkpoint's dequantized weight exactly; the other tensors and the configuration come back unchanged.
  @Test(arguments: [("llama", WeightFormat.asym(bits: 4, group: 32)), ("llama", .asym(bits: 4, group: nil)),
                    ("llama", .progressive(group: 64, protective: 120)), ("llama", .sym(bits: 8)), ("qwen2", .asym(bits: 4, group: 64))])
  func exportReadsBackExactly(_ family: String, _ format: WeightFormat) throws {
    var c = try fixtureConfig()
    c.modelType = family
    c.attentionBias = family == "qwen2"
    let src = family == "qwen2" ? try quantizedTinyWithBiases(c, format: format) : try quantizedTiny(c, format: format, kvBits: nil)
    let dst = tmp("gguf")
    let notes = try Interop.exportGGUF(from: src, to: dst, dtype: .f32, overwrite: false)
    let g = try GGUFFile(path: dst + "/model.gguf")
    let type: GGMLType = format == .sym(bits: 8) ? .Q8_0 : .Q4_1
    #expect(g.string("general.architecture") == family && g.string("tokenizer.ggml.pre") == "gpt-2")
    #expect(try g.tensor("blk.0.attn_q.weight").type == type && g.tensor("token_embd.weight").type == .F32)
    let loaded = try GGUFWeights(g)
    #expect(loaded.config.hiddenSize == c.hiddenSize && loaded.config.numKeyValueHeads == c.numKeyValueHeads
            && loaded.config.headDim == c.headDim && loaded.config.vocabSize == c.vocabSize)
    #expect(Float(loaded.config.rmsNormEps) == Float(c.rmsNormEps))  // stored as f32, as llama.cpp's converter does
    let ours = try CheckpointWeights(folder: src)
    let exact = notes.contains { $0.contains("exact fp16") }
    for m in Interop.modules(c) {
      let s = tensorShape(m + ".weight", c)
      let w = try QuantizedCheckpoint.readWeight(ours, module: m, format: format, out: s[0], inp: s[1]).dequantized()
      let back = try loaded.floats(m + ".weight")
      if exact { #expect(back == w, "\(m) \(format)") } else {
        // fp16 rounding of d and m: at most (15·|d| + |m|)·2⁻¹¹ per weight, under 0.2% of the largest weight here.
        let bound = w.map(abs).max()! * 2e-3
        #expect(zip(back, w).allSatisfy { abs($0 - $1) <= bound }, "\(m) \(format)")
      }
      if family == "qwen2" && !m.hasSuffix("o_proj") && m.contains("self_attn") {
        #expect(try loaded.floats(m + ".bias") == ours.floats(m + ".bias"), "\(m).bias")
      }
    }
    for n in ["model.embed_tokens.weight", "model.norm.weight", "model.layers.1.input_layernorm.weight"] {
      #expect(try loaded.floats(n) == ours.floats(n), "\(n)")
    }
    if case .asym(_, _, false) = format { #expect(exact, "PostScale parameters are fp16 values: \(notes)") }
    #expect(try Tokenizer.load(gguf: g).encode("hello GGUF") == Tokenizer.load(folder: src).encode("hello GGUF"))
  }

  /// From SmolLM2's tokenizer.json and tokenizer_config.json we write the metadata llama.cpp's converter wrote into the
  /// SmolLM2 GGUF (tokens, types, merges, pre-tokenizer, special ids, flags, chat template), value for value.
  @Test func smolLM2TokenizerMetadataMatchesLlamaCpp() throws {
    let dir = tokenizerFixtures + "/smollm2"
    let ref = try GGUFFile(path: dir + "/tokenizer.gguf")
    let tc = try JSON.parseFile(dir + "/tokenizer_config.json")
    let meta = try ggufTokenizerMetadata(tokenizerJSON: JSON.parseFile(dir + "/tokenizer.json"), tokenizerConfig: tc, vocabSize: 49152,
                                         configIds: GGUFSpecialIds(bos: nil, eos: nil), chatTemplate: tc["chat_template"]?.string, what: dir)
    let ours = Dictionary(uniqueKeysWithValues: meta)
    for key in ["tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
                "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_space_prefix", "tokenizer.chat_template"] {
      #expect(ours[key] != nil && ours[key] == ref.metadata[key], "\(key)")
    }
  }

  /// Written into a GGUF and loaded back as a tokenizer, SmolLM2's and Qwen2's vocabularies give Hugging Face's ids
  /// (expected.json) on every fixture string; Qwen2's vocabulary is padded to the model's 151,936 rows as UNUSED.
  @Test(arguments: [("smollm2", 49152), ("qwen2", 151936)])
  func exportedTokenizerEncodesLikeHF(_ name: String, _ vocab: Int) throws {
    let dir = tokenizerFixtures + "/" + name
    let tc = try JSON.parseFile(dir + "/tokenizer_config.json")
    let meta = try ggufTokenizerMetadata(tokenizerJSON: JSON.parseFile(dir + "/tokenizer.json"), tokenizerConfig: tc, vocabSize: vocab,
                                         configIds: GGUFSpecialIds(bos: 151643, eos: 151645), chatTemplate: nil, what: dir)
    let path = tmp("tok") + ".gguf"
    try GGUFWriter.write(to: path, metadata: [("general.architecture", .string("llama"))] + meta, tensors: [])
    let g = try GGUFFile(path: path)
    #expect(g.metadata["tokenizer.ggml.tokens"]?.array?.count == vocab)
    if name == "qwen2" {
      #expect(g.string("tokenizer.ggml.pre") == "qwen2")
      #expect(g.metadata["tokenizer.ggml.tokens"]?.array?.last == .string("[PAD151935]"))
      #expect(g.metadata["tokenizer.ggml.token_type"]?.array?.last == .i32(5))
      #expect(g.metadata["tokenizer.ggml.bos_token_id"] == .u32(151643))  // tokenizer_config has no bos: config.json's id
    }
    let tok = try Tokenizer.load(gguf: g)
    let strings = try JSON.parseFile(tokenizerFixtures + "/strings.json").array!.map { $0.string! }
    let cases = try JSON.parseFile(dir + "/expected.json")["cases"]!.array!
    #expect(cases.count == strings.count && cases.count > 10)
    for (text, c) in zip(strings, cases) {
      let ids = c["ids"]!.array!.map { Int32($0.int!) }
      #expect(try tok.encode(text) == ids, "\(name): \(text.debugDescription)")
    }
  }

  @Test func unrepresentableInputsAreRefused() throws {
    let c = try fixtureConfig()
    for format in [WeightFormat.asym(bits: 4, group: 16), .progressive(group: 16, protective: 120)] {
      let src = try quantizedTiny(c, format: format, kvBits: nil)
      #expect(throws: QoQError.self) { try Interop.exportGGUF(from: src, to: tmp("bad"), dtype: .f32, overwrite: false) }
    }
    // A pre-tokenizer llama.cpp has no name for, and a SentencePiece vocabulary.
    var t = try JSON.parseFile(tokenizerFixtures + "/smollm2/tokenizer.json")
    if var o = t.object { o["pre_tokenizer"] = .object(JSONObject([("type", .string("Whitespace"))])); t = .object(o) }
    #expect(throws: QoQError.self) {
      try ggufTokenizerMetadata(tokenizerJSON: t, tokenizerConfig: nil, vocabSize: 49152, configIds: GGUFSpecialIds(bos: nil, eos: nil),
                                chatTemplate: nil, what: "t")
    }
    #expect(throws: QoQError.self) {
      try ggufTokenizerMetadata(tokenizerJSON: JSON.parseFile(tokenizerFixtures + "/spm/tokenizer.json"), tokenizerConfig: nil,
                                vocabSize: 32000, configIds: GGUFSpecialIds(bos: 1, eos: 2), chatTemplate: nil, what: "spm")
    }
    // A vocabulary larger than the model's embedding.
    #expect(throws: QoQError.self) {
      try ggufTokenizerMetadata(tokenizerJSON: JSON.parseFile(tokenizerFixtures + "/smollm2/tokenizer.json"), tokenizerConfig: nil,
                                vocabSize: 1000, configIds: GGUFSpecialIds(bos: nil, eos: nil), chatTemplate: nil, what: "small")
    }
    // A file at the output path is never replaced.
    let src = try quantizedTiny(c, format: .asym(bits: 4, group: 32), kvBits: nil)
    let file = tmp("file")
    try Data("mine".utf8).write(to: URL(fileURLWithPath: file))
    #expect(throws: QoQError.self) { try Interop.exportGGUF(from: src, to: file, dtype: .f32, overwrite: true) }
    #expect(try String(contentsOfFile: file, encoding: .utf8) == "mine")
  }

  /// The writer: metadata of every value type reads back equal; a tensor that produces the wrong number of bytes
  /// stops the write and leaves no file; arrays must be homogeneous.
  @Test func writerRoundTripAndRefusals() throws {
    let meta: [(String, GGUFValue)] = [
      ("general.architecture", .string("llama")), ("a.u8", .u8(7)), ("a.i8", .i8(-7)), ("a.u16", .u16(700)), ("a.i16", .i16(-700)),
      ("a.u32", .u32(70000)), ("a.i32", .i32(-70000)), ("a.f32", .f32(1.5)), ("a.bool", .bool(true)), ("a.str", .string("é✓")),
      ("a.u64", .u64(1 << 40)), ("a.i64", .i64(-(1 << 40))), ("a.f64", .f64(-2.25)), ("a.arr", .array([.i32(1), .i32(-2)])),
      ("a.empty", .array([])),
    ]
    let path = tmp("w") + ".gguf"
    let x: [Float] = (0..<40).map { Float($0) / 4 }
    try GGUFWriter.write(to: path, metadata: meta, tensors: [
      GGUFTensorSpec(name: "x", dims: [8, 5], type: .F32) { x.withUnsafeBytes { Data($0) } },
      GGUFTensorSpec(name: "y", dims: [3], type: .F32) { [Float](repeating: 2, count: 3).withUnsafeBytes { Data($0) } },
    ])
    let g = try GGUFFile(path: path)
    for (k, v) in meta where k != "a.empty" { #expect(g.metadata[k] == v, "\(k)") }
    #expect(g.metadataKeys == meta.map(\.0))
    #expect(try g.tensor("x").shape == [5, 8] && g.floats("x") == x && g.floats("y") == [2, 2, 2])
    #expect(try g.tensor("y").offset % 32 == 0)
    let bad = tmp("w") + ".gguf"
    #expect(throws: QoQError.self) {
      try GGUFWriter.write(to: bad, metadata: meta, tensors: [GGUFTensorSpec(name: "x", dims: [8], type: .F32) { Data(count: 31) }])
    }
    #expect(!FileManager.default.fileExists(atPath: bad))
    #expect(throws: QoQError.self) {
      try GGUFWriter.write(to: bad, metadata: [("m", .array([.i32(1), .u8(2)]))], tensors: [])
    }
    #expect(throws: QoQError.self) {
      try GGUFWriter.write(to: bad, metadata: [], tensors: [GGUFTensorSpec(name: "q", dims: [31], type: .Q4_1) { Data() }])
    }
  }
}

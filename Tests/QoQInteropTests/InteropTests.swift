import Foundation
import Testing
@testable import QoQInterop
import QoQFormat
import QoQIO
import QoQModels
import QoQQuant
import QoQTestSupport

let interopFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
  .appendingPathComponent("Fixtures/interop").path

func tmp(_ name: String) -> String { NSTemporaryDirectory() + "qoq-interop-\(name)-\(UInt64.random(in: 0..<UInt64.max))" }

/// The tiny Llama the Python fixtures were written for.
func fixtureConfig() throws -> LlamaConfiguration {
  try LlamaConfiguration(modelType: "llama", hiddenSize: 64, intermediateSize: 128, numHiddenLayers: 2, numAttentionHeads: 2,
                         numKeyValueHeads: 1, headDim: 32, rmsNormEps: 1e-5, ropeTheta: 10000, vocabSize: 256)
}

/// Writes a tiny model and its checkpoint quantized with `format` (RTN), norms folded to ones when `unitNorms`.
func quantizedTiny(_ c: LlamaConfiguration, format: WeightFormat, actBits: Int? = 8, kvBits: Int? = 4, unitNorms: Bool = true) throws -> String {
  let dir = tmp("q")
  try writeTinyCheckpoint(c, to: dir + "/fp")
  let st = try CheckpointWeights(folder: dir + "/fp")
  var fp: [String: [Float]] = [:], q: [String: QuantizedWeight] = [:]
  for n in st.names {
    var v = try st.floats(n)
    if n.contains("_proj.") {
      let s = tensorShape(n, c)
      q[String(n.dropLast(7))] = WeightQuantizer(weight: v, out: s[0], inp: s[1], format: format).rtn(v)
    } else {
      if unitNorms && n.hasSuffix("norm.weight") { v = v.map { _ in 1 } }
      fp[n] = v
    }
  }
  let qc = QuantizationConfig(method: "rtn", weight: format, actBits: actBits, kvBits: kvBits, kvGroup: kvBits == nil ? nil : c.headDim)
  try QuantizedCheckpoint.write(to: dir + "/q", config: c, quantization: qc, fp: fp, quantized: q, biases: [:], recipeYAML: "",
                                tokenizerFrom: dir + "/fp", overwrite: true)
  return dir + "/q"
}

func weights(_ path: String) throws -> [String: QuantizedWeight] {
  let (c, q, st) = try Interop.open(path)
  var out: [String: QuantizedWeight] = [:]
  for m in Interop.modules(c) {
    let s = tensorShape(m + ".weight", c)
    out[m] = try QuantizedCheckpoint.readWeight(st, module: m, format: q.weight!, out: s[0], inp: s[1])
  }
  return out
}

@Suite struct InteropTests {
  /// Our packers equal an independent Python implementation of the spec's formulas
  /// (scripts/fixtures/make_interop_fixtures.py): QServe qweight bytes, both s2 column orders, TinyChat int16 words;
  /// unpacking gives the codes back.
  @Test func packingMatchesIndependentImplementation() throws {
    let f = try JSON.parseFile(interopFixtures + "/qserve_pack.json")
    let N = f["N"]!.int!, K = f["K"]!.int!
    let codes = f["codes"]!.array!.map { UInt8($0.int!) }, bytes = f["qweight"]!.array!.map { UInt8($0.int!) }
    #expect(try QServePacking.pack(codes, n: N, k: K) == bytes)
    #expect(try QServePacking.unpack(bytes, n: N, k: K) == codes)
    for (key, order) in [("s2_cols_qserve", S2Order.qserve), ("s2_cols_deepcompressor", .deepcompressor)] {
      let cols = f[key]!.array!.map { $0.int! }
      for (pos, n) in cols.enumerated() { #expect(order.column(n) == pos, "\(order) channel \(n)") }
    }
    let G = f["G"]!.int!, ng = K / G
    let s2 = f["s2"]!.array!.map { Int8($0.int!) }  // stored (ng, N) in natural order in the fixture
    var natural = [Int8](repeating: 0, count: N * ng)
    for j in 0..<ng { for n in 0..<N { natural[n * ng + j] = s2[j * N + n] } }
    for order in S2Order.allCases {
      let inter = QServePacking.interleave(natural, n: N, groups: ng, order: order)
      #expect(QServePacking.deinterleave(inter, n: N, groups: ng, order: order) == natural)
    }
    let t = f["tinychat"]!
    let tn = t["N"]!.int!, tk = t["K"]!.int!
    let tc = t["codes"]!.array!.map { UInt8($0.int!) }, words = t["words"]!.array!.map { UInt16($0.int!) }
    #expect(try TinyChatPacking.pack(tc, n: tn, k: tk) == words)
    #expect(try TinyChatPacking.unpack(words, n: tn, k: tk) == tc)
  }

  /// deepcompressor's model.pt + scale.pt written by torch.save import exactly: the integer codes, s1, s2 and zeros
  /// the quantizer used (progressive g32 and per-channel uint4).
  @Test(arguments: ["dc_g32", "dc_gchn"])
  func deepcompressorImportIsExact(_ name: String) throws {
    let c = try fixtureConfig()
    let hf = tmp("hf")
    try writeTinyCheckpoint(c, to: hf)
    let out = tmp("dc")
    try Interop.importDeepCompressor(quantPath: interopFixtures + "/" + name, configFrom: hf, to: out, runtime: RuntimeQuantization(), overwrite: false)
    let got = try weights(out)
    let exp = try JSON.parseFile(interopFixtures + "/\(name)/expected.json")
    for m in Interop.linearModules.map({ "model.layers.0." + $0 }) {
      let e = try #require(exp[m]), w = try #require(got[m])
      #expect(w.codes == e["codes"]!.array!.map { UInt8($0.int!) }, "\(m) codes")
      if name == "dc_g32" {
        #expect(w.rowScale == e["s1"]!.array!.map { Float($0.double!) } && w.scale == e["s2"]!.array!.map { Float($0.double!) }
                && w.zero == e["z"]!.array!.map { Float($0.double!) }, "\(m) parameters")
      } else {
        #expect(w.scale == e["scale"]!.array!.map { Float($0.double!) } && w.zero == e["zero"]!.array!.map { Float($0.double!) }, "\(m) parameters")
      }
    }
    // The imported checkpoint loads as a model (every tensor present, shapes right).
    _ = try AnyModelLoader.load(path: out)
  }

  /// A pickle naming any other global is refused with its name; truncated or garbage files are errors, not crashes.
  @Test func hostilePicklesAreRefused() throws {
    for (file, global) in [("evil_os_system.pt", "os.system"), ("evil_eval.pt", "builtins.eval")] {
      do { _ = try TorchFile.load(path: interopFixtures + "/" + file); Issue.record("\(file) accepted") } catch let e as QoQError {
        #expect(e.message.contains("refers to \(global)") && e.message.contains("nothing is executed"), "\(e.message)")
      }
    }
    let good = try Data(contentsOf: URL(fileURLWithPath: interopFixtures + "/dc_g32/scale.pt"))
    for cut in stride(from: 0, to: good.count, by: max(1, good.count / 37)) {
      let p = tmp("cut")
      try good.prefix(cut).write(to: URL(fileURLWithPath: p))
      #expect(throws: QoQError.self) { _ = try TorchFile.load(path: p) }
    }
    let p = tmp("garbage")
    try Data((0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ 7) }).write(to: URL(fileURLWithPath: p))
    #expect(throws: QoQError.self) { _ = try TorchFile.load(path: p) }
  }

  /// Export to QServe (both s2 orders) and import back: the same codes, scales and zeros; per-channel too. A wrong
  /// order on import scrambles or is refused; unfolded norms are refused unless allowed.
  @Test(arguments: [WeightFormat.progressive(group: 32, protective: 120), .asym(bits: 4, group: nil)])
  func qserveRoundTrip(_ format: WeightFormat) throws {
    let c = try fixtureConfig()
    let src = try quantizedTiny(c, format: format)
    let orig = try weights(src)
    for order in S2Order.allCases {
      let q = tmp("qs"), back = tmp("back")
      _ = try Interop.exportQServe(from: src, to: q, order: order, allowUnfoldedNorms: false, overwrite: false)
      let st = try SafeTensorsFile(path: q + "/model.safetensors")
      #expect(try st.info("model.layers.0.mlp.down_proj.qweight").dtype == .I8)
      // What SGLang's QoQ loader reads (qoq.py: QoQConfig.from_config and QoQLinearMethod.create_weights).
      let qc = try JSON.parseFile(q + "/config.json")["quantization_config"]!
      let g: Int = { if case .progressive(let g, _) = format { return g }; return -1 }()
      #expect(qc["quant_method"]?.string == "qoq" && qc["wbits"]?.int == 4 && qc["group_size"]?.int == g)
      let m = "model.layers.1.mlp.down_proj", (o, i) = (c.hiddenSize, c.intermediateSize)
      #expect(try st.info(m + ".qweight").shape == [o, i / 2] && st.info(m + ".s1_scales").shape == [o] && st.info(m + ".s1_scales").dtype == .F16)
      if g > 0 {
        #expect(try st.info(m + ".s2_scales").shape == [i / g, o] && st.info(m + ".s2_zeros").shape == [i / g, o])
        #expect(try st.info(m + ".s2_scales").dtype == .I8 && st.info(m + ".s2_zeros").dtype == .I8)
      } else {
        #expect(try st.info(m + ".s1_szeros").shape == [o] && st.info(m + ".s1_szeros").dtype == .F16)
      }
      try Interop.importQServe(path: q, to: back, order: nil, runtime: RuntimeQuantization(), overwrite: false)
      let again = try weights(back)
      for (m, w) in orig {
        #expect(again[m]?.codes == w.codes && again[m]?.scale == w.scale && again[m]?.zero == w.zero && again[m]?.rowScale == w.rowScale, "\(order) \(m)")
      }
      if case .progressive = format {
        let wrong: S2Order = order == .qserve ? .deepcompressor : .qserve
        let bad = tmp("bad")
        if (try? Interop.importQServe(path: q, to: bad, order: wrong, runtime: RuntimeQuantization(), overwrite: false)) != nil {
          #expect(try weights(bad)["model.layers.0.self_attn.q_proj"]?.scale != orig["model.layers.0.self_attn.q_proj"]?.scale)
        }
      }
    }
    let unfolded = try quantizedTiny(c, format: format, unitNorms: false)
    #expect(throws: QoQError.self) { _ = try Interop.exportQServe(from: unfolded, to: tmp("x"), order: .qserve, allowUnfoldedNorms: false, overwrite: false) }
    _ = try Interop.exportQServe(from: unfolded, to: tmp("y"), order: .qserve, allowUnfoldedNorms: true, overwrite: false)
  }

  /// TinyChat export of a W4A16 g128 checkpoint, read back by the spec's rules: int16 qweight [out/4, in] unpacks to
  /// the codes, scales and scaled_zeros are transposed [ng_pad, out] with scaled_zero = −z and zero padding rows.
  @Test func tinyChatExport() throws {
    let c = try LlamaConfiguration(modelType: "llama", hiddenSize: 128, intermediateSize: 256, numHiddenLayers: 1, numAttentionHeads: 4,
                                   numKeyValueHeads: 2, headDim: 32, rmsNormEps: 1e-5, ropeTheta: 10000, vocabSize: 256)
    let src = try quantizedTiny(c, format: .asym(bits: 4, group: 128), actBits: nil, kvBits: nil)
    let orig = try weights(src)
    let out = tmp("tc")
    try Interop.exportTinyChat(from: src, to: out, overwrite: false)
    let st = try SafeTensorsFile(path: out + "/model.safetensors")
    for (m, w) in orig {
      let n = w.outFeatures, k = w.inFeatures, ng = k / 128, pad = TinyChatPacking.paddedGroups(ng)
      #expect(try st.info(m + ".qweight").shape == [n / 4, k] && st.info(m + ".scales").shape == [pad, n])
      let words = try st.raw(m + ".qweight").withMemoryRebound(to: UInt16.self) { Array($0) }
      #expect(try TinyChatPacking.unpack(words, n: n, k: k) == w.codes)
      let sc = try st.floats(m + ".scales"), zr = try st.floats(m + ".scaled_zeros")
      for o in 0..<n {
        for j in 0..<pad {
          #expect(sc[j * n + o] == (j < ng ? w.scale[o * ng + j] : 0) && zr[j * n + o] == (j < ng ? -w.zero[o * ng + j] : 0))
        }
      }
    }
    // Not W4A16 g128 → refused.
    let g32 = try quantizedTiny(c, format: .asym(bits: 4, group: 32), actBits: nil, kvBits: nil)
    #expect(throws: QoQError.self) { try Interop.exportTinyChat(from: g32, to: tmp("z"), overwrite: false) }
  }
}

import Foundation
import Testing
@testable import QoQInterop
import QoQFormat
import QoQIO
import QoQModels
import QoQQuant
import QoQTestSupport

/// compressed-tensors export (issue #15), checked against compressed-tensors' own pack_to_int32 and dequantize
/// (Tests/Fixtures/interop/compressed_tensors_pack.json, scripts/fixtures/make_compressed_tensors_fixtures.py).
@Suite struct CompressedTensorsTests {
  static func fixture() throws -> JSONValue { try JSON.parseFile(interopFixtures + "/compressed_tensors_pack.json") }

  /// Unpacks 4-bit values as compressed-tensors' unpack_from_int32 does (element i of a row at bits 4·(i mod 8)).
  static func unpack(_ words: [Int32], rows: Int, cols: Int, alongRows: Bool) -> [UInt8] {
    var v = [UInt8](repeating: 0, count: rows * cols)
    for r in 0..<rows {
      for c in 0..<cols {
        let (w, k) = alongRows ? (r * ((cols + 7) / 8) + c / 8, c % 8) : ((r / 8) * cols + c, r % 8)
        v[r * cols + c] = UInt8((UInt32(bitPattern: words[w]) >> UInt32(4 * k)) & 0xF)
      }
    }
    return v
  }

  @Test func packingMatchesCompressedTensors() throws {
    let f = try Self.fixture()
    let cases = f["cases"]!.array!
    #expect(cases.count == 4)
    for c in cases {
      let rows = c["rows"]!.int!, cols = c["cols"]!.int!
      let codes = c["codes"]!.array!.map { UInt8($0.int!) }
      let byRows = c["packed_rows"]!.array!.map { Int32(truncatingIfNeeded: $0.int!) }
      let byCols = c["packed_cols"]!.array!.map { Int32(truncatingIfNeeded: $0.int!) }
      #expect(Interop.packInt32Rows(codes, rows: rows, cols: cols) == byRows, "\(rows)×\(cols) rows")
      #expect(Interop.packInt32Columns(codes, rows: rows, cols: cols) == byCols, "\(rows)×\(cols) columns")
      #expect(Self.unpack(byRows, rows: rows, cols: cols, alongRows: true) == codes)
      #expect(Self.unpack(byCols, rows: rows, cols: cols, alongRows: false) == codes)
    }
  }

  /// Our PreScale dequantization (u − zp)·s, rounded to fp16, is compressed-tensors' dequantize in fp16.
  @Test func preScaleDequantizationMatchesCompressedTensors() throws {
    let d = try Self.fixture()["dequantize"]!
    let codes = d["codes"]!.array!.map { UInt8($0.int!) }, zp = d["zero_points"]!.array!.map { Float($0.int!) }
    let scale = d["scales_f16_bits"]!.array!.map { Float(Float16(bitPattern: UInt16(bitPattern: Int16($0.int!)))) }
    let want = d["dequantized"]!.array!.map { Float($0.double!) }
    let w = QuantizedWeight(format: .asym(bits: 4, group: 4, preScale: true), outFeatures: 2, inFeatures: 8, codes: codes,
                            scale: scale, zero: zip(zp, scale).map { $0 * $1 }, rowScale: [])
    #expect(w.dequantized().map { Float(Float16($0)) } == want)
  }

  /// Exported W4A16 PreScale: unpacking the files gives back exactly our codes, zero points and dequantized weights;
  /// the config is what compressed-tensors reads; norms, embeddings and biases pass through.
  @Test(arguments: [32, 0]) func exportW4A16PreScale(_ group: Int) throws {
    let c = try fixtureConfig()
    let format = WeightFormat.asym(bits: 4, group: group == 0 ? nil : group, preScale: true)
    let src = try quantizedTiny(c, format: format, actBits: nil, kvBits: nil)
    let cfg = try JSON.parseFile(src + "/config.json")["quantization_config"]!
    #expect(cfg["weight"]?["zero_point"]?.string == "pre_scale")
    let dst = tmp("ct")
    let warnings = try Interop.exportCompressedTensors(from: src, to: dst, overwrite: false)
    #expect(warnings.isEmpty)
    let ours = try CheckpointWeights(folder: src), out = try SafeTensorsFile(path: dst + "/model.safetensors")
    #expect(try ours.info("model.layers.0.self_attn.q_proj.zeros").dtype == .U8)
    for m in Interop.modules(c) {
      let s = tensorShape(m + ".weight", c), (o, i) = (s[0], s[1])
      let w = try QuantizedCheckpoint.readWeight(ours, module: m, format: format, out: o, inp: i)
      let ng = w.groups
      #expect(try out.info(m + ".weight_packed").dtype == .I32 && out.info(m + ".weight_packed").shape == [o, (i + 7) / 8])
      #expect(try out.info(m + ".weight_zero_point").shape == [(o + 7) / 8, ng])
      #expect(try out.info(m + ".weight_scale").dtype == .F16 && out.info(m + ".weight_scale").shape == [o, ng])
      #expect(try out.floats(m + ".weight_shape") == [Float(o), Float(i)] && out.info(m + ".weight_shape").dtype == .I64)
      func words(_ n: String) throws -> [Int32] { Array(try out.raw(n).bindMemory(to: Int32.self)) }
      let codes = Self.unpack(try words(m + ".weight_packed"), rows: o, cols: i, alongRows: true)
      let zp = Self.unpack(try words(m + ".weight_zero_point"), rows: o, cols: ng, alongRows: false)
      let sc = try out.floats(m + ".weight_scale")
      #expect(codes == w.codes && sc == w.scale)
      var deq = [Float](repeating: 0, count: o * i)
      for r in 0..<o { for k in 0..<i { deq[r * i + k] = (Float(codes[r * i + k]) - Float(zp[r * ng + k / w.groupSize])) * sc[r * ng + k / w.groupSize] } }
      #expect(deq == w.dequantized(), "\(m)")
    }
    #expect(try out.floats("model.norm.weight") == ours.floats("model.norm.weight"))
    #expect(try out.floats("model.embed_tokens.weight") == ours.floats("model.embed_tokens.weight"))
    let q = try JSON.parseFile(dst + "/config.json")["quantization_config"]!
    #expect(q["quant_method"]?.string == "compressed-tensors" && q["format"]?.string == "pack-quantized")
    #expect(q["quantization_status"]?.string == "compressed" && q["ignore"]?.array?.first?.string == "lm_head")
    let wq = q["config_groups"]!["group_0"]!["weights"]!
    #expect(wq["num_bits"]?.int == 4 && wq["symmetric"]?.bool == false && wq["type"]?.string == "int")
    #expect(wq["strategy"]?.string == (group == 0 ? "channel" : "group"))
    #expect(group == 0 ? wq["group_size"]?.isNull == true : wq["group_size"]?.int == group)
  }

  @Test func exportW8A8() throws {
    let c = try fixtureConfig()
    let src = try quantizedTiny(c, format: .sym(bits: 8), actBits: 8, kvBits: 8)
    let dst = tmp("ct8")
    let warnings = try Interop.exportCompressedTensors(from: src, to: dst, overwrite: false)
    #expect(warnings.contains { $0.contains("KV cache") })
    let ours = try CheckpointWeights(folder: src), out = try SafeTensorsFile(path: dst + "/model.safetensors")
    let m = "model.layers.1.mlp.down_proj", s = tensorShape(m + ".weight", c)
    let w = try QuantizedCheckpoint.readWeight(ours, module: m, format: .sym(bits: 8), out: s[0], inp: s[1])
    #expect(try out.info(m + ".weight").dtype == .I8 && out.info(m + ".weight_scale").shape == [s[0], 1])
    let signed = try out.floats(m + ".weight"), sc = try out.floats(m + ".weight_scale")
    #expect(signed.enumerated().map { $1 * sc[$0 / s[1]] } == w.dequantized())
    let q = try JSON.parseFile(dst + "/config.json")["quantization_config"]!
    #expect(q["format"]?.string == "int-quantized")
    let ia = q["config_groups"]!["group_0"]!["input_activations"]!
    #expect(ia["strategy"]?.string == "token" && ia["dynamic"]?.bool == true && ia["num_bits"]?.int == 8)
  }

  /// PostScale zeros (real fp16 values) and QoQ progressive weights have no exact integer zero point: refused with
  /// the reason and the way out; nothing is written.
  @Test func inexactFormatsAreRefused() throws {
    let c = try fixtureConfig()
    for (format, why) in [(WeightFormat.asym(bits: 4, group: 32), "PostScale"), (.progressive(group: 32, protective: 120), "progressive")] {
      let src = try quantizedTiny(c, format: format, actBits: nil, kvBits: nil)
      let dst = tmp("ctbad")
      do {
        _ = try Interop.exportCompressedTensors(from: src, to: dst, overwrite: false)
        Issue.record("\(format) was exported")
      } catch let e as QoQError {
        #expect(e.description.contains(why) && e.description.contains("PreScale"), "\(e)")
      }
      #expect(!FileManager.default.fileExists(atPath: dst))
    }
  }
}

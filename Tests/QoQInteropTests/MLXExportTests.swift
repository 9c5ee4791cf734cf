import Foundation
import Testing
@testable import QoQInterop
import QoQFormat
import QoQIO
import QoQModels
import QoQQuant
import QoQTestSupport

/// MLX export (issue #15), checked against mlx.core.quantize's packing and affine dequantization
/// (Tests/Fixtures/interop/mlx_affine.json, scripts/fixtures/make_mlx_fixtures.py).
@Suite struct MLXExportTests {
  @Test func packingAndAffineMatchMLX() throws {
    let f = try JSON.parseFile(interopFixtures + "/mlx_affine.json")
    let cases = f["cases"]!.array!
    #expect(cases.count == 4)
    for c in cases {
      let rows = c["rows"]!.int!, cols = c["cols"]!.int!, g = c["group"]!.int!
      let codes = c["codes"]!.array!.map { UInt8($0.int!) }
      let words = c["words"]!.array!.map { UInt32($0.int!) }
      #expect(Interop.packInt32Rows(codes, rows: rows, cols: cols).map { UInt32(bitPattern: $0) } == words, "\(rows)×\(cols)")
      // ŵ = scales·q + biases is what MLX dequantizes (to its float32 rounding).
      let s = c["scales"]!.array!.map { Float($0.double!) }, b = c["biases"]!.array!.map { Float($0.double!) }
      let want = c["dequantized"]!.array!.map { Float($0.double!) }
      let ng = cols / g
      for r in 0..<rows { for i in 0..<cols {
        let k = r * ng + i / g
        #expect(abs(s[k] * Float(codes[r * cols + i]) + b[k] - want[r * cols + i]) <= 1e-6)
      } }
    }
  }

  /// Every exported linear dequantizes (scales·q + biases, as MLX computes it) to exactly our dequantized weight, for
  /// PostScale (fp16 parameters), PreScale and progressive (float32 parameters) checkpoints.
  @Test(arguments: [WeightFormat.asym(bits: 4, group: 32), .asym(bits: 4, group: 32, preScale: true), .progressive(group: 32, protective: 120)])
  func exportIsExact(_ format: WeightFormat) throws {
    let c = try fixtureConfig()
    let src = try quantizedTiny(c, format: format, actBits: format == .asym(bits: 4, group: 32) ? nil : 8, kvBits: nil)
    let dst = tmp("mlx")
    let warnings = try Interop.exportMLX(from: src, to: dst, overwrite: false)
    let f16 = format == .asym(bits: 4, group: 32)
    #expect(warnings.contains { $0.contains("float32") } == !f16)
    let ours = try CheckpointWeights(folder: src), out = try SafeTensorsFile(path: dst + "/model.safetensors")
    for m in Interop.modules(c) {
      let s = tensorShape(m + ".weight", c), (o, i) = (s[0], s[1])
      let w = try QuantizedCheckpoint.readWeight(ours, module: m, format: format, out: o, inp: i)
      #expect(try out.info(m + ".weight").dtype == .U32 && out.info(m + ".weight").shape == [o, i / 8])
      #expect(try out.info(m + ".scales").dtype == (f16 ? .F16 : .F32) && out.info(m + ".biases").shape == [o, i / 32])
      let words = Array(try out.raw(m + ".weight").bindMemory(to: UInt32.self))
      let sc = try out.floats(m + ".scales"), bi = try out.floats(m + ".biases")
      var deq = [Float](repeating: 0, count: o * i)
      for r in 0..<o { for k in 0..<i {
        let q = Float((words[r * (i / 8) + k / 8] >> UInt32(4 * (k % 8))) & 0xF), g = r * (i / 32) + k / 32
        deq[r * i + k] = sc[g] * q + bi[g]
      } }
      #expect(deq == w.dequantized(), "\(m) \(format)")
    }
    let cfg = try JSON.parseFile(dst + "/config.json")
    #expect(cfg["quantization"]?["group_size"]?.int == 32 && cfg["quantization"]?["bits"]?.int == 4)
    #expect(cfg["quantization"]?["mode"]?.string == "affine")
  }

  @Test func unsupportedFormatsAreRefused() throws {
    let c = try fixtureConfig()
    for format in [WeightFormat.asym(bits: 4, group: nil), .sym(bits: 8), .asym(bits: 4, group: 16)] {
      let src = try quantizedTiny(c, format: format, actBits: nil, kvBits: nil)
      #expect(throws: QoQError.self) { try Interop.exportMLX(from: src, to: tmp("mlxbad"), overwrite: false) }
    }
  }
}

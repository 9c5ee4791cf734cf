// Export to compressed-tensors, the format vLLM and SGLang load and llm-compressor writes (issue #15). Followed:
// compressed-tensors (neuralmagic/compressed-tensors, commit 52792be) `compressors/quantized_compressors/
// pack_quantized.py` (pack_to_int32 / unpack_from_int32, compression_param_info), `quantization/lifecycle/forward.py`
// (_quantize / _dequantize), `quantization/quant_config.py`, `quant_scheme.py` and `quant_args.py`.
//
//   pack-quantized (W4A16, asymmetric, per group or per channel), for a linear of shape (out, in) with groups of g:
//     weight_packed      I32 (out, ⌈in/8⌉)   element i of a row at bits 4·(i mod 8) of word i/8, holding q + 8 where
//                                            q ∈ [−8, 7] is the signed code: our unsigned code u is exactly q + 8
//     weight_scale       F16 (out, in/g)     (out, 1) per channel
//     weight_zero_point  I32 (⌈out/8⌉, in/g) the signed zero point zp − 8, packed the same way along the output axis
//     weight_shape       I64 (2)             [out, in]
//   and ŵ = (q − zp_signed)·scale = (u − zp)·scale: exactly our PreScale ŵ = (u − zp)·s.
//   int-quantized (W8A8): weight I8 (out, in), weight_scale F16 (out, 1); input activations dynamic per token.
//
// compressed-tensors keeps integer zero points only. Our PostScale zeros (deepcompressor's default: a real fp16 zero,
// ŵ = u·s − z) and QoQ's progressive weights (an integer zero in the int8 domain, not a whole number of 4-bit steps)
// have no exact form there, so they are refused with the reason; quantize with `--wgts-zero-point PreScale` instead.
import Foundation
import QoQFormat
import QoQIO
import QoQModels

extension Interop {
  /// compressed-tensors `version` written into the config: the release the export was checked with (scripts/interop).
  static let compressedTensorsVersion = "0.20.1"

  /// Packs 4-bit values (0…15) into int32 words along rows: `v` is (rows, cols) row-major; word (r, j) holds
  /// v[r, 8j + k] at bits 4k, the tail padded with zeros.
  public static func packInt32Rows(_ v: [UInt8], rows: Int, cols: Int) -> [Int32] {
    let words = (cols + 7) / 8
    var out = [Int32](repeating: 0, count: rows * words)
    for r in 0..<rows {
      for c in 0..<cols { out[r * words + c / 8] |= Int32(bitPattern: UInt32(v[r * cols + c] & 0xF) << UInt32(4 * (c % 8))) }
    }
    return out
  }

  /// The same along the first axis: `v` is (rows, cols); word (j, c) holds v[8j + k, c] at bits 4k.
  public static func packInt32Columns(_ v: [UInt8], rows: Int, cols: Int) -> [Int32] {
    let words = (rows + 7) / 8
    var out = [Int32](repeating: 0, count: words * cols)
    for r in 0..<rows {
      for c in 0..<cols { out[(r / 8) * cols + c] |= Int32(bitPattern: UInt32(v[r * cols + c] & 0xF) << UInt32(4 * (r % 8))) }
    }
    return out
  }

  /// Our checkpoint → a compressed-tensors folder. Returns warnings (what does not carry over).
  public static func exportCompressedTensors(from src: String, to dst: String, overwrite: Bool) throws -> [String] {
    try OutputFolder.check(dst, force: overwrite, inputs: [src])
    let (c, q, st) = try open(src)
    guard let wf = q.weight else { throw QoQError("\(src): no quantized weights to export") }
    var warnings: [String] = []
    let format: String
    var weights: [(String, JSONValue)], inputs: JSONValue = .null
    switch wf {
    case .asym(let b, let g, let pre):
      guard b == 4 else { throw QoQError("\(src): compressed-tensors pack-quantized export takes 4-bit weights, not \(wf)") }
      guard pre else {
        throw QoQError("\(src): compressed-tensors stores integer zero points (ŵ = (q − zp)·s); this checkpoint's zeros are "
                       + "PostScale fp16 values (ŵ = q·s − z), which have no exact integer form. Quantize with "
                       + "--wgts-zero-point PreScale to export it exactly")
      }
      if let g { guard c.hiddenSize % g == 0 && c.intermediateSize % g == 0 && c.qDim % g == 0 else {
        throw QoQError("\(src): compressed-tensors groups must divide every input width (group \(g))")
      } }
      format = "pack-quantized"
      weights = [("num_bits", .int(4)), ("type", .string("int")), ("symmetric", .bool(false)),
                 ("group_size", g.map { .int($0) } ?? .null), ("strategy", .string(g == nil ? "channel" : "group"))]
      if q.actBits != nil { warnings.append("the export runs W4A16: \(q.actBits!)-bit activations do not carry over") }
    case .sym(let b):
      guard b == 8, q.actBits == 8 || q.actBits == nil else {
        throw QoQError("\(src): compressed-tensors int-quantized export takes W8A8 or W8A16, not \(wf)")
      }
      format = "int-quantized"
      weights = [("num_bits", .int(8)), ("type", .string("int")), ("symmetric", .bool(true)), ("group_size", .null),
                 ("strategy", .string("channel"))]
      if q.actBits == 8 {
        inputs = .object(JSONObject([("num_bits", .int(8)), ("type", .string("int")), ("symmetric", .bool(true)),
                                     ("group_size", .null), ("strategy", .string("token")), ("block_structure", .null),
                                     ("dynamic", .bool(true)), ("actorder", .null), ("observer", .null), ("observer_kwargs", .object(JSONObject()))]))
      }
    case .progressive:
      throw QoQError("\(src): QoQ progressive weights (ŵ = s1·(q·s2 − z)) have no exact compressed-tensors form: its zero "
                     + "z is an integer in the int8 domain, not a whole number of 4-bit steps, and the scale s1·s2 is not "
                     + "fp16. Export a PreScale W4A16 checkpoint (e.g. gptq.yaml or awq.yaml with --wgts-zero-point PreScale)")
    }
    weights += [("block_structure", .null), ("dynamic", .bool(false)), ("actorder", .null), ("observer", .string("minmax")),
                ("observer_kwargs", .object(JSONObject()))]
    if let kb = q.kvBits { warnings.append("the \(kb)-bit KV cache does not carry over (compressed-tensors kv_cache_scheme is left null)") }
    if q.kvKeyCenter || q.kvKeyRotation || q.kvKeyScale {
      warnings.append("key centering/scaling/rotation act on the KV cache only and are dropped (exact in FP)")
    }

    try OutputFolder.write(dst, force: overwrite, inputs: [src], command: "convert --to compressed-tensors") { tmp in
      var blobs = try passThrough(st, c)
      try forEachLinear(st, c, wf) { m, w in
        let (out, inp, ng) = (w.outFeatures, w.inFeatures, w.groups)
        blobs.append(TensorBlob(name: m + ".weight_scale", dtype: .F16, shape: [out, ng], data: f16(w.scale)))
        if case .sym = wf {
          let signed = w.codes.map { Int8(Int($0) - 128) }
          blobs.append(TensorBlob(name: m + ".weight", dtype: .I8, shape: [out, inp], data: i8(signed)))
          return
        }
        var zp = [UInt8](repeating: 0, count: out * ng)
        for k in zp.indices {
          let z = w.zero[k] / w.scale[k]
          guard z == z.rounded(), z >= 0, z <= 15, z * w.scale[k] == w.zero[k] else {
            throw QoQError("\(src): \(m): zero \(w.zero[k]) is not an integer zero point times the scale \(w.scale[k])")
          }
          zp[k] = UInt8(z)
        }
        let packed = packInt32Rows(w.codes, rows: out, cols: inp)
        blobs.append(TensorBlob(name: m + ".weight_packed", dtype: .I32, shape: [out, (inp + 7) / 8], data: packed.withUnsafeBytes { Data($0) }))
        let zpPacked = packInt32Columns(zp, rows: out, cols: ng)
        blobs.append(TensorBlob(name: m + ".weight_zero_point", dtype: .I32, shape: [(out + 7) / 8, ng], data: zpPacked.withUnsafeBytes { Data($0) }))
        let shape: [Int64] = [Int64(out), Int64(inp)]
        blobs.append(TensorBlob(name: m + ".weight_shape", dtype: .I64, shape: [2], data: shape.withUnsafeBytes { Data($0) }))
      }
      try SafeTensorsWriter.write(blobs, metadata: ["format": "pt", "qoq_exported_to": "compressed-tensors"], to: tmp + "/model.safetensors")
      let group = JSONObject([("targets", .array([.string("Linear")])), ("weights", .object(JSONObject(weights))),
                              ("input_activations", inputs), ("output_activations", .null), ("format", .string(format))])
      let qcfg = JSONObject([
        ("quant_method", .string("compressed-tensors")), ("format", .string(format)), ("quantization_status", .string("compressed")),
        ("config_groups", .object(JSONObject([("group_0", .object(group))]))), ("ignore", .array([.string("lm_head")])),
        ("kv_cache_scheme", .null), ("global_compression_ratio", .null), ("sparsity_config", .object(JSONObject())),
        ("version", .string(compressedTensorsVersion)),
      ])
      var cfg = try JSON.parse(c.jsonData(), what: "config")
      if var o = cfg.object { o["quantization_config"] = .object(qcfg); cfg = .object(o) }
      try atomicWrite(tmp + "/config.json", data: Data(JSON.serialize(cfg, pretty: true).utf8))
      try copyTokenizerFiles(from: src, to: tmp)
    }
    return warnings
  }
}

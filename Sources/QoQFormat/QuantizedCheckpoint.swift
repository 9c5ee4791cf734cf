// The quantized checkpoint that `qoq quantize --save-model` writes and `qoq eval` / the engine read: a Hugging Face
// folder whose model.safetensors holds, for every quantized linear P (e.g. model.layers.0.mlp.down_proj):
//   P.qweight  U8  (out, in/2) two 4-bit codes per byte, low nibble = even column (8-bit codes: (out, in))
//   P.scales   F16 (out, groups) fp16 scale (asym, sym)  |  I8 (out, groups) integer s2 (progressive)
//   P.zeros    F16 (out, groups) fp16 post-scale zero (asym)  |  U8 (out, groups) integer zero point (asym PreScale)
//              |  I8 (out, groups) integer z (progressive)
//   P.s1       F16 (out) per-channel scale (progressive only)
//   P.bias     F32 (out) when the layer has one
// and every other tensor (embeddings, norms, lm_head) in F32 under its HF name. config.json carries a
// `quantization_config` block; recipe.yaml beside it is the fully resolved recipe. Dequantization:
// asym ŵ = q·s − z; progressive ŵ = s1·(q·s2 − z); sym ŵ = (q − 2^(b−1))·s.
import Foundation
import QoQIO
import QoQModels
import QoQTokenizers

public struct QuantizationConfig: Sendable, Equatable {
  public var method: String            // "qoq", "rtn", "gptq", "awq", "smoothquant"
  public var weight: WeightFormat?
  public var actBits: Int?             // symmetric per-token activations
  public var kvBits: Int?
  public var kvGroup: Int?             // nil = per token over all channels
  public var kvAsymmetric = true
  /// Static per-tensor KV scales, (K, V) per layer in layer order; nil = dynamic per-token KV quantization.
  public var kvStaticScales: [Float]?
  /// Keys are centered before quantization: each layer's checkpoint holds `self_attn.k_center` (kv_heads·head_dim),
  /// subtracted from post-RoPE K (`CenteredKeys`; issue #19). Only with dynamic asymmetric KV.
  public var kvKeyCenter = false
  /// Each head of post-RoPE K (after centering) and Q is rotated by the normalized Walsh–Hadamard matrix before the
  /// KV cache (`RotatedKeys`; issue #19): `"key_rotation": "hadamard"`. Only with dynamic KV and a power-of-two head_dim.
  public var kvKeyRotation = false
  /// Each post-RoPE key channel (after centering, before rotation) is multiplied by `self_attn.k_scale`
  /// (kv_heads·head_dim, positive) and the query divided by it (`ScaledKeys`; issue #19): `"key_scale": "k_scale"`.
  /// Only with dynamic KV.
  public var kvKeyScale = false
  public var notQuantized: [String] = []

  public init(method: String, weight: WeightFormat?, actBits: Int?, kvBits: Int?, kvGroup: Int?, kvAsymmetric: Bool = true) {
    self.method = method; self.weight = weight; self.actBits = actBits; self.kvBits = kvBits; self.kvGroup = kvGroup
    self.kvAsymmetric = kvAsymmetric
  }

  public var json: JSONValue {
    var w: JSONValue = .null
    if let f = weight {
      switch f {
      case .asym(let b, let g, let pre):
        w = .object(JSONObject([("format", .string("asym")), ("bits", .int(b)), ("group_size", .int(g ?? -1)),
                                ("zero_point", .string(pre ? "pre_scale" : "post_scale")), ("scale_dtype", .string("float16"))]))
      case .progressive(let g, let p):
        w = .object(JSONObject([("format", .string("progressive")), ("bits", .int(4)), ("group_size", .int(g)), ("protective_range", .int(p)),
                                ("zero_point", .string("post_scale")), ("scale_dtype", .string("float16, int8"))]))
      case .sym(let b):
        w = .object(JSONObject([("format", .string("sym")), ("bits", .int(b)), ("group_size", .int(-1)), ("scale_dtype", .string("float16"))]))
      }
    }
    return .object(JSONObject([
      ("quant_method", .string(method)),
      ("weight", w),
      ("activation", actBits.map { .object(JSONObject([("bits", .int($0)), ("granularity", .string("per_token")),
                                                       ("symmetric", .bool(true)), ("dynamic", .bool(true))])) } ?? .null),
      ("kv_cache", kvBits.map { b in
        var o = JSONObject([("bits", .int(b)), ("group_size", .int(kvGroup ?? -1)), ("asymmetric", .bool(kvAsymmetric)),
                            ("dynamic", .bool(kvStaticScales == nil)), ("key", .string("post_rope"))])
        if let s = kvStaticScales { o["static_scales"] = .array(s.map { .double(Double($0)) }) }
        if kvKeyCenter { o["key_center"] = .string("k_center") }
        if kvKeyRotation { o["key_rotation"] = .string("hadamard") }
        if kvKeyScale { o["key_scale"] = .string("k_scale") }
        return .object(o)
      } ?? .null),
      ("modules_not_quantized", .array(notQuantized.map { .string($0) })),
      ("recipe", .string("recipe.yaml")),
    ]))
  }

  public init(json v: JSONValue, what: String) throws {
    func bad(_ m: String) -> QoQError { QoQError("\(what): quantization_config: \(m)") }
    guard let m = v["quant_method"]?.string else { throw bad("missing quant_method") }
    method = m
    if let w = v["weight"], !w.isNull {
      guard let f = w["format"]?.string, let b = w["bits"]?.int, let g = w["group_size"]?.int else {
        throw bad("weight needs format, bits, group_size")
      }
      guard b >= 2 && b <= 8 else { throw bad("weight bits \(b) not supported") }
      switch f {
      case "asym":
        let zp = w["zero_point"]?.string ?? "post_scale"
        guard zp == "post_scale" || zp == "pre_scale" else { throw bad("weight zero_point \(zp) (post_scale or pre_scale)") }
        weight = .asym(bits: b, group: g == -1 ? nil : g, preScale: zp == "pre_scale")
      case "progressive":
        guard b == 4, g > 0, let p = w["protective_range"]?.int, p > 0, p <= 127 else {
          throw bad("progressive weights need bits 4, a group and protective_range")
        }
        weight = .progressive(group: g, protective: p)
      case "sym": weight = .sym(bits: b)
      default: throw bad("weight format \(f) is not supported (asym, progressive, sym)")
      }
      if let g = weight?.groupSize(1 << 20), g <= 0 { throw bad("bad group size") }
    }
    if let a = v["activation"], !a.isNull {
      guard let b = a["bits"]?.int, b >= 2 && b <= 8 else { throw bad("activation bits") }
      actBits = b
    }
    if let k = v["kv_cache"], !k.isNull {
      guard let b = k["bits"]?.int, b >= 2 && b <= 8 else { throw bad("kv_cache bits") }
      kvBits = b
      let g = k["group_size"]?.int ?? -1
      guard g == -1 || g > 0 else { throw bad("kv_cache group_size") }
      kvGroup = g == -1 ? nil : g
      kvAsymmetric = k["asymmetric"]?.bool ?? true
      if let ss = k["static_scales"], !ss.isNull {
        guard let a = ss.array, a.allSatisfy({ ($0.double ?? -1) > 0 }) else { throw bad("kv_cache static_scales must be positive numbers") }
        guard !kvAsymmetric else { throw bad("static KV scales are symmetric (asymmetric must be false)") }
        kvStaticScales = a.map { Float($0.double!) }
      }
      if let kc = k["key_center"], !kc.isNull {
        guard kc.string == "k_center" else { throw bad("kv_cache key_center must be \"k_center\" (the per-layer tensor name)") }
        guard kvAsymmetric && kvStaticScales == nil else { throw bad("kv_cache key_center needs dynamic asymmetric KV") }
        kvKeyCenter = true
      }
      if let kr = k["key_rotation"], !kr.isNull {
        guard kr.string == "hadamard" else { throw bad("kv_cache key_rotation must be \"hadamard\"") }
        guard kvStaticScales == nil else { throw bad("kv_cache key_rotation needs dynamic KV") }
        kvKeyRotation = true
      }
      if let ks = k["key_scale"], !ks.isNull {
        guard ks.string == "k_scale" else { throw bad("kv_cache key_scale must be \"k_scale\" (the per-layer tensor name)") }
        guard kvStaticScales == nil else { throw bad("kv_cache key_scale needs dynamic KV") }
        kvKeyScale = true
      }
    }
    notQuantized = v["modules_not_quantized"]?.array?.compactMap(\.string) ?? []
  }
}

extension QuantizationConfig {
  /// Dense linears over (already dequantized) weights, inputs quantized per token when activations are.
  public var fakeQuantLinearFactory: LlamaModel.LinearFactory {
    let actBits = self.actBits
    return { _, w, out, inp, b in
      let dense = DenseLinear(weight: w, outFeatures: out, inFeatures: inp, bias: b)
      if let ab = actBits { return ActQuantLinear(dense, bits: ab) }
      return dense
    }
  }

  /// The fake-quantized runtime model: dense linears over (already dequantized) weights, inputs quantized per token
  /// when activations are, and the KV quantizer. Shared by checkpoint loading and the quantizer's evaluation.
  public func fakeQuantModel(config: LlamaConfiguration, weights: WeightSource) throws -> LlamaModel {
    let model = try LlamaModel(config: config, weights: weights, linearFactory: fakeQuantLinearFactory)
    if let kb = kvBits {
      if let s = kvStaticScales {
        guard s.count == 2 * config.numHiddenLayers else {
          throw QoQError("quantization_config: kv_cache static_scales has \(s.count) values, expected 2 × \(config.numHiddenLayers) layers")
        }
        model.kvLayerQuantizers = (0..<config.numHiddenLayers).map {
          (StaticKVQuant(scale: s[2 * $0], bits: kb), StaticKVQuant(scale: s[2 * $0 + 1], bits: kb))
        }
      } else {
        let kq = KVFakeQuant(bits: kb, group: kvGroup ?? config.kvDim, asymmetric: kvAsymmetric)
        if kvKeyRotation { try checkKeyRotation(config) }
        if kvKeyCenter || kvKeyRotation || kvKeyScale {
          model.kvLayerQuantizers = try (0..<config.numHiddenLayers).map { l in
            (keyTransform(kq, headDim: config.headDim, rotate: kvKeyRotation,
                          scale: kvKeyScale ? try keyScale(weights, layer: l, config) : nil,
                          center: kvKeyCenter ? try keyCenter(weights, layer: l, config) : nil), kq)
          }
        } else {
          model.kvQuantizer = kq
        }
      }
    }
    return model
  }

  /// Key rotation needs whole power-of-two heads (the Walsh–Hadamard order).
  public func checkKeyRotation(_ c: LlamaConfiguration) throws {
    guard c.headDim > 0 && c.headDim & (c.headDim - 1) == 0 else {
      throw QoQError("quantization_config: kv_cache key_rotation needs a power-of-two head_dim (this model's is \(c.headDim))")
    }
  }

  /// Layer l's key center (kv_heads·head_dim floats, finite) from a checkpoint with `key_center`.
  public func keyCenter(_ weights: WeightSource, layer l: Int, _ c: LlamaConfiguration) throws -> [Float] {
    try keyVector(weights, "model.layers.\(l).self_attn.k_center", field: "key_center", c) { $0.isFinite }
  }

  /// Layer l's key scale (kv_heads·head_dim floats, each finite and in [2⁻²⁰, 2²⁰]) from a checkpoint with `key_scale`.
  public func keyScale(_ weights: WeightSource, layer l: Int, _ c: LlamaConfiguration) throws -> [Float] {
    try keyVector(weights, "model.layers.\(l).self_attn.k_scale", field: "key_scale", c) { $0 >= 0x1p-20 && $0 <= 0x1p20 }
  }

  private func keyVector(_ weights: WeightSource, _ name: String, field: String, _ c: LlamaConfiguration,
                         valid: (Float) -> Bool) throws -> [Float] {
    let v: [Float]
    do { v = try weights.floats(name) } catch { throw QoQError("quantization_config says \(field), but \(name) cannot be read: \(error)") }
    guard v.count == c.kvDim else { throw QoQError("\(name) must hold \(c.kvDim) values (has \(v.count))") }
    if let bad = v.firstIndex(where: { !valid($0) }) {
      throw QoQError("\(name)[\(bad)] = \(v[bad]) is out of range for \(field)")
    }
    return v
  }
}

public enum QuantizedCheckpoint {
  /// Writes a quantized checkpoint folder atomically (temporary folder, then rename).
  /// `fp` holds every non-quantized tensor by HF name; `quantized` maps module names to their weights.
  public static func write(to output: String, config: LlamaConfiguration, quantization: QuantizationConfig,
                           fp: [String: [Float]], quantized: [String: QuantizedWeight], biases: [String: [Float]],
                           recipeYAML: String, tokenizerFrom source: String?, overwrite: Bool, inputs: [String] = [],
                           extraFiles: [(String, Data)] = []) throws {
    try OutputFolder.write(output, force: overwrite, inputs: inputs + [source].compactMap { $0 }, command: "quantize") { tmp in
      var blobs: [TensorBlob] = []
      for (name, v) in fp { blobs.append(TensorBlob(name: name, shape: tensorShape(name, config), floats: v)) }
      for (module, q) in quantized {
        blobs += tensors(module: module, q)
        if let b = biases[module] { blobs.append(TensorBlob(name: module + ".bias", shape: [b.count], floats: b)) }
      }
      try SafeTensorsWriter.write(blobs, metadata: ["format": "pt", "quantization": quantization.method], to: tmp + "/model.safetensors")
      blobs.removeAll()
      var cfg = try JSON.parse(config.jsonData(), what: "config")
      if var o = cfg.object { o["quantization_config"] = quantization.json; cfg = .object(o) }
      try atomicWrite(tmp + "/config.json", data: Data(JSON.serialize(cfg, pretty: true).utf8))
      try atomicWrite(tmp + "/recipe.yaml", data: Data(recipeYAML.utf8))
      try copyTokenizer(from: source, to: tmp)
      for (name, data) in extraFiles { try atomicWrite(tmp + "/" + name, data: data) }
    }
  }

  /// Tokenizer files from a HF folder, or exported from a GGUF's metadata.
  public static func copyTokenizer(from source: String?, to dir: String) throws {
    guard let src = source else { return }
    let fm = FileManager.default
    if src.hasSuffix(".gguf") {
      let g = try GGUFFile(path: src)
      try atomicWrite(dir + "/tokenizer.json", data: Data(JSON.serialize(try tokenizerJSON(gguf: g)).utf8))
      return
    }
    for f in ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json", "chat_template.jinja",
              "tokenizer.model"]
    where fm.fileExists(atPath: src + "/" + f) {
      try fm.copyItem(atPath: src + "/" + f, toPath: dir + "/" + f)
    }
  }

  /// A quantized linear's tensors in this format (qweight, scales, zeros, s1).
  public static func tensors(module p: String, _ q: QuantizedWeight) -> [TensorBlob] {
    let out = q.outFeatures, inp = q.inFeatures, ng = q.groups
    var blobs: [TensorBlob] = []
    if q.format.bits <= 4 {
      var packed = [UInt8](repeating: 0, count: out * ((inp + 1) / 2))
      for o in 0..<out {
        for i in 0..<inp {
          let c = q.codes[o * inp + i] & 0xF
          packed[o * ((inp + 1) / 2) + i / 2] |= i % 2 == 0 ? c : c << 4
        }
      }
      blobs.append(TensorBlob(name: p + ".qweight", dtype: .U8, shape: [out, (inp + 1) / 2], data: Data(packed)))
    } else {
      blobs.append(TensorBlob(name: p + ".qweight", dtype: .U8, shape: [out, inp], data: Data(q.codes)))
    }
    func f16(_ x: [Float]) -> Data { x.map { f32ToF16($0).littleEndian }.withUnsafeBytes { Data($0) } }
    func i8(_ x: [Float]) -> Data { Data(x.map { UInt8(bitPattern: Int8($0)) }) }
    switch q.format {
    case .asym(_, _, let pre):
      blobs.append(TensorBlob(name: p + ".scales", dtype: .F16, shape: [out, ng], data: f16(q.scale)))
      if pre {  // zero = zp·s exactly: store the integer zero point
        blobs.append(TensorBlob(name: p + ".zeros", dtype: .U8, shape: [out, ng],
                                data: Data(zip(q.zero, q.scale).map { UInt8(min(max(($0 / $1).rounded(), 0), 255)) })))
      } else {
        blobs.append(TensorBlob(name: p + ".zeros", dtype: .F16, shape: [out, ng], data: f16(q.zero)))
      }
    case .progressive:
      blobs.append(TensorBlob(name: p + ".scales", dtype: .I8, shape: [out, ng], data: i8(q.scale)))
      blobs.append(TensorBlob(name: p + ".zeros", dtype: .I8, shape: [out, ng], data: i8(q.zero)))
      blobs.append(TensorBlob(name: p + ".s1", dtype: .F16, shape: [out], data: f16(q.rowScale)))
    case .sym:
      blobs.append(TensorBlob(name: p + ".scales", dtype: .F16, shape: [out, 1], data: f16(q.scale)))
    }
    return blobs
  }

  /// Reads one quantized linear back (shapes and value ranges checked).
  public static func readWeight(_ st: CheckpointWeights, module p: String, format: WeightFormat, out: Int, inp: Int) throws -> QuantizedWeight {
    let what = "\(st.folder): \(p)"
    let gs = format.groupSize(inp), ng = (inp + gs - 1) / gs
    let packed4 = format.bits <= 4
    let qi = try st.info(p + ".qweight")
    let want = packed4 ? [out, (inp + 1) / 2] : [out, inp]
    guard qi.dtype == .U8, qi.shape == want else { throw QoQError("\(what).qweight: expected U8 \(want), got \(qi.dtype) \(qi.shape)") }
    let raw = try st.raw(p + ".qweight")
    defer { st.release(p + ".qweight") }  // the codes are copied out; keep the mapped pages out of RSS
    var codes = [UInt8](repeating: 0, count: out * inp)
    let qmax = UInt8((1 << format.bits) - 1)
    for o in 0..<out {
      for i in 0..<inp {
        let c = packed4 ? (raw[o * want[1] + i / 2] >> (i % 2 == 0 ? 0 : 4)) & 0xF : raw[o * inp + i]
        guard c <= qmax else { throw QoQError("\(what).qweight: code \(c) exceeds \(format.bits) bits") }
        codes[o * inp + i] = c
      }
    }
    func load(_ name: String, _ dtype: DType, _ shape: [Int]) throws -> [Float] {
      let i = try st.info(p + name)
      guard i.dtype == dtype, i.shape == shape else { throw QoQError("\(what)\(name): expected \(dtype) \(shape), got \(i.dtype) \(i.shape)") }
      return try st.floats(p + name)
    }
    switch format {
    case .asym(_, _, let pre):
      let scale = try load(".scales", .F16, [out, ng])
      guard pre else { return QuantizedWeight(format: format, outFeatures: out, inFeatures: inp, codes: codes,
                                              scale: scale, zero: try load(".zeros", .F16, [out, ng]), rowScale: []) }
      let zp = try load(".zeros", .U8, [out, ng])
      guard zp.allSatisfy({ $0 <= Float(qmax) }) else { throw QoQError("\(what).zeros: zero point exceeds \(format.bits) bits") }
      return QuantizedWeight(format: format, outFeatures: out, inFeatures: inp, codes: codes,
                             scale: scale, zero: zip(zp, scale).map { $0 * $1 }, rowScale: [])
    case .progressive:
      let s2 = try load(".scales", .I8, [out, ng])
      guard s2.allSatisfy({ $0 >= 1 && $0 <= 127 }) else { throw QoQError("\(what).scales: s2 must be in 1…127") }
      return QuantizedWeight(format: format, outFeatures: out, inFeatures: inp, codes: codes, scale: s2,
                             zero: try load(".zeros", .I8, [out, ng]), rowScale: try load(".s1", .F16, [out]))
    case .sym:
      return QuantizedWeight(format: format, outFeatures: out, inFeatures: inp, codes: codes,
                             scale: try load(".scales", .F16, [out, 1]), zero: [], rowScale: [])
    }
  }
}

/// Loads a model folder or GGUF: a quantized checkpoint becomes a fake-quantized model (dequantized weights,
/// quantized activations and KV), anything else the FP model (through ModelCheckpoint.open).
public enum AnyModelLoader {
  public static func load(path: String) throws -> (LoadedModel, QuantizationConfig?) {
    let ckpt = try ModelCheckpoint.open(path)
    return (try ckpt.loaded(), ckpt.quantization)
  }
}

/// Presents a quantized checkpoint as FP tensors (quantized linears dequantized) for model construction.
public final class QuantizedSource: WeightSource {
  let st: CheckpointWeights
  let config: LlamaConfiguration
  let quant: QuantizationConfig
  let quantizedModules: Set<String>
  public let tensorNames: [String]

  public init(st: CheckpointWeights, config: LlamaConfiguration, quant: QuantizationConfig) {
    self.st = st; self.config = config; self.quant = quant
    var modules = Set<String>()
    var names: [String] = []
    for n in st.names {
      if n.hasSuffix(".qweight") { let m = String(n.dropLast(8)); modules.insert(m); names.append(m + ".weight") }
      else if n.hasSuffix(".scales") || n.hasSuffix(".zeros") || n.hasSuffix(".s1") || n.hasSuffix(".k_center")
        || n.hasSuffix(".k_scale") { continue }
      else { names.append(n) }
    }
    quantizedModules = modules
    tensorNames = names
  }

  public func shape(_ name: String) throws -> [Int] {
    if name.hasSuffix(".weight"), quantizedModules.contains(String(name.dropLast(7))) { return tensorShape(name, config) }
    return try st.info(name).shape
  }

  public func floats(_ name: String) throws -> [Float] {
    if name.hasSuffix(".weight"), quantizedModules.contains(String(name.dropLast(7))), let f = quant.weight {
      let m = String(name.dropLast(7)), s = tensorShape(name, config)
      return try QuantizedCheckpoint.readWeight(st, module: m, format: f, out: s[0], inp: s[1]).dequantized()
    }
    return try st.floats(name)
  }
}

// MARK: - Lossless snapshots of quantized weights (stage cache)

extension QuantizedCheckpoint {
  /// Tensors `<module>::codes` (U8), `::scale`, `::zero`, `::row_scale` (F32) and `::format` (I32: kind, bits,
  /// group, protective, out, in) that restore a QuantizedWeight exactly.
  public static func tensorsForCache(module m: String, _ q: QuantizedWeight) -> [TensorBlob] {
    let (kind, bits, group, prot): (Int32, Int32, Int32, Int32)
    switch q.format {
    case .asym(let b, let g, let pre): (kind, bits, group, prot) = (pre ? 3 : 0, Int32(b), Int32(g ?? -1), 0)
    case .progressive(let g, let p): (kind, bits, group, prot) = (1, 4, Int32(g), Int32(p))
    case .sym(let b): (kind, bits, group, prot) = (2, Int32(b), -1, 0)
    }
    let f: [Int32] = [kind, bits, group, prot, Int32(q.outFeatures), Int32(q.inFeatures)]
    return [
      TensorBlob(name: m + "::codes", dtype: .U8, shape: [q.codes.count], data: Data(q.codes)),
      TensorBlob(name: m + "::scale", shape: [q.scale.count], floats: q.scale),
      TensorBlob(name: m + "::zero", shape: [q.zero.count], floats: q.zero),
      TensorBlob(name: m + "::row_scale", shape: [q.rowScale.count], floats: q.rowScale),
      TensorBlob(name: m + "::format", dtype: .I32, shape: [6], data: f.withUnsafeBytes { Data($0) }),
    ]
  }

  public static func quantizedFromCache(_ st: SafeTensorsFile) throws -> [String: QuantizedWeight] {
    var out: [String: QuantizedWeight] = [:]
    for name in st.names where name.hasSuffix("::format") {
      let m = String(name.dropLast(8))
      let f = try st.floats(name).map { Int($0) }
      guard f.count == 6 else { throw QoQError("\(st.path): bad cached format for \(m)") }
      let format: WeightFormat
      switch f[0] {
      case 0, 3: format = .asym(bits: f[1], group: f[2] == -1 ? nil : f[2], preScale: f[0] == 3)
      case 1: format = .progressive(group: f[2], protective: f[3])
      case 2: format = .sym(bits: f[1])
      default: throw QoQError("\(st.path): unknown cached format \(f[0])")
      }
      out[m] = QuantizedWeight(format: format, outFeatures: f[4], inFeatures: f[5], codes: Array(try st.raw(m + "::codes")),
                               scale: try st.floats(m + "::scale"), zero: try st.floats(m + "::zero"),
                               rowScale: try st.floats(m + "::row_scale"))
    }
    return out
  }
}

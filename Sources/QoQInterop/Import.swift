// Imports into our checkpoint format: deepcompressor's --save-model output (model.pt with the fake-quantized
// weights, scale.pt with the quantizer's scales and zeros; deepcompressor.md §4.1) and QServe checkpoints (§4.2).
// Neither records how activations and the KV cache were quantized, so the caller says (default W4A8KV4, KV groups
// of one head).
import Foundation
import QoQFormat
import QoQIO
import QoQModels

public struct RuntimeQuantization: Sendable {
  public var actBits: Int? = 8
  public var kvBits: Int? = 4
  public var kvGroup: Int?       // nil: head_dim
  public init() {}
}

extension Interop {
  /// deepcompressor's folder (model.pt, scale.pt) + the original model's folder (config, tokenizer) → our checkpoint.
  public static func importDeepCompressor(quantPath: String, configFrom hf: String, to dst: String, runtime: RuntimeQuantization,
                                          overwrite: Bool) throws {
    try OutputFolder.check(dst, force: overwrite, inputs: [quantPath, hf])
    let c = try LlamaConfiguration.load(path: hf + "/config.json")
    let weights = try TorchFile.load(path: quantPath + "/model.pt")
    let scales = try TorchFile.load(path: quantPath + "/scale.pt")
    var fp: [String: [Float]] = [:], quantized: [String: QuantizedWeight] = [:], biases: [String: [Float]] = [:]
    var format: WeightFormat?
    let mods = Set(modules(c))
    for (name, t) in weights {
      let m = String(name.dropLast(name.hasSuffix(".weight") ? 7 : name.hasSuffix(".bias") ? 5 : 0))
      if mods.contains(m) {
        if name.hasSuffix(".bias") { biases[m] = t.floats() }
        continue
      }
      guard t.count == tensorShape(name, c).reduce(1, *) else {
        throw QoQError("\(quantPath)/model.pt: \(name) has shape \(t.shape), expected \(tensorShape(name, c))")
      }
      fp[name] = t.floats()
    }
    for m in modules(c) {
      guard let wt = weights[m + ".weight"] else { throw QoQError("\(quantPath)/model.pt: missing \(m).weight") }
      let s = tensorShape(m + ".weight", c), out = s[0], inp = s[1]
      guard wt.count == out * inp else { throw QoQError("\(quantPath)/model.pt: \(m).weight has shape \(wt.shape), expected \(s)") }
      guard let s0 = scales[m + ".weight.scale.0"], let zt = scales[m + ".weight.scaled_zero"] else {
        throw QoQError("\(quantPath)/scale.pt: missing \(m).weight.scale.0 or .scaled_zero (PostScale zeros are supported)")
      }
      let w = wt.floats()
      let q: QuantizedWeight
      if let s1t = scales[m + ".weight.scale.1"] {
        let s1 = s0.floats(), s2 = s1t.floats(), z = zt.floats()
        guard s1.count == out else { throw QoQError("\(quantPath)/scale.pt: \(m) scale shapes do not match \(out) rows") }
        let (ng, g) = try groupLayout(s2.count, zeros: z.count, out: out, inp: inp, what: "\(quantPath)/scale.pt: \(m)")
        var codes = [UInt8](repeating: 0, count: out * inp)
        for o in 0..<out {
          for i in 0..<inp {
            let j = o * ng + i / g
            let w8 = (w[o * inp + i] / s1[o]).rounded(.toNearestOrEven)
            let num = w8 + z[j]
            let qv = (num / s2[j]).rounded(.toNearestOrEven)
            guard qv >= 0, qv <= 15, qv * s2[j] == num else {
              throw QoQError("\(quantPath): \(m) weight [\(o), \(i)] is not on the progressive grid (w8 \(w8), s2 \(s2[j]), z \(z[j]))")
            }
            codes[o * inp + i] = UInt8(qv)
          }
        }
        let f = WeightFormat.progressive(group: g, protective: protectiveRange(postScale: true))
        if format == nil { format = f } else if format != f { throw QoQError("\(quantPath): mixed weight formats") }
        q = QuantizedWeight(format: f, outFeatures: out, inFeatures: inp, codes: codes, scale: s2, zero: z, rowScale: s1)
      } else {
        let sc = s0.floats(), z = zt.floats()
        let (ng, g) = try groupLayout(sc.count, zeros: z.count, out: out, inp: inp, what: "\(quantPath)/scale.pt: \(m)")
        var codes = [UInt8](repeating: 0, count: out * inp)
        for o in 0..<out {
          for i in 0..<inp {
            let j = o * ng + i / g
            let qv = ((w[o * inp + i] + z[j]) / sc[j]).rounded(.toNearestOrEven)
            guard qv >= 0, qv <= 15, abs(qv * sc[j] - z[j] - w[o * inp + i]) <= 0.01 * sc[j] + 1e-3 * abs(w[o * inp + i]) else {
              throw QoQError("\(quantPath): \(m) weight [\(o), \(i)] is not on the uint4 grid of its scale and zero")
            }
            codes[o * inp + i] = UInt8(qv)
          }
        }
        let f = WeightFormat.asym(bits: 4, group: ng == 1 ? nil : g)
        if format == nil { format = f } else if format != f { throw QoQError("\(quantPath): mixed weight formats") }
        q = QuantizedWeight(format: f, outFeatures: out, inFeatures: inp, codes: codes, scale: sc, zero: z, rowScale: [])
      }
      quantized[m] = q
    }
    var qc = QuantizationConfig(method: "deepcompressor", weight: format, actBits: runtime.actBits, kvBits: runtime.kvBits,
                                kvGroup: runtime.kvBits == nil ? nil : (runtime.kvGroup ?? c.headDim))
    qc.kvAsymmetric = true
    if c.tieWordEmbeddings, fp["lm_head.weight"] != nil { fp["lm_head.weight"] = nil }
    try QuantizedCheckpoint.write(to: dst, config: c, quantization: qc, fp: fp, quantized: quantized, biases: biases,
                                  recipeYAML: "# imported from deepcompressor: \(quantPath)\n", tokenizerFrom: hf,
                                  overwrite: overwrite, inputs: [quantPath])
  }

  /// Groups per row and group width from a (rows × groups) scale tensor; checks it against the zeros and the width.
  static func groupLayout(_ scales: Int, zeros: Int, out: Int, inp: Int, what: String) throws -> (groups: Int, width: Int) {
    guard scales % out == 0, zeros == scales else { throw QoQError("\(what) scale shapes do not match \(out) rows") }
    let ng = scales / out
    guard ng > 0, inp % ng == 0 else { throw QoQError("\(what) has \(ng) groups for \(inp) inputs") }
    return (ng, inp / ng)
  }

  /// A QServe checkpoint folder (model.safetensors or pytorch_model.bin + config + tokenizer) → our checkpoint.
  public static func importQServe(path: String, to dst: String, order: S2Order?, runtime: RuntimeQuantization, overwrite: Bool) throws {
    try OutputFolder.check(dst, force: overwrite, inputs: [path])
    var c = try LlamaConfiguration.load(path: path + "/config.json")
    c.torchDtype = "float32"
    var tensors: [String: TorchTensor] = [:]
    var detectedOrder: S2Order?
    if FileManager.default.fileExists(atPath: path + "/model.safetensors") {
      let st = try SafeTensorsFile(path: path + "/model.safetensors")
      detectedOrder = st.metadata["qoq_s2_order"].flatMap(S2Order.init(rawValue:))
      for n in st.names { let i = try st.info(n); tensors[n] = TorchTensor(dtype: i.dtype, shape: i.shape, data: Data(try st.raw(n))) }
    } else if FileManager.default.fileExists(atPath: path + "/pytorch_model.bin") {
      tensors = try TorchFile.load(path: path + "/pytorch_model.bin")
    } else {
      throw QoQError("\(path): no model.safetensors or pytorch_model.bin")
    }
    let s2order = order ?? detectedOrder ?? .qserve
    var fp: [String: [Float]] = [:], quantized: [String: QuantizedWeight] = [:], biases: [String: [Float]] = [:]
    let mods = Set(modules(c))
    var format: WeightFormat?
    for (name, t) in tensors {
      let m = name.components(separatedBy: ".").dropLast().joined(separator: ".")
      if mods.contains(m) { if name.hasSuffix(".bias") { biases[m] = t.floats() }; continue }
      fp[name] = t.floats()
    }
    for m in modules(c) {
      let s = tensorShape(m + ".weight", c), out = s[0], inp = s[1]
      guard let qw = tensors[m + ".qweight"], qw.dtype == .I8 || qw.dtype == .U8, qw.count == out * inp / 2 else {
        throw QoQError("\(path): \(m).qweight missing or not int8 [\(out), \(inp / 2)]")
      }
      let codes = try QServePacking.unpack([UInt8](qw.data), n: out, k: inp)
      guard let s1 = tensors[m + ".s1_scales"]?.floats(), s1.count == out else { throw QoQError("\(path): \(m).s1_scales missing or wrong size") }
      if let s2t = tensors[m + ".s2_scales"], let zt = tensors[m + ".s2_zeros"] {
        guard s2t.dtype == .I8, zt.dtype == .I8, s2t.shape.count == 2, s2t.shape[1] == out, zt.shape == s2t.shape else {
          throw QoQError("\(path): \(m).s2_scales/s2_zeros must be int8 [groups, \(out)]")
        }
        let ng = s2t.shape[0]
        guard ng > 0, inp % ng == 0 else { throw QoQError("\(path): \(m) has \(ng) groups for \(inp) inputs") }
        let s2 = QServePacking.deinterleave(s2t.data.map { Int8(bitPattern: $0) }, n: out, groups: ng, order: s2order)
        let z = QServePacking.deinterleave(zt.data.map { Int8(bitPattern: $0) }, n: out, groups: ng, order: s2order).map { -Int($0) }
        guard s2.allSatisfy({ $0 >= 1 }) else { throw QoQError("\(path): \(m).s2_scales has values < 1 (wrong --s2-order?)") }
        let f = WeightFormat.progressive(group: inp / ng, protective: protectiveRange(postScale: true))
        format = format ?? f
        quantized[m] = QuantizedWeight(format: f, outFeatures: out, inFeatures: inp, codes: codes, scale: s2.map { Float($0) },
                                       zero: z.map { Float($0) }, rowScale: s1)
      } else if let sz = tensors[m + ".s1_szeros"]?.floats(), sz.count == out {
        let f = WeightFormat.asym(bits: 4, group: nil)
        format = format ?? f
        quantized[m] = QuantizedWeight(format: f, outFeatures: out, inFeatures: inp, codes: codes, scale: s1, zero: sz, rowScale: [])
      } else {
        throw QoQError("\(path): \(m) has neither s2_scales/s2_zeros nor s1_szeros")
      }
    }
    let qc = QuantizationConfig(method: "qserve", weight: format, actBits: runtime.actBits, kvBits: runtime.kvBits,
                                kvGroup: runtime.kvBits == nil ? nil : (runtime.kvGroup ?? c.headDim))
    if c.tieWordEmbeddings { fp["lm_head.weight"] = nil }
    try QuantizedCheckpoint.write(to: dst, config: c, quantization: qc, fp: fp, quantized: quantized, biases: biases,
                                  recipeYAML: "# imported from QServe: \(path)\n", tokenizerFrom: path, overwrite: overwrite)
  }
}

// Converters between our quantized checkpoint (QoQFormat.QuantizedCheckpoint) and the ecosystem's:
//  - export to QServe (W4A8: progressive g128 or per-channel uint4; safetensors, which QServe's loader prefers) and
//    to TinyChat (W4A16 g128, AWQ/GPTQ);
//  - import of deepcompressor's --save-model output (model.pt + scale.pt) and of QServe checkpoints.
// Integers are recovered exactly as deepcompressor's converters do (deepcompressor.md §4.2); every recovered code is
// checked to lie in 0…15 and to reproduce the stored value.
import Foundation
import QoQFormat
import QoQIO
import QoQModels

public enum Interop {
  static let linearModules = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]

  /// Every dense linear by HF name; an MoE model's are its attention linears (its experts: `expertModules`).
  static func modules(_ c: LlamaConfiguration) -> [String] {
    let names = c.numLocalExperts == nil ? linearModules : linearModules.filter { !$0.hasPrefix("mlp.") }
    return (0..<c.numHiddenLayers).flatMap { l in names.map { "model.layers.\(l)." + $0 } }
  }

  /// Every expert linear of an MoE model (none for a dense one), by HF name.
  static func expertModules(_ c: LlamaConfiguration) -> [String] {
    guard c.numLocalExperts != nil else { return [] }
    return (0..<c.numHiddenLayers).flatMap { l in ["w1", "w3", "w2"].flatMap { layerExperts(c, layer: l, $0) } }
  }

  /// Layer l's experts' `w` (w1, w2 or w3) by HF name, in expert order (how merged and stacked exports lay them out).
  static func layerExperts(_ c: LlamaConfiguration, layer l: Int, _ w: String) -> [String] {
    (0..<(c.numLocalExperts ?? 0)).map { MoEBlock.prefix(layer: l) + "experts.\($0).\(w)" }
  }

  static func f16(_ x: [Float]) -> Data { x.map { f32ToF16($0).littleEndian }.withUnsafeBytes { Data($0) } }
  static func i8(_ x: [Int8]) -> Data { x.withUnsafeBytes { Data($0) } }

  /// Our checkpoint → QServe folder (config, tokenizer, model.safetensors with qweight/s1/s2 tensors).
  public static func exportQServe(from src: String, to dst: String, order: S2Order, allowUnfoldedNorms: Bool, overwrite: Bool) throws -> [String] {
    try OutputFolder.check(dst, force: overwrite, inputs: [src])
    let (c, q, st) = try open(src)
    guard let wf = q.weight else { throw QoQError("\(src): no quantized weights to export") }
    var warnings: [String] = []
    switch wf {
    case .progressive(let g, _): if g != 128 { warnings.append("QServe's per-group kernels use groups of 128; this checkpoint has \(g)") }
    case .asym(let b, let g, let pre): guard b == 4, g == nil, !pre else {
      throw QoQError("\(src): QServe takes progressive g128 or per-channel uint4 weights with PostScale (fp16) zeros, not \(wf)")
    }
    case .sym: throw QoQError("\(src): W8A8 export to QServe is not supported (\(wf))")
    }
    if q.kvKeyCenter {
      warnings.append("QServe does not center keys: its KV4 cache will quantize the uncentered keys (exact in FP, less accurate "
                      + "in KV4 than this checkpoint in our engine); self_attn.k_center is not exported")
    }
    if q.kvKeyScale {
      warnings.append("QServe does not scale keys: its KV4 cache will quantize the unscaled keys (exact in FP, less accurate "
                      + "in KV4 than this checkpoint in our engine); self_attn.k_scale is not exported")
    }
    if q.kvKeyRotation {
      warnings.append("QServe does not rotate keys: its KV4 cache will quantize the unrotated keys (exact in FP, less accurate "
                      + "in KV4 than this checkpoint in our engine)")
    }
    for n in st.names where n.hasSuffix("norm.weight") {
      if try st.floats(n).contains(where: { $0 != 1 }) && !allowUnfoldedNorms {
        throw QoQError("\(src): \(n) is not all ones; QServe skips norm weights, so they must be folded (quantize with rotation), "
                       + "or pass --allow-unfolded-norms")
      }
    }
    try OutputFolder.write(dst, force: overwrite, inputs: [src], command: "convert --to qserve") { tmp in
      var blobs = try passThrough(st, c)
      try forEachLinear(st, c, wf) { m, w in
        let (out, inp) = (w.outFeatures, w.inFeatures)
        blobs.append(TensorBlob(name: m + ".qweight", dtype: .I8, shape: [out, inp / 2], data: Data(try QServePacking.pack(w.codes, n: out, k: inp))))
        switch wf {
        case .progressive(let g, _):
          let ng = inp / g
          blobs.append(TensorBlob(name: m + ".s1_scales", dtype: .F16, shape: [out], data: f16(w.rowScale)))
          blobs.append(TensorBlob(name: m + ".s2_scales", dtype: .I8, shape: [ng, out],
                                  data: i8(QServePacking.interleave(w.scale.map { Int8($0) }, n: out, groups: ng, order: order))))
          blobs.append(TensorBlob(name: m + ".s2_zeros", dtype: .I8, shape: [ng, out],
                                  data: i8(QServePacking.interleave(w.zero.map { Int8(-$0) }, n: out, groups: ng, order: order))))
        default:
          blobs.append(TensorBlob(name: m + ".s1_scales", dtype: .F16, shape: [out], data: f16(w.scale)))
          blobs.append(TensorBlob(name: m + ".s1_szeros", dtype: .F16, shape: [out], data: f16(w.zero)))
        }
      }
      try SafeTensorsWriter.write(blobs, metadata: ["format": "pt", "qoq_exported_to": "qserve", "qoq_s2_order": order.rawValue,
                                                    "qoq_group_size": "\(wf.groupSize(1 << 20) == 1 << 20 ? -1 : wf.groupSize(1 << 20))"],
                                  to: tmp + "/model.safetensors")
      // SGLang's QoQ loader (python/sglang/srt/layers/quantization/qoq.py, QoQConfig.from_config) reads
      // quant_method "qoq", "wbits" and "group_size" (128, or -1 per channel) from this block; our own method name
      // stays in "qoq_method".
      let g = wf.groupSize(1 << 20) == 1 << 20 ? -1 : wf.groupSize(1 << 20)
      try copySideFiles(from: src, to: tmp, config: c, quantization: q, note: "qserve",
                        extra: [("quant_method", .string("qoq")), ("qoq_method", .string(q.method)), ("wbits", .int(4)), ("group_size", .int(g))])
    }
    return warnings
  }

  /// Our W4A16 g128 checkpoint (AWQ, GPTQ, RTN) → TinyChat folder.
  public static func exportTinyChat(from src: String, to dst: String, overwrite: Bool) throws {
    try OutputFolder.check(dst, force: overwrite, inputs: [src])
    let (c, q, st) = try open(src)
    guard case .asym(4, let g?, false) = q.weight, g == 128 else {
      throw QoQError("\(src): TinyChat takes uint4 asymmetric weights in groups of 128 (W4A16 g128, PostScale zeros), "
                     + "not \(q.weight.map { "\($0)" } ?? "FP")")
    }
    if q.actBits != nil { throw QoQError("\(src): TinyChat runs W4A16; this checkpoint quantizes activations too") }
    try OutputFolder.write(dst, force: overwrite, inputs: [src], command: "convert --to tinychat") { tmp in
      var blobs = try passThrough(st, c)
      try forEachLinear(st, c, q.weight!) { m, w in
        let (out, inp) = (w.outFeatures, w.inFeatures)
        let words = try TinyChatPacking.pack(w.codes, n: out, k: inp)
        blobs.append(TensorBlob(name: m + ".qweight", dtype: .I16, shape: [out / 4, inp], data: words.withUnsafeBytes { Data($0) }))
        let ng = inp / g, pad = TinyChatPacking.paddedGroups(ng)
        var sc = [Float](repeating: 0, count: pad * out), zr = sc
        for o in 0..<out { for j in 0..<ng { sc[j * out + o] = w.scale[o * ng + j]; zr[j * out + o] = -w.zero[o * ng + j] } }
        blobs.append(TensorBlob(name: m + ".scales", dtype: .F16, shape: [pad, out], data: f16(sc)))
        blobs.append(TensorBlob(name: m + ".scaled_zeros", dtype: .F16, shape: [pad, out], data: f16(zr)))
      }
      try SafeTensorsWriter.write(blobs, metadata: ["format": "pt", "qoq_exported_to": "tinychat"], to: tmp + "/model.safetensors")
      try copySideFiles(from: src, to: tmp, config: c, quantization: q, note: "tinychat")
    }
  }

  /// Each quantized linear of the checkpoint read back (codes and parameters), in layer order: body(module, weight).
  static func forEachLinear(_ st: CheckpointWeights, _ c: LlamaConfiguration, _ wf: WeightFormat,
                            _ body: (String, QuantizedWeight) throws -> Void) throws {
    for m in modules(c) {
      let out = try st.info(m + ".qweight").shape[0], inp = tensorShape(m + ".weight", c)[1]
      try body(m, try QuantizedCheckpoint.readWeight(st, module: m, format: wf, out: out, inp: inp))
    }
  }

  /// Every tensor that is not part of a quantized linear (embeddings, norms, lm_head, biases), bytes unchanged.
  static func passThrough(_ st: CheckpointWeights, _ c: LlamaConfiguration) throws -> [TensorBlob] {
    let quantized = Set(modules(c) + expertModules(c))
    var blobs: [TensorBlob] = []
    for n in st.names {
      let m = n.components(separatedBy: ".").dropLast().joined(separator: ".")
      if (quantized.contains(m) && !n.hasSuffix(".bias")) || n.hasSuffix(".k_center") || n.hasSuffix(".k_scale") { continue }
      let info = try st.info(n)
      blobs.append(TensorBlob(name: n, dtype: info.dtype, shape: info.shape, data: Data(try st.raw(n))))
    }
    return blobs
  }

  /// `moe`: the target writes mixture-of-experts layers (GGUF's merged expert tensors, MLX's stacked switch_mlp); the
  /// others refuse them.
  static func open(_ src: String, moe: Bool = false) throws -> (LlamaConfiguration, QuantizationConfig, CheckpointWeights) {
    let cfg = src + "/config.json"
    let root = try JSON.parseFile(cfg)
    guard let qj = root["quantization_config"], !qj.isNull else { throw QoQError("\(src) is not a quantized checkpoint (no quantization_config)") }
    let c = try LlamaConfiguration.load(path: cfg)
    if let e = c.numLocalExperts, !moe {
      // QServe's mixtral_w4a8 is NotImplemented upstream; the other targets' MoE layouts are not written yet (issue #14).
      throw QoQError("\(src): exporting a quantized mixture-of-experts checkpoint (\(c.modelType), \(e) experts) is not supported yet "
                     + "for this target; `--to gguf` and `--to mlx` write it, and it runs here with `qoq eval`")
    }
    let st = try CheckpointWeights(folder: src)
    // Merged (GGUF) and stacked (MLX) expert tensors hold one type for every expert of a layer.
    let names = Set(st.names)
    if let fp = expertModules(c).first(where: { !names.contains($0 + ".qweight") }) {
      throw QoQError("\(src): expert \(fp) is not quantized; the exported expert tensors hold one type for every expert of a layer")
    }
    return (c, try QuantizationConfig(json: qj, what: cfg), st)
  }

  /// config.json (with the quantization block, marking the target format, plus `extra` keys) and tokenizer files.
  static func copySideFiles(from src: String, to dst: String, config c: LlamaConfiguration, quantization q: QuantizationConfig, note: String,
                            extra: [(String, JSONValue)] = []) throws {
    var cfg = try JSON.parse(c.jsonData(), what: "config")
    if var o = cfg.object {
      var qj = q.json
      if var qo = qj.object {
        qo["packed_for"] = .string(note)
        for (k, v) in extra { qo[k] = v }
        qj = .object(qo)
      }
      o["quantization_config"] = qj
      cfg = .object(o)
    }
    try atomicWrite(dst + "/config.json", data: Data(JSON.serialize(cfg, pretty: true).utf8))
    try copyTokenizerFiles(from: src, to: dst)
  }

  /// Tokenizer, generation config and chat template files beside a checkpoint, copied when present.
  static func copyTokenizerFiles(from src: String, to dst: String) throws {
    let fm = FileManager.default
    for f in ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json", "tokenizer.model",
              "chat_template.jinja"]
    where fm.fileExists(atPath: src + "/" + f) {
      try fm.copyItem(atPath: src + "/" + f, toPath: dst + "/" + f)
    }
  }
}

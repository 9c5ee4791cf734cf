// Export to MLX (mlx-lm's affine quantization; issue #15). mlx-lm loads a folder whose config.json carries
// `quantization: {group_size, bits, mode: affine}` and turns every Linear with `<module>.scales` in the weights into a
// QuantizedLinear. Per linear of shape (out, in), groups of g ∈ {32, 64, 128}:
//   weight  U32 (out, in/8)  element i of a row at bits 4·(i mod 8) of word i/8 (unsigned codes 0…15)
//   scales  (out, in/g)      biases (out, in/g)      ŵ = scales·q + biases
// Our formats map exactly: PostScale asym ŵ = q·s − z → scales s, biases −z (both fp16 values: stored F16);
// PreScale asym ŵ = (q − zp)·s → biases −zp·s; progressive ŵ = s1·(q·s2 − z) → scales s1·s2, biases −s1·z (exact in
// fp32, not in fp16: stored F32). Activation and KV quantization do not carry over (MLX runs W4A16).
// Mixtral (issue #14): mlx-lm's SwitchGLU holds a layer's experts stacked, `block_sparse_moe.switch_mlp.{gate,up,down}_proj`
// with weight (E, out, in/8), scales and biases (E, out, in/g) (w1 → gate_proj, w3 → up_proj, w2 → down_proj); the
// router `block_sparse_moe.gate` stays FP (mlx-lm quantizes a Linear only where its `.scales` are in the weights).
import Foundation
import QoQFormat
import QoQIO
import QoQModels

extension Interop {
  public static func exportMLX(from src: String, to dst: String, overwrite: Bool) throws -> [String] {
    try OutputFolder.check(dst, force: overwrite, inputs: [src])
    let (c, q, st) = try open(src, moe: true)
    guard let wf = q.weight else { throw QoQError("\(src): no quantized weights to export") }
    let group: Int, f16Params: Bool
    switch wf {
    case .asym(let b, let g, let pre):
      guard b == 4, let g else { throw QoQError("\(src): MLX export takes 4-bit weights in groups of 32, 64 or 128, not \(wf)") }
      group = g; f16Params = !pre
    case .progressive(let g, _): group = g; f16Params = false
    case .sym: throw QoQError("\(src): MLX export takes 4-bit group-quantized weights; W8A8 per-channel (\(wf)) has no MLX group form")
    }
    guard [32, 64, 128].contains(group) else { throw QoQError("\(src): MLX quantizes in groups of 32, 64 or 128 (this checkpoint: \(group))") }
    var warnings: [String] = []
    if let a = q.actBits { warnings.append("MLX runs W4A16: the \(a)-bit activation quantization does not carry over") }
    if let kb = q.kvBits { warnings.append("the \(kb)-bit KV cache does not carry over (mlx-lm keeps its own KV cache)") }
    if !f16Params { warnings.append("scales and biases are stored in float32: \(wf)'s exact values are not all fp16") }
    try OutputFolder.write(dst, force: overwrite, inputs: [src], command: "convert --to mlx") { tmp in
      var blobs = try passThrough(st, c)
      // One linear (or a layer's experts stacked in order) as mlx-lm's weight, scales and biases; `lead`: (E) or ().
      func append(_ m: String, _ ws: [QuantizedWeight], lead: [Int]) {
        var words: [Int32] = [], scales: [Float] = [], biases: [Float] = []
        for w in ws {
          let (out, ng) = (w.outFeatures, w.groups)
          for o in 0..<out {
            for j in 0..<ng {
              let k = o * ng + j
              switch wf {
              case .progressive: scales.append(w.rowScale[o] * w.scale[k]); biases.append(-(w.rowScale[o] * w.zero[k]))
              default: scales.append(w.scale[k]); biases.append(-w.zero[k])
              }
            }
          }
          words += packInt32Rows(w.codes, rows: out, cols: w.inFeatures)
        }
        let (out, inp, ng) = (ws[0].outFeatures, ws[0].inFeatures, ws[0].groups)
        blobs.append(TensorBlob(name: m + ".weight", dtype: .U32, shape: lead + [out, inp / 8], data: words.withUnsafeBytes { Data($0) }))
        if f16Params {
          blobs.append(TensorBlob(name: m + ".scales", dtype: .F16, shape: lead + [out, ng], data: f16(scales)))
          blobs.append(TensorBlob(name: m + ".biases", dtype: .F16, shape: lead + [out, ng], data: f16(biases)))
        } else {
          blobs.append(TensorBlob(name: m + ".scales", shape: lead + [out, ng], floats: scales))
          blobs.append(TensorBlob(name: m + ".biases", shape: lead + [out, ng], floats: biases))
        }
      }
      try forEachLinear(st, c, wf) { m, w in append(m, [w], lead: []) }
      for l in 0..<(c.numLocalExperts == nil ? 0 : c.numHiddenLayers) {
        for (w, proj) in [("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")] {
          let ws = try layerExperts(c, layer: l, w).map { m in
            try QuantizedCheckpoint.readWeight(st, module: m, format: wf, out: try st.info(m + ".qweight").shape[0],
                                               inp: tensorShape(m + ".weight", c)[1])
          }
          append(MoEBlock.prefix(layer: l) + "switch_mlp.\(proj)", ws, lead: [ws.count])
        }
      }
      try SafeTensorsWriter.write(blobs, metadata: ["format": "mlx", "qoq_exported_to": "mlx"], to: tmp + "/model.safetensors")
      var cfg = try JSON.parse(c.jsonData(), what: "config")
      if var o = cfg.object {
        let quant = JSONValue.object(JSONObject([("group_size", .int(group)), ("bits", .int(4)), ("mode", .string("affine"))]))
        o["quantization"] = quant
        o["quantization_config"] = quant
        cfg = .object(o)
      }
      try atomicWrite(tmp + "/config.json", data: Data(JSON.serialize(cfg, pretty: true).utf8))
      try copyTokenizerFiles(from: src, to: tmp)
    }
    return warnings
  }
}

import ArgumentParser
import Foundation
import QoQFormat
import QoQInterop
import QoQIO
import QoQModels

struct ConvertCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "convert",
    abstract: "Convert checkpoints: GGUF → Hugging Face folder (default); our quantized checkpoint → QServe, TinyChat, "
      + "compressed-tensors, MLX or GGUF (--to); deepcompressor or QServe → ours (--from).")

  @Argument(help: "Input: a .gguf file; our quantized checkpoint (--to); deepcompressor's --save-model folder or a QServe folder (--from).")
  var input: String
  @Option(name: [.short, .long], help: "Output folder.") var output: String
  @Option(help: ArgumentHelp("Stored type of unquantized weights: GGUF → HF (dequantized GGUF weights are exact only in f32), "
                             + "and the embeddings and LM head of --to gguf: f32, f16 or bf16."))
  var dtype: String = "f32"
  @Option(help: "--to gguf: the token embeddings' type, f32, f16, bf16 or q8_0 (default: --dtype; llama-quantize's option of the same name).")
  var tokenEmbeddingType: String?
  @Option(help: "--to gguf: the LM head's type (output.weight; none when tied to the embeddings), f32, f16, bf16 or q8_0 (default: --dtype).")
  var outputTensorType: String?
  @Option(help: ArgumentHelp("Export our quantized checkpoint: qserve (W4A8 progressive g128 or per-channel), tinychat (W4A16 g128), "
                             + "compressed-tensors (vLLM/SGLang: W4A16 PreScale, W8A8), mlx (mlx-lm affine, groups 32/64/128) or gguf "
                             + "(llama.cpp: OUTPUT/model.gguf, Q4_1 from 4-bit groups of 32k, Q8_0 from W8)."))
  var to: String?
  @Option(help: "Import into our format: deepcompressor (model.pt + scale.pt; needs --config-from) or qserve.")
  var from: String?
  @Option(help: ArgumentHelp("QServe s2/zero column interleave: qserve (checkpoint_converter, the published checkpoints) or "
                             + "deepcompressor (v0.1's converter). On import the default is what the file records, else qserve."))
  var s2Order: String?
  @Flag(help: "QServe export: allow norm weights that are not ones (QServe ignores them; only correct for rotated models).")
  var allowUnfoldedNorms = false
  @Option(help: "deepcompressor import: the original Hugging Face folder (config.json and tokenizer).") var configFrom: String?
  @Option(help: "Import: activation bits the runtime quantizes to (0 = none).") var actBits: Int = 8
  @Option(help: "Import: KV cache bits (0 = none).") var kvBits: Int = 4
  @Option(help: "Import: KV group size (default head_dim).") var kvGroup: Int?
  @Flag(help: "Replace the output folder if it exists.") var force = false

  func validate() throws {
    guard ConvertDType(rawValue: dtype) != nil else {
      throw ValidationError("--dtype must be one of \(ConvertDType.allCases.map(\.rawValue).joined(separator: ", "))")
    }
    for (flag, v) in [("--token-embedding-type", tokenEmbeddingType), ("--output-tensor-type", outputTensorType)] {
      guard let v else { continue }
      guard to == "gguf" else { throw ValidationError("\(flag) applies to --to gguf only") }
      guard GGUFTableType(rawValue: v) != nil else {
        throw ValidationError("\(flag) must be one of \(GGUFTableType.allCases.map(\.rawValue).joined(separator: ", "))")
      }
    }
    guard to == nil || from == nil else { throw ValidationError("give --to or --from, not both") }
    if let t = to, !["qserve", "tinychat", "compressed-tensors", "mlx", "gguf"].contains(t) {
      throw ValidationError("--to must be qserve, tinychat, compressed-tensors, mlx or gguf")
    }
    if let f = from, !["deepcompressor", "qserve"].contains(f) { throw ValidationError("--from must be deepcompressor or qserve") }
    if from == "deepcompressor" && configFrom == nil {
      throw ValidationError("--from deepcompressor needs --config-from HF_FOLDER (config and tokenizer)")
    }
    if let o = s2Order, S2Order(rawValue: o) == nil { throw ValidationError("--s2-order must be qserve or deepcompressor") }
    guard [0, 4, 8].contains(actBits) else { throw ValidationError("--act-bits must be 0, 4 or 8") }
    guard [0, 4, 8].contains(kvBits) else { throw ValidationError("--kv-bits must be 0, 4 or 8") }
    if let g = kvGroup, g <= 0 { throw ValidationError("--kv-group must be positive") }
  }

  func run() throws {
    try runReportingErrors {
      let t0 = Date()
      var runtime = RuntimeQuantization()
      runtime.actBits = actBits == 0 ? nil : actBits
      runtime.kvBits = kvBits == 0 ? nil : kvBits
      runtime.kvGroup = kvGroup
      let order = s2Order.flatMap(S2Order.init(rawValue:))
      switch (to, from) {
      case ("qserve", _):
        for w in try Interop.exportQServe(from: input, to: output, order: order ?? .qserve, allowUnfoldedNorms: allowUnfoldedNorms,
                                          overwrite: force) {
          note("warning: \(w)")
        }
      case ("tinychat", _): try Interop.exportTinyChat(from: input, to: output, overwrite: force)
      case ("compressed-tensors", _):
        for w in try Interop.exportCompressedTensors(from: input, to: output, overwrite: force) { note("note: \(w)") }
      case ("gguf", _):
        for w in try Interop.exportGGUF(from: input, to: output, dtype: ConvertDType(rawValue: dtype)!,
                                        embeddings: tokenEmbeddingType.flatMap(GGUFTableType.init(rawValue:)),
                                        output: outputTensorType.flatMap(GGUFTableType.init(rawValue:)), overwrite: force) {
          note("note: \(w)")
        }
      case ("mlx", _):
        for w in try Interop.exportMLX(from: input, to: output, overwrite: force) { note("note: \(w)") }
      case (_, "deepcompressor"):
        try Interop.importDeepCompressor(quantPath: input, configFrom: configFrom!, to: output, runtime: runtime, overwrite: force)
      case (_, "qserve"): try Interop.importQServe(path: input, to: output, order: order, runtime: runtime, overwrite: force)
      default:
        let ckpt = try ModelCheckpoint.open(input)
        guard let g = ckpt.gguf else { throw QoQError("\(input): expected a .gguf file to convert to a Hugging Face folder (or pass --to/--from)") }
        try convertGGUFToHF(g, output: output, dtype: ConvertDType(rawValue: dtype)!, overwrite: force) { i, n, name in
          Progress.update("\(Progress.bar(i, n)) \(i)/\(n) \(name)")
        }
        Progress.done()
      }
      print("converted \(input) -> \(output) in \(String(format: "%.1f", Date().timeIntervalSince(t0))) s")
    }
  }
}

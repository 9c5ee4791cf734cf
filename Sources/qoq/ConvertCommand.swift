import ArgumentParser
import Foundation
import QoQIO
import QoQModels

struct ConvertCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "convert",
    abstract: "Convert a GGUF file to a Hugging Face folder (config.json, model.safetensors, tokenizer files).")

  @Argument(help: "Input .gguf file.") var input: String
  @Option(name: [.short, .long], help: "Output folder.") var output: String
  @Option(help: "Stored weight type: f32, f16 or bf16 (dequantized GGUF weights are exact only in f32).")
  var dtype: String = "f32"
  @Flag(help: "Replace the output folder if it exists.") var force = false

  func validate() throws {
    guard ConvertDType(rawValue: dtype) != nil else {
      throw ValidationError("--dtype must be one of \(ConvertDType.allCases.map(\.rawValue).joined(separator: ", "))")
    }
  }

  func run() throws {
    try runReportingErrors {
      let t0 = Date()
      try convertGGUFToHF(gguf: input, output: output, dtype: ConvertDType(rawValue: dtype)!, overwrite: force) { i, n, name in
        Progress.update("\(Progress.bar(i, n)) \(i)/\(n) \(name)")
      }
      Progress.done()
      print("converted \(input) -> \(output) in \(String(format: "%.1f", Date().timeIntervalSince(t0))) s")
    }
  }
}

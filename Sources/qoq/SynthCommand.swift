import ArgumentParser
import Foundation
import QoQIO
import QoQModels

/// `qoq synth`: random-weight checkpoints with real model shapes (Llama-3-8B, Llama-3-70B), for memory and speed
/// measurements at size (issue #12). Deterministic for a seed; bf16 sharded safetensors; a few outlier channels.
struct SynthCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "synth",
    abstract: "Write a random-weight checkpoint with a real model's shapes (bf16 sharded safetensors, fixed seed, outlier channels).")

  @Option(help: "Shape: \(SyntheticShape.allCases.map(\.rawValue).joined(separator: ", ")).") var shape: String = "llama3-8b"
  @Option(help: "Decoder layers (default: the model's own).") var layers: Int?
  @Option(name: [.short, .long], help: "Output folder.") var output: String
  @Option(help: "Random seed.") var seed: UInt64 = 0
  @Option(help: "Stored dtype: bf16 or f32.") var dtype: String = "bf16"
  @Option(help: "Hidden channels with outlier activations.") var outlierChannels: Int = 4
  @Option(help: "Largest shard in bytes.") var maxShardBytes: Int = 2 << 30
  @Flag(help: "Replace an output folder qoq wrote earlier.") var force = false

  func validate() throws {
    guard SyntheticShape(rawValue: shape) != nil else {
      throw ValidationError("--shape must be one of \(SyntheticShape.allCases.map(\.rawValue).joined(separator: ", "))")
    }
    if let l = layers, !(1...1024).contains(l) { throw ValidationError("--layers must be in 1…1024") }
    guard ["bf16", "f32"].contains(dtype) else { throw ValidationError("--dtype must be bf16 or f32") }
    guard outlierChannels >= 0, maxShardBytes > 0 else { throw ValidationError("--outlier-channels and --max-shard-bytes must be positive") }
  }

  func run() throws {
    try runReportingErrors {
      var s = SyntheticCheckpoint(config: try SyntheticShape(rawValue: shape)!.config(layers: layers))
      s.seed = seed; s.dtype = dtype == "bf16" ? .BF16 : .F32; s.outlierChannels = outlierChannels; s.maxShardBytes = maxShardBytes
      let t0 = Date()
      try OutputFolder.write(output, force: force, command: "synth") { tmp in
        try s.write(to: tmp) { i, n, name in Progress.update("\(Progress.bar(i, n)) \(i)/\(n) \(name)") }
      }
      Progress.done()
      note("wrote \(output): \(shape), \(s.config.numHiddenLayers) layers, outlier channels \(s.outliers), "
           + String(format: "%.1f s", Date().timeIntervalSince(t0)))
    }
  }
}

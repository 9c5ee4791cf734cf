import Foundation
import QoQIO
import QoQModels
import QoQTokenizers

/// Writes a tiny Hugging Face folder (config.json, model.safetensors, a byte-level tokenizer.json with 256 tokens
/// and no merges) for end-to-end tests of loaders and the quantizer.
public func writeTinyCheckpoint(_ c: LlamaConfiguration, to dir: String, seed: UInt64 = 11) throws {
  try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
  var blobs: [TensorBlob] = []
  var s = seed
  for name in expectedTensorNames(c) {
    let shape = tensorShape(name, c), n = shape.reduce(1, *)
    s &+= 1
    let v = name.hasSuffix("norm.weight") ? randomFloats(n, seed: s, scale: 0.3).map { 1 + $0 }
      : randomFloats(n, seed: s, scale: 1.5 / Float(shape.count == 2 ? shape[1] : 16).squareRoot())
    blobs.append(TensorBlob(name: name, shape: shape, floats: v))
  }
  try SafeTensorsWriter.write(blobs, to: dir + "/model.safetensors")
  try c.jsonData().write(to: URL(fileURLWithPath: dir + "/config.json"))
  try Data(JSON.serialize(Tokenizer.byteLevelJSON()).utf8).write(to: URL(fileURLWithPath: dir + "/tokenizer.json"))
}

/// A calibration/evaluation text of plain English lines.
public func writeTinyText(to path: String, lines: Int = 200) throws {
  let words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards", "hex",
               "quantized", "models", "run", "fast", "on", "small", "machines", "and", "2048", "tokens"]
  var out = ""
  var s: UInt64 = 5
  for _ in 0..<lines {
    var line: [String] = []
    for _ in 0..<12 { s = s &* 6364136223846793005 &+ 1442695040888963407; line.append(words[Int(s >> 33) % words.count]) }
    out += line.joined(separator: " ") + " .\n"
  }
  try Data(out.utf8).write(to: URL(fileURLWithPath: path))
}

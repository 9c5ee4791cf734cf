import Foundation
import QoQIO
import QoQModels

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
  // GPT-2 byte table: printable Latin-1 bytes map to themselves, the rest to U+0100… in order.
  var vocab = JSONObject()
  var n: UInt32 = 0
  for b in 0..<256 {
    let printable = (33...126).contains(b) || (161...172).contains(b) || (174...255).contains(b)
    let u = printable ? UInt32(b) : 256 + n
    if !printable { n += 1 }
    vocab[String(Character(Unicode.Scalar(u)!))] = .int(b)
  }
  let tok = JSONObject([
    ("version", .string("1.0")), ("added_tokens", .array([])), ("normalizer", .null),
    ("pre_tokenizer", .object(JSONObject([("type", .string("ByteLevel")), ("add_prefix_space", .bool(false)), ("use_regex", .bool(true))]))),
    ("post_processor", .null), ("decoder", .object(JSONObject([("type", .string("ByteLevel"))]))),
    ("model", .object(JSONObject([("type", .string("BPE")), ("vocab", .object(vocab)), ("merges", .array([]))]))),
  ])
  try Data(JSON.serialize(.object(tok)).utf8).write(to: URL(fileURLWithPath: dir + "/tokenizer.json"))
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

// A Hugging Face model folder's weights: `model.safetensors`, or shards listed in `model.safetensors.index.json`.
// The index's weight_map is the source of truth (anchors.md §1.9.3): every mapped tensor must exist in its shard,
// and every tensor in a shard must be mapped. Shard names are plain file names (no path traversal).
import Foundation

public final class CheckpointWeights: @unchecked Sendable {
  public let folder: String
  private var shardOf: [String: SafeTensorsFile] = [:]
  public let names: [String]

  public init(folder: String) throws {
    self.folder = folder
    let fm = FileManager.default
    let indexPath = folder + "/model.safetensors.index.json"
    let singlePath = folder + "/model.safetensors"
    if fm.fileExists(atPath: indexPath) {
      let index = try JSON.parseFile(indexPath)
      guard let map = index["weight_map"]?.object else {
        throw QoQError("\(indexPath): missing \"weight_map\" object")
      }
      var shards: [String: SafeTensorsFile] = [:]
      var mapped: [String: SafeTensorsFile] = [:]
      for (tensor, v) in map.pairs {
        guard let shard = v.string else { throw QoQError("\(indexPath): weight_map[\(tensor)] is not a string") }
        guard !shard.isEmpty, !shard.contains("/"), !shard.contains("\\"), shard != ".", shard != ".." else {
          throw QoQError("\(indexPath): shard name \"\(shard)\" for \(tensor) is not a plain file name")
        }
        if shards[shard] == nil {
          let p = folder + "/" + shard
          guard fm.fileExists(atPath: p) else { throw QoQError("\(indexPath): shard \(shard) (for \(tensor)) is missing") }
          shards[shard] = try SafeTensorsFile(path: p)
        }
        let f = shards[shard]!
        guard f.tensors[tensor] != nil else {
          throw QoQError("\(indexPath): tensor \(tensor) is mapped to \(shard) but that shard does not contain it")
        }
        mapped[tensor] = f
      }
      for (shard, f) in shards {
        for n in f.names where mapped[n] !== f {
          throw QoQError("\(folder)/\(shard): tensor \(n) is not listed for this shard in model.safetensors.index.json")
        }
      }
      shardOf = mapped
      names = map.keys.sorted()
    } else if fm.fileExists(atPath: singlePath) {
      let f = try SafeTensorsFile(path: singlePath)
      for n in f.names { shardOf[n] = f }
      names = f.names.sorted()
    } else {
      throw QoQError("\(folder): no model.safetensors or model.safetensors.index.json")
    }
  }

  public func contains(_ name: String) -> Bool { shardOf[name] != nil }

  public func info(_ name: String) throws -> TensorInfo {
    guard let f = shardOf[name] else { throw QoQError("\(folder): missing tensor \(name)") }
    return try f.info(name)
  }

  public func floats(_ name: String) throws -> [Float] {
    guard let f = shardOf[name] else { throw QoQError("\(folder): missing tensor \(name)") }
    return try requireFinite(try f.floats(name), name: name, in: folder)
  }

  /// Rows of a 2-D (or higher) tensor as float32, non-finite values refused (see SafeTensorsFile.floats(_:rows:)).
  public func floats(_ name: String, rows: Range<Int>) throws -> [Float] {
    guard let f = shardOf[name] else { throw QoQError("\(folder): missing tensor \(name)") }
    return try requireFinite(try f.floats(name, rows: rows), name: name, in: folder)
  }

  /// Drops a tensor's mapped pages from the resident set once it has been copied out of `raw`.
  public func release(_ name: String) { shardOf[name]?.release(name) }

  public func raw(_ name: String) throws -> UnsafeRawBufferPointer {
    guard let f = shardOf[name] else { throw QoQError("\(folder): missing tensor \(name)") }
    return try f.raw(name)
  }
}

/// Weights, scales and biases with NaN or ±infinity are refused at load with the tensor's name: they would poison every
/// activation downstream (and integer conversions of NaN trap).
public func requireFinite(_ v: [Float], name: String, in source: String) throws -> [Float] {
  if let i = v.firstIndex(where: { !$0.isFinite }) {
    throw QoQError("\(source): tensor \(name) holds a non-finite value (\(v[i]) at element \(i)); refusing to load it")
  }
  return v
}

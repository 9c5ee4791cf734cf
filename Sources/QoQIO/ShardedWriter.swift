// Sharded safetensors output in bounded memory (issue #12): tensors are added one at a time and a shard is written as
// soon as it holds `maxShardBytes`, so at most one shard's data is in memory. `finish` names the shards as Hugging Face
// does (`model-00001-of-00003.safetensors`, or `model.safetensors` when one shard suffices) and writes
// `model.safetensors.index.json` (metadata.total_size and the weight_map) — what CheckpointWeights reads back.
// The folder is a temporary one owned by the caller (OutputFolder.write), so partial output never appears in place.
import Foundation

public final class ShardedSafeTensorsWriter {
  public let folder: String
  public let maxShardBytes: Int
  let metadata: [String: String]
  var pending: [TensorBlob] = []
  var pendingBytes = 0
  /// Written shards: temporary file name and the tensors it holds.
  var shards: [(file: String, names: [String])] = []
  var totalBytes = 0
  var seen = Set<String>()

  public init(folder: String, maxShardBytes: Int = 2 << 30, metadata: [String: String] = ["format": "pt"]) {
    self.folder = folder; self.maxShardBytes = max(1, maxShardBytes); self.metadata = metadata
  }

  /// Adds a tensor; writes the pending shard first when this one would overflow it.
  public func add(_ blob: TensorBlob) throws {
    guard seen.insert(blob.name).inserted else { throw QoQError("\(folder): tensor \(blob.name) written twice") }
    if !pending.isEmpty && pendingBytes + blob.data.count > maxShardBytes { try flush() }
    pending.append(blob)
    pendingBytes = try checkedAdd(pendingBytes, blob.data.count, "shard size")
    totalBytes = try checkedAdd(totalBytes, blob.data.count, "checkpoint size")
  }

  func flush() throws {
    guard !pending.isEmpty else { return }
    let file = ".shard-\(shards.count).safetensors"
    try SafeTensorsWriter.write(pending, metadata: metadata, to: folder + "/" + file)
    shards.append((file, pending.map(\.name)))
    pending = []; pendingBytes = 0
  }

  /// Writes the last shard, names the shards and writes the index; returns the final file names.
  @discardableResult
  public func finish() throws -> [String] {
    try flush()
    let fm = FileManager.default
    if shards.count <= 1 {
      if let s = shards.first { try fm.moveItem(atPath: folder + "/" + s.file, toPath: folder + "/model.safetensors") }
      else { try SafeTensorsWriter.write([], metadata: metadata, to: folder + "/model.safetensors") }
      return ["model.safetensors"]
    }
    let n = shards.count
    var names: [String] = []
    for (i, s) in shards.enumerated() {
      let name = shardFileName(i, of: n)
      try fm.moveItem(atPath: folder + "/" + s.file, toPath: folder + "/" + name)
      names.append(name)
    }
    try writeShardIndex(folder: folder, shards: zip(names, shards.map(\.names)).map { ($0, $1) }, totalBytes: totalBytes)
    return names
  }
}

/// Hugging Face's name of shard i (0-based) of n: `model-00001-of-00003.safetensors`.
public func shardFileName(_ i: Int, of n: Int) -> String { String(format: "model-%05d-of-%05d.safetensors", i + 1, n) }

/// `model.safetensors.index.json`: metadata.total_size and the weight_map (tensor → shard file), sorted by tensor.
public func writeShardIndex(folder: String, shards: [(file: String, tensors: [String])], totalBytes: Int) throws {
  var map: [(String, JSONValue)] = []
  for s in shards { for t in s.tensors { map.append((t, .string(s.file))) } }
  map.sort { $0.0 < $1.0 }
  let index = JSONObject([("metadata", .object(JSONObject([("total_size", .int(totalBytes))]))),
                          ("weight_map", .object(JSONObject(map)))])
  try atomicWrite(folder + "/model.safetensors.index.json", data: Data(JSON.serialize(.object(index), pretty: true).utf8))
}

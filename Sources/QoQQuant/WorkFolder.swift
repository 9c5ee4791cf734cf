// The streaming quantizer's work folder (issue #12): one safetensors "unit" per finished piece of the output — the
// embedding, each decoder layer, the head — plus the calibration activations entering the next layer. Every file is
// written atomically and carries the run's key, so a run killed at layer k resumes at layer k with the exact state an
// uninterrupted run had there. Under the cache root (`<root>/stream-<key>`) the units stay as the cache of that
// recipe; without one the folder is temporary and removed with the run's output object.
// `assemble` turns the units into a Hugging Face checkpoint: shards of at most `maxShardBytes` (a unit larger than
// that is a shard of its own), copied in bounded memory, plus `model.safetensors.index.json`.
import Foundation
import QoQFormat
import QoQIO

final class WorkFolder: @unchecked Sendable {
  let path: String
  let key: String
  let temporary: Bool

  init(root: String?, key: String) throws {
    self.key = key
    let fm = FileManager.default
    if let r = root {
      path = r + "/stream-" + String(key.prefix(32))
      temporary = false
    } else {
      path = NSTemporaryDirectory() + "qoq-quantize-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
      temporary = true
    }
    do { try fm.createDirectory(atPath: path, withIntermediateDirectories: true) } catch {
      throw QoQError("\(path): cannot create the quantizer's work folder (\(describeFileError(error)))")
    }
  }

  deinit { if temporary { try? FileManager.default.removeItem(atPath: path) } }

  static func layerUnit(_ l: Int) -> String { String(format: "layer-%05d", l) }
  func file(_ unit: String) -> String { path + "/" + unit + ".safetensors" }

  /// The unit, if it was written by a run with this key.
  func unit(_ name: String) -> SafeTensorsFile? {
    guard FileManager.default.fileExists(atPath: file(name)), let f = try? SafeTensorsFile(path: file(name)),
          f.metadata["key"] == key else { return nil }
    return f
  }

  func save(_ name: String, _ tensors: [StreamedTensor], metadata: [String: String] = [:]) throws {
    var m = metadata
    m["key"] = key
    m["format"] = "pt"
    try SafeTensorsWriter.write(streamed: tensors, metadata: m, to: file(name))
  }

  /// Calibration activations entering layer `layer + 1`: per stream name, one (length, H) tensor per sample, in the
  /// pass's dtype (fp32 or bf16).
  /// A temporary folder (no cache root) cannot be resumed from, so it saves none: at 128 × 1024 calibration tokens
  /// they are 0.3 GB a layer for a 576-wide model and 2 GB for a 4096-wide one, rewritten after every layer.
  func saveActivations(after layer: Int, _ streams: [String: LayerwisePass], hiddenSize H: Int) throws {
    guard !temporary else { return }
    let t = streams.flatMap { name, pass in pass.tensors(prefix: name, hiddenSize: H) }
    try save("activations", t, metadata: ["layer": String(layer)])
  }

  /// The saved activations (the layer they follow, and one pass per stream), when written by this run's key.
  func loadActivations(streams: [String], samples: [[Int32]], bf16: Bool) throws -> (layer: Int, [String: LayerwisePass])? {
    guard let f = unit("activations"), let l = Int(f.metadata["layer"] ?? "") else { return nil }
    var out: [String: LayerwisePass] = [:]
    for s in streams { out[s] = try LayerwisePass.build(samples: samples, bf16: bf16) { try f.floats("\(s).\($0)") } }
    return (l, out)
  }

  /// The first layer a run must compute: after the leading layers whose units exist and, when calibration runs,
  /// not past the layer the saved activations follow (a run killed between a layer's unit and its activations
  /// redoes that layer).
  func resumePoint(layers: Int, calibrated: Bool, activationsLayer: Int?) -> Int {
    var k = 0
    while k < layers && unit(Self.layerUnit(k)) != nil { k += 1 }
    if k == layers || !calibrated { return k }
    return min(k, (activationsLayer ?? -1) + 1)
  }

  /// Writes the units' tensors as a sharded checkpoint into `folder` (units in order: embed, layers, head).
  /// Returns the shard file names.
  @discardableResult
  func assemble(into folder: String, units: [String], metadata: [String: String], maxShardBytes: Int) throws -> [String] {
    var files: [SafeTensorsFile] = []
    for u in units {
      guard let f = unit(u) else { throw QoQError("\(path): unit \(u) is missing; rerun the quantization") }
      files.append(f)
    }
    // Shards: consecutive units while they fit.
    var groups: [[SafeTensorsFile]] = [], size = 0
    for f in files {
      let bytes = f.names.reduce(0) { $0 + ((try? f.info($1).byteCount) ?? 0) }
      if groups.isEmpty || size + bytes > maxShardBytes { groups.append([]); size = 0 }
      groups[groups.count - 1].append(f); size += bytes
    }
    let n = groups.count
    var shards: [(file: String, tensors: [String])] = [], total = 0
    for (i, g) in groups.enumerated() {
      let name = n == 1 ? "model.safetensors" : shardFileName(i, of: n)
      var tensors: [StreamedTensor] = []
      for f in g {
        for t in f.names {
          let info = try f.info(t)
          tensors.append(StreamedTensor(name: t, dtype: info.dtype, shape: info.shape, byteCount: info.byteCount) { fh in
            try Self.copy(f, info, to: fh)
          })
          total += info.byteCount
        }
      }
      try SafeTensorsWriter.write(streamed: tensors, metadata: metadata, to: folder + "/" + name)
      shards.append((name, tensors.map(\.name)))
    }
    if n > 1 { try writeShardIndex(folder: folder, shards: shards, totalBytes: total) }
    return shards.map(\.file)
  }

  /// Copies one tensor's bytes in 64 MiB pieces, releasing the mapped pages after each (bounded RSS).
  static func copy(_ f: SafeTensorsFile, _ t: TensorInfo, to fh: FileHandle) throws {
    var at = t.begin
    while at < t.end {
      let n = min(64 << 20, t.end - at)
      try fh.write(contentsOf: Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: f.file.base! + at), count: n, deallocator: .none))
      f.file.release(at, at + n)
      at += n
    }
  }
}

import Foundation
import Testing
@testable import QoQIO

/// Raw safetensors bytes from a header string and a data buffer.
func safetensorsBytes(header: String, data: [UInt8], lengthOverride: UInt64? = nil) -> [UInt8] {
  var out: [UInt8] = []
  let h = Array(header.utf8)
  withUnsafeBytes(of: (lengthOverride ?? UInt64(h.count)).littleEndian) { out += $0 }
  return out + h + data
}

@Suite struct SafeTensorsTests {
  @Test func writeThenReadRoundTrip() throws {
    let p = tempPath("rt.safetensors")
    let f: [Float] = [1, -2.5, 3.25, 0, 1e-8, -7]
    let h: [UInt16] = [f32ToF16(1.5), f32ToF16(-2)]
    let bf: [UInt16] = [f32ToBF16(3.0), f32ToBF16(-0.5)]
    try SafeTensorsWriter.write([
      TensorBlob(name: "b.weight", shape: [2, 3], floats: f),
      TensorBlob(name: "a.half", dtype: .F16, shape: [2], data: h.withUnsafeBytes { Data($0) }),
      TensorBlob(name: "c.bf16", dtype: .BF16, shape: [1, 2], data: bf.withUnsafeBytes { Data($0) }),
      TensorBlob(name: "d.empty", dtype: .F32, shape: [0, 4], data: Data()),
      TensorBlob(name: "e.scalar", shape: [], floats: [42]),
      TensorBlob(name: "f.i8", dtype: .I8, shape: [3], data: Data([0xFF, 0x01, 0x80])),
    ], metadata: ["format": "pt"], to: p)
    let st = try SafeTensorsFile(path: p)
    #expect(st.names.sorted() == ["a.half", "b.weight", "c.bf16", "d.empty", "e.scalar", "f.i8"])
    #expect(try st.floats("b.weight") == f)
    #expect(try st.floats("a.half") == [1.5, -2])
    #expect(try st.floats("c.bf16") == [3, -0.5])
    #expect(try st.floats("d.empty") == [])
    #expect(try st.floats("e.scalar") == [42])
    #expect(try st.floats("f.i8") == [-1, 1, -128])
    #expect(st.metadata["format"] == "pt")
    #expect(try st.info("b.weight").shape == [2, 3])
    // Header is padded to a multiple of 8.
    let raw = try Data(contentsOf: URL(fileURLWithPath: p))
    #expect(raw.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) } % 8 == 0)
  }

  /// Large tensors are converted in 16 MiB pieces with their mapped pages released: the values are those of a plain
  /// element-by-element read (hand-computed here), rows of a table read alone equal its slice, a tensor read again
  /// after its pages were released is unchanged, and streamed tensors round-trip.
  @Test func chunkedReadsAndRowRanges() throws {
    let p = tempPath("big.safetensors")
    let rows = 5000, width = 1031  // 20.6 MB of f32, 10.3 MB of bf16: several pieces, awkward boundaries
    let f = (0..<(rows * width)).map { Float($0 % 977) * 0.25 - 100 }
    let bf = f.map { f32ToBF16($0) }
    try SafeTensorsWriter.write(streamed: [
      StreamedTensor(name: "t.f32", shape: [rows, width], floats: f),
      StreamedTensor(name: "t.bf16", dtype: .BF16, shape: [rows, width], byteCount: bf.count * 2) { fh in
        try fh.write(contentsOf: bf.withUnsafeBytes { Data($0) })
      },
    ], to: p)
    let st = try SafeTensorsFile(path: p)
    #expect(try st.floats("t.f32") == f)
    #expect(try st.floats("t.bf16") == bf.map { bf16ToF32($0) })
    for r in [0..<1, 17..<18, 1000..<3129, 4999..<5000, 0..<5000] {
      #expect(try st.floats("t.f32", rows: r) == Array(f[(r.lowerBound * width)..<(r.upperBound * width)]), "rows \(r)")
    }
    st.release("t.f32")
    #expect(try st.floats("t.f32") == f)
    #expect(throws: QoQError.self) { _ = try st.floats("t.f32", rows: 4999..<5001) }
    // A streamed tensor whose callback writes the wrong number of bytes fails the write and leaves no file.
    let q = tempPath("short.safetensors")
    #expect(throws: QoQError.self) {
      try SafeTensorsWriter.write(streamed: [StreamedTensor(name: "x", dtype: .F32, shape: [4], byteCount: 16) { fh in
        try fh.write(contentsOf: Data(count: 8))
      }], to: q)
    }
    #expect(!FileManager.default.fileExists(atPath: q))
  }

  @Test func halfConversionsAreExact() {
    // Every finite half converts to float and back unchanged; rounding is to nearest even.
    for bits in UInt16(0)...UInt16(0xFFFF) where (bits & 0x7C00) != 0x7C00 {
      #expect(f32ToF16(f16ToF32(bits)) == bits || (bits == 0x8000 && f32ToF16(f16ToF32(bits)) == 0x8000))
    }
    #expect(f16ToF32(0x3C00) == 1)
    #expect(f16ToF32(0x0001) == Float(5.960464477539063e-08))
    #expect(f32ToF16(65520) == 0x7C00)       // overflow rounds to inf
    #expect(f32ToF16(1 + 1.0 / 2048) == 0x3C00)  // tie → even
    #expect(f32ToBF16(1 + 1.0 / 256) == 0x3F80)
    #expect(bf16ToF32(0x3F80) == 1)
  }

  /// Corrupt or hostile files: each must fail with a message naming the problem, never crash.
  @Test func corruptFilesAreRejected() {
    let ok = #"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#
    let d8 = [UInt8](repeating: 0, count: 8)
    let cases: [(String, [UInt8], String)] = [
      ("empty file", [], "shorter than"),
      ("short length", [1, 2, 3], "shorter than"),
      ("huge header length", safetensorsBytes(header: ok, data: d8, lengthOverride: 1 << 40), "exceeds"),
      ("header past end", safetensorsBytes(header: ok, data: d8, lengthOverride: 1000), "past the end"),
      ("not an object", safetensorsBytes(header: "[1]", data: []), "start with '{'"),
      ("invalid json", safetensorsBytes(header: "{\"t\":", data: []), "invalid JSON"),
      ("duplicate tensor", safetensorsBytes(header: #"{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, data: d8), "duplicate key"),
      ("unknown dtype", safetensorsBytes(header: #"{"t":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}}"#, data: d8), "unsupported dtype"),
      ("missing dtype", safetensorsBytes(header: #"{"t":{"shape":[2],"data_offsets":[0,8]}}"#, data: d8), "missing dtype"),
      ("offsets past end", safetensorsBytes(header: #"{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, data: d8), "past the end"),
      ("size mismatch", safetensorsBytes(header: #"{"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, data: d8), "needs 12"),
      ("reversed offsets", safetensorsBytes(header: #"{"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#, data: d8), "bad data_offsets"),
      ("overlap", safetensorsBytes(header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, data: d8), "overlap"),
      ("hole", safetensorsBytes(header: #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, data: d8), "hole"),
      ("trailing bytes", safetensorsBytes(header: ok, data: d8 + [1, 2]), "not covered"),
      ("overflowing shape", safetensorsBytes(header: #"{"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#, data: d8), "overflow"),
      ("negative dim", safetensorsBytes(header: #"{"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#, data: d8), "bad shape"),
      ("metadata not string", safetensorsBytes(header: #"{"__metadata__":{"a":1},"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, data: d8), "not a string"),
    ]
    var failures: [String] = []
    for (label, bytes, needle) in cases {
      let p = writeBytes(bytes, "bad-\(label.replacingOccurrences(of: " ", with: "_")).safetensors")
      if let f = expectError(needle, label, { _ = try SafeTensorsFile(path: p) }) { failures.append(f) }
    }
    #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
  }

  @Test func everyTruncationFailsCleanly() throws {
    let p = tempPath("trunc.safetensors")
    try SafeTensorsWriter.write([TensorBlob(name: "x", shape: [3], floats: [1, 2, 3]),
                                 TensorBlob(name: "y", shape: [2], floats: [4, 5])], to: p)
    let full = [UInt8](try Data(contentsOf: URL(fileURLWithPath: p)))
    for n in 0..<full.count {
      let q = writeBytes(Array(full.prefix(n)), "trunc-\(n).safetensors")
      #expect(throws: QoQError.self) { _ = try SafeTensorsFile(path: q) }
    }
  }

  @Test func shardedIndexIsValidated() throws {
    let dir = tempPath("sharded-\(UUID().uuidString)")
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    try SafeTensorsWriter.write([TensorBlob(name: "a", shape: [1], floats: [1])], to: dir + "/model-00001-of-00002.safetensors")
    try SafeTensorsWriter.write([TensorBlob(name: "b", shape: [1], floats: [2]), TensorBlob(name: "c", shape: [1], floats: [3])],
                                to: dir + "/model-00002-of-00002.safetensors")
    func index(_ map: String) throws {
      try Data(#"{"metadata":{"total_size":12},"weight_map":\#(map)}"#.utf8).write(to: URL(fileURLWithPath: dir + "/model.safetensors.index.json"))
    }
    try index(#"{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors","c":"model-00002-of-00002.safetensors"}"#)
    let w = try CheckpointWeights(folder: dir)
    #expect(w.names == ["a", "b", "c"])
    #expect(try w.floats("c") == [3])
    var failures: [String] = []
    let bad: [(String, String, String)] = [
      ("traversal", #"{"a":"../model-00001-of-00002.safetensors"}"#, "plain file name"),
      ("missing shard", #"{"a":"model-00009-of-00009.safetensors"}"#, "missing"),
      ("wrong shard", #"{"a":"model-00002-of-00002.safetensors","b":"model-00002-of-00002.safetensors","c":"model-00002-of-00002.safetensors"}"#, "does not contain"),
      ("unmapped tensor", #"{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}"#, "not listed"),
      ("not a string", #"{"a":1}"#, "not a string"),
    ]
    for (label, map, needle) in bad {
      try index(map)
      if let f = expectError(needle, label, { _ = try CheckpointWeights(folder: dir) }) { failures.append(f) }
    }
    #expect(failures.isEmpty, "\(failures)")
  }

  @Test func atomicWriteLeavesNoPartialFile() throws {
    let p = tempPath("atomic.bin")
    try atomicWrite(p, data: Data([1, 2, 3]))
    struct Boom: Error {}
    #expect(throws: Boom.self) { try atomicWrite(p) { h in try h.write(contentsOf: Data([9, 9])); throw Boom() } }
    #expect(try Data(contentsOf: URL(fileURLWithPath: p)) == Data([1, 2, 3]))
    let leftovers = try FileManager.default.contentsOfDirectory(atPath: (p as NSString).deletingLastPathComponent)
      .filter { $0.hasPrefix(".atomic.bin.tmp") }
    #expect(leftovers.isEmpty)
  }
}

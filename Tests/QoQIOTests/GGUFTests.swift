import Foundation
import Testing
@testable import QoQIO

@Suite struct GGUFTests {
  /// Every ggml type we support, dequantized, equals the reference `gguf` Python package's output
  /// (Tests/Fixtures/gguf, made by scripts/fixtures/make_gguf_fixtures.py from real SmolLM2 weights).
  @Test func dequantizationMatchesGGUFPy() throws {
    let dir = fixturesRoot + "/gguf"
    let g = try GGUFFile(path: dir + "/quant_types.gguf")
    let meta = try JSON.parseFile(dir + "/quant_types.expected.json")
    let expected = try Data(contentsOf: URL(fileURLWithPath: dir + "/quant_types.expected.bin"))
    var seen = Set<String>()
    for t in meta["tensors"]!.array! {
      let name = t["name"]!.string!
      let type = t["type"]!.string!
      seen.insert(type)
      let info = try g.tensor(name)
      #expect(info.shape == t["shape_rows_major"]!.array!.map { $0.int! })
      #expect("\(info.type)" == type)
      let got = try g.floats(name)
      let off = t["expected_offset_bytes"]!.int!, n = t["expected_count"]!.int!
      let want: [Float] = expected.withUnsafeBytes { raw in (0..<n).map { raw.loadUnaligned(fromByteOffset: off + 4 * $0, as: Float.self) } }
      var maxErr: Float = 0
      for i in 0..<n { maxErr = max(maxErr, abs(got[i] - want[i]) / max(abs(want[i]), 1e-3)) }
      #expect(maxErr <= 1e-6, "\(name) (\(type)) max relative error \(maxErr)")
    }
    #expect(seen.isSuperset(of: ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]))
  }

  @Test func metadataOfEveryValueType() throws {
    let dir = fixturesRoot + "/gguf"
    let g = try GGUFFile(path: dir + "/quant_types.gguf")
    let meta = try JSON.parseFile(dir + "/quant_types.expected.json")
    #expect(g.version == 3)
    for m in meta["metadata"]!.array! {
      let key = m["key"]!.string!
      guard let v = g.metadata[key] else { Issue.record("missing \(key)"); continue }
      switch m["type"]!.string! {
      case "STRING": #expect(v.string == m["value"]!.string!, "\(key)")
      case "BOOL": #expect(v.bool == m["value"]!.bool!, "\(key)")
      case "FLOAT32", "FLOAT64": #expect(abs(v.double! - m["value"]!.double!) <= 1e-12 * max(1, abs(m["value"]!.double!)), "\(key)")
      case "ARRAY": #expect(v.array?.count == m["length"]!.int!, "\(key)")
      case "UINT64":
        if case .u64(let u) = v { #expect(Double(u) == m["value"]!.double!, "\(key)") } else { Issue.record("\(key) type") }
      default: #expect(v.int == m["value"]!.int!, "\(key)")
      }
    }
  }

  /// The real SmolLM2 GGUF: shapes, types and value statistics equal gguf-py's (skipped without the model).
  @Test(.enabled(if: smolGGUF != nil, "needs the SmolLM2 GGUF: bash scripts/setup.sh"))
  func realSmolLM2Tensors() throws {
    guard let path = smolGGUF else { return }
    let g = try GGUFFile(path: path)
    let fx = try JSON.parseFile(fixturesRoot + "/gguf/smollm2_tensors.json")
    for t in fx["tensors"]!.array! {
      let name = t["name"]!.string!
      let info = try g.tensor(name)
      #expect(info.dims == t["ne"]!.array!.map { $0.int! })
      #expect("\(info.type)" == t["type"]!.string!)
      let v = try g.floats(name)
      let first = t["first64"]!.array!.map { Float($0.double!) }
      #expect(Array(v.prefix(64)) == first, "\(name) first values")
      #expect(Array(v.suffix(64)) == t["last64"]!.array!.map { Float($0.double!) }, "\(name) last values")
      let sum = v.reduce(0.0) { $0 + Double($1) }, sumsq = v.reduce(0.0) { $0 + Double($1) * Double($1) }
      let rs = t["sum_f64"]!.double!, rq = t["sumsq_f64"]!.double!
      #expect(abs(sum - rs) <= 1e-9 * max(1, abs(rs)) * Double(v.count).squareRoot(), "\(name) sum \(sum) vs \(rs)")
      #expect(abs(sumsq - rq) <= 1e-9 * rq, "\(name) sum of squares")
      #expect(sha256Hex(g.raw(info)) == t["raw_sha256"]!.string!, "\(name) raw bytes")
    }
  }

  static let ok: [UInt8] = GGUFBuilder.file(tensors: [("w", [32, 2], 0, floatBytes((0..<64).map(Float.init)))])

  @Test func validBuilderFileLoads() throws {
    let g = try GGUFFile(path: writeBytes(Self.ok, "ok.gguf"))
    #expect(try g.floats("w") == (0..<64).map(Float.init))
    #expect(try g.tensor("w").shape == [2, 32])
  }

  /// The corrupt-file table of llama.cpp's test-gguf.cpp, each ending in an error that names the problem.
  @Test func corruptFilesAreRejected() {
    let data64 = floatBytes((0..<64).map(Float.init))
    func kvFile(_ kv: [(String, UInt32, (inout GGUFBuilder) -> Void)]) -> [UInt8] { GGUFBuilder.file(kv: kv, tensors: []) }
    var cases: [(String, [UInt8], String)] = [
      ("bad magic", [0x47, 0x47, 0x55, 0x47] + Array(Self.ok.dropFirst(4)), "bad magic"),
      ("version 0", GGUFBuilder.file(tensors: [], version: 0), "version"),
      ("version 1", GGUFBuilder.file(tensors: [], version: 1), "unsupported GGUF version"),
      ("future version", GGUFBuilder.file(tensors: [], version: 4), "unsupported GGUF version"),
      ("unknown tensor type", GGUFBuilder.file(tensors: [("w", [32, 2], 99, data64)]), "unknown ggml type"),
      ("zero dims", GGUFBuilder.file(tensors: [("w", [], 0, [])]), "number of dimensions"),
      ("five dims", GGUFBuilder.file(tensors: [("w", [1, 1, 1, 1, 1], 0, [0, 0, 0, 0])]), "number of dimensions"),
      ("huge dim", GGUFBuilder.file(tensors: [("w", [UInt64(1) << 40, 2], 0, data64)]), "too large"),
      ("overflowing elements", GGUFBuilder.file(tensors: [("w", [1 << 31 - 1, 1 << 31 - 1, 1 << 31 - 1, 1 << 31 - 1], 0, data64)]), "overflow"),
      ("data past end", GGUFBuilder.file(tensors: [("w", [32, 200], 0, data64)]), "past the end"),
      ("block size", GGUFBuilder.file(tensors: [("w", [33, 2], 2, data64)]), "block size"),
      ("duplicate tensor", GGUFBuilder.file(tensors: [("w", [32, 2], 0, data64), ("w", [32, 2], 0, data64)]), "duplicate tensor"),
      ("unknown kv type", kvFile([("k", 13, { $0.u32(0) })]), "unknown value type"),
      ("duplicate key", kvFile([("k", 4, { $0.u32(1) }), ("k", 4, { $0.u32(2) })]), "duplicate metadata key"),
      ("bad bool", kvFile([("k", 7, { $0.bytes.append(2) })]), "bool"),
      ("huge string", kvFile([("k", 8, { $0.u64(UInt64(1) << 50) })]), "exceeds"),
      ("string past end", kvFile([("k", 8, { $0.u64(1000) })]), "truncated"),
      ("huge array", kvFile([("k", 9, { $0.u32(4); $0.u64(UInt64(1) << 40) })]), "exceeds"),
      ("array past end", kvFile([("k", 9, { $0.u32(4); $0.u64(1 << 20) })]), "truncated"),
      ("bad array type", kvFile([("k", 9, { $0.u32(77); $0.u64(1) })]), "unknown array element type"),
      ("nested array", kvFile([("k", 9, { $0.u32(9); $0.u64(1); $0.u32(4); $0.u64(0) })]), "nested"),
      ("bad alignment", kvFile([("general.alignment", 4, { $0.u32(3) })]), "power-of-two"),
      ("alignment wrong type", kvFile([("general.alignment", 10, { $0.u64(32) })]), "power-of-two"),
    ]
    // Tensor count and KV count that the file cannot hold.
    var b = GGUFBuilder(); b.u32(0x4655_4747); b.u32(3); b.u64(UInt64.max); b.u64(0)
    cases.append(("huge tensor count", b.bytes, "more than the file"))
    b = GGUFBuilder(); b.u32(0x4655_4747); b.u32(3); b.u64(0); b.u64(1 << 60)
    cases.append(("huge kv count", b.bytes, "more than the file"))
    // A tensor whose offset is not where the previous one ended.
    var bad = GGUFBuilder(); bad.u32(0x4655_4747); bad.u32(3); bad.u64(1); bad.u64(0)
    bad.str("w"); bad.u32(1); bad.u64(8); bad.u32(0); bad.u64(64); bad.pad(32); bad.bytes += [UInt8](repeating: 0, count: 128)
    cases.append(("bad offset", bad.bytes, "data offset"))
    var failures: [String] = []
    for (label, bytes, needle) in cases {
      let p = writeBytes(bytes, "bad-\(label.replacingOccurrences(of: " ", with: "_")).gguf")
      if let f = expectError(needle, label, { _ = try GGUFFile(path: p) }) { failures.append(f) }
    }
    #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
  }

  @Test func everyTruncationFailsCleanly() {
    let full = Self.ok
    for n in 0..<full.count {
      let p = writeBytes(Array(full.prefix(n)), "trunc-\(n).gguf")
      // Either an error or (past the last tensor's data, within padding) a successful parse; never a crash.
      if let g = try? GGUFFile(path: p) { #expect(n >= full.count - 31, "prefix \(n) parsed"); _ = try? g.floats("w") }
    }
  }
}

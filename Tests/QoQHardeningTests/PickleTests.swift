// Class 3: bounded work for the pickle reader. Each hostile torch file is built here (a stored zip with data.pkl and
// storage entries, as torch.save writes them), loaded by the library, and loaded by the real binary through
// `qoq convert --from qserve`, whose peak memory (its own VmHWM, QOQ_REPORT_PEAK_RSS) must stay within 2× the file
// plus a fixed baseline.
import Foundation
import Testing
@testable import QoQIO
import QoQModels
import QoQTestSupport

/// Pickle opcodes, written by hand.
struct PickleBytes {
  var b: [UInt8] = [0x80, 2]
  mutating func op(_ o: UInt8) { b.append(o) }
  mutating func int(_ v: Int) {
    if v >= 0 && v < 256 { b += [0x4B, UInt8(v)]; return }
    b += [0x8A, 8]; withUnsafeBytes(of: Int64(v).littleEndian) { b += $0 }
  }
  mutating func str(_ s: String) { b += [0x8C, UInt8(s.utf8.count)] + Array(s.utf8) }
  mutating func global(_ m: String, _ n: String) { b.append(0x63); b += Array("\(m)\n\(n)\n".utf8) }
  mutating func put(_ i: UInt8) { b += [0x71, i] }
  mutating func get(_ i: UInt8) { b += [0x68, i] }
  mutating func tuple(_ items: [Int]) { op(0x28); for i in items { int(i) }; op(0x74) }
  /// _rebuild_tensor_v2(storage key of `numel` floats, offset, shape, stride, False, ())
  mutating func tensor(key: String, numel: Int, offset: Int = 0, shape: [Int], stride: [Int]) {
    global("torch._utils", "_rebuild_tensor_v2")
    op(0x28)
    op(0x28); str("storage"); global("torch", "FloatStorage"); str(key); str("cpu"); int(numel); op(0x74); op(0x51)
    int(offset); tuple(shape); tuple(stride); op(0x89); op(0x28); op(0x74)
    op(0x74); op(0x52)
  }
  mutating func stop() { op(0x2E) }
}

@Suite struct PickleTests {
  struct Case: CustomStringConvertible {
    var name: String
    var message: String
    var pickle: [UInt8]
    var storageBytes: Int = 16
    var description: String { name }
  }

  static var cases: [Case] {
    var out: [Case] = []
    func make(_ name: String, _ message: String, storage: Int = 16, _ body: (inout PickleBytes) -> Void) {
      var p = PickleBytes()
      body(&p)
      out.append(Case(name: name, message: message, pickle: p.b, storageBytes: storage))
    }
    make("stride-0 view of 4 floats as 2^20 × 2^20", "expands its storage") { p in
      p.op(0x7D); p.str("w"); p.tensor(key: "0", numel: 4, shape: [1 << 20, 1 << 20], stride: [0, 0]); p.op(0x73); p.stop()
    }
    make("overlapping strides (4 floats viewed as 3×2)", "expands its storage") { p in
      p.op(0x7D); p.str("w"); p.tensor(key: "0", numel: 4, shape: [3, 2], stride: [1, 1]); p.op(0x73); p.stop()
    }
    make("numel that overflows", "overflows") { p in
      p.op(0x7D); p.str("w"); p.tensor(key: "0", numel: 4, shape: [1 << 40, 1 << 40], stride: [1, 1]); p.op(0x73); p.stop()
    }
    make("storage numel × element size overflows", "overflows") { p in
      p.op(0x7D); p.str("w"); p.tensor(key: "0", numel: 1 << 62, shape: [1], stride: [1]); p.op(0x73); p.stop()
    }
    make("a 64-dimensional tensor", "dimensions (the limit is 16)") { p in
      p.op(0x7D); p.str("w"); p.tensor(key: "0", numel: 4, shape: Array(repeating: 1, count: 64), stride: Array(repeating: 1, count: 64))
      p.op(0x73); p.stop()
    }
    make("BINUNICODE8 of 2^63 bytes", "ends early") { p in
      p.op(0x8D); withUnsafeBytes(of: (UInt64(1) << 63).littleEndian) { p.b += $0 }; p.stop()
    }
    make("BINUNICODE8 of 2^64-1 bytes", "ends early") { p in
      p.op(0x8D); p.b += [UInt8](repeating: 0xFF, count: 8); p.stop()
    }
    make("a dict that contains itself", "contains itself") { p in
      p.op(0x7D); p.put(0); p.str("self"); p.get(0); p.op(0x73); p.stop()
    }
    make("2^40 paths through memo references", "more than 1,000,000 entries") { p in
      p.op(0x7D); p.put(0)
      for i in 0..<40 { p.op(0x7D); p.str("a"); p.get(UInt8(i)); p.op(0x73); p.str("b"); p.get(UInt8(i)); p.op(0x73); p.put(UInt8(i + 1)) }
      p.stop()
    }
    make("one 1 MiB storage viewed by 64 tensors", "more than", storage: 1 << 20) { p in
      p.op(0x7D)
      for i in 0..<64 { p.str("w\(i)"); p.tensor(key: "0", numel: (1 << 20) / 4, shape: [(1 << 20) / 4], stride: [1]); p.op(0x73) }
      p.stop()
    }
    make("a forbidden global", "only tensors, dicts") { p in p.global("os", "system"); p.str("true"); p.op(0x85); p.op(0x52); p.stop() }
    return out
  }

  static func write(_ c: Case, to path: String) {
    let z = storedZip([("archive/data.pkl", c.pickle), ("archive/data/0", [UInt8](repeating: 0, count: c.storageBytes))])
    FileManager.default.createFile(atPath: path, contents: Data(z))
  }

  @Test(arguments: cases) func hostileFileIsRefused(_ c: Case) async throws {
    let dir = scratch("pickle-\(c.name.prefix(12).filter(\.isLetter))-\(UUID().uuidString.prefix(6))")
    let path = dir + "/pytorch_model.bin"
    Self.write(c, to: path)
    do {
      _ = try TorchFile.load(path: path)
      Issue.record("\(c.name): loaded")
    } catch let e as QoQError {
      #expect(e.message.contains(c.message), "\(c.name): \(e.message)")
    }
    // The binary: exit 1 with the message, memory bounded by the file, not by what it claims to hold.
    let cfg = try LlamaConfiguration(modelType: "llama", hiddenSize: 64, intermediateSize: 128, numHiddenLayers: 1,
                                     numAttentionHeads: 2, numKeyValueHeads: 1, vocabSize: 256)
    try cfg.jsonData().write(to: URL(fileURLWithPath: dir + "/config.json"))
    let r = try await runQoQ(["convert", dir, "--from", "qserve", "-o", dir + "/out"], env: ["QOQ_REPORT_PEAK_RSS": "1"])
    #expect(!r.crashed && r.status == 1, "\(c.name): exit \(r.status) \(r.stderr)")
    #expect(r.stderr.contains(c.message), "\(c.name): \(r.stderr)")
    let fileBytes = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
    let peak = Self.peakKB(r.stderr) * 1024
    #expect(peak > 0 && peak <= Baseline.bytes + 2 * fileBytes, "\(c.name): peak RSS \(peak) bytes for a \(fileBytes)-byte file (baseline \(Baseline.bytes))")
  }

  static func peakKB(_ stderr: String) -> Int {
    stderr.split(separator: "\n").compactMap { $0.hasPrefix("peak_rss_kb=") ? Int($0.dropFirst(12)) : nil }.last ?? 0
  }

  /// 200,000 APPENDs to a memoized list and SETITEMs to a memoized dict: linear in-place updates (the old copy-per-
  /// append was quadratic: 2·10^10 element copies).
  @Test func appendsAreLinear() throws {
    var p = PickleBytes()
    p.op(0x7D); p.put(0)
    p.str("list"); p.op(0x5D); p.put(1)
    for i in 0..<200_000 { p.int(i % 200); p.op(0x61) }
    p.op(0x73)
    for i in 0..<50_000 { p.str("k\(i % 100)"); p.int(i); p.op(0x73) }
    p.stop()
    let path = scratch("append") + "/big.pt"
    FileManager.default.createFile(atPath: path, contents: Data(storedZip([("archive/data.pkl", p.b)])))
    #expect(try TorchFile.load(path: path).isEmpty)
  }
}

/// The binary's own resident memory for a trivial failing command (runtime, Foundation, the binary's pages), measured
/// once; hostile inputs are bounded relative to it.
enum Baseline {
  static let bytes: Int = {
    let r = try? runQoQSync(["convert", "/nonexistent/x.gguf", "-o", NSTemporaryDirectory() + "qoq-none"], env: ["QOQ_REPORT_PEAK_RSS": "1"])
    return 2 * PickleTests.peakKB(r?.stderr ?? "") * 1024 + (16 << 20)
  }()
}

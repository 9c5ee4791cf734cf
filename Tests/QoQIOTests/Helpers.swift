import Foundation
@testable import QoQIO

let fixturesRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
  .appendingPathComponent("Fixtures").path

/// The default real model, present once scripts/setup.sh has run (CI runs it before the tests).
let smolGGUF: String? = {
  let env = ProcessInfo.processInfo.environment
  let cache = env["QOQ_CACHE"] ?? (env["HOME"] ?? "/root") + "/.cache/qoq"
  let p = cache + "/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  return FileManager.default.fileExists(atPath: p) ? p : nil
}()

func tempPath(_ name: String) -> String {
  let dir = NSTemporaryDirectory() + "qoq-tests-\(getpid())"
  try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
  return dir + "/" + name
}

func writeBytes(_ bytes: [UInt8], _ name: String) -> String {
  let p = tempPath(name)
  FileManager.default.createFile(atPath: p, contents: Data(bytes))
  return p
}

/// Builds GGUF bytes field by field, so tests can write valid files and break them on purpose.
struct GGUFBuilder {
  var bytes: [UInt8] = []
  mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
  mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
  mutating func str(_ s: String) { u64(UInt64(s.utf8.count)); bytes += Array(s.utf8) }
  mutating func f32s(_ xs: [Float]) { for x in xs { u32(x.bitPattern) } }
  mutating func pad(_ a: Int) { while bytes.count % a != 0 { bytes.append(0) } }

  /// A valid file: `general.alignment`-less, one string KV, tensors (name, ne, type id, data bytes).
  static func file(kv: [(String, UInt32, (inout GGUFBuilder) -> Void)] = [("general.architecture", 8, { $0.str("llama") })],
                   tensors: [(String, [UInt64], UInt32, [UInt8])], version: UInt32 = 3) -> [UInt8] {
    var b = GGUFBuilder()
    b.u32(0x4655_4747); b.u32(version); b.u64(UInt64(tensors.count)); b.u64(UInt64(kv.count))
    for (k, t, w) in kv { b.str(k); b.u32(t); w(&b) }
    var off: UInt64 = 0
    for (name, ne, type, data) in tensors {
      b.str(name); b.u32(UInt32(ne.count)); for d in ne { b.u64(d) }; b.u32(type); b.u64(off)
      off += UInt64(data.count); off = (off + 31) / 32 * 32
    }
    b.pad(32)
    for (_, _, _, data) in tensors { b.bytes += data; b.pad(32) }
    return b.bytes
  }
}

func floatBytes(_ xs: [Float]) -> [UInt8] { xs.withUnsafeBytes { Array($0) } }

/// Asserts that `body` throws a QoQError whose message contains `needle`.
func expectError(_ needle: String, _ label: String = "", _ body: () throws -> Void) -> String? {
  do { try body() } catch let e as QoQError {
    return e.message.localizedCaseInsensitiveContains(needle) ? nil : "\(label): message \"\(e.message)\" lacks \"\(needle)\""
  } catch { return "\(label): unexpected error type \(error)" }
  return "\(label): no error thrown"
}

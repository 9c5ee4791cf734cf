// Models by name (issue #16): downloading from a hub on loopback (FakeHub) into the Hugging Face cache layout, with
// the redirect, ETag, token and Range-resume behaviour of huggingface_hub; refusals named; the CLI path end to end.
import Foundation
import Testing
import QoQHub
import QoQIO
import QoQModels
import QoQTestSupport

@Suite(.serialized) struct HubDownloadTests {
  /// The tiny model's files as the hub serves them: model.safetensors as an LFS file behind a CDN redirect.
  static func tinyFiles() throws -> [String: FakeHub.Served] {
    let dir = scratch("hub-src")
    try writeTinyCheckpoint(try InputLimitTests.tinyConfig(), to: dir)
    var out: [String: FakeHub.Served] = [:]
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
      out[f] = FakeHub.Served(bytes: Array(try Data(contentsOf: URL(fileURLWithPath: dir + "/" + f))), lfs: f.hasSuffix(".safetensors"))
    }
    return out
  }

  func env(_ hub: FakeHub, cache: String, token: String? = "secret", extra: [String: String] = [:]) -> [String: String] {
    var e = ["HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": cache, "HOME": cache]
    if let t = token { e["HF_TOKEN"] = t }
    return e.merging(extra) { $1 }
  }

  /// A cut transfer resumes with `Range: bytes=N-` where it stopped; the cache has huggingface_hub's layout (refs,
  /// blobs named by ETag — the sha256 for the LFS file — and relative snapshot links); the token reaches the endpoint
  /// but not the CDN host; files qoq does not read and unsafe names are not fetched; a second call fetches nothing.
  @Test func downloadResumesIntoTheHubLayout() async throws {
    let files = try Self.tinyFiles()
    let hub = try FakeHub(files: files, listedOnly: ["README.md", "../escape.json", "sub/config.json"], token: "secret",
                          cutOnce: ["model.safetensors"])
    defer { hub.stop() }
    let cache = scratch("hub-cache")
    var d = HubDownload(env: env(hub, cache: cache))
    let logs = LogBox()
    d.log = { logs.add($0) }
    try await d.ensure("org/tiny")
    let repo = cache + "/models--org--tiny"
    #expect(try String(contentsOfFile: repo + "/refs/main", encoding: .utf8) == hub.commit)
    let st = files["model.safetensors"]!.bytes
    let sha = FakeHub.sha256(st)
    let link = repo + "/snapshots/\(hub.commit)/model.safetensors"
    #expect(try FileManager.default.destinationOfSymbolicLink(atPath: link) == "../../blobs/\(sha)")
    #expect(Array(try Data(contentsOf: URL(fileURLWithPath: link))) == st)
    let cfgLink = repo + "/snapshots/\(hub.commit)/config.json"
    #expect(try FileManager.default.destinationOfSymbolicLink(atPath: cfgLink) == "../../blobs/\(FakeHub.smallETag(files["config.json"]!.bytes))")
    #expect(!FileManager.default.fileExists(atPath: repo + "/blobs/\(sha).incomplete"))
    // The transfer was cut at half and resumed from what had reached the disk: at most half (bytes still in flight
    // when the server closed are lost with the connection), more than nothing, and the same offset the log names.
    let cdn = hub.seen.filter { $0.path == "/cdn/model.safetensors" }
    #expect(cdn.count == 2)
    let resumedAt = cdn.last?.range.flatMap { r in r.hasPrefix("bytes=") && r.hasSuffix("-") ? Int(r.dropFirst(6).dropLast()) : nil }
    #expect(cdn.first?.range == nil && resumedAt != nil, "\(cdn.map(\.range))")
    if let n = resumedAt {
      #expect(n > 0 && n <= st.count / 2, "resumed at \(n) of \(st.count)")
      #expect(logs.all.contains { $0.contains("connection lost at \(n) bytes") }, "\(logs.all)")
    }
    // The token went to the endpoint's host, not to the CDN's.
    #expect(hub.seen.filter { !$0.path.hasPrefix("/cdn/") }.allSatisfy { $0.auth == "Bearer secret" })
    #expect(cdn.allSatisfy { $0.auth == nil })
    // Only what qoq reads; nothing outside the snapshot.
    let fetched = Set(hub.seen.filter { $0.method == "HEAD" }.map { String($0.path.split(separator: "/").last!) })
    #expect(fetched == ["config.json", "tokenizer.json", "model.safetensors"])
    #expect(!FileManager.default.fileExists(atPath: repo + "/snapshots/escape.json"))
    // The cache now resolves it, and the model loads.
    let snap = try HubCache.resolve("org/tiny", env: env(hub, cache: cache))
    #expect(snap == repo + "/snapshots/\(hub.commit)")
    #expect(try ModelLoader.load(path: snap).model.config.hiddenSize == 128)
    let before = hub.seen.count
    try await d.ensure("org/tiny")
    #expect(hub.seen.count == before, "a cached model is not fetched again")
  }

  /// Refusals, each naming the problem: a token the hub rejects (gated), a corrupt body (sha256; the partial file is
  /// not kept), HF_HUB_OFFLINE (no request made), an endpoint nobody listens on, an unknown model, several GGUFs.
  @Test func refusalsAreNamed() async throws {
    let files = try Self.tinyFiles()
    let hub = try FakeHub(files: files, token: "secret")
    defer { hub.stop() }
    func message(_ body: () async throws -> Void) async -> String {
      do { try await body(); return "" } catch let e as QoQError { return e.message } catch { return "\(error)" }
    }
    var m = await message { try await HubDownload(env: env(hub, cache: scratch("hub-gated"), token: nil)).ensure("org/tiny") }
    #expect(m.contains("gated or private") && m.contains("HF_TOKEN"), "\(m)")
    hub.corrupt = ["model.safetensors"]
    let corruptCache = scratch("hub-corrupt")
    m = await message { try await HubDownload(env: env(hub, cache: corruptCache)).ensure("org/tiny") }
    #expect(m.contains("sha256") && m.contains("discarded"), "\(m)")
    let blobs = (try? FileManager.default.contentsOfDirectory(atPath: corruptCache + "/models--org--tiny/blobs")) ?? []
    #expect(!blobs.contains { $0.hasPrefix(FakeHub.sha256(files["model.safetensors"]!.bytes)) }, "\(blobs)")
    hub.corrupt = []
    let n = hub.seen.count
    m = await message { try await HubDownload(env: env(hub, cache: scratch("hub-off"), extra: ["HF_HUB_OFFLINE": "1"])).ensure("org/tiny") }
    #expect(m.contains("HF_HUB_OFFLINE") && hub.seen.count == n, "\(m)")
    m = await message { try await HubDownload(env: env(hub, cache: scratch("hub-404"))).ensure("org/other") }
    #expect(m.contains("does not exist") && m.contains("404"), "\(m)")
    var dead = env(hub, cache: scratch("hub-dead"))
    dead["HF_ENDPOINT"] = "http://127.0.0.1:1"
    m = await message { try await HubDownload(env: dead).ensure("org/tiny") }
    #expect(m.contains("downloading it from http://127.0.0.1:1 failed") && m.contains("local folder"), "\(m)")
    #expect(throws: QoQError.self) { try HubDownload.select(["a.Q4_0.gguf", "a.Q8_0.gguf"], id: "org/x") }
    #expect(try HubDownload.select(["x.gguf", "README.md"], id: "org/x") == ["x.gguf"])
    #expect(try HubDownload.select(["config.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json", "a.bin",
                                    "../config.json", "dir/tokenizer.json"], id: "org/x")
            == ["config.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json"])
  }

  /// The CLI: `qoq tokenize -m org/tiny` downloads the model (progress on stderr) and then reads its tokenizer.
  @Test func cliDownloadsByName() async throws {
    let hub = try FakeHub(files: try Self.tinyFiles(), token: "secret")
    defer { hub.stop() }
    let cache = scratch("hub-cli")
    let r = try await runQoQ(["tokenize", "-m", "org/tiny", "-p", "hi"], env: env(hub, cache: cache))
    #expect(r.status == 0, "\(r.stderr)")
    #expect(r.stderr.contains("downloading org/tiny@main"), "\(r.stderr)")
    let src = scratch("hub-cli-src")
    try writeTinyCheckpoint(try InputLimitTests.tinyConfig(), to: src)
    let local = try await runQoQ(["tokenize", "-m", src, "-p", "hi"])
    #expect(!r.stdout.isEmpty && r.stdout == local.stdout, "\(r.stdout) vs the source folder's \(local.stdout)")
    #expect(FileManager.default.fileExists(atPath: cache + "/models--org--tiny/refs/main"))
  }
}

final class LogBox: @unchecked Sendable {
  private let lock = NSLock()
  private var lines: [String] = []
  func add(_ s: String) { lock.lock(); lines.append(s); lock.unlock() }
  var all: [String] { lock.lock(); defer { lock.unlock() }; return lines }
}

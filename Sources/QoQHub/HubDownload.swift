// Downloading a model by name (issue #16): `-m ORG/NAME[@REVISION]` that is neither a local path nor in the Hugging
// Face cache is fetched from the hub (HF_ENDPOINT, default https://huggingface.co; HF_TOKEN for gated or private
// repositories) into the same cache layout huggingface_hub writes, so transformers, vLLM and mlx-lm share it:
//   ROOT/models--ORG--NAME/blobs/ETAG            (the file; for LFS files ETAG is its sha256)
//   ROOT/models--ORG--NAME/snapshots/COMMIT/FILE (a relative link to ../../blobs/ETAG)
//   ROOT/models--ORG--NAME/refs/REVISION         (the commit REVISION resolved to)
// Protocol (huggingface_hub's file_download.py): GET /api/models/ID/revision/REV gives the commit and the file list;
// HEAD /ID/resolve/COMMIT/FILE, with redirects off, gives the ETag (X-Linked-Etag for LFS files, with X-Linked-Size)
// and, for LFS files, a Location on a CDN; the body is then fetched into blobs/ETAG.incomplete, resumed with
// `Range: bytes=N-` after a cut connection, checked (size; sha256 when the ETag is one) and renamed into place.
// The token is sent to the endpoint's host only, never to the CDN a redirect points at. HF_HUB_OFFLINE=1 forbids
// downloading. Only what qoq reads is fetched: config, tokenizer and generation files with the safetensors weights,
// or, for a repository without config.json, its single .gguf file.
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import QoQIO
import QoQModels

public struct HubDownload: Sendable {
  public let endpoint: String
  public let token: String?
  public let env: [String: String]
  /// HF_HUB_OFFLINE=1: refuse to download.
  public let offline: Bool
  /// Attempts per file after a cut connection (each resumes where the last stopped).
  public var retries = 5
  /// Progress per file: (file, bytes done, bytes total or -1).
  public var progress: @Sendable (String, Int64, Int64) -> Void = { _, _, _ in }
  public var log: @Sendable (String) -> Void = { _ in }

  public init(env: [String: String] = ProcessInfo.processInfo.environment) {
    self.env = env
    var e = env["HF_ENDPOINT"].flatMap { $0.isEmpty ? nil : $0 } ?? "https://huggingface.co"
    while e.hasSuffix("/") { e.removeLast() }
    endpoint = e
    token = env["HF_TOKEN"].flatMap { $0.isEmpty ? nil : $0 }
    offline = ["1", "true", "yes", "on"].contains((env["HF_HUB_OFFLINE"] ?? "").lowercased())
  }

  /// Makes `given` openable: a local path or a non-id is left alone, an id found in the cache too; otherwise the
  /// model is downloaded into the cache. Afterwards `HubCache.resolve(given)` finds it.
  public func ensure(_ given: String) async throws {
    if FileManager.default.fileExists(atPath: given) || !HubCache.isHubID(given) { return }
    do { _ = try HubCache.resolve(given, env: env); return } catch let notCached as QoQError {
      if offline { throw QoQError(notCached.message + " (HF_HUB_OFFLINE is set: nothing is downloaded)") }
      try await download(given)
    }
  }

  /// Files of a repository that qoq reads.
  static let wanted: Set<String> = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                                    "special_tokens_map.json", "chat_template.jinja", "model.safetensors.index.json"]

  /// The files to fetch from a repository's file list: its HF folder, or its one GGUF file. Names are top-level only
  /// (a hostile list cannot name a path outside the snapshot).
  public static func select(_ names: [String], id: String) throws -> [String] {
    let top = names.filter { !$0.contains("/") && !$0.contains("\\") && $0 != "." && $0 != ".." && !$0.isEmpty }
    if top.contains("config.json") {
      return top.filter { wanted.contains($0) || $0.hasSuffix(".safetensors") }.sorted()
    }
    let ggufs = top.filter { $0.hasSuffix(".gguf") }.sorted()
    if ggufs.count == 1 { return ggufs }
    if ggufs.isEmpty { throw QoQError("\(id): the repository has neither config.json nor a .gguf file") }
    throw QoQError("\(id): the repository holds several GGUF files (\(ggufs.joined(separator: ", "))); download the one you "
                   + "want (`huggingface-cli download \(id) FILE.gguf`) and pass its path")
  }

  public func download(_ given: String) async throws {
    let at = given.split(separator: "@", maxSplits: 1).map(String.init)
    let id = at[0], revision = at.count > 1 ? at[1] : "main"
    let client = HTTPClient(eventLoopGroupProvider: .singleton,
                            configuration: .init(redirectConfiguration: .disallow,
                                                 timeout: .init(connect: .seconds(20), read: .seconds(120))))
    do {
      try await fetchAll(client, id: id, revision: revision)
      try await client.shutdown()
    } catch {
      try? await client.shutdown()
      if let e = error as? QoQError { throw e }
      throw QoQError("\(given): not in the Hugging Face cache (\(HubCache.root(env))), and downloading it from \(endpoint) failed "
                     + "(\(error)); connect to the network, set HF_ENDPOINT to a mirror, or pass a local folder")
    }
  }

  func fetchAll(_ client: HTTPClient, id: String, revision: String) async throws {
    let info = try await apiInfo(client, id: id, revision: revision)
    guard let sha = info["sha"]?.string, !sha.isEmpty, sha.allSatisfy({ $0.isLetter || $0.isNumber }) else {
      throw QoQError("\(id): the hub's answer for revision \(revision) has no usable commit (sha)")
    }
    let names = (info["siblings"]?.array ?? []).compactMap { $0["rfilename"]?.string }
    let files = try Self.select(names, id: id)
    let repo = HubCache.root(env) + "/models--" + id.replacingOccurrences(of: "/", with: "--")
    for dir in ["blobs", "snapshots/" + sha, "refs"] {
      try FileManager.default.createDirectory(atPath: repo + "/" + dir, withIntermediateDirectories: true)
    }
    log("downloading \(id)@\(revision) (commit \(sha)): \(files.count) files into \(repo)")
    for f in files { try await fetchFile(client, id: id, commit: sha, file: f, repo: repo) }
    if revision != sha {
      let ref = repo + "/refs/" + revision
      guard !revision.contains("/") && revision != ".." && revision != "." else { return }
      try Data(sha.utf8).write(to: URL(fileURLWithPath: ref), options: .atomic)
    }
  }

  /// GET /api/models/ID/revision/REV → {"sha": …, "siblings": [{"rfilename": …}]}.
  func apiInfo(_ client: HTTPClient, id: String, revision: String) async throws -> JSONValue {
    let url = "\(endpoint)/api/models/\(id)/revision/\(percentEncoded(revision))"
    let resp = try await client.execute(request(url, method: .GET), timeout: .seconds(60))
    let body = try await resp.body.collect(upTo: 64 << 20)
    try check(resp.status, id: id, what: "revision \(revision)")
    return try JSON.parse(Data(body.readableBytesView), what: "\(endpoint)/api/models/\(id) (revision \(revision))")
  }

  func check(_ status: HTTPResponseStatus, id: String, what: String) throws {
    switch status.code {
    case 200..<300: return
    case 401, 403:
      throw QoQError("\(id): the hub refused access to \(what) (HTTP \(status.code)); the repository is gated or private: "
                     + (token == nil ? "set HF_TOKEN to a token that has access" : "the token in HF_TOKEN has no access to it"))
    case 404: throw QoQError("\(id): \(what) does not exist on \(endpoint) (HTTP 404)")
    default: throw QoQError("\(id): \(endpoint) answered HTTP \(status.code) for \(what)")
    }
  }

  func request(_ url: String, method: HTTPMethod) -> HTTPClientRequest {
    var r = HTTPClientRequest(url: url)
    r.method = method
    r.headers.add(name: "user-agent", value: "qoq")
    if let t = token, host(url) == host(endpoint) { r.headers.add(name: "authorization", value: "Bearer \(t)") }
    return r
  }

  func host(_ url: String) -> String? { URL(string: url).flatMap { u in u.host.map { "\($0):\(u.port ?? -1)" } } }

  func percentEncoded(_ s: String) -> String {
    s.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? s
  }

  /// What HEAD says about a file: its ETag (the blob's name), its size when given, and where its bytes are.
  struct Meta { var etag: String; var size: Int64?; var url: String }

  func head(_ client: HTTPClient, id: String, commit: String, file: String) async throws -> Meta {
    var url = "\(endpoint)/\(id)/resolve/\(commit)/\(percentEncoded(file))"
    for _ in 0..<6 {
      let resp = try await client.execute(request(url, method: .HEAD), timeout: .seconds(60))
      _ = try await resp.body.collect(upTo: 1 << 20)
      let h = resp.headers
      let etag = (h.first(name: "x-linked-etag") ?? h.first(name: "etag")).map(Self.normalizedETag)
      let size = (h.first(name: "x-linked-size") ?? h.first(name: "content-length")).flatMap { Int64($0) }
      if (300..<400).contains(resp.status.code), let loc = h.first(name: "location") {
        if loc.hasPrefix("/") { url = endpoint + loc; continue }  // a renamed repository: same host, ask again
        guard let e = etag, !e.isEmpty else { throw QoQError("\(id)/\(file): the hub's redirect carries no ETag") }
        return Meta(etag: e, size: size, url: loc)
      }
      try check(resp.status, id: id, what: file)
      guard let e = etag, !e.isEmpty else { throw QoQError("\(id)/\(file): the hub sent no ETag") }
      return Meta(etag: e, size: size, url: url)
    }
    throw QoQError("\(id)/\(file): too many redirects")
  }

  /// `W/"abc"` → `abc`; only characters safe in a file name are kept meaningful (others refuse the file).
  static func normalizedETag(_ raw: String) -> String {
    var s = raw.trimmingCharacters(in: .whitespaces)
    if s.hasPrefix("W/") { s.removeFirst(2) }
    return s.trimmingCharacters(in: CharacterSet(charactersIn: "\""))
  }

  func fetchFile(_ client: HTTPClient, id: String, commit: String, file: String, repo: String) async throws {
    let meta = try await head(client, id: id, commit: commit, file: file)
    guard meta.etag.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }), meta.etag.count <= 128 else {
      throw QoQError("\(id)/\(file): the hub's ETag \(meta.etag.prefix(40)) is not a usable blob name")
    }
    if let s = meta.size, s < 0 { throw QoQError("\(id)/\(file): negative size \(s)") }
    let fm = FileManager.default
    let blob = repo + "/blobs/" + meta.etag
    let link = repo + "/snapshots/" + commit + "/" + file
    if !(fm.fileExists(atPath: blob) && (meta.size == nil || fileSize(blob) == meta.size)) {
      try await fetchBody(client, meta: meta, to: blob, label: "\(id)/\(file)")
    }
    if (try? fm.destinationOfSymbolicLink(atPath: link)) != nil || fm.fileExists(atPath: link) { try fm.removeItem(atPath: link) }
    try fm.createSymbolicLink(atPath: link, withDestinationPath: "../../blobs/" + meta.etag)
  }

  func fileSize(_ path: String) -> Int64? {
    (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.int64Value
  }

  /// Streams the body into BLOB.incomplete (resuming what is there), checks it and renames it to BLOB.
  func fetchBody(_ client: HTTPClient, meta: Meta, to blob: String, label: String) async throws {
    let part = blob + ".incomplete"
    let fm = FileManager.default
    if !fm.fileExists(atPath: part) { guard fm.createFile(atPath: part, contents: nil) else { throw QoQError("cannot create \(part)") } }
    var lastError: Error?
    for attempt in 0...retries {
      let have = fileSize(part) ?? 0
      if let s = meta.size, have == s { lastError = nil; break }
      if let s = meta.size, have > s { try Data().write(to: URL(fileURLWithPath: part)) }  // longer than the file: restart
      var req = request(meta.url, method: .GET)
      let from = fileSize(part) ?? 0
      if from > 0 { req.headers.add(name: "range", value: "bytes=\(from)-") }
      do {
        let resp = try await client.execute(req, timeout: .hours(6))
        guard resp.status == .ok || resp.status == .partialContent else {
          _ = try? await resp.body.collect(upTo: 1 << 20)
          throw QoQError("\(label): HTTP \(resp.status.code) while downloading")
        }
        let fh = try FileHandle(forWritingTo: URL(fileURLWithPath: part))
        defer { try? fh.close() }
        if resp.status == .ok { try fh.truncate(atOffset: 0) } else { try fh.seekToEnd() }
        var done = resp.status == .ok ? 0 : from
        let total = meta.size ?? -1
        for try await chunk in resp.body {
          try fh.write(contentsOf: Data(chunk.readableBytesView))
          done += Int64(chunk.readableBytes)
          if let s = meta.size, done > s { throw QoQError("\(label): the server sent more than the \(s) bytes it announced") }
          progress(label, done, total)
        }
        try fh.synchronize()
        lastError = nil
        if meta.size == nil { break }
      } catch let e as QoQError {
        throw e
      } catch {
        lastError = error
        log("\(label): connection lost at \(fileSize(part) ?? 0) bytes (\(error)); resuming (attempt \(attempt + 1) of \(retries))")
      }
    }
    if let e = lastError { throw e }
    let got = fileSize(part) ?? 0
    if let s = meta.size, got != s { throw QoQError("\(label): downloaded \(got) of \(s) bytes after \(retries + 1) attempts") }
    if meta.etag.count == 64, meta.etag.allSatisfy(\.isHexDigit) {
      let digest = try sha256OfFile(part)
      guard digest == meta.etag.lowercased() else {
        try? fm.removeItem(atPath: part)  // ours: a corrupt partial file is not kept
        throw QoQError("\(label): sha256 \(digest) does not match the hub's \(meta.etag); the download was discarded")
      }
    }
    if fm.fileExists(atPath: blob) { try fm.removeItem(atPath: blob) }  // a blob of the wrong size, ours to replace
    try fm.moveItem(atPath: part, toPath: blob)
  }

  func sha256OfFile(_ path: String) throws -> String {
    let fh = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
    defer { try? fh.close() }
    var h = SHA256()
    while let d = try fh.read(upToCount: 4 << 20), !d.isEmpty { h.update(d) }
    return h.finalize().map { String(format: "%02x", $0) }.joined()
  }
}

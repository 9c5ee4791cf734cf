// A Hugging Face hub on loopback for the download tests (issue #16): the model-info API, `resolve` URLs that answer
// HEAD with an ETag (and, for "LFS" files, a 302 to a CDN path carrying X-Linked-Etag / X-Linked-Size), GET with
// `Range: bytes=N-` (206), a bearer token the API and resolve URLs require, and a CDN that cuts the first transfer
// of a file halfway (Content-Length announced, half the bytes sent, connection closed). Plain POSIX sockets on a
// thread of its own: one request per connection, `Connection: close`.
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import QoQIO

final class FakeHub: @unchecked Sendable {
  struct Served { var bytes: [UInt8]; var lfs: Bool }
  struct Seen { var method: String; var path: String; var range: String?; var auth: String? }

  let commit = "0123456789abcdef0123456789abcdef01234567"
  let files: [String: Served]
  /// Extra names in the file list (never fetched: not what qoq reads, or not a safe name).
  let listedOnly: [String]
  let token: String?
  /// CDN host name in redirects ("localhost" makes it a different host from the 127.0.0.1 endpoint).
  let cdnHost: String
  /// Files whose first CDN transfer is cut halfway.
  var cutOnce: Set<String>
  /// Files whose served bytes differ from their announced sha256 (a corrupt mirror).
  var corrupt: Set<String> = []
  private(set) var port: Int = 0
  private let lock = NSLock()
  private var _seen: [Seen] = []
  var seen: [Seen] { lock.lock(); defer { lock.unlock() }; return _seen }
  private var fd: Int32 = -1

  init(files: [String: Served], listedOnly: [String] = [], token: String? = nil, cdnHost: String = "localhost",
       cutOnce: Set<String> = []) throws {
    self.files = files; self.listedOnly = listedOnly; self.token = token; self.cdnHost = cdnHost; self.cutOnce = cutOnce
    fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw QoQError("socket() failed") }
    var one: Int32 = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = 0
    let ok = withUnsafePointer(to: &addr) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard ok == 0, listen(fd, 16) == 0 else { throw QoQError("bind/listen failed") }
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    port = Int(UInt16(bigEndian: addr.sin_port))
    let t = Thread { [self] in acceptLoop() }
    t.start()
  }

  var endpoint: String { "http://127.0.0.1:\(port)" }

  static func sha256(_ b: [UInt8]) -> String { sha256Hex(b) }
  /// A git-blob-like 40-hex ETag for small (non-LFS) files.
  static func smallETag(_ b: [UInt8]) -> String { String(sha256Hex(b).prefix(40)) }

  func stop() { shutdown(fd, Int32(SHUT_RDWR)); close(fd) }

  private func acceptLoop() {
    while true {
      let c = accept(fd, nil, nil)
      if c < 0 { return }
      handle(c)
      close(c)
    }
  }

  private func send(_ c: Int32, _ b: [UInt8]) {
    var off = 0
    while off < b.count {
      let n = b[off...].withUnsafeBytes { Glibc.send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
      if n <= 0 { return }
      off += n
    }
  }

  private func reply(_ c: Int32, _ status: String, _ headers: [(String, String)], _ body: [UInt8], sendBody: Bool = true,
                     announce: Int? = nil) {
    var h = "HTTP/1.1 \(status)\r\nConnection: close\r\nContent-Length: \(announce ?? body.count)\r\n"
    for (k, v) in headers { h += "\(k): \(v)\r\n" }
    send(c, Array((h + "\r\n").utf8))
    if sendBody { send(c, body) }
  }

  private func handle(_ c: Int32) {
    var buf: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while !buf.containsHeaderEnd {
      let n = recv(c, &chunk, chunk.count, 0)
      if n <= 0 { return }
      buf += chunk[0..<n]
      if buf.count > 65536 { return }
    }
    let text = String(decoding: buf, as: UTF8.self)
    let lines = text.components(separatedBy: "\r\n")
    let parts = lines[0].split(separator: " ")
    guard parts.count >= 2 else { return }
    let method = String(parts[0]), path = String(parts[1]).removingPercentEncoding ?? String(parts[1])
    var headers: [String: String] = [:]
    for l in lines.dropFirst() {
      guard let i = l.firstIndex(of: ":") else { continue }
      headers[l[..<i].lowercased()] = l[l.index(after: i)...].trimmingCharacters(in: .whitespaces)
    }
    lock.lock(); _seen.append(Seen(method: method, path: path, range: headers["range"], auth: headers["authorization"])); lock.unlock()
    let authorized = token == nil || headers["authorization"] == "Bearer \(token!)"
    // The model-info API.
    if path.hasPrefix("/api/models/") {
      guard authorized else { return reply(c, "401 Unauthorized", [], Array("gated".utf8)) }
      guard path == "/api/models/org/tiny/revision/main" || path == "/api/models/org/tiny/revision/\(commit)" else {
        return reply(c, "404 Not Found", [], Array("{}".utf8))
      }
      let siblings = (Array(files.keys) + listedOnly).sorted().map { "{\"rfilename\": \"\($0)\"}" }.joined(separator: ", ")
      return reply(c, "200 OK", [("Content-Type", "application/json")], Array("{\"sha\": \"\(commit)\", \"siblings\": [\(siblings)]}".utf8))
    }
    let resolvePrefix = "/org/tiny/resolve/\(commit)/"
    if path.hasPrefix(resolvePrefix) {
      guard authorized else { return reply(c, "401 Unauthorized", [], []) }
      let name = String(path.dropFirst(resolvePrefix.count))
      guard let f = files[name] else { return reply(c, "404 Not Found", [], []) }
      if f.lfs {
        let sha = Self.sha256(f.bytes)
        return reply(c, "302 Found", [("Location", "http://\(cdnHost):\(port)/cdn/\(name)"), ("X-Linked-Etag", "\"\(sha)\""),
                                      ("X-Linked-Size", "\(f.bytes.count)"), ("ETag", "\"\(Self.smallETag(f.bytes))\"")], [],
                     sendBody: false, announce: 0)
      }
      let etag = "\"\(Self.smallETag(f.bytes))\""
      return reply(c, "200 OK", [("ETag", etag), ("X-Repo-Commit", commit)], f.bytes, sendBody: method != "HEAD")
    }
    if path.hasPrefix("/cdn/") {
      let name = String(path.dropFirst(5))
      guard var f = files[name] else { return reply(c, "404 Not Found", [], []) }
      if corrupt.contains(name) { f.bytes[f.bytes.count / 2] ^= 0xFF }
      var from = 0
      if let r = headers["range"], r.hasPrefix("bytes="), r.hasSuffix("-"), let v = Int(r.dropFirst(6).dropLast()) { from = v }
      let body = Array(f.bytes[min(from, f.bytes.count)...])
      let status = from > 0 ? "206 Partial Content" : "200 OK"
      var h: [(String, String)] = [("Accept-Ranges", "bytes")]
      if from > 0 { h.append(("Content-Range", "bytes \(from)-\(f.bytes.count - 1)/\(f.bytes.count)")) }
      lock.lock(); let cut = cutOnce.remove(name) != nil; lock.unlock()
      if cut {
        reply(c, status, h, Array(body.prefix(body.count / 2)), announce: body.count)  // then the connection closes
        return
      }
      return reply(c, status, h, body)
    }
    reply(c, "404 Not Found", [], [])
  }
}

private extension Array where Element == UInt8 {
  var containsHeaderEnd: Bool {
    guard count >= 4 else { return false }
    for i in 0...(count - 4) where self[i] == 13 && self[i + 1] == 10 && self[i + 2] == 13 && self[i + 3] == 10 { return true }
    return false
  }
}

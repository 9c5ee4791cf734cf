// Class 4 of the hardening issue: the server stays responsive under abusive clients. The real `qoq serve` runs in
// its own process on a tiny model (so the test suite's other work cannot stall its executor); raw sockets play the
// attackers, bound to their own loopback source addresses (127.0.0.2…, each a different peer), and everyone else
// from 127.0.0.1.
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import QoQIO
import QoQModels
import QoQTestSupport
import Testing

/// `qoq serve` on a tiny model in a child process; the bound port is read from its banner.
final class ServerProcess {
  let process = Process()
  let port: Int
  /// The banner (stderr up to the line that names the address).
  let banner: String

  /// Serves `model`, or a fresh tiny model when nil.
  init(_ extra: [String], model: String? = nil) throws {
    var dir = model ?? ""
    if model == nil {
      dir = scratch("serve-\(UUID().uuidString.prefix(6))") + "/model"
      try writeTinyCheckpoint(try LlamaConfiguration(modelType: "llama", hiddenSize: 128, intermediateSize: 128, numHiddenLayers: 2,
                                                     numAttentionHeads: 4, numKeyValueHeads: 2, rmsNormEps: 1e-5, vocabSize: 300), to: dir)
    }
    guard let bin = qoqBinary else { throw HardeningTestError("the qoq binary is not built") }
    process.executableURL = URL(fileURLWithPath: bin)
    process.arguments = ["serve", "-m", dir, "--port", "0"] + extra
    let err = Pipe()
    process.standardError = err
    process.standardOutput = FileHandle.nullDevice
    try process.run()
    var text = ""
    let deadline = Date().addingTimeInterval(120)
    while Date() < deadline, !text.contains("/v1 (") {
      let chunk = err.fileHandleForReading.availableData
      if chunk.isEmpty { break }
      text += String(decoding: chunk, as: UTF8.self)
    }
    guard let r = text.range(of: "http://127.0.0.1:"), let p = Int(text[r.upperBound...].prefix { $0.isNumber }) else {
      process.terminate()
      throw HardeningTestError("qoq serve did not start: \(text)")
    }
    port = p
    banner = text
  }
  func stop() { process.terminate(); process.waitUntilExit() }

  /// One request on its own connection (Connection: close) from 127.0.0.1: status, body and seconds taken.
  func request(_ method: String, _ path: String, body: String? = nil) throws -> (status: Int?, text: String, seconds: Double) {
    let s = try RawSocket(port: port, timeout: 60)
    let t0 = Date()
    var req = "\(method) \(path) HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if let b = body { req += "Content-Type: application/json\r\nContent-Length: \(b.utf8.count)\r\n\r\n" + b } else { req += "\r\n" }
    s.send(req)
    let r = s.response()
    return (r.status, r.text, Date().timeIntervalSince(t0))
  }
}

/// A blocking TCP client socket with a receive timeout, optionally bound to a source address.
final class RawSocket {
  let fd: Int32
  init(port: Int, from source: String? = nil, timeout: Double = 3) throws {
    fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw QoQError("socket failed") }
    var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1e6))
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    if let s = source {
      var a = sockaddr_in(); a.sin_family = sa_family_t(AF_INET); a.sin_port = 0
      inet_pton(AF_INET, s, &a.sin_addr)
      let r = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
      guard r == 0 else { close(fd); throw QoQError("bind \(s) failed: \(String(cString: strerror(errno)))") }
    }
    var a = sockaddr_in(); a.sin_family = sa_family_t(AF_INET); a.sin_port = in_port_t(UInt16(port).bigEndian)
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr)
    let r = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    guard r == 0 else { close(fd); throw QoQError("connect failed: \(String(cString: strerror(errno)))") }
  }
  deinit { close(fd) }

  @discardableResult func send(_ s: String) -> Bool {
    let bytes = Array(s.utf8)
    return bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } == bytes.count
  }

  /// Reads until the peer closes or the timeout passes; returns the bytes and whether the peer closed.
  func readAll() -> (text: String, closed: Bool) {
    var out: [UInt8] = [], buf = [UInt8](repeating: 0, count: 4096)
    while true {
      let n = recv(fd, &buf, buf.count, 0)
      if n > 0 { out += buf[0..<n]; continue }
      return (String(decoding: out, as: UTF8.self), n == 0 || (n < 0 && errno == ECONNRESET))
    }
  }

  /// The status code of the first response read (until the timeout or close), and the response text.
  func response() -> (status: Int?, text: String) {
    let t = readAll().text
    guard t.hasPrefix("HTTP/1.") else { return (nil, t) }
    return (Int(t.split(separator: " ").dropFirst().first ?? ""), t)
  }
  func status() -> Int? { response().status }
}

/// Expectations collected on a plain thread (Swift Testing records issues from the test's task), checked after.
final class Checker: @unchecked Sendable {
  var failures: [String] = []
  func check(_ ok: Bool, _ message: @autoclosure () -> String = "", file: String = #fileID, line: Int = #line) {
    if !ok { failures.append("\(file):\(line): \(message())") }
  }
}

@Suite(.serialized) struct AbuseTests {
  static let completion = #"{"prompt":"hello","max_tokens":4,"temperature":0}"#

  /// Runs a test body (blocking sockets, sleeps) on a plain thread and checks what it collected.
  static func onThread(_ body: @escaping @Sendable (Checker) throws -> Void) async throws {
    let failures = try await onOwnThread { () -> [String] in
      let c = Checker()
      try body(c)
      return c.failures
    }
    #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
  }

  /// 200 slowloris connections from four peers (50 each, under the per-peer cap) hold their sockets open, trickling
  /// header bytes: /health and a completion from another client still answer within a second, and the slow sockets
  /// are closed once the header deadline passes.
  @Test func slowHeadersDoNotStarveOthers() async throws { try await Self.onThread(Self.slowHeadersDoNotStarveOthersBody) }

  static func slowHeadersDoNotStarveOthersBody(_ c: Checker) throws {
    let srv = try ServerProcess(["--header-timeout", "3"])
    defer { srv.stop() }
    var slow: [RawSocket] = []
    for i in 0..<200 {
      let s = try RawSocket(port: srv.port, from: "127.0.0.\(2 + i % 4)", timeout: 0.2)
      s.send("POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
      slow.append(s)
    }
    for round in 0..<2 {
      for s in slow { s.send("X-Slow-\(round): 1\r\n") }
      let h = try srv.request("GET", "/health")
      let r = try srv.request("POST", "/v1/completions", body: Self.completion)
      c.check(h.status == 200 && h.seconds < 1, "health \(h.status.map(String.init) ?? h.text) in \(h.seconds) s with 200 slow clients")
      c.check(r.status == 200 && r.seconds < 1, "completion \(r.status.map(String.init) ?? r.text) in \(r.seconds) s with 200 slow clients")
      Thread.sleep(forTimeInterval: 0.5)
    }
    // Past the header deadline every slow socket has been closed by the server.
    Thread.sleep(forTimeInterval: 3)
    var closed = 0
    for s in slow { s.send("Y: 1\r\n"); if s.readAll().closed { closed += 1 } }
    c.check(closed == 200, "\(closed) of 200 slow connections closed after the header timeout")
  }

  /// One peer holding its cap of connections cannot open more; other peers are unaffected.
  @Test func perPeerConnectionCap() async throws { try await Self.onThread(Self.perPeerConnectionCapBody) }

  static func perPeerConnectionCapBody(_ c: Checker) throws {
    let srv = try ServerProcess(["--max-connections-per-peer", "8", "--header-timeout", "60"])
    defer { srv.stop() }
    var held: [RawSocket] = []
    for _ in 0..<8 { held.append(try RawSocket(port: srv.port, from: "127.0.0.9", timeout: 10)) }
    Thread.sleep(forTimeInterval: 0.2)
    var refused = 0
    for _ in 0..<12 {
      let s = try RawSocket(port: srv.port, from: "127.0.0.9", timeout: 1)
      if s.readAll().closed { refused += 1 }
    }
    c.check(refused == 12, "\(refused) of 12 connections beyond the cap were closed")
    // The held ones still work, and so does everyone else.
    held[0].send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    c.check(held[0].status() == 200)
    c.check(try srv.request("GET", "/health").status == 200)
  }

  /// Chunked bodies: over the limit → 413; malformed chunking → 400; never a 500.
  @Test func chunkedBodies() async throws { try await Self.onThread(Self.chunkedBodiesBody) }

  static func chunkedBodiesBody(_ c: Checker) throws {
    let srv = try ServerProcess(["--max-body-bytes", "1024"])
    defer { srv.stop() }
    let head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    let big = try RawSocket(port: srv.port)
    big.send(head)
    let chunk = String(repeating: " ", count: 512)
    for _ in 0..<4 { big.send(String(chunk.utf8.count, radix: 16) + "\r\n" + chunk + "\r\n") }
    big.send("0\r\n\r\n")
    let over = big.response()
    c.check(over.status == 413, "\(over.text)")
    for bad in ["zz\r\nhello\r\n0\r\n\r\n", "5\r\nhello world, more than five\r\n0\r\n\r\n", "-1\r\nx\r\n"] {
      let s = try RawSocket(port: srv.port)
      s.send(head + bad)
      let st = s.response()
      c.check(st.status == 400, "malformed chunking \(bad.debugDescription) got \(st.text)")
    }
    // A small, valid chunked body still works.
    let ok = try RawSocket(port: srv.port)
    let body = Self.completion
    ok.send(head + String(body.utf8.count, radix: 16) + "\r\n" + body + "\r\n0\r\n\r\n")
    c.check(ok.status() == 200)
  }

  /// HTTP/1.0 without keep-alive: the connection is closed after the response.
  @Test func http10IsClosedAfterResponse() async throws { try await Self.onThread(Self.http10IsClosedAfterResponseBody) }

  static func http10IsClosedAfterResponseBody(_ c: Checker) throws {
    let srv = try ServerProcess([])
    defer { srv.stop() }
    let s = try RawSocket(port: srv.port, timeout: 3)
    s.send("GET /health HTTP/1.0\r\n\r\n")
    let r = s.readAll()
    c.check(r.text.contains("200") && r.text.contains("\"ok\""), "\(r.text)")
    c.check(r.closed, "the server kept an HTTP/1.0 connection open")
  }
}

// Class 4 of the hardening issue: the server stays responsive under abusive clients. Raw sockets play the attacker
// (bound to their own loopback source addresses, 127.0.0.2…, so each is a different peer); the real HTTP client
// from 127.0.0.1 plays everyone else.
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import QoQIO
@testable import QoQServer
import Testing

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

@Suite(.serialized) struct AbuseTests {
  static let completion = #"{"prompt":"hello","max_tokens":4,"temperature":0}"#

  /// 200 slowloris connections from four peers (50 each, under the per-peer cap) hold their sockets open, trickling
  /// header bytes: /health and a completion from another client still answer within a second, and the slow sockets
  /// are closed once the header deadline passes.
  @Test func slowHeadersDoNotStarveOthers() async throws {
    var o = ServerOptions()
    o.headerTimeout = 3
    let srv = try await LiveServer(options: o)
    var slow: [RawSocket] = []
    for i in 0..<200 {
      let s = try RawSocket(port: srv.port, from: "127.0.0.\(2 + i % 4)", timeout: 0.2)
      s.send("POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
      slow.append(s)
    }
    for round in 0..<2 {
      for s in slow { s.send("X-Slow-\(round): 1\r\n") }
      let t0 = Date()
      let h = try await srv.request("/health", method: "GET")
      let healthTime = Date().timeIntervalSince(t0)
      let t1 = Date()
      let c = try await srv.request("/v1/completions", body: Self.completion)
      let completionTime = Date().timeIntervalSince(t1)
      #expect(h.status == 200 && healthTime < 1, "health \(h.status) in \(healthTime) s with 200 slow clients")
      #expect(c.status == 200 && completionTime < 1, "completion \(c.status) in \(completionTime) s with 200 slow clients")
      try await Task.sleep(nanoseconds: 500_000_000)
    }
    // Past the header deadline every slow socket has been closed by the server.
    try await Task.sleep(nanoseconds: 3_000_000_000)
    var closed = 0
    for s in slow { s.send("Y: 1\r\n"); if s.readAll().closed { closed += 1 } }
    #expect(closed == 200, "\(closed) of 200 slow connections closed after the header timeout")
    try await srv.stop()
  }

  /// One peer holding its cap of connections cannot open more; other peers are unaffected.
  @Test func perPeerConnectionCap() async throws {
    var o = ServerOptions()
    o.maxConnectionsPerPeer = 8
    let srv = try await LiveServer(options: o)
    var held: [RawSocket] = []
    for _ in 0..<8 { held.append(try RawSocket(port: srv.port, from: "127.0.0.9", timeout: 0.3)) }
    try await Task.sleep(nanoseconds: 200_000_000)
    var refused = 0
    for _ in 0..<12 {
      let s = try RawSocket(port: srv.port, from: "127.0.0.9", timeout: 1)
      if s.readAll().closed { refused += 1 }
    }
    #expect(refused == 12, "\(refused) of 12 connections beyond the cap were closed")
    // The held ones still work, and so does everyone else.
    held[0].send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    #expect(held[0].status() == 200)
    #expect(try await srv.request("/health", method: "GET").status == 200)
    try await srv.stop()
  }

  /// Chunked bodies: over the limit → 413; malformed chunking → 400; never a 500.
  @Test func chunkedBodies() async throws {
    var o = ServerOptions()
    o.limits.maxBodyBytes = 1024
    let srv = try await LiveServer(options: o)
    let head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    let big = try RawSocket(port: srv.port)
    big.send(head)
    let chunk = String(repeating: " ", count: 512)
    for _ in 0..<4 { big.send(String(chunk.utf8.count, radix: 16) + "\r\n" + chunk + "\r\n") }
    big.send("0\r\n\r\n")
    let over = big.response()
    #expect(over.status == 413, "\(over.text)")
    for bad in ["zz\r\nhello\r\n0\r\n\r\n", "5\r\nhello world, more than five\r\n0\r\n\r\n", "-1\r\nx\r\n"] {
      let s = try RawSocket(port: srv.port)
      s.send(head + bad)
      let st = s.response()
      #expect(st.status == 400, "malformed chunking \(bad.debugDescription) got \(st.text)")
    }
    // A small, valid chunked body still works.
    let ok = try RawSocket(port: srv.port)
    let body = Self.completion
    ok.send(head + String(body.utf8.count, radix: 16) + "\r\n" + body + "\r\n0\r\n\r\n")
    #expect(ok.status() == 200)
    try await srv.stop()
  }

  /// HTTP/1.0 without keep-alive: the connection is closed after the response.
  @Test func http10IsClosedAfterResponse() async throws {
    let srv = try await LiveServer()
    let s = try RawSocket(port: srv.port, timeout: 3)
    s.send("GET /health HTTP/1.0\r\n\r\n")
    let r = s.readAll()
    #expect(r.text.contains("200") && r.text.contains("\"ok\""), "\(r.text)")
    #expect(r.closed, "the server kept an HTTP/1.0 connection open")
    try await srv.stop()
  }
}

// Abusive clients (hardening issue, class 4). Two guards on every connection, installed through Hummingbird's
// additional channel handlers:
//   - a per-peer connection cap: a client address holding `maxPerPeer` connections has further ones closed at once,
//     so one host cannot take every connection slot (the server-wide cap then starves everyone else);
//   - read deadlines: a request head must arrive within `headerTimeout` of the connection opening (or of the first
//     byte of a later request on a kept-alive connection), and its body within `bodyTimeout` of the head. A slowloris
//     client that trickles a byte every few seconds is closed at the deadline instead of holding its slot.
// The raw-byte side sits first in the pipeline (it sees bytes before the HTTP decoder); the request side sits after
// the HTTP codec and sees request heads and ends.
import Foundation
import HTTPTypes
import NIOCore
import NIOHTTPTypes

/// Connections per client address, shared by all connections of one server.
final class PeerRegistry: @unchecked Sendable {
  private let lock = NSLock()
  private var counts: [String: Int] = [:]
  let maxPerPeer: Int
  init(maxPerPeer: Int) { self.maxPerPeer = maxPerPeer }

  /// Counts a new connection; false when the peer is already at its cap (the connection is then not counted).
  func admit(_ peer: String) -> Bool {
    lock.lock(); defer { lock.unlock() }
    let n = counts[peer, default: 0]
    if n >= maxPerPeer { return false }
    counts[peer] = n + 1
    return true
  }
  func release(_ peer: String) {
    lock.lock(); defer { lock.unlock() }
    if let n = counts[peer] { counts[peer] = n > 1 ? n - 1 : nil }
  }
  var total: Int { lock.lock(); defer { lock.unlock() }; return counts.values.reduce(0, +) }
}

/// State shared by the two handlers of one connection (both run on the connection's event loop).
final class ConnectionDeadline: @unchecked Sendable {
  let headerTimeout: TimeAmount, bodyTimeout: TimeAmount
  var scheduled: Scheduled<Void>?
  /// True between the end of a request and the first byte of the next one (a kept-alive connection may idle then;
  /// Hummingbird's idle timeout covers that time).
  var betweenRequests = false
  /// The next bytes read start a request (its request line tells the HTTP version).
  var atRequestStart = true
  /// The current request is HTTP/1.0 without keep-alive: the connection closes after its response.
  var closeAfterResponse = false
  init(headerTimeout: TimeAmount, bodyTimeout: TimeAmount) { self.headerTimeout = headerTimeout; self.bodyTimeout = bodyTimeout }

  func arm(_ context: ChannelHandlerContext, _ after: TimeAmount) {
    scheduled?.cancel()
    let channel = context.channel
    scheduled = context.eventLoop.scheduleTask(in: after) { channel.close(promise: nil) }
  }
  func disarm() { scheduled?.cancel(); scheduled = nil }
}

/// First in the pipeline: the per-peer cap and the header deadline, on raw bytes.
final class RawConnectionGuard: ChannelInboundHandler, RemovableChannelHandler {
  typealias InboundIn = ByteBuffer
  typealias InboundOut = ByteBuffer
  let registry: PeerRegistry
  let deadline: ConnectionDeadline
  var peer: String?

  init(registry: PeerRegistry, deadline: ConnectionDeadline) { self.registry = registry; self.deadline = deadline }

  func handlerAdded(context: ChannelHandlerContext) {
    if context.channel.isActive { admit(context) }
  }
  func channelActive(context: ChannelHandlerContext) {
    if peer == nil { admit(context) }
    context.fireChannelActive()
  }
  private func admit(_ context: ChannelHandlerContext) {
    guard peer == nil else { return }
    let address = context.channel.remoteAddress?.ipAddress ?? "unknown"
    if registry.admit(address) {
      peer = address
      deadline.arm(context, deadline.headerTimeout)
    } else {
      context.close(promise: nil)
    }
  }
  func channelInactive(context: ChannelHandlerContext) {
    if let p = peer { registry.release(p); peer = nil }
    deadline.disarm()
    context.fireChannelInactive()
  }
  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    if deadline.betweenRequests {
      // The first byte of the next request on a kept-alive connection: its head is due within the header timeout.
      deadline.betweenRequests = false
      deadline.arm(context, deadline.headerTimeout)
    }
    if deadline.atRequestStart {
      deadline.atRequestStart = false
      deadline.closeAfterResponse = Self.isHTTP10WithoutKeepAlive(unwrapInboundIn(data))
    }
    context.fireChannelRead(data)
  }

  /// The request line says HTTP/1.0 and no `Connection: keep-alive` header follows (in the first bytes read, where
  /// a request head of any real client is).
  static func isHTTP10WithoutKeepAlive(_ buf: ByteBuffer) -> Bool {
    guard let text = buf.getString(at: buf.readerIndex, length: min(buf.readableBytes, 8192)) else { return false }
    guard let lineEnd = text.range(of: "\r\n") ?? text.range(of: "\n") else { return false }
    guard text[..<lineEnd.lowerBound].hasSuffix("HTTP/1.0") else { return false }
    let head = text.lowercased()
    return !(head.contains("\nconnection: keep-alive") || head.contains("\nconnection:keep-alive"))
  }
}

/// After the HTTP codec: a request head disarms the header deadline and arms the body deadline; its end disarms it.
/// When added to a new connection's pipeline it puts the connection's raw guard first.
final class RequestDeadlineGuard: ChannelDuplexHandler, RemovableChannelHandler {
  typealias InboundIn = HTTPRequestPart
  typealias InboundOut = HTTPRequestPart
  typealias OutboundIn = HTTPResponsePart
  typealias OutboundOut = HTTPResponsePart
  let deadline: ConnectionDeadline
  let raw: RawConnectionGuard

  init(registry: PeerRegistry, headerTimeout: TimeInterval, bodyTimeout: TimeInterval) {
    deadline = ConnectionDeadline(headerTimeout: .milliseconds(Int64(headerTimeout * 1000)),
                                  bodyTimeout: .milliseconds(Int64(bodyTimeout * 1000)))
    raw = RawConnectionGuard(registry: registry, deadline: deadline)
  }

  func handlerAdded(context: ChannelHandlerContext) {
    try? context.pipeline.syncOperations.addHandler(raw, position: .first)
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    switch unwrapInboundIn(data) {
    case .head:
      deadline.arm(context, deadline.bodyTimeout)
    case .body: break
    case .end:
      deadline.betweenRequests = true
      deadline.atRequestStart = true
      deadline.disarm()
    }
    context.fireChannelRead(data)
  }

  /// HTTP/1.0 without keep-alive: the response's end closes the connection (HTTP/1.0 clients read to the close).
  func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
    if case .end = unwrapOutboundIn(data), deadline.closeAfterResponse {
      context.writeAndFlush(data, promise: promise)
      context.close(promise: nil)
      return
    }
    context.write(data, promise: promise)
  }
}

import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// A small HTTP CONNECT proxy on loopback for tests: tunnels bytes both ways and records every
/// CONNECT target. Only targets in `allowedHosts` are tunneled (others get 403), so a test can
/// never reach beyond loopback through it.
public final class ConnectProxy: Sendable {
    public let port: Int
    let serverChannel: any Channel
    let targets: TargetLog

    final class TargetLog: Sendable {
        let list = Mutex<[String]>([])
    }

    init(port: Int, serverChannel: any Channel, targets: TargetLog) {
        self.port = port
        self.serverChannel = serverChannel
        self.targets = targets
    }

    /// `host:port` of every CONNECT request, in arrival order (refused ones too).
    public var connectTargets: [String] { targets.list.withLock { $0 } }

    /// Runs a proxy on 127.0.0.1 (port 0) for the duration of `body`.
    /// - Throws: `SimulatorError.bindFailed`; whatever `body` throws.
    public static func withRunning<R: Sendable>(
        allowedHosts: Set<String> = ["127.0.0.1", "localhost", "::1"],
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        _ body: (ConnectProxy) async throws -> R
    ) async throws -> R {
        let proxy = try await start(allowedHosts: allowedHosts, group: group)
        do {
            let result = try await body(proxy)
            await proxy.shutdown()
            return result
        } catch {
            await proxy.shutdown()
            throw error
        }
    }

    public static func start(
        allowedHosts: Set<String> = ["127.0.0.1", "localhost", "::1"],
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> ConnectProxy {
        let targets = TargetLog()
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ConnectRequestHandler(allowedHosts: allowedHosts, record: { target in
                        targets.list.withLock { $0.append(target) }
                    }))
                }
            }
        do {
            let server = try await bootstrap.bind(host: "127.0.0.1", port: 0).get()
            return ConnectProxy(port: server.localAddress?.port ?? 0, serverChannel: server, targets: targets)
        } catch {
            throw SimulatorError(.bindFailed, "connect proxy on 127.0.0.1: \(error)")
        }
    }

    /// Stops accepting; open tunnels close when either side closes.
    public func shutdown() async {
        try? await serverChannel.close()
    }
}

/// Reads the CONNECT head byte by byte, opens the tunnel, then forwards raw bytes.
final class ConnectRequestHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let allowedHosts: Set<String>
    let record: @Sendable (String) -> Void
    var head = ByteBuffer()
    var peer: (any Channel)?
    var buffered: [ByteBuffer] = []
    var connecting = false

    init(allowedHosts: Set<String>, record: @escaping @Sendable (String) -> Void) {
        self.allowedHosts = allowedHosts
        self.record = record
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if let peer {
            peer.writeAndFlush(bytes, promise: nil)
            return
        }
        if connecting {
            buffered.append(bytes)
            return
        }
        head.writeBuffer(&bytes)
        let view = head.readableBytesView
        let marker: [UInt8] = [13, 10, 13, 10]
        guard let endOffset = view.indices.first(where: { i in
            i + 4 <= view.endIndex && view[i..<(i + 4)].elementsEqual(marker)
        }).map({ $0 - view.startIndex + 4 }) else {
            if head.readableBytes > 16 * 1024 { context.close(promise: nil) }
            return
        }
        let text = head.getString(at: head.readerIndex, length: endOffset) ?? ""
        if let leftover = head.getSlice(at: head.readerIndex + endOffset, length: head.readableBytes - endOffset), leftover.readableBytes > 0 {
            buffered.append(leftover)
        }
        let line = text.split(separator: "\r\n").first.map(String.init) ?? ""
        let parts = line.split(separator: " ")
        guard parts.count >= 2, parts[0] == "CONNECT" else {
            respondAndClose(context, "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        }
        let target = String(parts[1])
        record(target)
        guard let colon = target.lastIndex(of: ":"), let port = Int(target[target.index(after: colon)...]) else {
            respondAndClose(context, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return
        }
        let host = String(target[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        guard allowedHosts.contains(host) else {
            respondAndClose(context, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        }
        connecting = true
        let inbound = context.channel
        ClientBootstrap(group: context.eventLoop)
            .channelInitializer { outbound in
                outbound.eventLoop.makeCompletedFuture {
                    try outbound.pipeline.syncOperations.addHandler(TunnelHandler(partner: inbound))
                }
            }
            .connect(host: host, port: port)
            .hop(to: context.eventLoop)
            .assumeIsolated()
            .whenComplete { result in
                switch result {
                case .success(let outbound):
                    self.peer = outbound
                    self.connecting = false
                    var reply = inbound.allocator.buffer(capacity: 64)
                    reply.writeString("HTTP/1.1 200 Connection Established\r\n\r\n")
                    inbound.writeAndFlush(reply, promise: nil)
                    for b in self.buffered { outbound.writeAndFlush(b, promise: nil) }
                    self.buffered = []
                case .failure:
                    var reply = inbound.allocator.buffer(capacity: 64)
                    reply.writeString("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                    inbound.writeAndFlush(reply).whenComplete { _ in inbound.close(promise: nil) }
                }
            }
    }

    func respondAndClose(_ context: ChannelHandlerContext, _ text: String) {
        var reply = context.channel.allocator.buffer(capacity: text.utf8.count)
        reply.writeString(text)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(reply)).whenComplete { _ in channel.close(promise: nil) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        peer?.close(promise: nil)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// The far side of a tunnel: bytes from the target go back to the client.
final class TunnelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let partner: any Channel
    init(partner: any Channel) { self.partner = partner }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        partner.writeAndFlush(unwrapInboundIn(data), promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        partner.close(promise: nil)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

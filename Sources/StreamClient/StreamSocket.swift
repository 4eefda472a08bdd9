import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket
import StreamProtocol

/// Receives every non-SYSTEM frame of every socket.
public protocol FrameSink: Sendable {
    /// Called on the socket's event loop; must not block. Answer through `context.ack` once the
    /// frame is safe, or never (the server then pushes it again).
    func receive(_ frame: StreamFrame, context: ConnectionContext)
}

/// The socket a frame came in on; acks go back on it and nowhere else.
public struct ConnectionContext: Sendable {
    public let app: String
    public let connectionID: String
    let channel: any Channel
    let acks: AckWriter

    init(app: String, connectionID: String, channel: any Channel) {
        self.app = app
        self.connectionID = connectionID
        self.channel = channel
        self.acks = AckWriter(channel: channel)
    }

    /// Writes the ack; if the socket is already gone the ack is dropped and the server redelivers.
    public func ack(_ ack: StreamAck) {
        let text = ack.encoded()
        acks.write(WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(string: text)))
    }
}

/// Acks of one socket written from other threads (the spool's commit thread completes a whole
/// batch at once) go to the event loop together: one task and one flush for all that queued up
/// meanwhile, not one of each per ack.
final class AckWriter: Sendable {
    private let channel: any Channel
    private let queued = NIOLockedValueBox<(frames: [WebSocketFrame], scheduled: Bool)>(([], false))

    init(channel: any Channel) {
        self.channel = channel
    }

    func write(_ frame: WebSocketFrame) {
        if channel.eventLoop.inEventLoop {
            channel.writeAndFlush(frame, promise: nil)
            return
        }
        let schedule = queued.withLockedValue { queued in
            queued.frames.append(frame)
            defer { queued.scheduled = true }
            return !queued.scheduled
        }
        guard schedule else { return }
        channel.eventLoop.execute { [self] in
            let frames = queued.withLockedValue { queued in
                defer { queued = ([], false) }
                return queued.frames
            }
            for frame in frames { channel.write(frame, promise: nil) }
            channel.flush()
        }
    }
}

/// How a socket shows that it is alive, and when it counts as dead.
public struct KeepaliveSettings: Sendable, Equatable {
    /// Nothing at all received for this long (no frame, not one byte) means the path is gone, as
    /// in a TCP black hole: the socket is replaced. Any inbound byte counts as life, and we ping
    /// whenever the socket has been quiet for a third of this, so a live link has two chances to
    /// answer before the limit.
    public var silenceTimeout: Duration
    /// No Stream frame (not even a SYSTEM ping) for this long means deaf: pongs come back but
    /// nothing is delivered.
    public var idleTimeout: Duration

    /// Quiet this long → a WebSocket ping (and again after as long while still quiet).
    public var pingInterval: Duration { silenceTimeout / 3 }

    /// Replaces a silent socket within 10 s: 6 s of silence plus a registration and a connect.
    public static let defaultSilenceTimeout: Duration = .seconds(6)

    public init(silenceTimeout: Duration = defaultSilenceTimeout, idleTimeout: Duration = .seconds(90)) {
        self.silenceTimeout = silenceTimeout
        self.idleTimeout = idleTimeout
    }
}

/// Why a socket wants to be replaced or has gone.
enum SocketEvent: Sendable, Equatable {
    /// SYSTEM `disconnect`: the server rotates this socket; nothing more will arrive on it.
    case disconnectRequested(reason: String)
    /// Silent or deaf: nothing useful will arrive on it any more.
    case deaf(reason: String)
    /// A frame over the size limit was left out; the socket still works but is replaced.
    case oversizedFrame(bytes: UInt64)
    case closed(reason: String)
}

/// One live Stream socket.
final class StreamSocket: Sendable {
    let id: String
    let channel: any Channel
    let events: AsyncStream<SocketEvent>
    let openedAt: ContinuousClock.Instant

    private init(id: String, channel: any Channel, events: AsyncStream<SocketEvent>) {
        self.id = id
        self.channel = channel
        self.events = events
        self.openedAt = .now
    }

    /// Closes with a WebSocket close frame; frames already in flight are still read and handled.
    func close() async {
        let frame = WebSocketFrame(fin: true, opcode: .connectionClose, data: ByteBuffer(bytes: [0x03, 0xE8]))
        let channel = self.channel
        // The server answers the close frame and we close on its answer; give it 2 s, then drop TCP.
        let deadline = channel.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
        channel.writeAndFlush(frame).whenFailure { _ in channel.close(promise: nil) }
        try? await channel.closeFuture.get()
        deadline.cancel()
    }

    /// Opens the socket of `ticket` and hands its frames to `sink`.
    /// - Throws: `StreamClientError` (`.timeout`, `.transport`, `.upgradeRefused`,
    ///   `.insecureEndpoint`); nothing stays open on failure.
    static func connect(
        ticket: StreamTicket, app: String, settings: NetworkSettings, keepalive: KeepaliveSettings,
        maxFrameSize: Int = StreamFrame.maximumSize, sink: any FrameSink, logger: Logger
    ) async throws(StreamClientError) -> StreamSocket {
        guard ContinuousClock.now - ticket.issuedAt < StreamTicket.usableFor else {
            throw StreamClientError(.ticketExpired, app: app)
        }
        guard var components = URLComponents(string: ticket.endpoint), let scheme = components.scheme,
            let host = components.host
        else { throw StreamClientError(.badResponse, app: app, detail: "endpoint \(ticket.endpoint) is not a URL") }
        let secure: Bool
        switch scheme {
        case "wss": secure = true
        case "ws":
            guard isLoopbackHost(host) else {
                throw StreamClientError(.insecureEndpoint, app: app, detail: ticket.endpoint)
            }
            secure = false
        default: throw StreamClientError(.badResponse, app: app, detail: "endpoint scheme \(scheme)")
        }
        let port = components.port ?? (secure ? 443 : 80)
        var query = components.queryItems ?? []
        query.append(URLQueryItem(name: "ticket", value: ticket.ticket))
        components.queryItems = query
        let path = (components.percentEncodedPath.isEmpty ? "/" : components.percentEncodedPath) + "?" + (components.percentEncodedQuery ?? "")

        let id = String(UUID().uuidString.prefix(8)).lowercased()
        let (events, continuation) = AsyncStream.makeStream(of: SocketEvent.self, bufferingPolicy: .bufferingNewest(8))
        let context = ConnectionID(app: app, id: id)
        let tls: TLSConfiguration?
        do {
            tls = secure ? try settings.tlsConfiguration() : nil
        } catch {
            throw StreamClientError(.transport, app: app, detail: "TLS setup: \(error)")
        }
        let proxy = settings.proxyEndpoint(for: host)
        let group = MultiThreadedEventLoopGroup.singleton
        let tunnel = group.any().makePromise(of: Void.self)
        let proxyStatus = NIOLockedValueBox<UInt?>(nil)
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(TimeAmount(settings.connectTimeout))
            .channelOption(.socketOption(.so_keepalive), value: 1)
            .channelInitializer { channel in
                guard proxy != nil else {
                    tunnel.succeed(())
                    return channel.eventLoop.makeSucceededVoidFuture()
                }
                return channel.eventLoop.makeCompletedFuture {
                    let target = host.contains(":") ? "[\(host)]" : host
                    let sync = channel.pipeline.syncOperations
                    // HTTP spoken only for the CONNECT; the codec leaves once the tunnel is up.
                    try sync.addHandler(HTTPRequestEncoder(), name: ProxyHandlerName.encoder)
                    try sync.addHandler(
                        ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .forwardBytes)), name: ProxyHandlerName.decoder)
                    try sync.addHandler(ResponseStatusPeek(status: proxyStatus))
                    try sync.addHandler(
                        NIOHTTP1ProxyConnectHandler(
                            targetHost: target, targetPort: port, headers: ["Host": "\(target):\(port)"],
                            deadline: .now() + TimeAmount(settings.requestTimeout), promise: tunnel))
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: proxy?.host ?? host, port: proxy?.port ?? port).get()
        } catch {
            tunnel.fail(error)
            throw StreamClientError(.transport, app: app, detail: "connecting to \(proxy.map { "proxy \($0.host):\($0.port)" } ?? "\(host):\(port)"): \(error)")
        }
        // One deadline for tunnel, TLS and upgrade: closing the channel fails whatever still waits.
        let timedOut = NIOLockedValueBox(false)
        let answerStatus = NIOLockedValueBox<UInt?>(nil)
        let handshakeDeadline = channel.eventLoop.scheduleTask(in: TimeAmount(settings.requestTimeout)) {
            timedOut.withLockedValue { $0 = true }
            channel.close(promise: nil)
        }
        defer { handshakeDeadline.cancel() }
        var tunnelUp = false
        do {
            do {
                try await tunnel.futureResult.get()
            } catch {
                try? await channel.close().get()
                throw StreamClientError.classify(
                    error, app: app, fallback: timedOut.withLockedValue { $0 } ? .timeout : .transport,
                    detail: proxyFailure(error, proxy: proxy, target: "\(host):\(port)", status: proxyStatus.withLockedValue { $0 }))
            }
            tunnelUp = true
            if proxy != nil {
                // The decoder leaves on a later tick; TLS must not start before it is gone.
                try await channel.eventLoop.flatSubmit {
                    let sync = channel.pipeline.syncOperations
                    return sync.removeHandler(name: ProxyHandlerName.encoder).and(sync.removeHandler(name: ProxyHandlerName.decoder))
                }.get()
            }
            let upgraded = try await channel.eventLoop.flatSubmit { () -> EventLoopFuture<Bool> in
                do {
                    if let tls {
                        let sslContext = try NIOSSLContext(configuration: tls)
                        let handler = try NIOSSLClientHandler(context: sslContext, serverHostname: isIPAddress(host) ? nil : host)
                        try channel.pipeline.syncOperations.addHandler(handler)
                    }
                    let frameHandler = StreamFrameHandler(
                        connection: context, keepalive: keepalive, maxFrameSize: maxFrameSize, sink: sink,
                        events: continuation, logger: logger)
                    let upgrader = NIOTypedWebSocketClientUpgrader<Bool>(
                        maxFrameSize: maxFrameSize,
                        upgradePipelineHandler: { channel, _ in
                            channel.eventLoop.makeCompletedFuture {
                                let sync = channel.pipeline.syncOperations
                                // Raw bytes pass the guard before the decoder could choke on a frame.
                                let decoder = try sync.handler(type: ByteToMessageHandler<WebSocketFrameDecoder>.self)
                                try sync.addHandler(frameHandler.inboundGuard, position: .before(decoder))
                                try sync.addHandler(frameHandler)
                                return true
                            }
                        })
                    var headers = HTTPHeaders()
                    headers.add(name: "Host", value: port == (secure ? 443 : 80) ? host : "\(host):\(port)")
                    headers.add(name: "Content-Length", value: "0")
                    let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: headers)
                    let configuration = NIOTypedHTTPClientUpgradeConfiguration<Bool>(
                        upgradeRequestHead: head, upgraders: [upgrader],
                        notUpgradingCompletionHandler: { channel in channel.eventLoop.makeSucceededFuture(false) })
                    var pipeline = NIOUpgradableHTTPClientPipelineConfiguration(upgradeConfiguration: configuration)
                    // The server may push a frame in the same read as its 101 answer; the
                    // default would drop those bytes and with them a message until redelivery.
                    pipeline.leftOverBytesStrategy = .forwardBytes
                    let upgrading = try channel.pipeline.syncOperations.configureUpgradableHTTPClientPipeline(configuration: pipeline)
                    let upgradeHandler = try channel.pipeline.syncOperations.handler(type: NIOTypedHTTPClientUpgradeHandler<Bool>.self)
                    try channel.pipeline.syncOperations.addHandler(
                        ResponseStatusPeek(status: answerStatus), position: .before(upgradeHandler))
                    return upgrading
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }.get()
            guard upgraded else {
                try? await channel.close().get()
                throw StreamClientError(.upgradeRefused, app: app, detail: "HTTP \(answerStatus.withLockedValue { $0 }.map(String.init) ?? "answer") without upgrade")
            }
        } catch let error as StreamClientError {
            throw error
        } catch {
            try? await channel.close().get()
            // A server that answers the upgrade with an error and hangs up fails the upgrade
            // future before NIO reports "not upgraded"; the status we saw tells what happened.
            if let status = answerStatus.withLockedValue({ $0 }), status != 101 {
                throw StreamClientError(.upgradeRefused, app: app, detail: "HTTP \(status) without upgrade")
            }
            let expired = timedOut.withLockedValue { $0 }
            // Hung up on before answering the upgrade (how a refused ticket can look): refused too.
            if !expired, tunnelUp, error is ChannelError {
                throw StreamClientError(.upgradeRefused, app: app, detail: "the server closed the connection instead of upgrading: \(error)")
            }
            let fallback: StreamClientError.Code = expired ? .timeout : .transport
            throw StreamClientError.classify(error, app: app, fallback: fallback, detail: "handshake with \(host):\(port): \(error)")
        }
        return StreamSocket(id: id, channel: channel, events: events)
    }
}

private enum ProxyHandlerName {
    static let encoder = "proxy-connect-encoder"
    static let decoder = "proxy-connect-decoder"
}

/// What went wrong on the way through the proxy, with the proxy's answer when there was one.
private func proxyFailure(_ error: any Error, proxy: (host: String, port: Int)?, target: String, status: UInt?) -> String {
    let via = proxy.map { "proxy \($0.host):\($0.port)" } ?? "the proxy"
    switch status {
    case 407?: return "\(via) wants credentials for CONNECT \(target) (HTTP 407); allow this host without authentication or set no_proxy"
    case let code? where code / 100 != 2: return "\(via) refused CONNECT \(target) with HTTP \(code); check that the proxy allows port \(target.split(separator: ":").last ?? "") or set no_proxy"
    default: return "tunnel through \(via) to \(target) failed: \(error)"
    }
}

/// Notes the status of the answer to the upgrade request (or to the proxy's CONNECT), then leaves the pipeline before any
/// WebSocket frame could reach it.
final class ResponseStatusPeek: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias InboundOut = HTTPClientResponsePart

    private let status: NIOLockedValueBox<UInt?>

    init(status: NIOLockedValueBox<UInt?>) {
        self.status = status
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head(let head) = unwrapInboundIn(data) {
            status.withLockedValue { $0 = head.status.code }
            context.fireChannelRead(data)
            context.pipeline.syncOperations.removeHandler(self, promise: nil)
            return
        }
        context.fireChannelRead(data)
    }
}

struct ConnectionID: Sendable {
    let app: String
    let id: String
}

private func isIPAddress(_ host: String) -> Bool {
    host.contains(":") || host.allSatisfy { $0.isNumber || $0 == "." }
}

/// Reads WebSocket frames of one socket on its event loop: pings, pongs, keepalive, and the
/// Stream frames inside text frames.
final class StreamFrameHandler: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked: all state is touched on the channel's event loop only.
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    /// Goes before the WebSocket decoder; tells us when the last byte came.
    let inboundGuard: InboundGuard
    private let connection: ConnectionID
    private let keepalive: KeepaliveSettings
    private let maxFrameSize: Int
    private let sink: any FrameSink
    private let events: AsyncStream<SocketEvent>.Continuation
    private let logger: Logger
    private var fragments: ByteBuffer?
    private var lastTextFrame = NIODeadline.now()
    private var lastPing = NIODeadline.distantPast
    private var timer: Scheduled<Void>?
    private var reportedDeaf = false
    private var reportedOversized = false
    private var context: ConnectionContext?

    init(
        connection: ConnectionID, keepalive: KeepaliveSettings, maxFrameSize: Int, sink: any FrameSink,
        events: AsyncStream<SocketEvent>.Continuation, logger: Logger
    ) {
        self.inboundGuard = InboundGuard(limit: maxFrameSize)
        self.connection = connection
        self.keepalive = keepalive
        self.maxFrameSize = maxFrameSize
        self.sink = sink
        self.events = events
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = ConnectionContext(app: connection.app, connectionID: connection.id, channel: context.channel)
        lastTextFrame = .now()
        keepaliveTick(context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
    }

    /// Pings a quiet socket and reports it once it stays silent (or deaf) too long. Runs again at
    /// the next moment something could be due; inbound bytes do not touch the timer, so a busy
    /// socket costs one check per ping interval.
    private func keepaliveTick(context: ChannelHandlerContext) {
        guard context.channel.isActive, !reportedDeaf else { return }
        let now = NIODeadline.now()
        let heard = max(inboundGuard.lastInbound, lastTextFrame)
        let silence = TimeAmount(keepalive.silenceTimeout)
        let idle = TimeAmount(keepalive.idleTimeout)
        let pingEvery = TimeAmount(keepalive.pingInterval)
        if now - heard >= silence {
            reportDeaf("nothing received for \(keepalive.silenceTimeout)")
            return
        }
        if now - lastTextFrame >= idle {
            reportDeaf("no frame for \(keepalive.idleTimeout)")
            return
        }
        if now - max(heard, lastPing) >= pingEvery {
            lastPing = now
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .ping, data: ByteBuffer(string: "ka"))), promise: nil)
        }
        let next = min(heard + silence, lastTextFrame + idle, max(heard, lastPing) + pingEvery)
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(deadline: max(next, now + .milliseconds(10))) {
            let (handler, context) = loopBound.value
            handler.keepaliveTick(context: context)
        }
    }

    private func reportDeaf(_ reason: String) {
        guard !reportedDeaf else { return }
        reportedDeaf = true
        events.yield(.deaf(reason: reason))
    }

    /// Once per socket: the slot replaces it; later oversized frames on it are left out quietly.
    private func reportOversized(_ bytes: UInt64) {
        fragments = nil
        guard !reportedOversized else {
            logger.debug("another oversized frame left out", metadata: ["conn.id": "\(connection.id)", "app": "\(connection.app)", "frame.bytes": "\(bytes)"])
            return
        }
        reportedOversized = true
        events.yield(.oversizedFrame(bytes: bytes))
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let skipped = event as? OversizedFrameSkipped {
            reportOversized(skipped.payloadBytes)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text:
            if frame.fin {
                handleText(frame.unmaskedData)
            } else {
                fragments = frame.unmaskedData
            }
        case .continuation:
            guard var buffer = fragments else { return }
            var more = frame.unmaskedData
            buffer.writeBuffer(&more)
            if buffer.readableBytes > maxFrameSize {
                reportOversized(UInt64(buffer.readableBytes))
            } else if frame.fin {
                fragments = nil
                handleText(buffer)
            } else {
                fragments = buffer
            }
        case .ping:
            let pong = WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
        case .connectionClose:
            let close = WebSocketFrame(fin: true, opcode: .connectionClose, data: ByteBuffer(bytes: [0x03, 0xE8]))
            context.writeAndFlush(wrapOutboundOut(close)).whenComplete { _ in context.close(promise: nil) }
        default:
            break  // pongs: any byte already counted as life
        }
    }

    private func handleText(_ buffer: ByteBuffer) {
        lastTextFrame = .now()
        guard let context = self.context else { return }
        let frame: StreamFrame
        do {
            frame = try buffer.withUnsafeReadableBytes { bytes throws(FrameError) in try StreamFrame.decode(bytes, limit: maxFrameSize) }
        } catch {
            logger.warning("malformed frame: \(error)", metadata: ["conn.id": "\(connection.id)", "app": "\(connection.app)"])
            return
        }
        switch frame.kind {
        case .system:
            switch frame.topic {
            case Topic.ping:
                context.ack(.pong(to: frame))
            case Topic.disconnect:
                let reason = frame.dataObject()?["reason"] as? String ?? "no reason given"
                events.yield(.disconnectRequested(reason: reason))
            default:
                logger.debug("ignoring SYSTEM frame", metadata: ["conn.id": "\(connection.id)", "topic": "\(frame.topic ?? "")"])
            }
        default:
            sink.receive(frame, context: context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        events.yield(.closed(reason: "connection closed"))
        events.finish()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.info("socket error: \(error)", metadata: ["conn.id": "\(connection.id)", "app": "\(connection.app)"])
        context.close(promise: nil)
    }
}

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
        let endpoint = try StreamEndpoint(ticket: ticket, app: app)
        let (host, port) = (endpoint.host, endpoint.port)

        let id = String(UUID().uuidString.prefix(8)).lowercased()
        let (events, continuation) = AsyncStream.makeStream(of: SocketEvent.self, bufferingPolicy: .bufferingNewest(8))
        let context = ConnectionID(app: app, id: id)
        let tls: TLSConfiguration?
        do {
            tls = endpoint.secure ? try settings.tlsConfiguration() : nil
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
                    try addProxyConnect(
                        to: channel, host: host, port: port, deadline: .now() + TimeAmount(settings.requestTimeout),
                        established: tunnel, status: proxyStatus)
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
            let frameHandler = StreamFrameHandler(
                connection: context, keepalive: keepalive, maxFrameSize: maxFrameSize, sink: sink,
                events: continuation, logger: logger)
            let upgraded = try await channel.eventLoop.flatSubmit {
                channel.eventLoop.makeCompletedFuture {
                    try addUpgrade(
                        to: channel, endpoint: endpoint, tls: tls, frameHandler: frameHandler, maxFrameSize: maxFrameSize,
                        answerStatus: answerStatus)
                }.flatMap { $0 }
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

    /// HTTP spoken only for the CONNECT through the proxy; the codec leaves once the tunnel is up.
    private static func addProxyConnect(
        to channel: any Channel, host: String, port: Int, deadline: NIODeadline, established: EventLoopPromise<Void>,
        status: NIOLockedValueBox<UInt?>
    ) throws {
        let target = host.contains(":") ? "[\(host)]" : host
        let sync = channel.pipeline.syncOperations
        try sync.addHandler(HTTPRequestEncoder(), name: ProxyHandlerName.encoder)
        try sync.addHandler(ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .forwardBytes)), name: ProxyHandlerName.decoder)
        try sync.addHandler(ResponseStatusPeek(status: status))
        try sync.addHandler(
            NIOHTTP1ProxyConnectHandler(
                targetHost: target, targetPort: port, headers: ["Host": "\(target):\(port)"], deadline: deadline,
                promise: established))
    }

    /// TLS when wanted, then the upgrade request; on 101 the frame handler takes over. The future
    /// says whether the server upgraded.
    private static func addUpgrade(
        to channel: any Channel, endpoint: StreamEndpoint, tls: TLSConfiguration?, frameHandler: StreamFrameHandler,
        maxFrameSize: Int, answerStatus: NIOLockedValueBox<UInt?>
    ) throws -> EventLoopFuture<Bool> {
        let sync = channel.pipeline.syncOperations
        if let tls {
            let sslContext = try NIOSSLContext(configuration: tls)
            try sync.addHandler(
                NIOSSLClientHandler(context: sslContext, serverHostname: isIPAddress(endpoint.host) ? nil : endpoint.host))
        }
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
        headers.add(name: "Host", value: endpoint.hostHeader)
        headers.add(name: "Content-Length", value: "0")
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: endpoint.pathAndQuery, headers: headers)
        let configuration = NIOTypedHTTPClientUpgradeConfiguration<Bool>(
            upgradeRequestHead: head, upgraders: [upgrader],
            notUpgradingCompletionHandler: { channel in channel.eventLoop.makeSucceededFuture(false) })
        var pipeline = NIOUpgradableHTTPClientPipelineConfiguration(upgradeConfiguration: configuration)
        // The server may push a frame in the same read as its 101 answer; the default would drop
        // those bytes and with them a message until redelivery.
        pipeline.leftOverBytesStrategy = .forwardBytes
        let upgrading = try sync.configureUpgradableHTTPClientPipeline(configuration: pipeline)
        let upgradeHandler = try sync.handler(type: NIOTypedHTTPClientUpgradeHandler<Bool>.self)
        try sync.addHandler(ResponseStatusPeek(status: answerStatus), position: .before(upgradeHandler))
        return upgrading
    }
}

/// Where a ticket's socket goes: plain `ws://` only to this machine.
struct StreamEndpoint {
    var host: String
    var port: Int
    var secure: Bool
    /// The endpoint's path and query with the ticket added.
    var pathAndQuery: String

    var hostHeader: String { port == (secure ? 443 : 80) ? host : "\(host):\(port)" }

    init(ticket: StreamTicket, app: String) throws(StreamClientError) {
        // The host as it goes on the wire: `host` would run it through IDNA (UTS #46), which loads
        // ICU's normaliser and its data into the daemon for the ASCII names DingTalk sends.
        guard var components = URLComponents(string: ticket.endpoint), let scheme = components.scheme,
            let host = components.encodedHost
        else { throw StreamClientError(.badResponse, app: app, detail: "endpoint \(ticket.endpoint) is not a URL") }
        switch scheme {
        case "wss": secure = true
        case "ws":
            guard isLoopbackHost(host) else {
                throw StreamClientError(.insecureEndpoint, app: app, detail: ticket.endpoint)
            }
            secure = false
        default: throw StreamClientError(.badResponse, app: app, detail: "endpoint scheme \(scheme)")
        }
        self.host = host
        port = components.port ?? (secure ? 443 : 80)
        var query = components.queryItems ?? []
        query.append(URLQueryItem(name: "ticket", value: ticket.ticket))
        components.queryItems = query
        pathAndQuery = (components.percentEncodedPath.isEmpty ? "/" : components.percentEncodedPath) + "?" + (components.percentEncodedQuery ?? "")
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

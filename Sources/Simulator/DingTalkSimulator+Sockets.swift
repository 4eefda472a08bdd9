import Logging
import Synchronization
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket
import StreamProtocol

/// Sits first in the pipeline so an abrupt close can bypass TLS (no close_notify, no close frame).
final class AbortHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    typealias OutboundIn = NIOAny
    static let name = "sim.abort"
}

/// Put right behind `AbortHandler` to make a TCP black hole: every byte in or out vanishes,
/// while the channel itself stays open (and still notices the peer closing).
final class BlackHoleHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    typealias OutboundIn = NIOAny

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
    func channelReadComplete(context: ChannelHandlerContext) {}
    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        promise?.succeed(())
    }
    func flush(context: ChannelHandlerContext) {}
}

extension DingTalkSimulator {
    func configureChild(_ channel: any Channel) throws {
        let key = ObjectIdentifier(channel)
        let refused = core.withLock { c -> Bool in
            if c.shutDown { return true }
            c.connections[key] = channel
            return false
        }
        if refused { throw SimulatorError(.shutDown, "connection after shutdown") }
        channel.closeFuture.whenComplete { [self] _ in _ = core.withLock { $0.connections.removeValue(forKey: key) } }
        let sync = channel.pipeline.syncOperations
        try sync.addHandler(AbortHandler(), name: AbortHandler.name)
        if let sslContext {
            try sync.addHandler(NIOSSLServerHandler(context: sslContext))
        }
        let upgrader = NIOWebSocketServerUpgrader(
            maxFrameSize: 1 << 20,
            automaticErrorHandling: true,
            shouldUpgrade: { [self] channel, head in
                channel.eventLoop.makeSucceededFuture(self.shouldUpgrade(head) ? HTTPHeaders() : nil)
            },
            upgradePipelineHandler: { [self] channel, head in
                self.upgrade(channel, head)
            }
        )
        try sync.configureHTTPServerPipeline(
            withServerUpgrade: (upgraders: [upgrader], completionHandler: { context in
                context.pipeline.removeHandler(name: SimHTTPHandler.name, promise: nil)
            })
        )
        try sync.addHandler(SimHTTPHandler(simulator: self), name: SimHTTPHandler.name)
    }

    enum TicketStatus { case valid(String), unknown, used, expired }

    func ticketStatus(_ ticket: String?) -> TicketStatus {
        guard let ticket else { return .unknown }
        return core.withLock { c in
            guard let t = c.tickets[ticket] else { return .unknown }
            if t.used { return .used }
            if t.expires < NIODeadline.now() { return .expired }
            return .valid(t.app)
        }
    }

    /// Consumes the ticket when it is good; otherwise the request falls through to the HTTP
    /// handler, which answers 401 (unknown) or 403 (used, expired).
    func shouldUpgrade(_ head: HTTPRequestHead) -> Bool {
        let (path, query) = splitURI(head.uri)
        guard path == "/connect", let ticket = query["ticket"] else { return false }
        return core.withLock { c in
            guard var t = c.tickets[ticket], !t.used, t.expires >= NIODeadline.now(), !c.shutDown else { return false }
            t.used = true
            c.tickets[ticket] = t
            return true
        }
    }

    func upgrade(_ channel: any Channel, _ head: HTTPRequestHead) -> EventLoopFuture<Void> {
        let (_, query) = splitURI(head.uri)
        let app = query["ticket"].flatMap { ticket in core.withLock { $0.tickets[ticket]?.app } }
        guard let app else { return channel.close() }
        let now = configuration.now()
        let id = core.withLock { c -> Int in
            let id = c.nextSocketId
            c.nextSocketId += 1
            c.sockets[id] = SocketEntry(id: id, app: app, channel: channel, state: .opening, openedAt: now, openedDeadline: .now(), connectionId: c.rng.hex(32))
            c.stats[app, default: AppStats()].openSockets += 1
            return id
        }
        return channel.eventLoop.makeCompletedFuture {
            let sync = channel.pipeline.syncOperations
            try sync.addHandler(NIOWebSocketFrameAggregator(minNonFinalFragmentSize: 0, maxAccumulatedFrameCount: 1024, maxAccumulatedFrameSize: 1 << 20))
            try sync.addHandler(SimSocketHandler(simulator: self, socketId: id, pingInterval: configuration.pingInterval.timeAmount))
        }.map {
            let writes = self.core.withLock { c -> [PendingWrite] in
                // Taken away (closed, made deaf) while it was opening: it stays so.
                guard c.sockets[id]?.state == .opening else { return [] }
                c.setSocketState(id, .live, now: now)
                return c.flushWaiting(app: app, now: now, recordDetails: self.configuration.recordDetails, redeliveryTimeout: self.redeliveryAmount)
            }
            self.logger.debug("socket open", metadata: ["conn.id": "\(id)", "app.name": "\(app)"])
            self.perform(writes)
        }
    }

    func socketClosed(_ id: Int) {
        let now = configuration.now()
        core.withLock { $0.setSocketState(id, .closed, now: now) }
    }

    /// Sends a SYSTEM ping on a live socket and remembers its opaque for the echo check. A deaf
    /// socket gets none: silence is the only thing a client can notice about it.
    func sendPing(_ id: Int) {
        let now = configuration.now()
        let write = core.withLock { c -> PendingWrite? in
            guard let s = c.sockets[id], s.state == .live else { return nil }
            let opaque = c.rng.uuid()
            let messageId = c.rng.messageId()
            c.sockets[id]?.pings[messageId] = opaque
            let data = #"{"opaque":"\#(opaque)"}"#
            let text = #"{"specVersion":"1.0","type":"SYSTEM","headers":{"contentType":"application/json","messageId":"\#(messageId)","time":"\#(Int64(now.timeIntervalSince1970 * 1000))","topic":"ping"},"data":\#(JSONText.quote(data))}"#
            return PendingWrite(channel: s.channel, text: text)
        }
        if let write { perform(write) }
    }

    /// Handles one text frame from a client: an ack (of a ping or a push), or junk (counted).
    func receiveText(socketId: Int, text: ByteBuffer) {
        let receivedAt = configuration.recordAckLatencies ? NIODeadline.now() : nil
        let code: Int
        let messageId: String
        let data: String?
        // The usual shape in one pass; anything else (data as an object, a fractional code, a
        // header that is not a string) the general way, which decides what is malformed.
        if let ack = StreamAck.decodeReceived(text.readableBytesView), let id = ack.headers["messageId"] {
            (code, messageId, data) = (ack.code, id, ack.data)
        } else {
            guard let object = JSONText.object(text.readableBytesView),
                  let headers = object["headers"] as? [String: Any],
                  let id = headers["messageId"] as? String
            else {
                core.withLock { $0.malformedFrames += 1 }
                return
            }
            messageId = id
            code = (object["code"] as? Int) ?? (object["code"] as? NSNumber)?.intValue ?? 0
            if let s = object["data"] as? String { data = s } else if let o = object["data"], !(o is NSNull) { data = JSONText.encode(o) } else { data = nil }
        }
        let now = configuration.now()
        let outcome = core.withLock {
            $0.receiveAck(socketId: socketId, code: code, messageId: messageId, data: data, now: now, recordDetails: configuration.recordDetails, acceptOtherSockets: configuration.acceptAcksFromOtherSockets,
                receivedAt: receivedAt)
        }
        if case .card(let continuation, let response) = outcome {
            continuation.resume(returning: response)
        }
    }

    /// Takes a socket away from its client; see `DisconnectMode`.
    /// - Throws: `SimulatorError.noSuchSocket` when the socket is unknown or already closed.
    public func disconnect(socket id: Int, mode: DisconnectMode) throws {
        let now = configuration.now()
        let grace = configuration.disconnectGrace.timeAmount
        let action = core.withLock { c -> (any Channel, String?)? in
            guard let s = c.sockets[id], s.state != .closed else { return nil }
            switch mode {
            case .deaf:
                c.setSocketState(id, .deaf, now: now)
                return (s.channel, nil)
            case .blackHole:
                // The server cannot tell: the socket stays live and keeps getting pushes.
                guard !s.blackHoled else { return (s.channel, nil) }
                c.sockets[id]?.blackHoled = true
                return (s.channel, "blackHole")
            case .abruptClose:
                c.setSocketState(id, .closed, now: now)
                return (s.channel, nil)
            case .disconnectFrame:
                guard s.state != .draining else { return (s.channel, nil) }
                c.setSocketState(id, .draining, now: now)
                let messageId = c.rng.messageId()
                let data = #"{"reason":"persistent connection is timeout"}"#
                let text = #"{"specVersion":"1.0","type":"SYSTEM","headers":{"contentType":"application/json","messageId":"\#(messageId)","time":"\#(Int64(now.timeIntervalSince1970 * 1000))","topic":"disconnect"},"data":\#(JSONText.quote(data))}"#
                return (s.channel, text)
            }
        }
        guard let (channel, text) = action else { throw SimulatorError(.noSuchSocket, "\(id)") }
        switch mode {
        case .deaf:
            break
        case .blackHole:
            guard text != nil else { break }
            channel.eventLoop.execute {
                let sync = channel.pipeline.syncOperations
                guard let abort = try? sync.context(name: AbortHandler.name) else { return }
                try? sync.addHandler(BlackHoleHandler(), position: .after(abort.handler))
            }
        case .disconnectFrame:
            if let text { perform(PendingWrite(channel: channel, text: text)) }
            channel.eventLoop.scheduleTask(in: grace) { channel.close(promise: nil) }
        case .abruptClose:
            // SO_LINGER 0 turns the close into a reset; closing from the first handler skips TLS.
            let lingered = (channel as? any SocketOptionProvider)?.setSoLinger(linger(l_onoff: 1, l_linger: 0))
                ?? channel.eventLoop.makeSucceededVoidFuture()
            lingered.whenComplete { _ in
                if let context = try? channel.pipeline.syncOperations.context(name: AbortHandler.name) {
                    context.close(promise: nil)
                } else {
                    channel.close(promise: nil)
                }
            }
        }
        logger.debug("socket disconnected", metadata: ["conn.id": "\(id)", "sim.mode": "\(mode.rawValue)"])
    }

    /// Writes one text frame of exactly `bytes` bytes, a CALLBACK padded to size, on `socket` or
    /// on the app's oldest live socket. Not a delivery: never pushed again, its ack is ignored.
    /// - Throws: `SimulatorError.noSuchSocket` when there is no such live socket.
    @discardableResult
    public func pushOversizedFrame(app: String, socket: Int? = nil, bytes: Int) throws -> Int {
        _ = try self.app(named: app)
        let target = core.withLock { c -> (Int, any Channel)? in
            let live = c.sockets.values.filter { $0.app == app && $0.state == .live }.sorted { $0.id < $1.id }
            guard let entry = socket.map({ id in live.first { $0.id == id } }) ?? live.first else { return nil }
            return (entry.id, entry.channel)
        }
        guard let (id, channel) = target else { throw SimulatorError(.noSuchSocket, socket.map(String.init) ?? "no live socket of \(app)") }
        let head = #"{"specVersion":"1.0","type":"CALLBACK","headers":{"contentType":"application/json","messageId":"oversized-\#(id)","topic":"/v1.0/im/bot/messages/get"},"data":"{\"pad\":\""#
        let tail = #"\"}"}"#
        let padding = max(bytes - head.utf8.count - tail.utf8.count, 0)
        perform(PendingWrite(channel: channel, text: head + String(repeating: "x", count: padding) + tail))
        logger.debug("oversized frame pushed", metadata: ["conn.id": "\(id)", "frame.bytes": "\(bytes)"])
        return id
    }

    /// Disconnects every open socket of `app` (`socket` nil), including one whose client already
    /// holds the upgrade answer while the simulator is still setting it up; or one socket.
    public func disconnect(app: String, socket: Int? = nil, mode: DisconnectMode) throws {
        _ = try self.app(named: app)
        if let socket {
            try disconnect(socket: socket, mode: mode)
            return
        }
        let ids = core.withLock { c in c.sockets.values.filter { $0.app == app && [.opening, .live, .deaf].contains($0.state) }.map(\.id) }
        for id in ids { try? disconnect(socket: id, mode: mode) }
    }
}

/// The server side of one Stream socket: pings out, acks in, pong for ping control frames.
final class SimSocketHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    let simulator: DingTalkSimulator
    let socketId: Int
    let pingInterval: TimeAmount
    var pingTask: RepeatedTask?

    init(simulator: DingTalkSimulator, socketId: Int, pingInterval: TimeAmount) {
        self.simulator = simulator
        self.socketId = socketId
        self.pingInterval = pingInterval
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let sim = simulator
        let id = socketId
        pingTask = context.eventLoop.scheduleRepeatedTask(initialDelay: pingInterval, delay: pingInterval) { _ in
            sim.sendPing(id)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        pingTask?.cancel()
        pingTask = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text:
            simulator.receiveText(socketId: socketId, text: frame.unmaskedData)
        case .ping:
            let pong = WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
        case .connectionClose:
            let close = WebSocketFrame(fin: true, opcode: .connectionClose, data: context.channel.allocator.buffer(bytes: [0x03, 0xE8]))
            context.writeAndFlush(wrapOutboundOut(close), promise: nil)
            context.close(promise: nil)
        default:
            break
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        pingTask?.cancel()
        pingTask = nil
        simulator.socketClosed(socketId)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// Splits `/path?a=b&c=d` into the path and percent-decoded query items.
func splitURI(_ uri: String) -> (path: String, query: [String: String]) {
    guard let q = uri.firstIndex(of: "?") else { return (uri, [:]) }
    var items: [String: String] = [:]
    for pair in uri[uri.index(after: q)...].split(separator: "&") {
        let parts = pair.split(separator: "=", maxSplits: 1)
        let key = String(parts[0]).removingPercentEncoding ?? String(parts[0])
        let raw = parts.count > 1 ? String(parts[1]).replacingOccurrences(of: "+", with: " ") : ""
        items[key] = raw.removingPercentEncoding ?? raw
    }
    return (String(uri[..<q]), items)
}

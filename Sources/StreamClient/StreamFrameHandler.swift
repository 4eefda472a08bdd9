import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOWebSocket
import StreamProtocol

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
    /// The fragments of a text message so far. Reassembled here rather than by NIO's frame
    /// aggregator: when the guard cuts an oversized fragment out of the stream, the message it
    /// belonged to must be dropped whole, and only this handler hears of the cut in time.
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

import NIOConcurrencyHelpers
import NIOCore
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

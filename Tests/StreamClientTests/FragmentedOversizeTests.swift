import Logging
import NIOCore
import NIOEmbedded
import NIOWebSocket
import StreamProtocol
import Synchronization
import Testing

@testable import StreamClient

/// The guard, the WebSocket decoder and the frame handler together, fed raw bytes: an oversized
/// fragment must not let the fragments around it be glued into a message.
@Suite("Oversized fragments")
struct FragmentedOversizeTests {
    final class Collecting: FrameSink {
        let ids = Mutex<[String]>([])
        func receive(_ frame: StreamFrame, context: ConnectionContext) {
            ids.withLock { $0.append(frame.messageID ?? "?") }
        }
    }

    static func callback(_ id: String) -> [UInt8] {
        Array(#"{"specVersion":"1.0","type":"CALLBACK","headers":{"messageId":"\#(id)","topic":"/v1.0/im/bot/messages/get"},"data":"{}"}"#.utf8)
    }

    /// An unmasked frame as a server sends it.
    static func wire(_ opcode: UInt8, fin: Bool, _ payload: [UInt8]) -> [UInt8] {
        var bytes: [UInt8] = [(fin ? 0x80 : 0) | opcode]
        if payload.count < 126 {
            bytes.append(UInt8(payload.count))
        } else {
            bytes += [126, UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
        }
        return bytes + payload
    }

    /// Runs `bytes` through the pipeline; returns the delivered message ids and the socket's events.
    static func feed(_ bytes: [UInt8], limit: Int) async throws -> (delivered: [String], events: [SocketEvent]) {
        let (events, continuation) = AsyncStream.makeStream(of: SocketEvent.self)
        let sink = Collecting()
        let handler = StreamFrameHandler(
            connection: ConnectionID(app: "helpdesk", id: "t1"), keepalive: KeepaliveSettings(), maxFrameSize: limit,
            sink: sink, events: continuation, logger: Logger(label: "test"))
        let channel = EmbeddedChannel()
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try channel.pipeline.syncOperations.addHandlers([
            handler.inboundGuard, ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: limit)), handler,
        ])
        try channel.writeInbound(ByteBuffer(bytes: bytes))
        continuation.finish()
        var seen: [SocketEvent] = []
        for await event in events { seen.append(event) }
        _ = try? channel.finish()
        return (sink.ids.withLock { $0 }, seen)
    }

    @Test(.timeLimit(.minutes(1)))
    func anOversizedMiddleFragmentDropsTheWholeMessage() async throws {
        let message = Self.callback("glued")
        let half = message.count / 2
        let bytes = Self.wire(0x1, fin: false, Array(message[..<half]))
            + Self.wire(0x0, fin: false, Array(repeating: 0x20, count: 300))
            + Self.wire(0x0, fin: true, Array(message[half...]))
            + Self.wire(0x1, fin: true, Self.callback("next"))
        let (delivered, events) = try await Self.feed(bytes, limit: 200)
        #expect(delivered == ["next"])
        #expect(events == [.oversizedFrame(bytes: 300)])
    }

    @Test(.timeLimit(.minutes(1)))
    func fragmentsAboveTheLimitTogetherAreDroppedAndReported() async throws {
        let message = Self.callback("whole")
        let half = message.count / 2
        let bytes = Self.wire(0x1, fin: false, Array(message[..<half]))
            + Self.wire(0x0, fin: true, Array(message[half...]))
            + Self.wire(0x1, fin: true, Self.callback("n"))
        let (delivered, events) = try await Self.feed(bytes, limit: message.count - 1)
        #expect(delivered == ["n"])
        #expect(events == [.oversizedFrame(bytes: UInt64(message.count))])
    }
}

import NIOCore

/// Told down the pipeline, in order with the frames around it, when a frame over the limit was
/// left out.
struct OversizedFrameSkipped: Sendable, Equatable {
    let payloadBytes: UInt64
}

/// Sits between TLS and the WebSocket decoder and sees every byte a socket receives: it notes
/// when the peer last sent anything (a slow frame still trickling in counts as life), and leaves
/// out frames above the size limit, so one huge frame costs neither memory nor the socket.
final class InboundGuard: ChannelInboundHandler, RemovableChannelHandler {
    // Only touched on the channel's event loop.
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private var skipper: FrameSkipper
    /// When the last byte arrived.
    private(set) var lastInbound = NIODeadline.now()

    init(limit: Int) {
        skipper = FrameSkipper(limit: limit)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lastInbound = .now()
        for piece in skipper.scan(unwrapInboundIn(data)) {
            switch piece {
            case .pass(let bytes):
                context.fireChannelRead(wrapInboundOut(bytes))
            case .skipped(let payload):
                context.fireUserInboundEventTriggered(OversizedFrameSkipped(payloadBytes: payload))
            }
        }
    }
}

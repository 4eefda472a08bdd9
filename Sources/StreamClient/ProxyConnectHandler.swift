import NIOCore

/// Opens a tunnel through an HTTP CONNECT proxy, then gets out of the way: the TLS and
/// WebSocket handlers added after it see a plain byte stream to the target.
final class ProxyConnectHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let target: String
    private let established: EventLoopPromise<Void>
    private var response = ByteBuffer()
    private var done = false

    init(targetHost: String, targetPort: Int, established: EventLoopPromise<Void>) {
        let host = targetHost.contains(":") ? "[\(targetHost)]" : targetHost
        self.target = "\(host):\(targetPort)"
        self.established = established
    }

    func channelActive(context: ChannelHandlerContext) {
        let request = "CONNECT \(target) HTTP/1.1\r\nHost: \(target)\r\n\r\n"
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: request)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !done else {
            context.fireChannelRead(data)
            return
        }
        var bytes = unwrapInboundIn(data)
        response.writeBuffer(&bytes)
        let view = response.readableBytesView
        guard let end = view.firstRange(of: Array("\r\n\r\n".utf8)) else {
            if response.readableBytes > 16 * 1024 { fail(context, "proxy answer too long") }
            return
        }
        let head = String(decoding: view[view.startIndex..<end.lowerBound], as: UTF8.self)
        let statusLine = head.split(separator: "\r\n", maxSplits: 1).first.map(String.init) ?? ""
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), parts[1] == "200" else {
            fail(context, "proxy refused CONNECT \(target): \(statusLine)")
            return
        }
        done = true
        // Bytes after the header belong to the tunnel (normally none before we speak first).
        response.moveReaderIndex(forwardBy: end.upperBound - view.startIndex)
        let leftover = response
        context.pipeline.syncOperations.removeHandler(self, promise: nil)
        established.succeed(())
        if leftover.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(leftover)) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !done { established.fail(ProxyError(message: "proxy closed the connection before the tunnel was up")) }
        done = true
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(context, "proxy connection failed: \(error)")
    }

    private func fail(_ context: ChannelHandlerContext, _ message: String) {
        guard !done else { return }
        done = true
        established.fail(ProxyError(message: message))
        context.close(promise: nil)
    }

}

struct ProxyError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

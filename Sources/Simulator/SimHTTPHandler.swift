import Foundation
import NIOCore
import NIOHTTP1
import StreamProtocol

/// What a route decided; the handler turns it into bytes (maybe later, maybe never).
struct HTTPAnswer: Sendable {
    var status: HTTPResponseStatus
    var body: [UInt8]
    var contentType = "application/json"
    var delay: TimeAmount?
    var noAnswer = false

    static func json(_ status: HTTPResponseStatus, _ text: String) -> HTTPAnswer {
        HTTPAnswer(status: status, body: Array(text.utf8))
    }

    static let never = HTTPAnswer(status: .ok, body: [], noAnswer: true)
}

struct HTTPRequest: Sendable {
    var method: HTTPMethod
    var uri: String
    var path: String
    var query: [String: String]
    var headers: HTTPHeaders
    var body: [UInt8]
}

/// Collects one request (head + body, bounded) and hands it to the simulator's router.
final class SimHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    static let name = "sim.http"
    static let maxBody = 4 << 20

    let simulator: DingTalkSimulator
    var head: HTTPRequestHead?
    var body: [UInt8] = []
    var tooLarge = false

    init(simulator: DingTalkSimulator) {
        self.simulator = simulator
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body = []
            tooLarge = false
        case .body(var buffer):
            if body.count + buffer.readableBytes > Self.maxBody {
                tooLarge = true
            } else if let bytes = buffer.readBytes(length: buffer.readableBytes) {
                body += bytes
            }
        case .end:
            guard let head else { return }
            self.head = nil
            let (path, query) = splitURI(head.uri)
            let answer: HTTPAnswer
            if tooLarge {
                answer = .json(.payloadTooLarge, #"{"code":"RequestTooLarge","message":"body over 4 MiB"}"#)
            } else {
                let request = HTTPRequest(method: head.method, uri: head.uri, path: path, query: query, headers: head.headers, body: body)
                answer = simulator.route(request)
            }
            body = []
            if answer.noAnswer { return }
            let keepAlive = head.isKeepAlive
            let version = head.version
            if let delay = answer.delay {
                let loop = context.eventLoop.assumeIsolated()
                loop.scheduleTask(in: delay) {
                    Self.write(answer, version: version, keepAlive: keepAlive, context: context)
                }
            } else {
                Self.write(answer, version: version, keepAlive: keepAlive, context: context)
            }
        }
    }

    static func write(_ answer: HTTPAnswer, version: HTTPVersion, keepAlive: Bool, context: ChannelHandlerContext) {
        guard context.channel.isActive else { return }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: answer.contentType)
        headers.add(name: "Content-Length", value: String(answer.body.count))
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        // DingTalk's servers send it; `dingstream doctor` reads the clock skew from it.
        headers.add(name: "Date", value: HTTPDate.format(epochSeconds: Int(Date().timeIntervalSince1970)))
        let head = HTTPResponseHead(version: version, status: answer.status, headers: headers)
        context.write(NIOAny(HTTPServerResponsePart.head(head)), promise: nil)
        if !answer.body.isEmpty {
            context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(context.channel.allocator.buffer(bytes: answer.body)))), promise: nil)
        }
        if keepAlive {
            context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil)), promise: nil)
        } else {
            let promise = context.eventLoop.makePromise(of: Void.self)
            context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil)), promise: promise)
            let channel = context.channel
            promise.futureResult.whenComplete { _ in channel.close(promise: nil) }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

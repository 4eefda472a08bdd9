import Foundation
import Testing
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
@testable import Simulator

/// A minimal HTTP/1.1 client over a real loopback socket (one request per connection).
struct TestHTTPResponse: Sendable {
    var status: Int
    var body: String
    var json: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any] ?? [:] }
}

enum TestHTTP {
    static func request(
        port: Int, method: HTTPMethod = .POST, path: String, json: String? = nil, headers: [String: String] = [:]
    ) async throws -> TestHTTPResponse {
        let promise = MultiThreadedEventLoopGroup.singleton.next().makePromise(of: TestHTTPResponse.self)
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(ResponseCollector(promise: promise))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: path)
        head.headers.add(name: "Host", value: "127.0.0.1:\(port)")
        head.headers.add(name: "Content-Type", value: "application/json")
        head.headers.add(name: "Accept", value: "application/json")
        head.headers.add(name: "Connection", value: "close")
        for (k, v) in headers { head.headers.add(name: k, value: v) }
        let body = json.map { channel.allocator.buffer(string: $0) }
        head.headers.add(name: "Content-Length", value: String(body?.readableBytes ?? 0))
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        if let body { channel.write(HTTPClientRequestPart.body(.byteBuffer(body)), promise: nil) }
        try await channel.writeAndFlush(HTTPClientRequestPart.end(nil))
        defer { channel.close(promise: nil) }
        return try await promise.futureResult.get()
    }
}

final class ResponseCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    let promise: EventLoopPromise<TestHTTPResponse>
    var status = 0
    var body = ""
    init(promise: EventLoopPromise<TestHTTPResponse>) { self.promise = promise }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): status = Int(h.status.code)
        case .body(let b): body += String(buffer: b)
        case .end: promise.succeed(TestHTTPResponse(status: status, body: body))
        }
    }
    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(ChannelError.inputClosed)
    }
}

/// A bare Stream client: collects text frames, can ack, answer pings, or stay silent.
final class TestSocket: Sendable {
    let channel: any Channel
    let frames: NIOLockedValueBox<[String]>
    let autoPing: Bool

    private init(channel: any Channel, frames: NIOLockedValueBox<[String]>, autoPing: Bool) {
        self.channel = channel
        self.frames = frames
        self.autoPing = autoPing
    }

    /// Upgrades `GET /connect?ticket=…`; throws when the server refuses (no 101).
    static func connect(port: Int, ticket: String, autoPing: Bool = true) async throws -> TestSocket {
        let frames = NIOLockedValueBox<[String]>([])
        let upgraded = MultiThreadedEventLoopGroup.singleton.next().makePromise(of: Void.self)
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                let upgrader = NIOWebSocketClientUpgrader(maxFrameSize: 1 << 20, upgradePipelineHandler: { channel, _ in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(FrameCollector(frames: frames, autoPing: autoPing))
                    }
                })
                return channel.pipeline.addHTTPClientHandlers(withClientUpgrade: (upgraders: [upgrader], completionHandler: { _ in upgraded.succeed() }))
                    .flatMapThrowing { try channel.pipeline.syncOperations.addHandler(UpgradeFailureWatcher(promise: upgraded)) }
            }
            .connect(host: "127.0.0.1", port: port).get()
        var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/connect?ticket=" + ticket)
        head.headers.add(name: "Host", value: "127.0.0.1:\(port)")
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        try await channel.writeAndFlush(HTTPClientRequestPart.end(nil))
        do {
            try await upgraded.futureResult.get()
        } catch {
            try? await channel.close()
            throw error
        }
        return TestSocket(channel: channel, frames: frames, autoPing: autoPing)
    }

    static func register(port: Int, app: SimulatedApp) async throws -> String {
        let body = #"{"clientId":"\#(app.clientId)","clientSecret":"\#(app.clientSecret)","subscriptions":[{"type":"EVENT","topic":"*"},{"type":"CALLBACK","topic":"/v1.0/im/bot/messages/get"}],"ua":"simtest/1","localIp":"127.0.0.1"}"#
        let r = try await TestHTTP.request(port: port, path: "/v1.0/gateway/connections/open", json: body)
        guard r.status == 200, let ticket = r.json["ticket"] as? String else { throw SimulatorError(.invalidRequest, "registration: \(r.status) \(r.body)") }
        return ticket
    }

    static func open(_ sim: DingTalkSimulator, app: String = "helpdesk", autoPing: Bool = true) async throws -> TestSocket {
        let a = try #require(sim.configuration.apps.first { $0.name == app })
        let ticket = try await register(port: sim.port, app: a)
        return try await connect(port: sim.port, ticket: ticket, autoPing: autoPing)
    }

    var received: [[String: Any]] {
        frames.withLockedValue { $0 }.compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
    }

    func frames(topic: String) -> [[String: Any]] {
        received.filter { (($0["headers"] as? [String: Any])?["topic"] as? String) == topic }
    }

    func send(_ text: String) {
        channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: channel.allocator.buffer(string: text)), promise: nil)
    }

    /// Acks `frame` on this socket.
    func ack(_ frame: [String: Any], code: Int = 200, data: String = #"{"response":null}"#) {
        let messageId = (frame["headers"] as? [String: Any])?["messageId"] as? String ?? ""
        send(Self.ackText(messageId: messageId, code: code, data: data))
    }

    static func ackText(messageId: String, code: Int, data: String) -> String {
        let escaped = data.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
        return #"{"code":\#(code),"headers":{"messageId":"\#(messageId)","contentType":"application/json"},"message":"OK","data":"\#(escaped)"}"#
    }

    func close() async { try? await channel.close() }
}

final class FrameCollector: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame
    let frames: NIOLockedValueBox<[String]>
    let autoPing: Bool
    init(frames: NIOLockedValueBox<[String]>, autoPing: Bool) { self.frames = frames; self.autoPing = autoPing }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        guard frame.opcode == .text else { return }
        let text = String(buffer: frame.unmaskedData)
        guard let object = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] else { return }
        frames.withLockedValue { $0.append(text) }
        let headers = object["headers"] as? [String: Any] ?? [:]
        if autoPing, object["type"] as? String == "SYSTEM", headers["topic"] as? String == "ping",
           let messageId = headers["messageId"] as? String, let data = object["data"] as? String {
            let ack = TestSocket.ackText(messageId: messageId, code: 200, data: data)
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: context.channel.allocator.buffer(string: ack))), promise: nil)
        }
    }
}

/// The server answered the upgrade request with something else than 101 (and closed).
struct NotUpgraded: Error, Equatable {}

/// Fails the upgrade promise when the server refuses the upgrade: NIO's upgrader reports an
/// answer without 101, or the server closes first (which of the two comes first is a race);
/// `NotUpgraded` either way.
final class UpgradeFailureWatcher: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    let promise: EventLoopPromise<Void>
    init(promise: EventLoopPromise<Void>) { self.promise = promise }
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        promise.fail(error is NIOHTTPClientUpgradeError ? NotUpgraded() : error)
        context.fireErrorCaught(error)
    }
    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(NotUpgraded())
        context.fireChannelInactive()
    }
}

extension DingTalkSimulator {
    static func test(_ tweak: (inout SimulatorConfiguration) -> Void = { _ in }, _ body: (DingTalkSimulator) async throws -> Void) async throws {
        var configuration = SimulatorConfiguration.single("helpdesk")
        configuration.randomSeed = 42
        tweak(&configuration)
        try await DingTalkSimulator.withRunning(configuration, body)
    }
}

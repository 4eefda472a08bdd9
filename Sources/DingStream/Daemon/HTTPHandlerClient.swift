import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization

/// The HTTP/1.1 client of one `http_handler`: kept-alive connections to its origin, at most
/// `concurrency` of them (further requests wait for one in arrival order), every request written
/// whole, head and body, with one flush.
///
/// Not AsyncHTTPClient, which flushes a request's head before its body: the kernel runs a local
/// server woken by the head on the client's core at once (a socket wake-up expects its writer to
/// sleep next), so the body went out only after the server had read the head and gone back to
/// waiting for the rest, a quarter of a millisecond per message on the way to the reply (traced
/// with `perf sched`).
///
/// All its state lives on one event loop, where the answers are read; `execute` may be called
/// from any thread.
final class HTTPHandlerClient: @unchecked Sendable {
    struct Response: Sendable {
        var status: HTTPResponseStatus
        var body: [UInt8]
    }

    enum Failure: Error, CustomStringConvertible, Equatable {
        /// No connection: nothing listening, unreachable, or none within the connect timeout.
        /// The request never reached the server.
        case couldNotConnect(String)
        case timedOut
        case bodyTooLarge(limit: Int)
        /// The server closed the connection (or it broke) before its answer was complete.
        case closedBeforeAnswer(String)
        case shutDown
        case invalidURL(String)

        var description: String {
            switch self {
            case .couldNotConnect(let why): "could not connect: \(why)"
            case .timedOut: "no answer in time"
            case .bodyTooLarge(let limit): "answered with a body over \(limit) bytes"
            case .closedBeforeAnswer(let why): "connection closed before the answer was complete (\(why))"
            case .shutDown: "shut down"
            case .invalidURL(let url): "not an http or https URL: \(url)"
            }
        }
    }

    let loop: any EventLoop
    private let origin: Origin
    private let sslContext: NIOSSLContext?
    private let concurrency: Int
    private let connectTimeout: TimeAmount
    private let idleTimeout: TimeAmount

    // Touched only on `loop`.
    private var idle: [Connection] = []
    private var live: [ObjectIdentifier: Connection] = [:]
    /// Connections open or being opened; never more than `concurrency`.
    private var opened = 0
    private var waiting = CircularBuffer<Exchange>()
    private var isShutDown = false

    /// - Throws: `Failure.invalidURL`, or NIOSSL's error for a TLS setup that fails (`tls`'s CA file).
    init(
        url: String, tls: TLSConfiguration, concurrency: Int, connectTimeout: Duration, idleTimeout: Duration = .seconds(60),
        loop: any EventLoop
    ) throws {
        guard let origin = Origin(url) else { throw Failure.invalidURL(url) }
        self.origin = origin
        sslContext = origin.secure ? try NIOSSLContext(configuration: tls) : nil
        self.concurrency = max(1, concurrency)
        self.connectTimeout = TimeAmount(connectTimeout)
        self.idleTimeout = TimeAmount(idleTimeout)
        self.loop = loop
    }

    /// Sends one request to the URL's path and reads the whole answer, at most `bodyLimit` bytes
    /// of body. `deadline` covers waiting for a connection, connecting, and the answer.
    /// Cancelling the calling task fails it with `CancellationError` and closes its connection.
    func execute(method: HTTPMethod, headers: HTTPHeaders, body: [UInt8]?, deadline: NIODeadline, bodyLimit: Int) async throws -> Response {
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: origin.target, headers: headers)
        head.headers.replaceOrAdd(name: "Host", value: origin.hostHeader)
        if let body { head.headers.replaceOrAdd(name: "Content-Length", value: String(body.count)) }
        let exchange = Exchange(head: head, body: body.map { ByteBuffer(bytes: $0) }, deadline: deadline, bodyLimit: bodyLimit)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Response, any Error>) in
                exchange.attach(continuation)
                if loop.inEventLoop {
                    start(exchange)
                } else {
                    loop.execute { self.start(exchange) }
                }
            }
        } onCancel: {
            loop.execute { self.end(exchange, .failure(CancellationError())) }
        }
    }

    /// Closes every connection and fails what waits; later requests fail with `.shutDown`.
    func shutdown() async {
        let closed = loop.flatSubmit { () -> EventLoopFuture<Void> in
            self.isShutDown = true
            while let exchange = self.waiting.popFirst() { exchange.resolve(.failure(Failure.shutDown)) }
            let channels = self.live.values.compactMap(\.channel)
            self.idle = []
            return EventLoopFuture.andAllComplete(channels.map { $0.close() }, on: self.loop)
        }
        try? await closed.get()
    }

    // MARK: On the loop

    private func start(_ exchange: Exchange) {
        guard !exchange.isResolved else { return }
        guard !isShutDown else { return exchange.resolve(.failure(Failure.shutDown)) }
        exchange.timer = loop.scheduleTask(deadline: exchange.deadline) { self.end(exchange, .failure(Failure.timedOut)) }
        dispatch(exchange)
    }

    private func dispatch(_ exchange: Exchange) {
        while let connection = idle.popLast() {
            connection.idleTimer?.cancel()
            if connection.channel?.isActive == true { return send(exchange, on: connection) }
        }
        guard opened < concurrency else { return waiting.append(exchange) }
        connect(for: exchange)
    }

    private func connect(for exchange: Exchange) {
        opened += 1
        let connection = Connection(client: self)
        live[ObjectIdentifier(connection)] = connection
        let sslContext = sslContext
        let serverName = origin.serverName
        ClientBootstrap(group: loop)
            .connectTimeout(connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let pipeline = channel.pipeline.syncOperations
                    if let sslContext { try pipeline.addHandler(try NIOSSLClientHandler(context: sslContext, serverHostname: serverName)) }
                    try pipeline.addHTTPClientHandlers()
                    try pipeline.addHandler(connection)
                }
            }
            .connect(host: origin.host, port: origin.port)
            .whenComplete { result in
                switch result {
                case .success:
                    self.connected(connection, for: exchange)
                case .failure(let error):
                    self.opened -= 1
                    self.live[ObjectIdentifier(connection)] = nil
                    self.end(exchange, .failure(Failure.couldNotConnect(Self.describe(error))))
                    self.serveWaiting()
                }
            }
    }

    private func connected(_ connection: Connection, for exchange: Exchange) {
        guard !isShutDown else {
            connection.channel?.close(promise: nil)
            return end(exchange, .failure(Failure.shutDown))
        }
        if exchange.isResolved {
            release(connection)
        } else {
            send(exchange, on: connection)
        }
    }

    private func send(_ exchange: Exchange, on connection: Connection) {
        guard let channel = connection.channel else { return dispatch(exchange) }
        connection.begin(exchange)
        exchange.connection = connection
        channel.write(HTTPClientRequestPart.head(exchange.head), promise: nil)
        if let body = exchange.body { channel.write(HTTPClientRequestPart.body(.byteBuffer(body)), promise: nil) }
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
    }

    /// Ends `exchange` (once): its timer cancelled, its connection closed when the answer was
    /// not read to its end, and what waits served.
    fileprivate func end(_ exchange: Exchange, _ result: Result<Response, any Error>) {
        guard !exchange.isResolved else { return }
        exchange.timer?.cancel()
        if let connection = exchange.connection, connection.exchange === exchange {
            connection.exchange = nil
            if case .failure = result { connection.channel?.close(promise: nil) }
        }
        exchange.resolve(result)
    }

    fileprivate func answered(_ exchange: Exchange, on connection: Connection, _ response: Response, keepAlive: Bool) {
        end(exchange, .success(response))
        if keepAlive && !isShutDown {
            release(connection)
        } else {
            connection.channel?.close(promise: nil)
        }
    }

    /// A connection free for the next request: the oldest waiting one, else the idle list.
    private func release(_ connection: Connection) {
        while let next = waiting.popFirst() {
            if !next.isResolved { return send(next, on: connection) }
        }
        idle.append(connection)
        connection.idleTimer = loop.scheduleTask(in: idleTimeout) { [weak connection] in connection?.channel?.close(promise: nil) }
    }

    /// A connection ended. A request on it that got no byte of its answer, on a connection
    /// that had served one before, is sent again once on a new one: a kept-alive connection
    /// the server closed as the request went out, as browsers do (the server did not answer,
    /// and a server that closes idle connections closes before reading).
    fileprivate func closed(_ connection: Connection, error: (any Error)?) {
        guard live.removeValue(forKey: ObjectIdentifier(connection)) != nil else { return }
        opened -= 1
        connection.idleTimer?.cancel()
        idle.removeAll { $0 === connection }
        if let exchange = connection.exchange {
            connection.exchange = nil
            if connection.servedBefore && !connection.answerStarted && !exchange.resent && !isShutDown {
                exchange.resent = true
                exchange.connection = nil
                dispatch(exchange)
            } else {
                end(exchange, .failure(Failure.closedBeforeAnswer(error.map(Self.describe) ?? "closed by the server")))
            }
        }
        serveWaiting()
    }

    /// Opens connections for waiting requests while under the limit.
    private func serveWaiting() {
        while opened < concurrency, !isShutDown, let next = waiting.popFirst() {
            if !next.isResolved { connect(for: next) }
        }
    }

    private static func describe(_ error: any Error) -> String {
        if let error = error as? IOError { return String(cString: strerror(error.errnoCode)) }
        if let error = error as? NIOConnectionError, let first = error.connectionErrors.first {
            return describe(first.error)
        }
        if case ChannelError.connectTimeout = error { return "no connection within the connect timeout" }
        return "\(error)"
    }
}

/// Scheme, host, port and request target of a URL.
private struct Origin {
    var secure: Bool
    var host: String
    var port: Int
    /// Path and query, as sent in the request line.
    var target: String
    var hostHeader: String
    /// The TLS server name: the host unless it is an address.
    var serverName: String?

    init?(_ url: String) {
        guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased(),
            scheme == "http" || scheme == "https", let host = components.host, !host.isEmpty
        else { return nil }
        secure = scheme == "https"
        self.host = host
        let defaultPort = secure ? 443 : 80
        port = components.port ?? defaultPort
        let path = components.percentEncodedPath.isEmpty ? "/" : components.percentEncodedPath
        target = components.percentEncodedQuery.map { path + "?" + $0 } ?? path
        let named = host.contains(":") ? "[\(host)]" : host
        hostHeader = port == defaultPort ? named : "\(named):\(port)"
        var address = in6_addr()
        serverName = inet_pton(AF_INET, host, &address) == 1 || inet_pton(AF_INET6, host, &address) == 1 ? nil : host
    }
}

/// One request and its answer's promise; `resolve` may be called from any thread, the rest is
/// touched on the client's loop.
private final class Exchange: @unchecked Sendable {
    let head: HTTPRequestHead
    let body: ByteBuffer?
    let deadline: NIODeadline
    let bodyLimit: Int
    var timer: Scheduled<Void>?
    var connection: Connection?
    /// Sent again after its kept-alive connection closed under it.
    var resent = false

    private struct Waiter {
        var continuation: CheckedContinuation<HTTPHandlerClient.Response, any Error>?
        var result: Result<HTTPHandlerClient.Response, any Error>?
    }

    private let waiter = Mutex(Waiter())

    init(head: HTTPRequestHead, body: ByteBuffer?, deadline: NIODeadline, bodyLimit: Int) {
        self.head = head
        self.body = body
        self.deadline = deadline
        self.bodyLimit = bodyLimit
    }

    var isResolved: Bool { waiter.withLock { $0.result != nil } }

    func attach(_ continuation: CheckedContinuation<HTTPHandlerClient.Response, any Error>) {
        let early = waiter.withLock { waiter -> Result<HTTPHandlerClient.Response, any Error>? in
            if let result = waiter.result { return result }
            waiter.continuation = continuation
            return nil
        }
        if let early { continuation.resume(with: early) }
    }

    func resolve(_ result: Result<HTTPHandlerClient.Response, any Error>) {
        let continuation = waiter.withLock { waiter -> CheckedContinuation<HTTPHandlerClient.Response, any Error>? in
            guard waiter.result == nil else { return nil }
            waiter.result = result
            defer { waiter.continuation = nil }
            return waiter.continuation
        }
        continuation?.resume(with: result)
    }
}

/// One connection: the last handler of its pipeline, which reads the answers.
private final class Connection: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart

    let client: HTTPHandlerClient
    var channel: (any Channel)?
    var exchange: Exchange?
    var idleTimer: Scheduled<Void>?
    /// It answered a request before the current one.
    var servedBefore = false
    /// A byte of the current answer has arrived.
    var answerStarted = false
    private var status: HTTPResponseStatus = .ok
    private var keepAlive = true
    private var body: [UInt8] = []
    private var failure: (any Error)?

    init(client: HTTPHandlerClient) {
        self.client = client
    }

    func begin(_ exchange: Exchange) {
        self.exchange = exchange
        answerStarted = false
        body = []
    }

    func handlerAdded(context: ChannelHandlerContext) {
        channel = context.channel
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let exchange else { return }  // an answer nobody asked for (or to a request that ended): ignored
        answerStarted = true
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = head.status
            keepAlive = head.isKeepAlive
        case .body(let part):
            guard body.count + part.readableBytes <= exchange.bodyLimit else {
                client.end(exchange, .failure(HTTPHandlerClient.Failure.bodyTooLarge(limit: exchange.bodyLimit)))
                return
            }
            body.append(contentsOf: part.readableBytesView)
        case .end:
            self.exchange = nil
            servedBefore = true
            client.answered(exchange, on: self, HTTPHandlerClient.Response(status: status, body: body), keepAlive: keepAlive)
            body = []
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        failure = failure ?? error
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        client.closed(self, error: failure)
        context.fireChannelInactive()
    }
}

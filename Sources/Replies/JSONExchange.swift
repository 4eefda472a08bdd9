import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import StreamProtocol
import Synchronization

/// One JSON POST with a deadline covering the whole exchange (head and body) and a cap on the
/// answer's size. Shared by the token, OpenAPI and webhook calls.
struct JSONExchange: Sendable {
    struct Answer: Sendable {
        var status: Int
        /// The body parsed as a JSON object; nil when empty or not an object.
        var object: JSONObject?
        var rawBody: String
    }

    let httpClient: HTTPClient
    let timeout: Duration
    let bodyCap: Int

    /// Posts `body` to `url`.
    /// - Throws: `ReplyError` `.timeout` when the deadline passes, `.transport` when the connection
    ///   fails, `.badResponse` when the answer exceeds `bodyCap`. HTTP errors are returned, not thrown.
    func post(
        url: String, endpoint: String, headers: [(String, String)] = [], body: Data, logger: Logger
    ) async throws(ReplyError) -> Answer {
        var headerFields = HTTPHeaders()
        headerFields.add(name: "Content-Type", value: "application/json")
        headerFields.add(name: "Accept", value: "application/json")
        for (name, value) in headers { headerFields.add(name: name, value: value) }
        let started = ContinuousClock.now
        let result: Result<Answer, ReplyError>
        do {
            let request = try HTTPClient.Request(url: url, method: .POST, headers: headerFields, body: .data(body))
            let response = try await httpClient.wholeResponse(to: request, maxBodySize: bodyCap, deadline: .now() + TimeAmount(timeout), logger: logger)
            let text = response.body.map { String(buffer: $0) } ?? ""
            let object = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any]
            result = .success(Answer(status: Int(response.status.code), object: object.map(JSONObject.init), rawBody: text))
        } catch {
            result = .failure(Self.map(error, endpoint: endpoint))
        }
        logger.trace(
            "replies: POST done",
            metadata: ["http.endpoint": "\(endpoint)", "http.elapsed": "\(ContinuousClock.now - started)"]
        )
        return try result.get()
    }

    static func map(_ error: any Error, endpoint: String) -> ReplyError {
        if let error = error as? ReplyError { return error }
        if let error = error as? HTTPClientError {
            switch error {
            case .deadlineExceeded, .readTimeout, .connectTimeout, .writeTimeout, .tlsHandshakeTimeout,
                .getConnectionFromPoolTimeout, .httpProxyHandshakeTimeout, .socksHandshakeTimeout:
                return ReplyError(.timeout, endpoint: endpoint, context: "\(error)")
            case .invalidURL, .emptyHost, .emptyScheme:
                return ReplyError(.rejected(status: 0), endpoint: endpoint, context: "invalid URL: \(error)")
            default:
                return ReplyError(.transport, endpoint: endpoint, context: "\(error)")
            }
        }
        if error is ResponseAccumulator.ResponseTooBigError {
            return ReplyError(.badResponse, endpoint: endpoint, context: "answer larger than the size cap")
        }
        return ReplyError(.transport, endpoint: endpoint, context: "\(error)")
    }
}

extension HTTPClient {
    /// A client whose requests and connections all run on one event loop of NIO's shared group,
    /// as `wholeResponse` needs. AsyncHTTPClient (1.37) ends such a request's body on the
    /// request's own event loop and only then reports the connection idle; when that loop is not
    /// the connection's, a server closing the connection in between leaves the pool told of an
    /// idle connection it already removed, and it traps (seen in CI, test process killed).
    public static func onOneEventLoop(configuration: Configuration = Configuration()) -> HTTPClient {
        HTTPClient(eventLoopGroupProvider: .shared(MultiThreadedEventLoopGroup.singleton.next()), configuration: configuration)
    }

    /// Executes `request` and reads its whole answer on the event loop, at most `maxBodySize`
    /// bytes of body (else `ResponseAccumulator.ResponseTooBigError`). `deadline` covers head and
    /// body; cancelling the calling task cancels the request. The caller's task wakes once, when
    /// the answer is there or the deadline has passed, not once for the head and again for the body.
    /// The client must run on one event loop (`onOneEventLoop`).
    ///
    /// The request is started on that loop with one hand-over: started from another thread, the
    /// library hands each of its first steps over on its own, and every hand-over wakes the loop
    /// (five for a POST, measured), which the way from a message to its reply paid twice. Only
    /// the delegate is tied to the loop: a request that requires its connection's loop may open
    /// a connection past the pool's limit, which an HTTP handler's concurrency limit relies on.
    public func wholeResponse(to request: Request, maxBodySize: Int, deadline: NIODeadline, logger: Logger? = nil) async throws -> Response {
        let loop = eventLoopGroup.next()
        assert(Array(eventLoopGroup.makeIterator()).count == 1, "wholeResponse needs a client on one event loop: HTTPClient.onOneEventLoop")
        let accumulator = ResponseAccumulator(request: request, maxBodySize: maxBodySize)
        let started = StartedRequest<Response>()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Response, any Error>) in
                loop.execute {
                    guard !started.state.withLock({ $0.cancelled }) else {
                        return continuation.resume(throwing: CancellationError())
                    }
                    let task = self.execute(
                        request: request, delegate: accumulator, eventLoop: .delegate(on: loop), deadline: deadline,
                        logger: logger)
                    started.state.withLock { $0.task = task }
                    task.futureResult.whenComplete { continuation.resume(with: $0) }
                }
            }
        } onCancel: {
            started.state.withLock { state in
                state.cancelled = true
                return state.task
            }?.cancel()
        }
    }
}

/// A request `wholeResponse` started, and whether its caller was cancelled before it started.
private final class StartedRequest<Response>: Sendable {
    struct State: Sendable {
        var task: HTTPClient.Task<Response>?
        var cancelled = false
    }

    let state = Mutex(State())
}

/// A parsed JSON object made Sendable: JSONSerialization only produces immutable value types.
struct JSONObject: @unchecked Sendable {
    let value: [String: Any]
    init(_ value: [String: Any]) { self.value = value }
    subscript(key: String) -> Any? { value[key] }
    func string(_ key: String) -> String? { value[key] as? String }
    func strings(_ key: String) -> [String] { (value[key] as? [Any])?.compactMap { $0 as? String } ?? [] }
    func int(_ key: String) -> Int? {
        switch value[key] {
        case let number as Int: number
        // A huge or fractional number from the network must not reach a trapping conversion.
        case let number as Double: number.isFinite && abs(number) < 0x1p53 ? Int(number) : nil
        case let string as String: Int(string)
        default: nil
        }
    }
}

/// The current time as epoch milliseconds, the unit DingTalk uses.
@Sendable public func epochMilliseconds() -> Int64 {
    Int64((Date().timeIntervalSince1970 * 1000).rounded())
}

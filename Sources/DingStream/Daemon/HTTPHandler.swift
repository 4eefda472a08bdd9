import Crypto
import Foundation
import Handlers
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Replies
import Spool
import StreamClient
import StreamProtocol
import Synchronization

/// What one handler run, a script or an HTTP handler, came to: what the dispatcher acts on.
struct HandlerRun: Sendable {
    var outcome: HandlerResult.Outcome
    /// A script's stdout or an HTTP handler's response body: the reply, or a card's answer.
    var output: [UInt8]
    /// Why it failed or asked to come back, for the dead letter.
    var reasonText: String
    var metricsResult: HandlerRunResult
    var duration: Duration
    /// Said in the log line of a retry: what the HTTP handler answered.
    var note = ""
    /// How a script ended; nil for an HTTP call.
    var script: HandlerResult?

    /// One line on how it ended: a script's exit status, an HTTP call's answer or failure.
    var statusText: String {
        if let script { return script.statusText }
        switch outcome {
        case .done: return "answered 2xx"
        case .retryLater: return "asked to retry later\(note)"
        case .interrupted: return "stopped by shutdown"
        case .failed(let reason): return reason
        }
    }

    init(_ result: HandlerResult) {
        script = result
        outcome = result.outcome
        output = result.stdout
        reasonText = result.reasonText
        metricsResult = HandlerRunResult(result)
        duration = result.duration
    }

    init(outcome: HandlerResult.Outcome, output: [UInt8] = [], reasonText: String, metricsResult: HandlerRunResult, duration: Duration) {
        self.outcome = outcome
        self.output = output
        self.reasonText = reasonText
        self.metricsResult = metricsResult
        self.duration = duration
    }
}

/// An app's `http_handler`: every message is POSTed to it as DingTalk's HTTP mode posts it (the
/// callback's JSON, `timestamp` and `sign` headers from the app secret), on kept-alive pooled
/// connections, so that a bot written for HTTP mode runs unchanged behind the firewall.
final class HTTPHandler: Sendable {
    let app: String
    let settings: Configuration.HTTPHandlerSettings
    private let secret: String
    private let client: HTTPHandlerClient
    /// The client's event loop, where the handling of a message that begins with this handler
    /// runs until its outcome is recorded (see `Dispatcher.offer`).
    let executor: EventLoopTaskExecutor

    /// The kind of message: `bot`, `event`, `card` or `other`.
    static let kindHeader = "X-Dingstream-Kind"
    /// The folder holding the message's downloaded files, when there are any.
    static let attachmentsHeader = "X-Dingstream-Attachments"
    /// The message's key in the spool: the same on every retry, for handlers that must not act twice.
    static let keyHeader = "X-Dingstream-Key"
    static let appHeader = "X-Dingstream-App"
    static let topicHeader = "X-Dingstream-Topic"
    /// 1 on the first try, counting retries.
    static let attemptHeader = "X-Dingstream-Attempt"
    /// As much of a response body as is read; more is a failure, as a script's output limit is.
    static let bodyLimit = 1 << 20
    /// How much of a failed response's body its dead letter keeps.
    static let reasonBodyBytes = 1024

    /// - Throws: when the URL is not http or https, or the TLS setup fails (an unreadable or
    ///   invalid `http_handler_ca_file`).
    init(
        app: String, secret: String, settings: Configuration.HTTPHandlerSettings,
        loop: any EventLoop = MultiThreadedEventLoopGroup.singleton.next()
    ) throws {
        self.app = app
        self.secret = secret
        self.settings = settings
        // The system's trust store, plus `http_handler_ca_file` when given.
        let tls = try NetworkSettings(caFile: settings.caFile).tlsConfiguration()
        // At most `concurrency` connections, the rest queued: the concurrency limit. A refused
        // connection is answered by the spool's retry with backoff, not by a quiet loop here;
        // redirects are not followed (a bot server does not send them).
        client = try HTTPHandlerClient(
            url: settings.url, tls: tls, concurrency: settings.concurrency, connectTimeout: min(settings.timeout, .seconds(10)),
            loop: loop)
        executor = EventLoopTaskExecutor(loop)
    }

    func shutdown() async {
        await client.shutdown()
    }

    /// For `dingstream doctor`: whether the URL answers at all. A GET, so that no bot acts on it:
    /// any HTTP status proves the server listens (a bot usually answers GET with 404 or 405),
    /// and with https that its certificate verified.
    func probe(timeout: Duration = .seconds(10)) async -> Result<HTTPResponseStatus, any Error> {
        var headers = HTTPHeaders()
        headers.add(name: "User-Agent", value: Daemon.userAgent)
        do {
            let deadline = NIODeadline.now() + TimeAmount(min(timeout, settings.timeout))
            let response = try await client.execute(method: .GET, headers: headers, body: nil, deadline: deadline, bodyLimit: Self.bodyLimit)
            return .success(response.status)
        } catch {
            return .failure(error)
        }
    }

    /// `sign` of DingTalk's HTTP mode: Base64 of HMAC-SHA256 over `timestamp + "\n" + secret`, keyed with the secret.
    static func signature(timestamp: String, secret: String) -> String {
        let key = SymmetricKey(data: Data(secret.utf8))
        let code = HMAC<SHA256>.authenticationCode(for: Data((timestamp + "\n" + secret).utf8), using: key)
        return Data(code).base64EncodedString()
    }

    /// Posts `entry` and maps the answer: 2xx is done (the body is the reply), 429, 502, 503, 504
    /// or no connection is "try again later", anything else a failure with the status and the
    /// start of the body. Cancellation (shutdown) is `interrupted`.
    func call(_ entry: SpoolEntry, attachments: String?) async -> HandlerRun {
        let started = ContinuousClock.now
        let timestamp = String(Int64(Date().timeIntervalSince1970 * 1000))
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "User-Agent", value: Daemon.userAgent)
        headers.add(name: "timestamp", value: timestamp)
        headers.add(name: "sign", value: Self.signature(timestamp: timestamp, secret: secret))
        headers.add(name: Self.kindHeader, value: entry.kind.rawValue)
        headers.add(name: Self.appHeader, value: entry.app)
        headers.add(name: Self.keyHeader, value: entry.key)
        headers.add(name: Self.attemptHeader, value: String(entry.attempts + 1))
        if let topic = entry.topic { headers.add(name: Self.topicHeader, value: topic) }
        if let attachments { headers.add(name: Self.attachmentsHeader, value: attachments) }
        do {
            let response: HTTPHandlerClient.Response
            do {
                response = try await client.execute(
                    method: .POST, headers: headers, body: Array(entry.dataJSON.utf8), deadline: .now() + TimeAmount(settings.timeout),
                    bodyLimit: Self.bodyLimit)
            } catch HTTPHandlerClient.Failure.bodyTooLarge {
                return failed("answered with a body over \(Self.bodyLimit >> 20) MiB", body: [], started: started)
            }
            return Self.run(status: response.status, body: response.body, url: settings.url, duration: ContinuousClock.now - started)
        } catch {
            let duration = ContinuousClock.now - started
            if Task.isCancelled {
                return HandlerRun(outcome: .interrupted, reasonText: reason("stopped by shutdown", duration: duration), metricsResult: .interrupted, duration: duration)
            }
            if Self.couldNotConnect(error) {
                var run = HandlerRun(
                    outcome: .retryLater, reasonText: reason("could not connect (\(error))", duration: duration), metricsResult: .retry, duration: duration)
                run.note = " (could not connect to \(settings.url))"
                return run
            }
            if let error = error as? HTTPHandlerClient.Failure, error == .timedOut {
                return HandlerRun(
                    outcome: .failed(reason: "no answer within \(settings.timeout)"),
                    reasonText: reason("no answer within http_handler_timeout \(DurationText.format(settings.timeout))", duration: duration),
                    metricsResult: .timeout, duration: duration)
            }
            return failed("\(error)", body: [], started: started)
        }
    }

    /// The outcome of an HTTP answer.
    static func run(status: HTTPResponseStatus, body: [UInt8], url: String, duration: Duration) -> HandlerRun {
        let statusText = "answered \(status.code) \(status.reasonPhrase)"
        switch status.code {
        case 200..<300:
            return HandlerRun(outcome: .done, output: body, reasonText: "", metricsResult: .ok, duration: duration)
        case 429, 502, 503, 504:
            var run = HandlerRun(
                outcome: .retryLater, reasonText: reasonText(url: url, status: statusText, body: body, duration: duration),
                metricsResult: .retry, duration: duration)
            run.note = " (\(statusText))"
            return run
        default:
            return HandlerRun(
                outcome: .failed(reason: statusText), reasonText: reasonText(url: url, status: statusText, body: body, duration: duration),
                metricsResult: .failed, duration: duration)
        }
    }

    /// True when the request never reached the handler (nothing listening, host unreachable, no
    /// connection within the connect timeout), so sending it again later is safe.
    static func couldNotConnect(_ error: any Error) -> Bool {
        if case .couldNotConnect = error as? HTTPHandlerClient.Failure { return true }
        return false
    }

    private func failed(_ what: String, body: [UInt8], started: ContinuousClock.Instant) -> HandlerRun {
        let duration = ContinuousClock.now - started
        return HandlerRun(outcome: .failed(reason: what), reasonText: reason(what, body: body, duration: duration), metricsResult: .failed, duration: duration)
    }

    private func reason(_ what: String, body: [UInt8] = [], duration: Duration) -> String {
        Self.reasonText(url: settings.url, status: what, body: body, duration: duration)
    }

    /// A dead letter's reason, in the shape of a script's: handler, status, duration, then the
    /// start of the body where a script has its stderr tail.
    static func reasonText(url: String, status: String, body: [UInt8], duration: Duration) -> String {
        var text = """
            http handler: \(url)
            status: \(status)
            duration: \(HandlerResult.seconds(duration))

            """
        if body.isEmpty {
            text += "body: (empty)\n"
        } else {
            text += "body (start):\n" + String(decoding: body.prefix(reasonBodyBytes), as: UTF8.self)
            if body.count > reasonBodyBytes { text += "\n… (\(body.count) bytes in all)" }
            if !text.hasSuffix("\n") { text += "\n" }
        }
        return text
    }
}

/// The HTTP handlers of the configured apps. A reload keeps the handler (and its open
/// connections) of every app whose handler settings and secret did not change; the others are
/// shut down a while later, once requests that started before the reload have ended.
final class HTTPHandlers: Sendable {
    private struct Identity: Equatable {
        var settings: Configuration.HTTPHandlerSettings
        var secret: String
    }

    private struct State {
        var current: [String: (identity: Identity, handler: HTTPHandler)] = [:]
        var retiring: [(handler: HTTPHandler, due: ContinuousClock.Instant)] = []
    }

    private let state = Mutex(State())
    private let retireAfter: Duration
    private let logger: Logger

    init(retireAfter: Duration = .seconds(3600), logger: Logger) {
        self.retireAfter = retireAfter
        self.logger = logger
    }

    /// The handlers for `configuration`, by app name, new ones on `loop`. An app whose handler
    /// cannot be set up (its CA file) is logged and has none until a reload fixes it.
    func handlers(for configuration: Configuration, loop: any EventLoop = MultiThreadedEventLoopGroup.singleton.next()) -> [String: HTTPHandler] {
        let now = ContinuousClock.now
        let (current, due): ([String: HTTPHandler], [HTTPHandler]) = state.withLock { state in
            var next: [String: (identity: Identity, handler: HTTPHandler)] = [:]
            for app in configuration.apps {
                guard let settings = app.httpHandler else { continue }
                let identity = Identity(settings: settings, secret: app.clientSecret)
                if let kept = state.current[app.name], kept.identity == identity {
                    next[app.name] = kept
                    continue
                }
                do {
                    next[app.name] = (identity, try HTTPHandler(app: app.name, secret: app.clientSecret, settings: settings, loop: loop))
                } catch {
                    logger.error(
                        "app \(app.name): cannot set up the http_handler \(settings.url) (\(error)); check http_handler_ca_file",
                        metadata: ["app": "\(app.name)"])
                }
            }
            for (name, old) in state.current where next[name]?.handler !== old.handler {
                state.retiring.append((old.handler, now + retireAfter))
            }
            state.current = next
            let due = state.retiring.filter { $0.due <= now }.map(\.handler)
            state.retiring.removeAll { $0.due <= now }
            return (next.mapValues(\.handler), due)
        }
        if !due.isEmpty { Task { for handler in due { await handler.shutdown() } } }
        return current
    }

    /// Closes every handler's connections; the daemon calls it once its services have stopped.
    func shutdown() async {
        let all = state.withLock { state in
            defer { state = State() }
            return state.current.values.map(\.handler) + state.retiring.map(\.handler)
        }
        for handler in all { await handler.shutdown() }
    }
}

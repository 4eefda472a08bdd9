import AsyncHTTPClient
import Foundation
import Logging
import Simulator
import StreamProtocol
import Synchronization

@testable import Replies

/// Epoch milliseconds that only move when a test (or an injected sleep) moves them.
final class ManualClock: Sendable {
    private let millis: Mutex<Int64>
    private let slept = Mutex<[Duration]>([])

    init(start: Int64 = epochMilliseconds()) { millis = Mutex(start) }

    var now: Int64 { millis.withLock { $0 } }
    func advance(_ duration: Duration) { millis.withLock { $0 += milliseconds(duration) } }
    /// Every sleep the code under test asked for, in order.
    var sleeps: [Duration] { slept.withLock { $0 } }
    func recordSleep(_ duration: Duration) {
        slept.withLock { $0.append(duration) }
        advance(duration)
    }
}

/// Part counts passed to `progress`, in order.
final class ProgressLog: Sendable {
    private let values = Mutex<[Int]>([])
    var all: [Int] { values.withLock { $0 } }
    func record(_ value: Int) { values.withLock { $0.append(value) } }
}

let quietLogger = Logger(label: "replies.test", factory: { _ in SwiftLogNoOpLogHandler() })

/// A running simulator with the Replies stack pointed at it for the app `helpdesk`.
struct Stack: Sendable {
    let sim: DingTalkSimulator
    let http: HTTPClient
    let clock: ManualClock
    let credentials: AppCredentials
    let tokens: AccessTokenProvider
    let client: OpenAPIClient
    let webhook: SessionWebhookClient

    func deliverer(
        replyDeadline: Duration = .seconds(3600), backoff: Backoff = Backoff(base: .milliseconds(100), cap: .seconds(10)),
        onSleep: @escaping @Sendable (Int) -> Void = { _ in }
    ) -> ReplyDeliverer {
        let clock = clock
        return ReplyDeliverer(
            clients: [credentials.name: client], webhook: webhook, webhookMargin: .seconds(10),
            replyDeadline: replyDeadline, backoff: backoff, now: { clock.now },
            sleep: { duration in
                clock.recordSleep(duration)
                onSleep(clock.sleeps.count)
            },
            random: { 1.0 }, logger: quietLogger
        )
    }

    /// The reply target of a message the simulator made up.
    func target(of message: InjectedMessage) throws -> ReplyTarget {
        let data = try JSONSerialization.jsonObject(with: Data(message.data.utf8)) as? [String: Any] ?? [:]
        guard let bot = BotMessage(data: data) else { throw TestFailure("not a bot message: \(message.data)") }
        return ReplyTarget(app: credentials.name, message: bot)
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

func withStack(
    _ configuration: SimulatorConfiguration = .single("helpdesk"), requestTimeout: Duration = .seconds(5),
    _ body: @Sendable (Stack) async throws -> Void
) async throws {
    try await DingTalkSimulator.withRunning(configuration) { sim in
        let http = HTTPClient.onOneEventLoop()
        let app = configuration.apps[0]
        let clock = ManualClock()
        let credentials = AppCredentials(name: app.name, clientID: app.clientId, clientSecret: app.clientSecret, apiBase: sim.baseURL)
        let tokens = AccessTokenProvider(credentials: credentials, httpClient: http, requestTimeout: requestTimeout, now: { clock.now }, logger: quietLogger)
        let stack = Stack(
            sim: sim, http: http, clock: clock, credentials: credentials, tokens: tokens,
            client: OpenAPIClient(credentials: credentials, httpClient: http, tokens: tokens, requestTimeout: requestTimeout, logger: quietLogger),
            webhook: SessionWebhookClient(httpClient: http, requestTimeout: requestTimeout, logger: quietLogger)
        )
        do {
            try await body(stack)
        } catch {
            try? await http.shutdown()
            throw error
        }
        try await http.shutdown()
    }
}

func jsonObject(_ text: String) -> [String: Any] {
    (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
}

/// `msgParam` of an OpenAPI send body, decoded from its JSON string.
func msgParam(_ body: [String: Any]) -> [String: Any] {
    jsonObject(body["msgParam"] as? String ?? "")
}

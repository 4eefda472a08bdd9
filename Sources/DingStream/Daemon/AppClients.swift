import AsyncHTTPClient
import Dispatch
import Logging
import NIOCore
import Replies
import StreamClient
import Synchronization

/// One HTTP client and OpenAPI client (with its token cache) per app, shared by replies and
/// attachment downloads.
///
/// A reload keeps the clients of every app whose network identity did not change, so its access
/// token cache survives and no client leaks; those of removed or changed apps are shut down at a
/// later reload once work that may still hold them has had time to finish, or at the stop.
final class AppClients: Sendable {
    struct Client: Sendable {
        var openAPI: OpenAPIClient
        var http: HTTPClient
    }

    private struct Identity: Equatable {
        var clientID: String
        var clientSecret: String
        var apiBase: String
        var proxy: String?
        var caFile: String?

        init(_ app: Configuration.App) {
            clientID = app.clientID
            clientSecret = app.clientSecret
            apiBase = app.apiBase
            proxy = app.proxy
            caFile = app.caFile
        }
    }

    private struct Entry {
        var identity: Identity
        var http: HTTPClient
        var openAPI: OpenAPIClient
    }

    private let environment: [String: String]
    private let logger: Logger
    private let retireAfter: Duration
    private let observer: ReplyObserver
    private struct State {
        var entries: [String: Entry] = [:]
        /// Clients of removed or changed apps, and when they may be shut down: a reply or download
        /// that started before the reload may still be using them.
        var retiring: [(client: HTTPClient, due: ContinuousClock.Instant)] = []
    }

    private let state = Mutex(State())
    /// Session webhooks' client when no app has one (every app's HTTPS setup failed): made on
    /// first use, on one event loop as `wholeResponse` needs, and shut down with the others.
    private let fallbackWebhookClient = Mutex<HTTPClient?>(nil)

    init(environment: [String: String], logger: Logger, retireAfter: Duration = .seconds(120), observer: ReplyObserver = .none) {
        self.environment = environment
        self.observer = observer
        self.logger = logger
        self.retireAfter = retireAfter
    }

    /// The clients for `configuration`, reusing those of unchanged apps. An app whose HTTPS setup
    /// fails is logged and left out.
    func clients(for configuration: Configuration) -> [String: Client] {
        let now = ContinuousClock.now
        let (current, due): ([String: Entry], [HTTPClient]) = state.withLock { state in
            var next: [String: Entry] = [:]
            for app in configuration.apps {
                let identity = Identity(app)
                if let kept = state.entries[app.name], kept.identity == identity {
                    next[app.name] = kept
                } else if let made = makeEntry(app, identity: identity) {
                    next[app.name] = made
                }
            }
            for (name, old) in state.entries where next[name]?.http !== old.http {
                state.retiring.append((old.http, now + retireAfter))
            }
            state.entries = next
            let due = state.retiring.filter { $0.due <= now }.map(\.client)
            state.retiring.removeAll { $0.due <= now }
            return (next, due)
        }
        // Retired at a later reload, or at the latest by `shutdown()`: no task outlives the clients.
        for client in due { client.shutdown(queue: .global()) { _ in } }
        return current.mapValues { Client(openAPI: $0.openAPI, http: $0.http) }
    }

    /// The client session webhooks go out on: plain HTTPS to DingTalk, so any app's client (its
    /// proxy and CA) will do.
    func webhookHTTP(_ configuration: Configuration, clients: [String: Client]) -> HTTPClient {
        configuration.apps.lazy.compactMap { clients[$0.name]?.http }.first ?? fallbackWebhookHTTP()
    }

    /// The event loop of `webhookHTTP`, where the replies' requests start.
    func webhookLoop(_ configuration: Configuration, clients: [String: Client]) -> any EventLoop {
        webhookHTTP(configuration, clients: clients).eventLoopGroup.next()
    }

    func deliverer(_ configuration: Configuration, clients: [String: Client]) -> ReplyDeliverer {
        ReplyDeliverer(
            clients: clients.mapValues(\.openAPI), webhook: SessionWebhookClient(httpClient: webhookHTTP(configuration, clients: clients), logger: logger),
            webhookMargin: configuration.webhookMargin, replyDeadline: configuration.replyDeadline, observer: observer, logger: logger)
    }

    private func fallbackWebhookHTTP() -> HTTPClient {
        fallbackWebhookClient.withLock { client in
            if let client { return client }
            let made = HTTPClient.onOneEventLoop()
            client = made
            return made
        }
    }

    /// Shuts every client down, retired ones included; the daemon calls it once its services have stopped.
    func shutdown() async {
        var all: [HTTPClient] = state.withLock { state in
            defer { state = State() }
            return state.entries.values.map(\.http) + state.retiring.map(\.client)
        }
        if let fallback = fallbackWebhookClient.withLock({ $0.take() }) { all.append(fallback) }
        for client in all { try? await client.shutdown() }
    }

    private func makeEntry(_ app: Configuration.App, identity: Identity) -> Entry? {
        let network = NetworkSettings.resolve(proxy: app.proxy, caFile: app.caFile, environment: environment)
        let http: HTTPClient
        do {
            http = try network.makeHTTPClient(for: app.apiBase)
        } catch {
            logger.error(
                "app \(app.name): cannot set up HTTPS for replies and attachments (\(error)); check ca_file and proxy in its [[app]] section",
                metadata: ["app": "\(app.name)"])
            return nil
        }
        let credentials = AppCredentials(name: app.name, clientID: app.clientID, clientSecret: app.clientSecret, apiBase: app.apiBase)
        let tokens = AccessTokenProvider(credentials: credentials, httpClient: http, observer: observer, logger: logger)
        return Entry(identity: identity, http: http, openAPI: OpenAPIClient(credentials: credentials, httpClient: http, tokens: tokens, logger: logger))
    }
}

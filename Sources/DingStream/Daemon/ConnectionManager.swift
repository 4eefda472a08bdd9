import Foundation
import Logging
import ServiceLifecycle
import StreamClient
import StreamProtocol
import Synchronization

/// Runs one `AppSupervisor` per configured app and applies reloads: an app whose settings did
/// not change keeps its sockets; changed apps are restarted, removed apps stopped, new ones started.
final class ConnectionManager: Service {
    /// The frame sink of one app's sockets.
    private let sink: @Sendable (_ app: String) -> any FrameSink
    let board: ConnectionBoard
    private let environment: [String: String]
    private let userAgent: String
    private let logger: Logger
    private let updates: AsyncStream<[Configuration.App]>
    private let updatesContinuation: AsyncStream<[Configuration.App]>.Continuation
    private let keepaliveOverride: KeepaliveSettings?

    init(
        apps: [Configuration.App], sink: @escaping @Sendable (_ app: String) -> any FrameSink, board: ConnectionBoard, environment: [String: String],
        userAgent: String, keepalive: KeepaliveSettings? = nil, logger: Logger
    ) {
        self.sink = sink
        self.board = board
        self.environment = environment
        self.userAgent = userAgent
        self.keepaliveOverride = keepalive
        self.logger = logger
        (updates, updatesContinuation) = AsyncStream.makeStream(of: [Configuration.App].self)
        updatesContinuation.yield(apps)
    }

    /// Applies a new list of apps; returns at once.
    func apply(_ apps: [Configuration.App]) {
        updatesContinuation.yield(apps)
    }

    func settings(for app: Configuration.App) -> AppConnectionSettings {
        let registration = GatewayRegistration(
            app: app.name, clientID: app.clientID, clientSecret: app.clientSecret, apiBase: app.apiBase,
            subscriptions: app.subscriptions, userAgent: userAgent)
        let network = NetworkSettings.resolve(proxy: app.proxy, caFile: app.caFile, environment: environment)
        let keepalive = keepaliveOverride ?? KeepaliveSettings(silenceTimeout: app.silenceTimeout, idleTimeout: app.idleTimeout)
        var settings = AppConnectionSettings(
            registration: registration, network: network, keepalive: keepalive, connections: app.connections,
            maxConnectionAge: app.maxConnectionAge)
        settings.maxFrameSize = app.maxFrameSize
        return settings
    }

    func run() async throws {
        await withDiscardingTaskGroup { group in
            var running: [String: (app: Configuration.App, stop: StopSignal)] = [:]
            let stream = updates
            let continuation = updatesContinuation
            // Graceful shutdown ends the update stream, which stops every app below.
            await withGracefulShutdownHandler {
                for await apps in stream {
                    let wanted = Dictionary(apps.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
                    for (name, current) in running where wanted[name] != current.app {
                        current.stop.stop()
                        running[name] = nil
                        logger.notice(wanted[name] == nil ? "app removed; closing its sockets" : "app changed; reconnecting it", metadata: ["app": "\(name)"])
                    }
                    for app in apps where running[app.name] == nil {
                        let stop = StopSignal()
                        running[app.name] = (app, stop)
                        let supervisor = AppSupervisor(settings: settings(for: app), sink: sink(app.name), board: board, logger: logger)
                        group.addTask {
                            await withTaskGroup(of: Void.self) { inner in
                                inner.addTask { await supervisor.run() }
                                await stop.wait()
                                inner.cancelAll()
                            }
                        }
                    }
                }
                for current in running.values { current.stop.stop() }
            } onGracefulShutdown: {
                continuation.finish()
            }
        }
    }
}

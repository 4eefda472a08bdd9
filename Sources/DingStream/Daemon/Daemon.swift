import Foundation
import Logging
import NIOCore
import NIOPosix
import Prometheus
import Replies
import ServiceLifecycle
import Spool
import StreamClient
import StreamProtocol
import Synchronization
import Systemd
import UnixSignals

/// The long-running process: spool, sockets, dispatcher, outbox, status, watchdog and reload,
/// as one `ServiceGroup` that stops in reverse order on SIGTERM.
public struct Daemon: Sendable {
    public static let version = "0.1.0"
    public static var userAgent: String { "dingstream/\(version)" }

    public var configurationPath: String
    public var environment: [String: String]
    /// Overrides the socket keepalive (tests use short intervals).
    public var keepalive: KeepaliveSettings?
    /// Told the port `GET /metrics` is served on, once it is (tests listen on port 0).
    public var onMetricsListening: (@Sendable (Int) -> Void)?
    /// Told of every handler run as it ends (the sandbox page lists them).
    public var onHandlerRun: (@Sendable (HandlerRunReport) -> Void)?

    public init(
        configurationPath: String, environment: [String: String], keepalive: KeepaliveSettings? = nil,
        onMetricsListening: (@Sendable (Int) -> Void)? = nil
    ) {
        self.configurationPath = configurationPath
        self.environment = environment
        self.keepalive = keepalive
        self.onMetricsListening = onMetricsListening
    }

    /// Exit status when another running daemon owns the spool (EX_UNAVAILABLE).
    public static let spoolInUseExitStatus: Int32 = 69

    /// Runs until SIGTERM/SIGINT (or cancellation). Returns the exit status: 0 after a clean stop,
    /// 78 for a configuration error, 73 when the spool cannot be opened, 69 when another daemon owns it.
    public func run(logger: Logger) async -> Int32 {
        let configuration: Configuration
        do {
            configuration = try Configuration.load(path: configurationPath, environment: environment)
        } catch {
            logger.critical("configuration error: \(error)")
            return ConfigurationError.exitStatus
        }
        return await run(configuration: configuration, logger: logger)
    }

    public func run(configuration: Configuration, logger baseLogger: Logger, extraServices: [any Service] = []) async -> Int32 {
        // Shared by every copy of the logger, so that a reload can change it.
        let logLevel = ReloadableLogLevel(Logger.Level(rawValue: configuration.logLevel) ?? .info)
        let logger = logLevel.apply(to: baseLogger)
        let stopDeadline = StopDeadline(grace: configuration.shutdownGrace)
        let notifier = Notifier(environment: environment)
        let (metrics, registry) = Self.makeMetrics(configuration)
        // Retries wait in new/ until a rescan finds them due: look often enough for short delays.
        let rescan = min(max(configuration.retryDelay, .seconds(1)), .seconds(5))
        let spool = Spool(
            directory: configuration.spoolDirectory, dedupWindow: configuration.dedupWindow,
            retention: configuration.retention, rescanInterval: rescan, cluster: configuration.cluster, logger: logger,
            commitObserver: metrics.commitObserver)
        if let failure = await Self.open(spool, notifier: notifier, logger: logger) { return failure }
        defer { spool.close() }
        let board = ConnectionBoard(observer: metrics.boardObserver)
        let replyObserver = metrics.replyObserver
        let appClients = AppClients(environment: environment, logger: logger, observer: replyObserver)
        let httpHandlers = HTTPHandlers(logger: logger)
        let dispatchSettings: @Sendable (Configuration, [String: AppClients.Client]) -> DispatchSettings = {
            configuration, clients in
            DispatchSettings(
                apps: Dictionary(configuration.apps.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a }),
                handlerTimeout: configuration.handlerTimeout, maxAttempts: configuration.maxAttempts,
                retryDelay: configuration.retryDelay,
                attachments: AttachmentFetcher(sources: clients, maxBytes: configuration.maxAttachmentBytes),
                // On the loop the replies go out on: an HTTP handler's answer is read, its outcome
                // committed and the reply sent from one thread (see `Dispatcher.offer`).
                httpHandlers: httpHandlers.handlers(
                    for: configuration, loop: appClients.webhookLoop(configuration, clients: clients)))
        }
        let clients = appClients.clients(for: configuration)
        let outbox = OutboxSender(
            spool: spool, deliverer: appClients.deliverer(configuration, clients: clients),
            stopDeadline: stopDeadline, metrics: metrics, logger: logger)
        spool.onOutboxTakeover { outbox.wake() }
        let cards = CardResponder(timeout: configuration.cardTimeout, logger: logger)
        let dispatcher = Dispatcher(
            spool: spool, workers: configuration.workers, settings: dispatchSettings(configuration, clients),
            baseEnvironment: environment, stopDeadline: stopDeadline,
            deliverReplies: { outbox.deliver($0) }, cards: cards, metrics: metrics, onHandlerRun: onHandlerRun, logger: logger)
        let connections = ConnectionManager(
            apps: configuration.apps,
            // Metrics off: the intake skips even the no-op calls.
            sink: { app in Intake(spool: spool, cards: cards, metrics: registry == nil ? nil : metrics.app(app), logger: logger) },
            board: board,
            environment: environment, userAgent: Self.userAgent, keepalive: keepalive, logger: logger)
        let status = StatusReporter(
            board: board, notifier: notifier, runtimeDirectory: configuration.runtimeDirectory,
            readyTimeout: configuration.readyTimeout,
            counts: { (dispatcher.queued, spool.deadLetterCount) },
            storeFault: { spool.currentFault.map { "\($0)" } },
            inFlight: { ["handlerRuns": dispatcher.running, "replyRuns": outbox.running] },
            logger: logger)
        // What the last reload applied; keys that need a restart are compared with `configuration`.
        let running = Mutex(configuration)
        let reloader = Reloader(
            path: configurationPath, environment: environment, logger: logger,
            apply: { new in
                status.reloading()
                logLevel.current = Logger.Level(rawValue: new.logLevel) ?? .info
                connections.apply(new.apps)
                let clients = appClients.clients(for: new)
                dispatcher.update(dispatchSettings(new, clients), workers: new.workers)
                outbox.update(appClients.deliverer(new, clients: clients))
                cards.update(timeout: new.cardTimeout)
                stopDeadline.update(grace: new.shutdownGrace)
                let previous = running.withLock { running in
                    defer { running = new }
                    return running
                }
                logger.notice(
                    "\(Configuration.reloadSummary(path: configurationPath, from: previous, started: configuration, to: new))",
                    metadata: ["message.id": "configReloaded"])
                status.reloaded()
            })
        let watchdog = WatchdogService(
            notifier: notifier,
            probes: [
                WatchdogProbe(name: "event loop") { await Self.eventLoopResponds() },
                WatchdogProbe(name: "spool") { await spool.canCommit() },
                WatchdogProbe(name: "dispatcher") { dispatcher.isMakingProgress() },
            ],
            logger: logger)
        // Started right after the spool, so stopped right before it: after the sockets and the
        // dispatcher, and the last scrape and the last file show the final counts.
        let metricsServices: [any Service] = registry.map { registry in
            [
                MetricsService(
                    registry: registry, metrics: metrics, board: board, spoolDirectory: configuration.spoolDirectory,
                    listen: configuration.metricsListen, file: configuration.metricsFile, onListening: onMetricsListening,
                    logger: logger)
            ]
        } ?? []
        let services: [any Service] = [SpoolService(spool: spool)] + metricsServices + [
            outbox, dispatcher, cards, connections, status, WatchdogRunner(watchdog: watchdog), reloader,
        ] + extraServices + [
            // Last, so told first of a stop.
            StopAnnouncer(
                deadline: stopDeadline,
                pending: {
                    let outboxed = (try? await spool.perform { writer throws(SpoolError) in try writer.outboxEntries().count }) ?? 0
                    return (dispatcher.running, outboxed)
                },
                logger: logger)
        ]
        let group = ServiceGroup(
            configuration: .init(
                services: services.map { .init(service: NamedService($0)) }, gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        logger.notice(
            "dingstream \(Self.version) starting: \(configuration.apps.count) app(s), spool \(configuration.spoolDirectory), \(configuration.workers) workers")
        var exitStatus: Int32 = 0
        do {
            try await group.run()
        } catch {
            logger.error("stopped with an error: \(error)")
            exitStatus = 1
        }
        await appClients.shutdown()
        await httpHandlers.shutdown()
        logger.notice("stopped")
        return exitStatus
    }

    /// This run's own registry and series when `metrics_listen` or `metrics_file` is set (never
    /// the global `MetricsSystem`: daemons in one test process count apart); else no-ops.
    static func makeMetrics(_ configuration: Configuration) -> (DaemonMetrics, PrometheusCollectorRegistry?) {
        guard configuration.metricsListen != nil || configuration.metricsFile != nil else { return (.disabled, nil) }
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets = DaemonMetrics.buckets
        let metrics = DaemonMetrics(factory: factory, version: version)
        for app in configuration.apps { _ = metrics.app(app.name) }
        return (metrics, registry)
    }

    /// Opens the spool; nil when it is open, else the exit status. A cluster database that is
    /// down or refuses the login is not a reason to exit (systemd would only restart into the
    /// same wall): it is logged and shown in `STATUS=`, and tried again with a growing pause
    /// (1 s to 30 s) until it works or the task is cancelled. Nothing is acked meanwhile: no
    /// socket is open yet.
    static func open(_ spool: Spool, notifier: Notifier, logger: Logger) async -> Int32? {
        var pause = Duration.seconds(1)
        while true {
            do {
                try spool.open()
                return nil
            } catch where error.code == .database {
                logger.error("cannot open the spool, trying again in \(pause): \(error)", metadata: ["message.id": "clusterUnavailable"])
                _ = notifier.send(.status("waiting for the cluster database: \(error)"))
                do {
                    try await Task.sleep(for: pause)
                } catch {
                    return 0
                }
                pause = min(pause * 2, .seconds(30))
            } catch {
                logger.critical("cannot open the spool: \(error)")
                _ = notifier.send(.status("spool error: \(error)"))
                return error.code == .inUse ? Self.spoolInUseExitStatus : 73
            }
        }
    }

    /// A stuck event loop cannot run this within the deadline.
    static func eventLoopResponds() async -> Bool {
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        return (try? await loop.submit { true }.get()) ?? false
    }
}

/// A service as the service group logs it: by its type name. The group prints every service at
/// debug level, and a struct prints all its fields, the process environment among them (proxy
/// passwords, tokens). Invariant 7: nothing logged may carry it.
struct NamedService: Service, CustomStringConvertible {
    private let service: any Service
    init(_ service: any Service) { self.service = service }
    var description: String { String(describing: type(of: service)) }
    // Same task: the group's graceful-shutdown signal reaches the wrapped service unchanged.
    func run() async throws { try await service.run() }
}

/// The spool's commit loop as a service: it ends when its task is cancelled, which graceful
/// shutdown does last (after the sockets are closed).
struct SpoolService: Service {
    let spool: Spool
    func run() async throws {
        await cancelWhenGracefulShutdown { await spool.run() }
    }
}

struct WatchdogRunner: Service {
    let watchdog: WatchdogService
    func run() async throws {
        await cancelWhenGracefulShutdown { await watchdog.run() }
    }
}

/// SIGHUP: read the configuration again; apply it if valid, keep the old one otherwise.
struct Reloader: Service {
    let path: String
    let environment: [String: String]
    let logger: Logger
    let apply: @Sendable (Configuration) -> Void

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        await cancelWhenGracefulShutdown {
            for await _ in signals {
                do {
                    // `apply` logs what changed, and which changes wait for a restart.
                    apply(try Configuration.load(path: path, environment: environment))
                } catch {
                    logger.error("reload rejected, the running configuration stays: \(error)", metadata: ["message.id": "configRejected"])
                }
            }
        }
    }
}

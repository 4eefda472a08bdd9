import CoreMetrics
import Foundation
import Handlers
import Replies
import Spool
import StreamClient
import StreamProtocol
import Synchronization

/// Every series the daemon exports (docs/metrics.md lists them), made through swift-metrics with
/// the factory given: a Prometheus registry of this daemon's own, never the global
/// `MetricsSystem`, so that several daemons in one test process count apart. With metrics off
/// the factory is swift-metrics' no-op one and every record is an empty call.
///
/// Series are made when an app is first seen, so each starts at 0 instead of appearing with its
/// first event (rates and alerts then work from the first scrape). The intake gets its app's
/// handles once and touches only atomics per frame (plus the ack histogram's own lock).
final class DaemonMetrics: Sendable {
    let factory: any MetricsFactory
    let commitDuration: CoreMetrics.Timer
    private let entriesByState: [EntryState: Gauge]
    private let apps = Mutex<[String: AppSeries]>([:])

    /// Histogram buckets of the timers, by label; the Prometheus factory takes them from here.
    static let buckets: [String: [Duration]] = [
        Name.ackLatency: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000].map { .milliseconds($0) },
        Name.commitDuration: [0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 1000].map { .microseconds(Int64($0 * 1000)) },
        Name.handlerDuration: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300].map { .milliseconds(Int64($0 * 1000)) },
    ]

    enum Name {
        static let received = "dingstream_messages_received_total"
        static let stored = "dingstream_messages_stored_total"
        static let duplicates = "dingstream_messages_duplicates_total"
        static let refused = "dingstream_messages_refused_total"
        static let ackLatency = "dingstream_ack_latency_seconds"
        static let socketsLive = "dingstream_sockets_live"
        static let socketsWanted = "dingstream_sockets_wanted"
        static let withoutSocket = "dingstream_no_live_socket_seconds"
        static let replacements = "dingstream_socket_replacements_total"
        static let connectFailures = "dingstream_socket_connect_failures_total"
        static let spoolEntries = "dingstream_spool_entries"
        static let commitDuration = "dingstream_store_commit_seconds"
        static let handlerRuns = "dingstream_handler_runs_total"
        static let handlerDuration = "dingstream_handler_duration_seconds"
        static let replies = "dingstream_replies_total"
        static let deadLetters = "dingstream_dead_letters_total"
        static let tokenRefreshes = "dingstream_token_refreshes_total"
        static let buildInfo = "dingstream_build_info"
    }

    init(factory: any MetricsFactory, version: String) {
        self.factory = factory
        commitDuration = CoreMetrics.Timer(label: Name.commitDuration, factory: factory)
        var entries: [EntryState: Gauge] = [:]
        for state in EntryState.allCases {
            entries[state] = Gauge(label: Name.spoolEntries, dimensions: [("state", state.rawValue)], factory: factory)
        }
        entriesByState = entries
        Gauge(label: Name.buildInfo, dimensions: [("version", version)], factory: factory).record(1)
    }

    /// Metrics off: every call is a no-op.
    static let disabled = DaemonMetrics(factory: NOOPMetricsHandler.instance, version: "")

    /// The handles of `app`, made on first use.
    func app(_ name: String) -> AppSeries {
        apps.withLock { apps in
            if let series = apps[name] { return series }
            let series = AppSeries(app: name, factory: factory)
            apps[name] = series
            return series
        }
    }

    // MARK: Refreshed from state, on scrape

    /// Sets the socket gauges from the board; apps no longer on it read 0.
    func refreshSockets(from board: ConnectionBoard, now: ContinuousClock.Instant = .now) {
        let snapshot = board.snapshot()
        let known = apps.withLock { $0 }
        for (name, series) in known {
            let state = snapshot[name]
            series.socketsLive.record(state?.up ?? 0)
            series.socketsWanted.record(state?.wanted ?? 0)
            let since = state?.up == 0 ? state?.withoutSocketSince : nil
            series.withoutSocket.record(since.map { Self.seconds(now - $0) } ?? 0)
        }
    }

    func recordSpoolCounts(_ counts: [EntryState: Int]) {
        for (state, gauge) in entriesByState { gauge.record(counts[state] ?? 0) }
    }

    // MARK: Observers handed to the other modules

    var boardObserver: ConnectionBoard.Observer {
        ConnectionBoard.Observer(
            replaced: { [self] app, reason in self.app(app).replacements[reason]?.increment() },
            connectFailed: { [self] app in self.app(app).connectFailures.increment() })
    }

    var replyObserver: ReplyObserver {
        ReplyObserver(
            attempt: { [self] app, path, result in self.app(app).replies[ReplySeriesKey(path: path, result: result)]?.increment() },
            tokenRefresh: { [self] app, succeeded in
                let series = self.app(app)
                (succeeded ? series.tokenRefreshed : series.tokenRefreshFailed).increment()
            })
    }

    var commitObserver: @Sendable (Duration) -> Void {
        { [commitDuration] duration in commitDuration.recordNanoseconds(Self.nanoseconds(duration)) }
    }

    static func nanoseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        return seconds &* 1_000_000_000 &+ attoseconds / 1_000_000_000
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}

/// Why a message was not stored or not handled (label `reason` of `dingstream_messages_refused_total`).
enum RefusalReason: String, CaseIterable {
    /// The sender is not in the app's `allowed_users`: stored, marked done, no handler run.
    case notAllowed = "not_allowed"
    /// The frame carried no id to key it by: neither stored nor acked.
    case noID = "no_id"
    /// The spool could not store it (disk full, I/O): not acked, DingTalk pushes it again.
    case storeFailed = "store_failed"
}

/// How a handler run ended (label `result` of `dingstream_handler_runs_total`).
enum HandlerRunResult: String, CaseIterable {
    case ok, retry, failed, timeout, interrupted

    init(_ result: HandlerResult) {
        switch result.outcome {
        case .done: self = .ok
        case .retryLater: self = .retry
        case .interrupted: self = .interrupted
        case .failed: self = result.status == .timedOut ? .timeout : .failed
        }
    }
}

/// Why an entry became a dead letter (label `reason` of `dingstream_dead_letters_total`).
enum DeadLetterReason: String, CaseIterable {
    /// A handler failed (exit code, signal, timeout).
    case handler
    /// A handler asked to retry `max_attempts` times.
    case retries
    /// The entry could not be read back from the spool.
    case unreadable
    /// Its reply could not be delivered by any path.
    case reply
}

struct ReplySeriesKey: Hashable {
    var path: DeliveryPath
    var result: ReplyAttemptResult
}

/// One value per message kind, read without hashing (the intake does it per frame).
struct PerKind<Value: Sendable>: Sendable {
    let bot: Value
    let event: Value
    let card: Value
    let other: Value

    init(_ make: (MessageKind) -> Value) {
        bot = make(.bot)
        event = make(.event)
        card = make(.card)
        other = make(.other)
    }

    subscript(kind: MessageKind) -> Value {
        switch kind {
        case .bot: bot
        case .event: event
        case .card: card
        case .other: other
        }
    }
}

/// The handles of one app's series. A class: the intake captures it in every frame's completion,
/// and a reference costs one retain where a struct of these fields would cost dozens.
final class AppSeries: Sendable {
    typealias Name = DaemonMetrics.Name
    let received: PerKind<CoreMetrics.Counter>
    let stored: PerKind<CoreMetrics.Counter>
    let duplicates: PerKind<CoreMetrics.Counter>
    let refused: [RefusalReason: PerKind<CoreMetrics.Counter>]
    let ackLatency: CoreMetrics.Timer
    let socketsLive: Gauge
    let socketsWanted: Gauge
    let withoutSocket: Gauge
    let replacements: [SocketReplacementReason: CoreMetrics.Counter]
    let connectFailures: CoreMetrics.Counter
    let handlerRuns: [HandlerRunResult: CoreMetrics.Counter]
    let handlerDuration: CoreMetrics.Timer
    let replies: [ReplySeriesKey: CoreMetrics.Counter]
    let deadLetters: [DeadLetterReason: CoreMetrics.Counter]
    let tokenRefreshed: CoreMetrics.Counter
    let tokenRefreshFailed: CoreMetrics.Counter

    init(app: String, factory: any MetricsFactory) {
        func counter(_ label: String, _ more: [(String, String)] = []) -> CoreMetrics.Counter {
            CoreMetrics.Counter(label: label, dimensions: [("app", app)] + more, factory: factory)
        }
        func perKind(_ label: String, _ more: [(String, String)] = []) -> PerKind<CoreMetrics.Counter> {
            PerKind { counter(label, [("kind", $0.rawValue)] + more) }
        }
        func gauge(_ label: String) -> Gauge { Gauge(label: label, dimensions: [("app", app)], factory: factory) }
        func table<Key: RawRepresentable & CaseIterable & Hashable>(_ label: String, _ dimension: String, _: Key.Type) -> [Key: CoreMetrics.Counter]
        where Key.RawValue == String {
            Dictionary(uniqueKeysWithValues: Key.allCases.map { ($0, counter(label, [(dimension, $0.rawValue)])) })
        }

        received = perKind(Name.received)
        stored = perKind(Name.stored)
        duplicates = perKind(Name.duplicates)
        refused = Dictionary(uniqueKeysWithValues: RefusalReason.allCases.map { ($0, perKind(Name.refused, [("reason", $0.rawValue)])) })
        ackLatency = CoreMetrics.Timer(label: Name.ackLatency, dimensions: [("app", app)], factory: factory)
        socketsLive = gauge(Name.socketsLive)
        socketsWanted = gauge(Name.socketsWanted)
        withoutSocket = gauge(Name.withoutSocket)
        replacements = table(Name.replacements, "reason", SocketReplacementReason.self)
        connectFailures = counter(Name.connectFailures)
        handlerRuns = table(Name.handlerRuns, "result", HandlerRunResult.self)
        handlerDuration = CoreMetrics.Timer(label: Name.handlerDuration, dimensions: [("app", app)], factory: factory)
        var replies: [ReplySeriesKey: CoreMetrics.Counter] = [:]
        for path in [DeliveryPath.sessionWebhook, .privateChat, .group] {
            for result in ReplyAttemptResult.allCases {
                replies[ReplySeriesKey(path: path, result: result)] = counter(Name.replies, [("path", path.metricsLabel), ("result", result.rawValue)])
            }
        }
        self.replies = replies
        deadLetters = table(Name.deadLetters, "reason", DeadLetterReason.self)
        tokenRefreshed = counter(Name.tokenRefreshes, [("result", "ok")])
        tokenRefreshFailed = counter(Name.tokenRefreshes, [("result", "failed")])
    }
}

extension DeliveryPath {
    /// The `path` label: webhook, batchSend, groupSend.
    var metricsLabel: String {
        switch self {
        case .sessionWebhook: "webhook"
        case .privateChat: "batchSend"
        case .group: "groupSend"
        }
    }
}

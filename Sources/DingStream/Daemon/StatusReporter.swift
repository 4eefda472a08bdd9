import Foundation
import Logging
import ServiceLifecycle
import StreamClient
import StreamProtocol
import Synchronization
import Systemd

/// Keeps `STATUS=` and `<runtime_dir>/status.json` current, and says `READY=1` once every app has
/// a live socket, or after `readyTimeout` with a degraded status. The file is rewritten when the
/// status line changes and at least every `refreshInterval`, so that its `updatedAt` tells a
/// reader how fresh the figures are.
final class StatusReporter: Service {
    private let board: ConnectionBoard
    private let notifier: Notifier
    private let runtimeDirectory: String
    private let readyTimeout: Duration
    private let counts: @Sendable () -> (queued: Int, failed: Int)
    /// Why frames are not acked right now (the spool's store failing), shown in `STATUS=`.
    private let storeFault: @Sendable () -> String?
    /// Work in flight by kind (`handlerRuns`, `replyRuns`); with the board's open channels it is
    /// `live` in status.json: figures that return to their idle value unless something leaks.
    private let inFlight: @Sendable () -> [String: Int]
    private let logger: Logger
    /// Whether `READY=1` went out; notifications are sent under this lock so that `READY=1` after a
    /// reload can never overtake its `RELOADING=1`, which would leave the unit "reloading".
    private let readySent = Mutex(false)
    private let started = ContinuousClock.now
    private let refreshInterval: Duration = .seconds(5)

    init(
        board: ConnectionBoard, notifier: Notifier, runtimeDirectory: String, readyTimeout: Duration,
        counts: @escaping @Sendable () -> (queued: Int, failed: Int), storeFault: @escaping @Sendable () -> String? = { nil },
        inFlight: @escaping @Sendable () -> [String: Int] = { [:] },
        logger: Logger
    ) {
        self.storeFault = storeFault
        self.inFlight = inFlight
        self.board = board
        self.notifier = notifier
        self.runtimeDirectory = runtimeDirectory
        self.readyTimeout = readyTimeout
        self.counts = counts
        self.logger = logger
    }

    /// Reload in progress: `RELOADING=1` now, `READY=1` again from `reloaded()`.
    func reloading() {
        let text = line(phase: "reloading")
        readySent.withLock { _ in _ = notifier.send(.reloading, .status(text)) }
    }

    /// The reload is applied. Before the first `READY=1` the start is still under way, and the run
    /// loop says ready when it is.
    func reloaded() {
        readySent.withLock { sent in
            if sent { _ = notifier.send(.ready) }
        }
    }

    func run() async throws {
        var lastLine = ""
        var lastWrite = ContinuousClock.now
        var ready = false
        try? FileManager.default.createDirectory(atPath: runtimeDirectory, withIntermediateDirectories: true)
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            let allUp = board.everyAppHasASocket()
            if !ready && (allUp || ContinuousClock.now - started >= readyTimeout) {
                ready = true
                let text = line(phase: allUp ? "ready" : "degraded")
                readySent.withLock { sent in
                    _ = notifier.send(.ready, .status(text))
                    sent = true
                }
                if allUp {
                    logger.notice("\(text)")
                } else {
                    logger.warning("ready without a live socket for every app after \(readyTimeout): \(text)")
                }
            }
            let text = line(phase: ready ? (allUp ? "ready" : "degraded") : "starting")
            let changed = text != lastLine
            if changed {
                lastLine = text
                _ = notifier.send(.status(text))
            }
            if changed || ContinuousClock.now - lastWrite >= refreshInterval {
                lastWrite = ContinuousClock.now
                writeStatusFile(phase: ready ? (allUp ? "ready" : "degraded") : "starting")
            }
            try? await Task.sleep(for: .milliseconds(250))
        }
        _ = notifier.send(.stopping, .status(line(phase: "stopping")))
        try? FileManager.default.removeItem(atPath: runtimeDirectory + "/status.json")
    }

    private func line(phase: String) -> String {
        let snapshot = board.snapshot()
        let apps = snapshot.keys.sorted().map { name in
            StatusLine.App(name: name, up: snapshot[name]?.up ?? 0, wanted: snapshot[name]?.wanted ?? 0)
        }
        let (queued, failed) = counts()
        let text = StatusLine(phase: phase, apps: apps, queued: queued, failed: failed).text
        return storeFault().map { "\(text); not acking: \($0)" } ?? text
    }

    private func writeStatusFile(phase: String) {
        let snapshot = board.snapshot()
        let now = ContinuousClock.now
        let wallNow = Date().timeIntervalSince1970
        let (queued, failed) = counts()
        var apps: [String: Any] = [:]
        for (name, state) in snapshot {
            apps[name] = [
                "wanted": state.wanted,
                "up": state.up,
                "rotations": state.rotations,
                "lastError": state.lastError ?? NSNull(),
                "sockets": state.sockets.map { socket in
                    [
                        "slot": socket.slot, "id": socket.connectionID,
                        "ageSeconds": Int((now - socket.openedAt).components.seconds), "draining": socket.draining,
                        // Wall time, so that a reader computes the age when it reads.
                        "openedAt": wallNow - Double((now - socket.openedAt).components.seconds),
                    ] as [String: Any]
                },
            ] as [String: Any]
        }
        let object: [String: Any] = [
            "pid": Int(getpid()), "phase": phase, "queued": queued, "failed": failed, "apps": apps,
            "storeFault": storeFault() ?? NSNull(),
            "live": inFlight().merging(["channels": board.openChannels]) { own, _ in own },
            "updatedAt": wallNow,
        ]
        guard let text = JSON.text(object, pretty: true) else { return }
        let path = runtimeDirectory + "/status.json"
        let temporary = path + ".tmp"
        if FileManager.default.createFile(atPath: temporary, contents: Data(text.utf8)) {
            _ = rename(temporary, path)
        }
    }
}


import Logging
import Synchronization

/// One liveness check: returns `true` when its part made progress (or had nothing to do).
public struct WatchdogProbe: Sendable {
    public var name: String
    public var check: @Sendable () async -> Bool

    public init(name: String, check: @escaping @Sendable () async -> Bool) {
        self.name = name
        self.check = check
    }
}

/// Sends `WATCHDOG=1` every `watchdogInterval / 2`, but only while every probe passes within its
/// deadline, so a wedged event loop or spool makes systemd restart the daemon.
///
/// Probes must test the daemon's own progress (intake, dispatch), never DingTalk's reachability:
/// an outage of the gateway must not cause restarts. Without a watchdog (`WATCHDOG_USEC` unset)
/// `run()` only waits for cancellation.
public struct WatchdogService: Sendable {
    private let notifier: Notifier
    private let probes: [WatchdogProbe]
    private let logger: Logger
    private let clock: any Clock<Duration>
    private let running = RunningProbes()

    /// Probes are named `probe[0]`, `probe[1]`, … in log lines.
    public init(notifier: Notifier, probes: [@Sendable () async -> Bool], logger: Logger) {
        self.init(
            notifier: notifier,
            probes: probes.enumerated().map { WatchdogProbe(name: "probe[\($0.offset)]", check: $0.element) },
            logger: logger
        )
    }

    public init(notifier: Notifier, probes: [WatchdogProbe], logger: Logger, clock: any Clock<Duration> = ContinuousClock()) {
        self.notifier = notifier
        self.probes = probes
        self.logger = logger
        self.clock = clock
    }

    /// Runs until the task is cancelled. Never throws; a failing probe only withholds pings, and
    /// is logged once when pings stop and once when they resume.
    public func run() async {
        guard let interval = notifier.watchdogInterval else {
            while !Task.isCancelled { try? await clock.sleep(for: .seconds(3600)) }
            return
        }
        let period = interval / 2
        var stalled = false
        while !Task.isCancelled {
            let problems = await checkAll(deadline: period / 2)
            if problems.isEmpty {
                notifier.send(.watchdog)
                if stalled {
                    stalled = false
                    logger.notice("watchdog pings resumed")
                }
            } else if !stalled {
                stalled = true
                logger.error(
                    "watchdog pings stopped; systemd will restart the daemon unless progress resumes",
                    metadata: MessageID.watchdogStalled.metadata.merging(
                        ["watchdog.reason": .string(problems.joined(separator: ", "))], uniquingKeysWith: { $1 })
                )
            }
            do { try await clock.sleep(for: period) } catch { return }
        }
    }

    /// Runs every probe in parallel; returns one reason per probe that did not pass.
    func checkAll(deadline: Duration) async -> [String] {
        await withTaskGroup(of: String?.self) { group in
            for (index, probe) in probes.enumerated() {
                group.addTask { await self.check(index: index, probe: probe, deadline: deadline) }
            }
            var problems: [String] = []
            for await problem in group { if let problem { problems.append(problem) } }
            return problems.sorted()
        }
    }

    /// One probe bounded by `deadline`; `nil` when it passed.
    private func check(index: Int, probe: WatchdogProbe, deadline: Duration) async -> String? {
        // A probe stuck in a wedged event loop never returns, and a task group would wait for it
        // forever. So the probe runs in its own task that may be abandoned; at most one per probe.
        guard running.begin(index) else { return "\(probe.name) still stuck" }
        let outcome = await withCheckedContinuation { (continuation: CheckedContinuation<Bool?, Never>) in
            let once = ResumeOnce(continuation)
            let clock = self.clock
            let timer = Task {
                try? await clock.sleep(for: deadline)
                once.resume(nil)
            }
            let running = self.running
            Task {
                let passed = await probe.check()
                running.end(index)
                once.resume(passed)
                timer.cancel()
            }
        }
        switch outcome {
        case .some(true): return nil
        case .some(false): return "\(probe.name) failed"
        case .none: return "\(probe.name) timed out after \(deadline)"
        }
    }
}

/// Indices of probes whose task has not returned yet.
private final class RunningProbes: Sendable {
    private let indices = Mutex<Set<Int>>([])
    func begin(_ index: Int) -> Bool { indices.withLock { $0.insert(index).inserted } }
    func end(_ index: Int) { _ = indices.withLock { $0.remove(index) } }
}

/// Resumes a continuation with the first result only.
private final class ResumeOnce<T: Sendable>: Sendable {
    private let continuation: Mutex<CheckedContinuation<T, Never>?>
    init(_ continuation: CheckedContinuation<T, Never>) { self.continuation = Mutex(continuation) }
    func resume(_ value: T) {
        let taken = continuation.withLock { slot -> CheckedContinuation<T, Never>? in
            defer { slot = nil }
            return slot
        }
        taken?.resume(returning: value)
    }
}

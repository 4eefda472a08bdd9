import Logging
import Synchronization
import Testing
@testable import Systemd

@Suite struct WatchdogServiceTests {
    private func logger(_ store: RecordingLogHandler.Store) -> Logger {
        Logger(label: "test") { _ in RecordingLogHandler(store: store) }
    }

    @Test(.timeLimit(.minutes(1))) func pingsWhileProbesPass() async throws {
        let listener = try DatagramListener()
        let notifier = Notifier(environment: ["NOTIFY_SOCKET": listener.notifySocket, "WATCHDOG_USEC": "100000"])
        let calls = Mutex(0)
        let service = WatchdogService(
            notifier: notifier, probes: [{ calls.withLock { $0 += 1 }; return true }], logger: logger(.init()))
        let task = Task { await service.run() }
        let datagrams = await listener.receiveAll(during: .milliseconds(600))
        task.cancel()
        await task.value
        // Every 50 ms: at least a few pings, each preceded by a probe run.
        #expect(datagrams.count >= 4)
        #expect(datagrams.allSatisfy { $0 == "WATCHDOG=1" })
        #expect(calls.withLock { $0 } >= datagrams.count)
    }

    @Test(.timeLimit(.minutes(1))) func failingProbeStopsPingsAndLogsOnce() async throws {
        let listener = try DatagramListener()
        let notifier = Notifier(environment: ["NOTIFY_SOCKET": listener.notifySocket, "WATCHDOG_USEC": "100000"])
        let healthy = Mutex(false)
        let store = RecordingLogHandler.Store()
        let service = WatchdogService(
            notifier: notifier,
            probes: [WatchdogProbe(name: "intake", check: { true }),
                     WatchdogProbe(name: "dispatch", check: { healthy.withLock { $0 } })],
            logger: logger(store))
        let task = Task { await service.run() }

        let whileFailing = await listener.receiveAll(during: .milliseconds(400))
        #expect(whileFailing.isEmpty)
        let stalls = store.snapshot.filter { $0.level == .error }
        #expect(stalls.count == 1)
        #expect(stalls.first?.metadata["message.id"] == .string(MessageID.watchdogStalled.rawValue))
        #expect(stalls.first?.metadata["watchdog.reason"] == .string("dispatch failed"))

        healthy.withLock { $0 = true }
        let resumed = await listener.receive(timeout: .seconds(5))
        #expect(resumed == "WATCHDOG=1")
        task.cancel()
        await task.value
        #expect(store.snapshot.contains { $0.level == .notice && $0.message == "watchdog pings resumed" })
        #expect(store.snapshot.filter { $0.level == .error }.count == 1)
    }

    @Test(.timeLimit(.minutes(1))) func hungProbeStopsPingsWithoutHangingTheService() async throws {
        let listener = try DatagramListener()
        let notifier = Notifier(environment: ["NOTIFY_SOCKET": listener.notifySocket, "WATCHDOG_USEC": "100000"])
        let released = Mutex(false)
        let starts = Mutex(0)
        let store = RecordingLogHandler.Store()
        // Stands in for a probe awaiting a wedged event loop: ignores cancellation until released.
        let stuck = WatchdogProbe(name: "loop") {
            starts.withLock { $0 += 1 }
            while !released.withLock({ $0 }) { try? await Task.sleep(for: .milliseconds(10)) }
            return true
        }
        let service = WatchdogService(notifier: notifier, probes: [stuck], logger: logger(store))
        let task = Task { await service.run() }
        let datagrams = await listener.receiveAll(during: .milliseconds(500))
        #expect(datagrams.isEmpty)
        // The stuck probe is not started again while its first run is outstanding.
        #expect(starts.withLock { $0 } == 1)
        let reason = store.snapshot.first { $0.level == .error }?.metadata["watchdog.reason"]
        #expect(reason == .string("loop timed out after 0.025 seconds"))

        task.cancel()
        await task.value   // returns although the probe is still stuck
        released.withLock { $0 = true }
    }

    @Test(.timeLimit(.minutes(1))) func withoutWatchdogItOnlyWaitsForCancellation() async throws {
        let listener = try DatagramListener()
        let notifier = Notifier(environment: ["NOTIFY_SOCKET": listener.notifySocket])
        let service = WatchdogService(notifier: notifier, probes: [{ true }], logger: logger(.init()))
        let task = Task { await service.run() }
        #expect(await listener.receiveAll(during: .milliseconds(200)).isEmpty)
        task.cancel()
        await task.value
    }
}

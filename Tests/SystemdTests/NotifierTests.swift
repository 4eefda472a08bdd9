import Testing
@testable import Systemd

#if canImport(Glibc)
import Glibc
#endif

@Suite struct NotifierTests {
    @Test(.timeLimit(.minutes(1))) func silentWithoutNotifySocket() throws {
        let notifier = Notifier(environment: ["PATH": "/usr/bin"])
        #expect(!notifier.isActive)
        #expect(notifier.watchdogInterval == nil)
        #expect(notifier.send(.ready) == false)
        #expect(try notifier.deliver([.ready, .status("x")]) == false)
    }

    @Test(.timeLimit(.minutes(1))) func sendsReadyAndStatusToPathSocket() async throws {
        let listener = try DatagramListener()
        let notifier = Notifier(environment: ["NOTIFY_SOCKET": listener.notifySocket])
        #expect(notifier.address == .path(listener.notifySocket))
        #expect(notifier.send(.ready, .status("helpdesk 2/2 up\nsecond line")))
        let datagram = await listener.receive(timeout: .seconds(5))
        #expect(datagram == "READY=1\nSTATUS=helpdesk 2/2 up second line")
    }

    @Test(.timeLimit(.minutes(1))) func sendsToAbstractSocket() async throws {
        let listener = try DatagramListener(abstract: true)
        let notifier = Notifier(environment: ["NOTIFY_SOCKET": listener.notifySocket])
        guard case .abstract = notifier.address else {
            Issue.record("expected an abstract address, got \(String(describing: notifier.address))")
            return
        }
        try notifier.deliver([.stopping])
        #expect(await listener.receive(timeout: .seconds(5)) == "STOPPING=1")
        notifier.send(.watchdog)
        #expect(await listener.receive(timeout: .seconds(5)) == "WATCHDOG=1")
    }

    @Test(.timeLimit(.minutes(1))) func reloadingCarriesMonotonicTime() async throws {
        let listener = try DatagramListener()
        let injected = Notifier(environment: ["NOTIFY_SOCKET": listener.notifySocket], monotonicMicroseconds: { 12_345 })
        injected.send(.reloading)
        #expect(await listener.receive(timeout: .seconds(5)) == "RELOADING=1\nMONOTONIC_USEC=12345")

        // The real clock: the value lies between two readings of CLOCK_MONOTONIC.
        let real = Notifier(environment: ["NOTIFY_SOCKET": listener.notifySocket])
        let before = Notifier.monotonicNow()
        real.send(.reloading)
        let after = Notifier.monotonicNow()
        let datagram = try #require(await listener.receive(timeout: .seconds(5)))
        let lines = datagram.split(separator: "\n")
        #expect(lines.first == "RELOADING=1")
        let usec = try #require(lines.last.flatMap { UInt64($0.dropFirst("MONOTONIC_USEC=".count)) })
        #expect(usec >= before && usec <= after)
    }

    @Test(.timeLimit(.minutes(1))) func watchdogSettings() {
        let mine = Notifier(environment: ["NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "42"],
                            processID: 42)
        #expect(mine.watchdogInterval == .milliseconds(200))
        let anyPID = Notifier(environment: ["WATCHDOG_USEC": "3000000"], processID: 42)
        #expect(anyPID.watchdogInterval == .seconds(3))
        let other = Notifier(environment: ["WATCHDOG_USEC": "200000", "WATCHDOG_PID": "43"], processID: 42)
        #expect(other.watchdogInterval == nil)
        let garbage = Notifier(environment: ["WATCHDOG_USEC": "soon"])
        #expect(garbage.watchdogInterval == nil)
        let zero = Notifier(environment: ["WATCHDOG_USEC": "0"])
        #expect(zero.watchdogInterval == nil)
    }

    @Test(.timeLimit(.minutes(1))) func invalidNotifySocketIsReportedNotThrown() {
        let relative = Notifier(environment: ["NOTIFY_SOCKET": "run/notify"])
        #expect(relative.address == nil)
        #expect(relative.configurationError?.code == .invalidNotifySocket)
        #expect(relative.send(.ready) == false)
        let tooLong = Notifier(environment: ["NOTIFY_SOCKET": "/" + String(repeating: "a", count: 200)])
        #expect(tooLong.address == nil)
        #expect(tooLong.configurationError?.description.contains("NOTIFY_SOCKET") == true)
    }

    @Test(.timeLimit(.minutes(1))) func missingListenerThrowsSendFailed() throws {
        let directory = try makeTemporaryDirectory()
        defer { rmdir(directory) }
        let notifier = Notifier(environment: ["NOTIFY_SOCKET": directory + "/gone.sock"])
        #expect(notifier.isActive)
        #expect(notifier.send(.ready) == false)
        let error = #expect(throws: SystemdError.self) { try notifier.deliver([.ready]) }
        #expect(error?.code == .sendFailed)
        #expect(error?.osError == ENOENT)
        #expect(error?.description.contains("gone.sock") == true)
    }
}

import Foundation
import Simulator
import Spool
import Testing

/// A graceful stop (SIGTERM) of the real daemon binary while a handler runs.
@Suite("Graceful shutdown of the daemon process", .serialized)
struct ShutdownTests {
    /// A handler cut off by a graceful stop costs the message no attempt: with max_attempts = 1
    /// it runs again at the next start and its reply goes out, instead of becoming a dead letter
    /// "asked to retry". The stop itself exits 0.
    @Test(.timeLimit(.minutes(1)))
    func aStopDuringAHandlerCostsNoAttemptAndExitsZero() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        let runLog = harness.root + "/runs.log"
        let gate = harness.root + "/let-it-finish"
        // Waits (long past shutdown_grace) unless the gate file exists.
        try harness.addHandler(
            "10-slow",
            """
            #!/bin/sh
            echo "run" >> '\(runLog)'
            [ -e '\(gate)' ] || sleep 30
            printf 'finished %s' "$DINGSTREAM_TEXT"

            """)
        try await DingTalkSimulator.withRunning(.single("helpdesk")) { simulator in
            let daemon = try DaemonProcess(harness: harness, simulator: simulator, settings: "max_attempts = 1")
            do {
                try daemon.start()
                try await simulator.waitUntil(timeout: .seconds(30), "a live socket") { !$0.liveSockets(app: "helpdesk").isEmpty }
                let message = try simulator.injectText("patience", app: "helpdesk")
                try await poll(timeout: .seconds(20), "the handler running") {
                    (try? String(contentsOfFile: runLog, encoding: .utf8))?.contains("run") == true
                }
                try await daemon.terminate()
                #expect(daemon.lastExitStatus == 0, "exit status of the graceful stop")
                #expect(SpoolSnapshot(spool: harness.spool).count(in: "failed") == 0, "no dead letter after the stop")

                FileManager.default.createFile(atPath: gate, contents: nil)
                try daemon.start()
                try await poll(timeout: .seconds(30), "the reply after the restart") {
                    deliveredReplies(simulator, app: "helpdesk").contains { $0.content == "finished patience" }
                }
                try await poll(timeout: .seconds(10), "the entry done") { SpoolSnapshot(spool: harness.spool).count(in: "done") == 1 }
                try await daemon.terminate()
                #expect(daemon.lastExitStatus == 0)
                let row = try SpoolInspector(directory: harness.spool).resolve(message.msgId)
                #expect(row.state == .done && row.entry.attempts == 0, "state \(row.state), attempts \(row.entry.attempts)")
            } catch {
                Issue.record("daemon log:\n\(daemon.log)")
                throw error
            }
        }
    }

    /// During a DingTalk outage the outbox keeps retrying a reply; a graceful stop must still end
    /// within the grace (not in systemd's SIGKILL), exit 0, and keep the reply for the next start.
    @Test(.timeLimit(.minutes(1)))
    func aStopDuringAnOutageEndsWithinTheGraceAndKeepsTheReply() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        try harness.addHandler("10-echo", "#!/bin/sh\nprintf 'echo %s' \"$DINGSTREAM_TEXT\"\n")
        try await DingTalkSimulator.withRunning(.single("helpdesk")) { simulator in
            let daemon = try DaemonProcess(harness: harness, simulator: simulator)
            do {
                for endpoint in [OpenAPIEndpoint.webhook, .batchSend, .groupMessages] {
                    try simulator.apply(.http(endpoint: endpoint, failure: .serverError(status: 503), count: 1_000_000))
                }
                try daemon.start()
                try await simulator.waitUntil(timeout: .seconds(30), "a live socket") { !$0.liveSockets(app: "helpdesk").isEmpty }
                _ = try simulator.injectText("outage", app: "helpdesk")
                try await poll(timeout: .seconds(20), "the reply in the outbox, retried") {
                    SpoolSnapshot(spool: harness.spool).count(in: "outbox") == 1 && simulator.faultedCalls(.batchSend) >= 1
                }
                let clock = ContinuousClock()
                let start = clock.now
                try await daemon.terminate()
                let took = clock.now - start
                // shutdown_grace is 2 s in these tests; a few seconds more for the sockets and the spool.
                #expect(took < .seconds(10), "the stop took \(took)")
                #expect(daemon.lastExitStatus == 0)
                #expect(SpoolSnapshot(spool: harness.spool).count(in: "outbox") == 1, "the reply waits for the next start")
            } catch {
                Issue.record("daemon log:\n\(daemon.log)")
                throw error
            }
        }
    }

    /// SIGTERM while messages stream in: exit status 0, every message the simulator saw acked is
    /// in the spool after the stop, and after a restart each message has run its handler once.
    @Test(.timeLimit(.minutes(2)))
    func aStopWhileMessagesStreamInExitsZeroAndKeepsEveryAckedMessage() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        let runLog = harness.root + "/runs.log"
        try harness.addHandler("10-log", loggingHandler(log: runLog))
        var configuration = SimulatorConfiguration.single("helpdesk")
        // Pushes that die with the stopped sockets come again soon after the restart.
        configuration.redeliveryTimeout = .seconds(3)
        try await DingTalkSimulator.withRunning(configuration) { simulator in
            let daemon = try DaemonProcess(harness: harness, simulator: simulator)
            do {
                try daemon.start()
                try await simulator.waitUntil(timeout: .seconds(30), "a live socket") { !$0.liveSockets(app: "helpdesk").isEmpty }
                var messages = try (0..<20).map { try simulator.injectText("s\($0)", app: "helpdesk") }
                try await poll(timeout: .seconds(20), "some messages acked") {
                    messages.contains { simulator.isAcked(app: "helpdesk", businessId: $0.msgId) }
                }
                // More keep coming while the daemon stops.
                let feeder = Task {
                    var more: [InjectedMessage] = []
                    for index in 20..<40 {
                        more.append(try simulator.injectText("s\(index)", app: "helpdesk"))
                        try await Task.sleep(for: .milliseconds(10))  // the pace of the stream
                    }
                    return more
                }
                try await daemon.terminate()
                messages += try await feeder.value
                #expect(daemon.lastExitStatus == 0, "exit status of the graceful stop")
                let acked = messages.filter { simulator.isAcked(app: "helpdesk", businessId: $0.msgId) }.map(\.msgId)
                let stored = Set(SpoolSnapshot(spool: harness.spool).entries.compactMap(\.msgId))
                #expect(!acked.isEmpty)
                #expect(acked.filter { !stored.contains($0) }.isEmpty, "acked but not in the spool after the stop")

                // What was not acked before the stop comes again (the simulator redelivers it to
                // the new sockets); each message runs once across both lives of the daemon.
                let firstLife = Set(simulator.sockets(app: "helpdesk").map(\.id))
                try daemon.start()
                // Every message may have run in the first life already: wait for the second to
                // be up before stopping it, or the SIGTERM comes before the daemon traps it.
                try await simulator.waitUntil(timeout: .seconds(30), "a socket of the restarted daemon") {
                    $0.liveSockets(app: "helpdesk").contains { !firstLife.contains($0.id) }
                }
                try await poll(timeout: .seconds(60), "every message handled") {
                    Set(handlerRuns(runLog).map(\.text)).count == messages.count
                }
                try await daemon.terminate()
                #expect(daemon.lastExitStatus == 0)
                let runs = handlerRuns(runLog).map(\.text)
                #expect(runs.count == messages.count, "handled twice: \(Dictionary(grouping: runs) { $0 }.filter { $1.count > 1 }.keys.sorted())")
            } catch {
                Issue.record("daemon log:\n\(daemon.log)")
                throw error
            }
        }
    }

    /// Issue 15, bug 12: a reply made during the shutdown grace was sent only after the next
    /// start: the outbox stopped with the dispatcher, dropping a delivery that waited behind
    /// another of the same conversation, and the stop said nothing of what it waited for. Now the
    /// outbox delivers until the grace ends.
    @Test(.timeLimit(.minutes(1)))
    func aReplyMadeDuringTheGraceIsSentBeforeTheDaemonExits() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        let runLog = harness.root + "/runs.log"
        let gate = harness.root + "/let-it-finish"
        // "second" waits for the gate; anything else answers at once.
        try harness.addHandler(
            "10-gated",
            """
            #!/bin/sh
            echo "$DINGSTREAM_TEXT" >> '\(runLog)'
            if [ "$DINGSTREAM_TEXT" = second ]; then
                while [ ! -e '\(gate)' ]; do sleep 0.05; done
            fi
            printf 'finished %s' "$DINGSTREAM_TEXT"

            """)
        try await DingTalkSimulator.withRunning(.single("helpdesk")) { simulator in
            let daemon = try DaemonProcess(harness: harness, simulator: simulator)
            do {
                try daemon.start()
                try await simulator.waitUntil(timeout: .seconds(30), "a live socket") { !$0.liveSockets(app: "helpdesk").isEmpty }
                // The first reply takes a while at DingTalk; the second waits behind it (one
                // conversation's replies go out in order).
                try simulator.apply(.http(endpoint: .webhook, failure: .delay(.milliseconds(1200)), count: 1))
                let group = BotMessageSpec.Conversation.group(conversationId: "cidShared==", title: "ops")
                _ = try simulator.injectBotMessage(BotMessageSpec(app: "helpdesk", content: .text("first"), conversation: group))
                // Sent after the first was handled: pushed at once over two sockets, the two could
                // reach the daemon in either order.
                try await poll(timeout: .seconds(20), "the first handler run") {
                    (try? String(contentsOfFile: runLog, encoding: .utf8))?.contains("first") == true
                }
                let second = try simulator.injectBotMessage(BotMessageSpec(app: "helpdesk", content: .text("second"), conversation: group))
                try await poll(timeout: .seconds(20), "the second handler running") {
                    (try? String(contentsOfFile: runLog, encoding: .utf8))?.contains("second") == true
                }
                daemon.send(signal: SIGTERM)
                try await poll(timeout: .seconds(10), "the stop announced") { daemon.log.contains("stopping: closing the sockets") }
                FileManager.default.createFile(atPath: gate, contents: nil)
                try await daemon.waitForExit()
                #expect(daemon.lastExitStatus == 0)
                let contents = deliveredReplies(simulator, app: "helpdesk").map(\.content)
                #expect(contents == ["finished first", "finished second"], "replies sent before the exit: \(contents)")
                let row = try SpoolInspector(directory: harness.spool).resolve(second.msgId)
                #expect(row.state == .done, "state \(row.state)")
                #expect(daemon.log.contains("waiting up to"), "the stop says what it waits for")
            } catch {
                Issue.record("daemon log:\n\(daemon.log)")
                throw error
            }
        }
    }
}

import Foundation
import Simulator
import Testing

/// kill -9 of the real daemon binary (DESIGN.md invariant 4): nothing acked is lost, nothing is
/// stored twice, no handler runs again once its reply is on its way.
@Suite("SIGKILL of the daemon process", .serialized)
struct CrashTests {
    /// Issue #6: the handler finished and its reply is in the outbox, but neither the session
    /// webhook nor the OpenAPI takes it (503). kill -9. The outage ends, the daemon restarts: the
    /// reply arrives once, from the outbox, and the handler is not run again.
    @Test(.timeLimit(.minutes(1)))
    func replyInOutboxSurvivesKillAndIsDeliveredOnceWithoutRerun() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        let runLog = harness.root + "/runs.log"
        try harness.addHandler("10-log", loggingHandler(log: runLog))
        var simulatorConfiguration = SimulatorConfiguration.single("helpdesk")
        simulatorConfiguration.redeliveryTimeout = .seconds(2)
        try await DingTalkSimulator.withRunning(simulatorConfiguration) { simulator in
            let daemon = try DaemonProcess(harness: harness, simulator: simulator)
            do {
                // Every path out fails: the intent must wait in the outbox.
                for endpoint in [OpenAPIEndpoint.webhook, .batchSend, .groupMessages] {
                    try simulator.apply(.http(endpoint: endpoint, failure: .serverError(status: 503), count: 1_000_000))
                }
                try daemon.start()
                try await simulator.waitUntil(timeout: .seconds(30), "a live socket") { !$0.liveSockets(app: "helpdesk").isEmpty }
                let message = try simulator.injectText("outage", app: "helpdesk")
                try await simulator.waitUntil(timeout: .seconds(30), "the reply waiting in outbox/ after failed attempts on both paths") { sim in
                    SpoolSnapshot(spool: harness.spool).count(in: "outbox") == 1
                        && sim.faultedCalls(.webhook) >= 1 && sim.faultedCalls(.batchSend) >= 1
                }
                #expect(simulator.isAcked(app: "helpdesk", businessId: message.msgId))
                try await daemon.kill()
                #expect(deliveredReplies(simulator, app: "helpdesk").isEmpty)
                let runsBefore = handlerRuns(runLog)
                try #require(runsBefore.count == 1, "the handler ran \(runsBefore.count) times before the kill")

                try simulator.apply(.clearHTTPFaults(endpoint: nil))
                try daemon.start()
                try await simulator.waitUntil(timeout: .seconds(30), "the reply after the restart") { sim in
                    !deliveredReplies(sim, app: "helpdesk").isEmpty
                }
                try await simulator.waitUntil(timeout: .seconds(30), "the entry in done/") { _ in
                    SpoolSnapshot(spool: harness.spool).count(in: "done") == 1
                }
                // A graceful stop ends every delivery attempt: the counts below are final.
                try await daemon.terminate()

                let replies = deliveredReplies(simulator, app: "helpdesk")
                #expect(replies.count == 1, "replies: \(replies.map(\.content))")
                #expect(replies.first?.msgId == message.msgId)
                // The reply is the one the first (and only) run produced.
                #expect(replies.first?.content == "reply outage \(runsBefore[0].token)")
                #expect(handlerRuns(runLog).count == 1, "handler runs: \(handlerRuns(runLog))")
                let spool = SpoolSnapshot(spool: harness.spool)
                #expect(spool.entries.count == 1 && spool.count(in: "done") == 1, "spool: \(spool.entries)")
            } catch {
                Issue.record("daemon log:\n\(daemon.log)")
                throw error
            }
        }
    }
}

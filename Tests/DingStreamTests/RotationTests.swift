import DingStream
import Foundation
import Simulator
import Spool
import StreamClient
import Synchronization
import Testing

/// The product promise under DingTalk's worst habits: the real daemon (intake, spool) against the
/// simulator while every socket of an app is taken away again and again.
@Suite("Rotations under load")
struct RotationTests {
    static let app = "helpdesk"

    @Test(.timeLimit(.minutes(2)))
    func steadyFlowSurvivesRotationsWithoutLossOrGap() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        var simulatorConfiguration = SimulatorConfiguration.single(Self.app)
        simulatorConfiguration.randomSeed = 11
        simulatorConfiguration.pingInterval = .milliseconds(200)
        // Pushes lost with an abruptly closed socket come again soon, not after DingTalk's 60 s.
        simulatorConfiguration.redeliveryTimeout = .seconds(3)
        simulatorConfiguration.disconnectGrace = .seconds(2)
        // The simulator pings live sockets every 200 ms, so 1.5 s of silence is a deaf socket.
        let keepalive = KeepaliveSettings(silenceTimeout: .seconds(2), idleTimeout: .milliseconds(1500))

        try await DingTalkSimulator.withRunning(simulatorConfiguration) { sim in
            let configuration = harness.configuration(for: sim, connections: 2)
            try await harness.withDaemon(configuration, keepalive: keepalive) {
                try await sim.waitUntil(timeout: .seconds(20), "two live sockets") { $0.liveSockets(app: Self.app).count == 2 }
                let modes: [DisconnectMode] = [
                    .disconnectFrame, .abruptClose, .deaf, .disconnectFrame, .deaf, .abruptClose, .disconnectFrame, .disconnectFrame, .deaf,
                ]
                let feed = Feed()

                try await withThrowingTaskGroup(of: Void.self) { group in
                    // A message every 20 ms for the whole test.
                    group.addTask {
                        var n = 0
                        while feed.running.load(ordering: .relaxed) {
                            let message = try sim.injectText("steady \(n)", app: Self.app)
                            feed.msgIDs.withLock { $0.append(message.msgId) }
                            n += 1
                            try await Task.sleep(for: .milliseconds(20))
                        }
                    }
                    for (round, mode) in modes.enumerated() {
                        try await sim.waitUntil(timeout: .seconds(20), "two live sockets before round \(round)") {
                            $0.liveSockets(app: Self.app).count == 2
                        }
                        // The oldest socket goes, so every socket of the app is rotated in turn.
                        let before = Set(sim.liveSockets(app: Self.app).map(\.id))
                        let victim = before.min()!
                        let gapsBefore = sim.gaps(app: Self.app).count
                        try sim.disconnect(socket: victim, mode: mode)
                        try await sim.waitUntil(timeout: .seconds(20), "the replacement in round \(round) (\(mode))") { sim in
                            let live = sim.liveSockets(app: Self.app)
                            return live.count == 2 && !live.contains { $0.id == victim }
                        }
                        let old = sim.sockets(app: Self.app).first { $0.id == victim }
                        if mode == .disconnectFrame {
                            // Make-before-break: the replacement is live while the old socket is still open.
                            #expect(old?.state == .draining, "round \(round): old socket \(String(describing: old?.state))")
                        } else if mode == .deaf {
                            // A deaf socket has nothing left to deliver and is dropped at once, but
                            // only after its replacement was opened.
                            let opened = try #require(sim.sockets(app: Self.app).filter { !before.contains($0.id) }.map(\.openedAt).min())
                            let closed = old?.closedAt ?? .distantFuture  // still open: fine
                            #expect(opened <= closed, "round \(round): old socket closed at \(closed), replacement opened at \(opened)")
                        }
                        // Let the replacement carry traffic before the next round.
                        let replacement = sim.liveSockets(app: Self.app).map(\.id).first { !before.contains($0) }!
                        try await sim.waitUntil(timeout: .seconds(20), "a push on the replacement in round \(round)") { sim in
                            sim.pushes(app: Self.app).contains { $0.socketId == replacement }
                        }
                        if mode == .disconnectFrame {
                            #expect(sim.gaps(app: Self.app).count == gapsBefore, "round \(round): a disconnect frame left the app without a live socket")
                        }
                    }
                    feed.running.store(false, ordering: .relaxed)
                    try await group.waitForAll()
                }

                let sent = feed.msgIDs.withLock { $0 }
                #expect(sent.count > 100)
                try await sim.waitUntil(timeout: .seconds(40), "every message acked") { sim in
                    sent.allSatisfy { sim.isAcked(app: Self.app, businessId: $0) }
                }
                // Ack after commit: everything acked is in the spool, exactly once.
                let spooled = try spooledMessageIDs(harness.spool)
                let counts = Dictionary(spooled.map { ($0, 1) }, uniquingKeysWith: +)
                #expect(Set(sent).subtracting(counts.keys).isEmpty, "lost: \(Set(sent).subtracting(counts.keys).count)")
                #expect(counts.values.allSatisfy { $0 == 1 }, "duplicates: \(counts.filter { $0.value > 1 }.count)")
                #expect(spooled.count == sent.count)

                // At no moment was the app without a live socket, over all nine rotations.
                #expect(sim.gaps(app: Self.app).isEmpty, "\(sim.gaps(app: Self.app))")
                #expect(sim.stats(app: Self.app).acksOnWrongSocket == 0)
                #expect(sim.sockets(app: Self.app).count >= 2 + modes.count)
                #expect(Set(sim.pushes(app: Self.app).map(\.socketId)).count >= modes.count, "pushes reached the replacements")
            }
        }
    }

    /// What the feeder injected, and whether it still runs.
    final class Feed: Sendable {
        let msgIDs = Mutex<[String]>([])
        let running = Atomic<Bool>(true)
    }

    /// `data.msgId` of every bot message entry in the spool, whatever state it is in.
    func spooledMessageIDs(_ spool: String) throws -> [String] {
        try SpoolInspector(directory: spool).list(states: [.new, .running, .done, .failed]).map(\.businessID)
    }
}

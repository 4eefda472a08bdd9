import Foundation
import Logging
import Simulator
import StreamClient
import StreamProtocol
import Synchronization
import Testing

/// A socket that goes silent, and a frame too large to read: each costs one socket, replaced
/// make-before-break, and no message.
@Suite("Silent sockets and oversized frames", .serialized)
struct SilenceAndOversizeTests {
    static let app = "helpdesk"

    @Test(.timeLimit(.minutes(1)))
    func aBlackHoledSocketIsReplacedWithinTenSecondsAndLosesNothing() async throws {
        var configuration = SimulatorConfiguration.single(Self.app)
        configuration.randomSeed = 5
        // Pushes lost in the black hole come again after 2 s rather than DingTalk's 60 s.
        configuration.redeliveryTimeout = .seconds(2)
        try await DingTalkSimulator.withRunning(configuration) { sim in
            let log = CapturedLog()
            let sink = AckingSink()
            var settings = settings(for: sim, connections: 2)
            settings.keepalive = KeepaliveSettings()  // the shipped silence_timeout
            try await withSupervisor(settings, sink: sink, logger: log.logger) {
                try await sim.waitUntil(timeout: .seconds(20), "two live sockets") { $0.liveSockets(app: Self.app).count == 2 }
                let first = sim.liveSockets(app: Self.app).map(\.id)
                let (victim, survivor) = (first[0], first[1])
                let injected = Shared<[String]>([])
                let pumping = Shared(true)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    // A message every 50 ms, before, during and after the black hole.
                    group.addTask {
                        while pumping.value {
                            let message = try sim.injectText("m", app: Self.app)
                            injected.withLock { $0.append(message.msgId) }
                            try await Task.sleep(for: .milliseconds(50))
                        }
                    }
                    try await eventually("the stream to flow") { injected.withLock { $0.count } >= 20 }
                    let holedAt = ContinuousClock.now
                    try sim.disconnect(socket: victim, mode: .blackHole)
                    try await sim.waitUntil(timeout: .seconds(30), "a replacement") { sim in
                        sim.liveSockets(app: Self.app).contains { $0.id != victim && $0.id != survivor }
                    }
                    let replacedAfter = ContinuousClock.now - holedAt
                    #expect(replacedAfter < .seconds(10), "replaced only after \(replacedAfter)")
                    // The client let go of the silent socket once its replacement was up.
                    try await sim.waitUntil(timeout: .seconds(10), "the black-holed socket closed") { sim in
                        sim.sockets(app: Self.app).first { $0.id == victim }?.state == .closed
                    }
                    let sentByThen = injected.withLock { $0.count }
                    try await eventually("more messages after the replacement") { injected.withLock { $0.count } >= sentByThen + 20 }
                    pumping.value = false
                    try await group.waitForAll()
                }
                let all = injected.withLock { $0 }
                try await eventually("every message acked", timeout: .seconds(30), state: {
                    "\(all.filter { !sim.isAcked(app: Self.app, businessId: $0) }.count) of \(all.count) unacked"
                }) {
                    all.allSatisfy { sim.isAcked(app: Self.app, businessId: $0) }
                }
                let seen = Set(sink.msgIDs.withLock { $0 })
                #expect(all.allSatisfy { seen.contains($0) }, "every message reached the sink")
                // Some pushes did fall into the hole (else this test proves nothing about them).
                let lost = sim.pushes(app: Self.app).filter { $0.socketId == victim && !$0.isRedelivery }
                #expect(!lost.isEmpty)
                // The live socket was never taken for a dead one.
                #expect(sim.sockets(app: Self.app).first { $0.id == survivor }?.state == .live)
                #expect(sim.registrations(app: Self.app).count == 3)
                #expect(log.lines(containing: "nothing received for").count == 1, "\(log.lines)")
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func aQuietButLiveSocketIsNotTakenForASilentOne() async throws {
        // No SYSTEM pings and no messages for 4 silence timeouts: only our own pings keep the
        // socket audibly alive, and that must be enough.
        var configuration = SimulatorConfiguration.single(Self.app)
        configuration.pingInterval = .seconds(3600)
        try await DingTalkSimulator.withRunning(configuration) { sim in
            let log = CapturedLog()
            let board = ConnectionBoard()
            var settings = settings(for: sim, connections: 1)
            settings.keepalive = KeepaliveSettings(silenceTimeout: .seconds(1))
            try await withSupervisor(settings, board: board, logger: log.logger) {
                try await eventually("a socket") { board.census(app: Self.app).up == 1 }
                try await Task.sleep(for: .seconds(4))  // the time span under test, not a synchronisation
                #expect(sim.registrations(app: Self.app).count == 1)
                #expect(log.lines(containing: "deaf").isEmpty, "\(log.lines)")
                // …while a black hole is still noticed with the same settings.
                let socket = try #require(sim.liveSockets(app: Self.app).first)
                try sim.disconnect(socket: socket.id, mode: .blackHole)
                try await eventually("the silent socket replaced") { sim.registrations(app: Self.app).count == 2 }
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func anOversizedFrameCostsOnlyTheSocketThatCarriedIt() async throws {
        var configuration = SimulatorConfiguration.single(Self.app)
        configuration.randomSeed = 3
        try await DingTalkSimulator.withRunning(configuration) { sim in
            let log = CapturedLog()
            let board = ConnectionBoard()
            var settings = settings(for: sim, connections: 2)
            settings.maxFrameSize = 1 << 20
            try await withSupervisor(settings, board: board, logger: log.logger) {
                try await eventually("two sockets") { board.census(app: Self.app).up == 2 }
                try await sim.waitUntil(timeout: .seconds(20), "two live sockets") { $0.liveSockets(app: Self.app).count == 2 }
                let first = sim.liveSockets(app: Self.app).map(\.id)
                let (carrier, other) = (first[0], first[1])
                let sampling = Shared(true)
                let fewest = Shared(Int.max)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    // Watches the app's live sockets as closely as the scheduler lets it.
                    group.addTask {
                        while sampling.value {
                            let up = board.census(app: Self.app).up
                            fewest.withLock { $0 = min($0, up) }
                            await Task.yield()
                        }
                    }
                    let bytes = 2 << 20
                    try sim.pushOversizedFrame(app: Self.app, socket: carrier, bytes: bytes)
                    try await sim.waitUntil(timeout: .seconds(20), "the carrier replaced and closed") { sim in
                        let sockets = sim.sockets(app: Self.app)
                        return sockets.first { $0.id == carrier }?.state == .closed
                            && sockets.contains { $0.id != carrier && $0.id != other && $0.state == .live }
                    }
                    try await eventually("the board back to two settled sockets") {
                        let sockets = board.snapshot()[Self.app]?.sockets ?? []
                        return sockets.count == 2 && sockets.allSatisfy { !$0.draining }
                    }
                    sampling.value = false
                    try await group.waitForAll()
                    #expect(fewest.value == 2, "the app had fewer sockets than before")
                    #expect(sim.sockets(app: Self.app).first { $0.id == other }?.state == .live, "the other socket went down")
                    #expect(sim.registrations(app: Self.app).count == 3)
                    let lines = log.lines(containing: "\(bytes) bytes")
                    #expect(lines.count == 1, "\(log.lines)")
                    #expect(lines.first?.contains("max_frame_size") == true)
                }
                // And the app still works.
                let message = try sim.injectText("after", app: Self.app)
                try await eventually("the ack") { sim.isAcked(app: Self.app, businessId: message.msgId) }
            }
        }
    }
}

/// A value shared between a test and the tasks it starts.
final class Shared<Value: Sendable>: Sendable {
    private let state: Mutex<Value>

    init(_ value: Value) {
        state = Mutex(value)
    }

    var value: Value {
        get { state.withLock { $0 } }
        set { state.withLock { $0 = newValue } }
    }

    func withLock<R>(_ body: (inout Value) -> R) -> R {
        state.withLock { body(&$0) }
    }
}

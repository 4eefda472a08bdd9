import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Synchronization
import Testing
@testable import Simulator

@Suite("Delivery semantics")
struct DeliveryTests {
    @Test(.timeLimit(.minutes(1)))
    func rotationScheduleSendsDisconnectFramesToOldSockets() async throws {
        try await DingTalkSimulator.test({ $0.rotationAge = .milliseconds(100); $0.disconnectGrace = .milliseconds(50) }) { sim in
            let socket = try await TestSocket.open(sim)
            try await sim.waitUntil("rotation") { _ in !socket.frames(topic: "disconnect").isEmpty }
            #expect(sim.liveSockets(app: "helpdesk").isEmpty)
            try await sim.waitUntil("closed after grace") { $0.sockets(app: "helpdesk").allSatisfy { $0.state == .closed } }
            // Break-before-make rotation leaves a gap on record.
            #expect(sim.gaps(app: "helpdesk").count == 1)
            await socket.close()
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func eventAckedLaterIsPushedAgainWithSameEventId() async throws {
        try await DingTalkSimulator.test({ $0.redeliveryTimeout = .milliseconds(100) }) { sim in
            let socket = try await TestSocket.open(sim)
            try await sim.waitUntil { $0.liveSockets(app: "helpdesk").count == 1 }
            let event = try sim.injectEvent(app: "helpdesk", eventType: "chat_update_title", data: #"{"title":"x"}"#)
            try await sim.waitUntil { _ in !socket.frames(topic: "*").isEmpty }
            let first = socket.frames(topic: "*")[0]
            let headers = try #require(first["headers"] as? [String: Any])
            #expect(first["type"] as? String == "EVENT")
            #expect(headers["eventId"] as? String == event.eventId)
            #expect(headers["eventType"] as? String == "chat_update_title")
            #expect(headers["eventBornTime"] is String && headers["eventCorpId"] is String && headers["eventUnifiedAppId"] is String)
            socket.ack(first, data: #"{"status":"LATER"}"#)
            try await sim.waitUntil("pushed again") { _ in socket.frames(topic: "*").count >= 2 }
            let second = socket.frames(topic: "*")[1]
            let h2 = try #require(second["headers"] as? [String: Any])
            #expect(h2["eventId"] as? String == event.eventId)
            #expect(h2["messageId"] as? String != headers["messageId"] as? String)
            socket.ack(second, data: #"{"status":"SUCCESS","message":"success"}"#)
            try await sim.waitUntil { $0.isAcked(app: "helpdesk", businessId: event.eventId) }
            await socket.close()
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func pushesSpreadOverLiveSocketsButSkipDeafOnes() async throws {
        try await DingTalkSimulator.test { sim in
            let a = try await TestSocket.open(sim)
            let b = try await TestSocket.open(sim)
            let c = try await TestSocket.open(sim)
            try await sim.waitUntil { $0.liveSockets(app: "helpdesk").count == 3 }
            let deafId = sim.liveSockets(app: "helpdesk")[2].id
            try sim.disconnect(socket: deafId, mode: .deaf)
            for i in 0..<60 { _ = try sim.injectText("m\(i)", app: "helpdesk") }
            let topic = "/v1.0/im/bot/messages/get"
            try await sim.waitUntil("all pushed") { _ in a.frames(topic: topic).count + b.frames(topic: topic).count == 60 }
            #expect(c.frames(topic: topic).isEmpty, "a deaf socket gets no pushes")
            #expect(!a.frames(topic: topic).isEmpty && !b.frames(topic: topic).isEmpty, "random choice uses both live sockets")
            await a.close(); await b.close(); await c.close()
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func manyPushesAndAcksWithoutDetailRecords() async throws {
        try await DingTalkSimulator.test({ $0.recordDetails = false }) { sim in
            let socket = try await TestSocket.open(sim)
            try await sim.waitUntil { $0.liveSockets(app: "helpdesk").count == 1 }
            let count = 5000
            for i in 0..<count { _ = try sim.injectText("bulk \(i)", app: "helpdesk") }
            let topic = "/v1.0/im/bot/messages/get"
            let clock = ContinuousClock()
            let started = clock.now
            try await sim.waitUntil("all pushed", { _ in socket.frames.withLockedValue { $0.count } >= count })
            let elapsed = clock.now - started
            #expect(elapsed < .seconds(20), "5000 pushes took \(elapsed)")
            let all = socket.frames(topic: topic)
            for frame in all { socket.ack(frame) }
            try await sim.waitUntil("all acked") { $0.stats(app: "helpdesk").acks == count }
            let stats = sim.stats(app: "helpdesk")
            #expect(stats.pushes == count && stats.unacked == 0 && stats.redeliveries == 0)
            #expect(sim.pushes().isEmpty && sim.acks().isEmpty)
            await socket.close()
        }
    }
}

@Suite("Shutdown")
struct ShutdownTests {
    @Test(.timeLimit(.minutes(1)))
    func shutdownClosesHeldRequestsAndSockets() async throws {
        var configuration = SimulatorConfiguration.single("helpdesk")
        configuration.randomSeed = 7
        let sim = try await DingTalkSimulator.start(configuration)
        let socket = try await TestSocket.open(sim)
        try sim.apply(.registration(app: nil, failure: .noAnswer, count: 1))
        let app = sim.configuration.apps[0]
        let held = Task { try await TestHTTP.request(port: sim.port, path: "/v1.0/gateway/connections/open", json: #"{"clientId":"\#(app.clientId)","clientSecret":"\#(app.clientSecret)"}"#) }
        // The fault is used up when the simulator has the request in hand and holds it.
        try await sim.waitUntil("the registration held") { $0.core.withLock { $0.registrationFaults.isEmpty } }
        await sim.shutdown()
        // The held registration never got an answer: its connection was closed instead.
        await #expect(throws: ChannelError.inputClosed) { _ = try await held.value }
        try await socket.channel.closeFuture.get()
        #expect(sim.liveSockets(app: "helpdesk").isEmpty)
    }
}

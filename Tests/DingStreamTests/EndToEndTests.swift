import DingStream
import Foundation
import Simulator
import StreamProtocol
import StreamClient
import Testing

@Suite("One message end to end over loopback")
struct EndToEndTests {
    @Test(.timeLimit(.minutes(1)))
    func messageReachesHandlerAndReplyReachesWebhook() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        try harness.addHandler("10-echo", "#!/bin/sh\nread -r line\nprintf 'echo: %s' \"$DINGSTREAM_TEXT\"\n")
        var simulatorConfiguration = SimulatorConfiguration.single("helpdesk")
        simulatorConfiguration.pingInterval = .milliseconds(200)
        try await DingTalkSimulator.withRunning(simulatorConfiguration) { simulator in
            var configuration = harness.configuration(for: simulator)
            configuration.apps[0].subscriptions = [.bot, .events]
            try await harness.withDaemon(configuration) {
                try await simulator.waitUntil(timeout: .seconds(10), "two live sockets") { $0.liveSockets(app: "helpdesk").count == 2 }
                let message = try simulator.injectText("hello there", app: "helpdesk")
                try await simulator.waitUntil(timeout: .seconds(20), "the reply") { sim in
                    sim.webhookReplies(app: "helpdesk").contains { $0.body.contains("echo: hello there") }
                }
                // The ack answers the push's own messageId, on the socket it went to.
                let push = try #require(simulator.pushes(app: "helpdesk").first { $0.businessId == message.msgId })
                let ack = try #require(simulator.acks(app: "helpdesk").first { $0.messageId == push.messageId })
                #expect(ack.code == 200)
                #expect(ack.onPushSocket == true)
                // Registration carried the configured subscriptions and a user agent.
                let registration = try #require(simulator.registrations(app: "helpdesk").first)
                #expect(registration.ua?.hasPrefix("dingstream/") == true)
                #expect(registration.body.contains("/v1.0/im/bot/messages/get"))
                #expect(registration.body.contains("\"EVENT\""))
                // Pings were echoed with their opaque.
                try await simulator.waitUntil(timeout: .seconds(5), "a ping echo") { !$0.pingEchoes(app: "helpdesk").isEmpty }
                #expect(simulator.pingEchoes(app: "helpdesk").allSatisfy { $0.matched })
                // The reply is exactly one, and the entry ended in done/.
                #expect(simulator.webhookReplies(app: "helpdesk").count == 1)
                // The entry moves to done/ once the daemon has read the webhook's answer, which
                // is a moment after the simulator recorded the reply: wait for it.
                try await harness.waitFor("the entry in done/") { harness.entries(in: "done").count == 1 }
                #expect(harness.entries(in: "outbox").isEmpty)
            }
        }
    }

    /// DingTalk pushes what waited for a socket as soon as it is up, often in the same TCP read
    /// as the 101 answer. Those bytes must reach the frame decoder, not be dropped with the HTTP
    /// decoder; redelivery is set far beyond the test so only the first push can count.
    @Test(.timeLimit(.minutes(1)))
    func messageWaitingAtConnectIsAckedOnTheFirstPush() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        var simulatorConfiguration = SimulatorConfiguration.single("helpdesk")
        simulatorConfiguration.redeliveryTimeout = .seconds(600)
        try await DingTalkSimulator.withRunning(simulatorConfiguration) { simulator in
            let waiting = try (0..<30).map { try simulator.injectText("waiting \($0)", app: "helpdesk") }
            let configuration = harness.configuration(for: simulator, connections: 1)
            try await harness.withDaemon(configuration) {
                try await simulator.waitUntil(timeout: .seconds(20), "acks of the messages that waited") { sim in
                    waiting.allSatisfy { sim.isAcked(app: "helpdesk", businessId: $0.msgId) }
                }
            }
            #expect(simulator.pushes(app: "helpdesk").filter(\.isRedelivery).isEmpty)
        }
    }
}

import Foundation
import PostgresTestServer
import Simulator
import Testing

/// Two `dingstream` processes, one bot, one PostgreSQL of the test's own (issue 13).
@Suite("Two daemons sharing a PostgreSQL", .serialized)
struct TwoDaemonClusterTests {
    /// Logs `<text> <token> <daemon pid>` when it starts, takes a moment (so that a kill finds
    /// something running), then replies.
    static func slowLoggingHandler(log: String) -> String {
        """
        #!/bin/sh
        token="$$.$(date +%s%N)"
        printf '%s %s %s\\n' "$DINGSTREAM_TEXT" "$token" "$PPID" >> '\(log)'
        sleep 0.2
        printf 'reply %s %s' "$DINGSTREAM_TEXT" "$token"

        """
    }

    static func clusterSection(_ server: PostgresServer, harness: DaemonHarness, node: String) throws -> String {
        let passwordFile = harness.root + "/cluster.password"
        try Data(PostgresServer.password.utf8).write(to: URL(fileURLWithPath: passwordFile))
        return """

            [cluster]
            database = "postgresql://\(PostgresServer.user)@/dingstream?host=\(server.directory)"
            password_file = "\(passwordFile)"
            node = "\(node)"
            lease = "2s"

            """
    }

    /// The simulator pushes each message to a random one of the four sockets, and some again
    /// (same msgId, new messageId, any socket). Host b is SIGKILLed mid-stream and stays dead.
    /// Every message is stored once, its handlers run once (again only for what b was running),
    /// each conversation's messages start in the order they were sent, across both hosts
    /// (except that what was stored only after a later message had started cannot go before
    /// it), and each message gets its reply once (twice at most for what b was handling).
    @Test(.timeLimit(.minutes(3)))
    func twoDaemonsOneDiesEveryMessageHandledOnceInOrder() async throws {
        try await withPostgres { server in
            let first = try DaemonHarness()
            let second = try DaemonHarness()
            defer {
                first.remove()
                second.remove()
            }
            let runLog = first.root + "/runs.log"
            for harness in [first, second] { try harness.addHandler("10-log", Self.slowLoggingHandler(log: runLog)) }
            var simulatorConfiguration = SimulatorConfiguration.single("helpdesk")
            simulatorConfiguration.redeliveryTimeout = .seconds(2)
            try await DingTalkSimulator.withRunning(simulatorConfiguration) { simulator in
                let a = try DaemonProcess(harness: first, simulator: simulator, extra: try Self.clusterSection(server, harness: first, node: "a"))
                let b = try DaemonProcess(harness: second, simulator: simulator, extra: try Self.clusterSection(server, harness: second, node: "b"))
                do {
                    try a.start()
                    try b.start()
                    try await simulator.waitUntil(timeout: .seconds(30), "four live sockets") { $0.liveSockets(app: "helpdesk").count == 4 }

                    let conversations = ["cidA==", "cidB==", "cidC=="]
                    let perConversation = 8
                    var messages: [InjectedMessage] = []
                    var texts: [String: String] = [:]  // msgId → text
                    for index in 0..<perConversation {
                        for (number, conversation) in conversations.enumerated() {
                            let text = "c\(number)-\(index)"
                            let message = try simulator.injectBotMessage(
                                BotMessageSpec(app: "helpdesk", content: .text(text), conversation: .group(conversationId: conversation, title: "T")))
                            messages.append(message)
                            texts[message.msgId] = text
                            if Bool.random() { try simulator.redeliver(message) }
                        }
                        try await Task.sleep(for: .milliseconds(60))
                        if index == perConversation / 2 {
                            // b dies with handlers running (or replies going out) and is not restarted.
                            try await poll(timeout: .seconds(10), "b running a handler") {
                                handlerRuns(runLog).contains { $0.daemon == b.pids.last }
                            }
                            try await b.kill()
                        }
                    }
                    let total = messages.count
                    try await poll(timeout: .seconds(60), "every message acked, handled and answered") {
                        messages.allSatisfy { simulator.isAcked(app: "helpdesk", businessId: $0.msgId) }
                            && (try? server.psql("SELECT count(*) FROM message WHERE state = 'done'")) == "\(total)"
                    }
                    try await a.terminate()
                    for (node, daemon) in [("a", a), ("b", b)] {
                        #expect(!daemon.log.contains("deadlock"), "a round of \(node) was lost to a deadlock:\n\(daemon.log.suffix(3000))")
                    }

                    #expect(try server.psql("SELECT count(*) FROM message") == "\(total)", "stored once each")
                    let killed = try #require(b.pids.last)
                    let runs = handlerRuns(runLog)
                    var runsPerText: [String: [HandlerRun]] = [:]
                    for run in runs { runsPerText[run.text, default: []].append(run) }
                    for text in texts.values {
                        let own = runsPerText[text] ?? []
                        #expect(!own.isEmpty, "\(text) never handled")
                        // A second run only for what the dead host was running.
                        #expect(own.count == 1 || (own.count == 2 && own[0].daemon == killed), "\(text) ran \(own.map(\.daemon))")
                    }
                    #expect(Set(runs.map(\.daemon)).count == 2, "both hosts ran handlers")
                    // A conversation runs in the order sent (the injection order here). The only
                    // exception: a message pushed to b as it died is stored when DingTalk pushes it
                    // again; what was sent after it and started before it was stored goes first.
                    let arrivals = try server.psql("SELECT business_id, received_ms FROM message").split(separator: "\n").reduce(into: [String: Int64]()) {
                        let parts = $1.split(separator: "|")
                        if parts.count == 2, let text = texts[String(parts[0])], let millis = Int64(parts[1]) { $0[text] = millis }
                    }
                    for number in conversations.indices {
                        var firstRuns: [(text: String, startedMillis: Int64)] = []
                        for run in runs where run.text.hasPrefix("c\(number)-") && !firstRuns.contains(where: { $0.text == run.text }) {
                            let nanos = Int64(run.token.split(separator: ".").last ?? "") ?? 0
                            firstRuns.append((run.text, nanos / 1_000_000))
                        }
                        for (position, later) in firstRuns.enumerated() {
                            for earlier in firstRuns[(position + 1)...] {
                                let sentBefore = (Int(earlier.text.split(separator: "-")[1]) ?? 0) < (Int(later.text.split(separator: "-")[1]) ?? 0)
                                guard sentBefore else { continue }
                                // Ran after something sent later: it must have been stored only once
                                // that one had started (a second of slack for the commit).
                                let arrived = arrivals[earlier.text] ?? 0
                                #expect(
                                    arrived > later.startedMillis - 1000,
                                    "\(earlier.text), stored \(later.startedMillis - arrived) ms before \(later.text) started, ran after it: \(firstRuns.map(\.text))")
                            }
                        }
                    }
                    let replies = deliveredReplies(simulator, app: "helpdesk")
                    for message in messages {
                        let text = texts[message.msgId] ?? ""
                        let count = replies.filter { $0.msgId == message.msgId }.count
                        // Twice only where b may have died between sending the reply and recording it.
                        let ranOnB = (runsPerText[text] ?? []).contains { $0.daemon == killed }
                        #expect(count == 1 || (ranOnB && count == 2), "\(text): \(count) replies")
                    }
                } catch {
                    Issue.record("daemon a log:\n\(a.log.suffix(4000))\n\ndaemon b log:\n\(b.log.suffix(4000))")
                    throw error
                }
            }
        }
    }

    /// The database is down when the daemon starts: it stays up, says what is wrong and keeps
    /// trying; no socket is opened (nothing could be acked). Once PostgreSQL is back it starts
    /// by itself and handles messages.
    @Test(.timeLimit(.minutes(2)))
    func aDaemonWaitsForTheDatabaseAndStartsWhenItIsBack() async throws {
        try await withPostgres { server in
            let harness = try DaemonHarness()
            defer { harness.remove() }
            let runLog = harness.root + "/runs.log"
            try harness.addHandler("10-log", loggingHandler(log: runLog))
            try await DingTalkSimulator.withRunning(.single("helpdesk")) { simulator in
                let daemon = try DaemonProcess(harness: harness, simulator: simulator, extra: try Self.clusterSection(server, harness: harness, node: "a"))
                do {
                    try server.stop()
                    try daemon.start()
                    try await poll(timeout: .seconds(20), "two complaints about the database") {
                        daemon.log.components(separatedBy: "cannot open the spool, trying again").count >= 3
                    }
                    #expect(daemon.isRunning)
                    #expect(daemon.log.contains("check that PostgreSQL runs"))
                    #expect(!daemon.log.contains(PostgresServer.password))
                    #expect(simulator.sockets(app: "helpdesk").isEmpty, "a socket was opened before the spool was")

                    try server.startServer()
                    try await simulator.waitUntil(timeout: .seconds(60), "live sockets once the database is back") {
                        $0.liveSockets(app: "helpdesk").count == 2
                    }
                    let message = try simulator.injectText("after", app: "helpdesk")
                    try await poll(timeout: .seconds(20), "the message handled") { handlerRuns(runLog).count == 1 }
                    #expect(simulator.isAcked(app: "helpdesk", businessId: message.msgId))
                    try await daemon.terminate()
                } catch {
                    Issue.record("daemon log:\n\(daemon.log.suffix(4000))")
                    throw error
                }
            }
        }
    }

    /// PostgreSQL restarts while messages stream in: no ack goes out while it is down, acks
    /// resume by themselves, and every message is stored and handled once (the unacked ones
    /// come back by DingTalk's redelivery).
    @Test(.timeLimit(.minutes(2)))
    func acksPauseWhileTheDatabaseRestartsAndNothingIsLost() async throws {
        try await withPostgres { server in
            let harness = try DaemonHarness()
            defer { harness.remove() }
            let runLog = harness.root + "/runs.log"
            try harness.addHandler("10-log", loggingHandler(log: runLog))
            var simulatorConfiguration = SimulatorConfiguration.single("helpdesk")
            simulatorConfiguration.redeliveryTimeout = .seconds(2)
            try await DingTalkSimulator.withRunning(simulatorConfiguration) { simulator in
                let daemon = try DaemonProcess(harness: harness, simulator: simulator, extra: try Self.clusterSection(server, harness: harness, node: "a"))
                do {
                    try daemon.start()
                    try await simulator.waitUntil(timeout: .seconds(30), "two live sockets") { $0.liveSockets(app: "helpdesk").count == 2 }
                    var messages: [InjectedMessage] = []
                    var down: (from: Date, to: Date)?
                    for index in 0..<30 {
                        if index == 10 {
                            try server.stop()
                            down = (Date(), .distantFuture)
                        }
                        if index == 20 {
                            down?.to = Date()
                            try server.startServer()
                        }
                        messages.append(try simulator.injectText("m\(index)", app: "helpdesk"))
                        try await Task.sleep(for: .milliseconds(100))
                    }
                    try await poll(timeout: .seconds(60), "every message acked and handled") {
                        messages.allSatisfy { simulator.isAcked(app: "helpdesk", businessId: $0.msgId) } && handlerRuns(runLog).count >= messages.count
                    }
                    try await daemon.terminate()

                    let outage = try #require(down)
                    // An ack sent just before the stop may land a moment after it.
                    let acksWhileDown = simulator.acks(app: "helpdesk").filter {
                        $0.time > outage.from.addingTimeInterval(0.2) && $0.time < outage.to
                    }
                    #expect(acksWhileDown.isEmpty, "\(acksWhileDown.count) acks while PostgreSQL was down")
                    #expect(try server.psql("SELECT count(*) FROM message") == "\(messages.count)")
                    let texts = handlerRuns(runLog).map(\.text)
                    #expect(texts.count == messages.count && Set(texts).count == messages.count, "runs: \(texts)")
                    #expect(daemon.log.contains("cluster database"), "the outage is logged")
                } catch {
                    Issue.record("daemon log:\n\(daemon.log.suffix(4000))")
                    throw error
                }
            }
        }
    }
}

import Foundation
import Logging
import StreamProtocol
import Synchronization
import PostgresTestServer
import Testing

@testable import Spool

/// Several hosts, one store: two `Spool`s on one real PostgreSQL, as two daemons would be.
@Suite("Cluster store on PostgreSQL", .serialized)
struct ClusterTests {
    /// A bot message of `conversation` with business id `msgID`, sent (`createAt`) at `sent`.
    static func record(
        _ msgID: String, conversation: String, millis: Int64 = Int64(Date().timeIntervalSince1970 * 1000), sent: Int64? = nil
    ) -> IntakeRecord {
        var payload: [String: Any] = [
            "msgId": msgID, "msgtype": "text", "text": ["content": msgID], "conversationId": conversation,
            "conversationType": "2", "senderStaffId": "0423297", "senderNick": "Zhang San",
        ]
        if let sent { payload["createAt"] = sent }
        let data = JSON.encode(payload)
        let frame = StreamFrame(
            kind: .callback, headers: ["messageId": UUID().uuidString, "topic": Topic.botMessage, "contentType": "application/json"],
            data: data)
        return IntakeRecord(app: "helpdesk", frame: frame, connection: "conn", receivedMillis: millis)!
    }

    /// What the handlers of a host did, in the order they did it.
    final class HandlingLog: Sendable {
        struct Run: Sendable {
            var node: String
            var msgID: String
            var conversation: String
            var started: ContinuousClock.Instant
            var ended: ContinuousClock.Instant
        }
        let runs = Mutex<[Run]>([])
        var all: [Run] { runs.withLock { $0 } }
    }

    /// A dispatcher reduced to what the cluster decides: take each announced entry, claim it
    /// (refused when another host has it or its conversation is busy elsewhere), "run" it for
    /// `work`, complete it. One at a time per host, so any overlap comes from the other host.
    static func consume(_ spool: Spool, node: String, log: HandlingLog, work: Duration = .milliseconds(15)) async {
        for await name in spool.entries.map(\.name) {
            let claimed: ClaimedEntry
            do {
                claimed = try await spool.perform { writer throws(SpoolError) in try writer.claim(name, messageFile: false) }
            } catch {
                continue
            }
            let started = ContinuousClock.now
            try? await Task.sleep(for: work)
            let message = claimed.entry.botMessage
            log.runs.withLock {
                $0.append(.init(node: node, msgID: claimed.entry.key, conversation: message?.conversationID ?? "", started: started, ended: .now))
            }
            _ = try? await spool.perform { writer throws(SpoolError) in try writer.complete(name, replies: nil) }
        }
    }

    static func spool(_ directory: String, _ server: PostgresServer, node: String, lease: Duration = .seconds(30), logger: Logger) throws -> Spool {
        Spool(directory: directory + "/" + node, rescanInterval: .seconds(2), cluster: try server.settings(node: node, lease: lease), logger: logger)
    }

    /// Two hosts open the same new database at once (the schema is created once, under the
    /// advisory lock); every message is pushed to one host and redelivered to the other or the
    /// same one. Each business message is stored once, handled once on exactly one host, and
    /// a conversation's messages run in the order sent, one after another, across both hosts.
    @Test(.timeLimit(.minutes(2))) func twoHostsStoreOnceHandleOnceInConversationOrder() async throws {
        try await withPostgres { server in
            try await withTemporaryDirectory { directory in
                let sink = LogSink()
                let a = try Self.spool(directory, server, node: "a", logger: sink.logger)
                let b = try Self.spool(directory, server, node: "b", logger: sink.logger)
                async let openA: Void = Task.detached { try a.open() }.value
                async let openB: Void = Task.detached { try b.open() }.value
                _ = try await (openA, openB)
                defer {
                    a.close()
                    b.close()
                }
                #expect(try server.psql("SELECT string_agg(version::text, ' ' ORDER BY version) FROM dingstream_schema") == "1 2", "each version recorded once")

                let log = HandlingLog()
                let conversations = ["c0", "c1", "c2", "c3"]
                let perConversation = 8
                var outcomes: [String: [IntakeOutcome]] = [:]
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { await a.run() }
                    group.addTask { await b.run() }
                    group.addTask { await Self.consume(a, node: "a", log: log) }
                    group.addTask { await Self.consume(b, node: "b", log: log) }
                    defer { group.cancelAll() }
                    var redeliveries: [Task<(String, IntakeOutcome), Never>] = []
                    for index in 0..<perConversation {
                        for conversation in conversations {
                            let id = "\(conversation)-\(index)"
                            let first = Bool.random() ? a : b
                            let record = Self.record(id, conversation: conversation)
                            // Sent in order: the next one goes out once this one is acked.
                            outcomes[id, default: []].append(await first.store(record))
                            for _ in 0..<Int.random(in: 1...2) {
                                let again = Bool.random() ? a : b
                                let copy = Self.record(id, conversation: conversation)
                                redeliveries.append(Task { (id, await again.store(copy)) })
                            }
                        }
                    }
                    for task in redeliveries {
                        let (id, outcome) = await task.value
                        outcomes[id, default: []].append(outcome)
                    }
                    try await waitUntil("every message handled", timeout: .seconds(60)) {
                        log.all.count >= conversations.count * perConversation
                    }
                    try await Task.sleep(for: .milliseconds(300))  // a second run would show up here
                }

                for (id, results) in outcomes {
                    let stored = results.filter { if case .stored = $0 { true } else { false } }.count
                    #expect(stored == 1, "\(id): \(results)")
                    #expect(!results.contains { if case .failed = $0 { true } else { false } }, "\(id): \(results)")
                }
                #expect(try server.psql("SELECT count(*) FROM message") == "\(conversations.count * perConversation)")
                #expect(try server.psql("SELECT count(*) FROM message WHERE state = 'done'") == "\(conversations.count * perConversation)")
                let runs = log.all
                #expect(runs.count == conversations.count * perConversation, "handled more than once: \(runs.map(\.msgID).sorted())")
                #expect(Set(runs.map(\.msgID)).count == conversations.count * perConversation)
                #expect(Set(runs.map(\.node)) == ["a", "b"], "both hosts take part")
                for conversation in conversations {
                    let order = runs.filter { $0.conversation == conversation }.sorted { $0.started < $1.started }
                    #expect(order.map(\.msgID) == (0..<perConversation).map { "\(conversation)-\($0)" })
                    for (earlier, later) in zip(order, order.dropFirst()) {
                        #expect(later.started >= earlier.ended, "\(later.msgID) on \(later.node) started before \(earlier.msgID) on \(earlier.node) ended")
                    }
                }
            }
        }
    }

    /// A host holding a message renews its lease, so a handler longer than the lease is not
    /// run twice; once the host is gone, the other takes the message over after the lease and
    /// the conversation's next message follows it. The old holder can no longer complete it.
    @Test(.timeLimit(.minutes(2))) func aDeadHostsMessageRunsElsewhereAfterTheLease() async throws {
        try await withPostgres { server in
            try await withTemporaryDirectory { directory in
                let sink = LogSink()
                let lease = Duration.seconds(2)
                let a = try Self.spool(directory, server, node: "a", lease: lease, logger: sink.logger)
                let b = try Self.spool(directory, server, node: "b", lease: lease, logger: sink.logger)
                try a.open()
                try b.open()
                defer {
                    a.close()
                    b.close()
                }
                let log = HandlingLog()
                let runA = Task { await a.run() }
                let runB = Task { await b.run() }
                defer {
                    runA.cancel()
                    runB.cancel()
                }
                guard case .stored(let first) = await a.store(Self.record("m1", conversation: "c")) else {
                    Issue.record("m1 not stored")
                    return
                }
                #expect(await a.store(Self.record("m2", conversation: "c")) != .duplicate)
                _ = try await a.perform { writer throws(SpoolError) in try writer.claim(first, messageFile: false) }
                // b offers to take anything from now on: m2 waits for m1, which a holds.
                let consumeB = Task { await Self.consume(b, node: "b", log: log) }
                defer { consumeB.cancel() }

                // Twice the lease while `a` lives: renewed, so nothing of "c" runs on b.
                try await Task.sleep(for: lease * 2)
                #expect(log.all.isEmpty, "b ran \(log.all.map(\.msgID)) while a held m1")
                #expect(try server.psql("SELECT claimed_by FROM message WHERE business_id = 'm1'") == "a")

                // `a` dies (no more heartbeats); b takes m1 after the lease, then m2.
                runA.cancel()
                await runA.value
                let gone = ContinuousClock.now
                try await waitUntil("m1 and m2 handled on b", timeout: .seconds(20)) { log.all.count >= 2 }
                let runs = log.all
                #expect(runs.map(\.msgID) == ["m1", "m2"])
                #expect(runs.allSatisfy { $0.node == "b" })
                #expect(runs[0].started - gone >= lease / 2, "taken over before the lease could have run out")
                #expect(runs[0].started - gone <= lease * 3, "took \(runs[0].started - gone)")
                #expect(sink.count(.warning, containing: "node a held 1 running message") == 1)
                // a's late completion finds the message no longer its own.
                #expect(throws: SpoolError.self) { try a.complete(first, replies: nil) }
                #expect(try server.psql("SELECT state FROM message WHERE business_id = 'm1'") == "done")
            }
        }
    }

    /// Replies waiting in a dead host's outbox are taken over by a live host after the lease,
    /// which is told (its outbox sender wakes) and then delivers them as its own.
    @Test(.timeLimit(.minutes(1))) func aDeadHostsOutboxIsTakenOverAfterTheLease() async throws {
        try await withPostgres { server in
            try await withTemporaryDirectory { directory in
                let lease = Duration.seconds(2)
                let a = try Self.spool(directory, server, node: "a", lease: lease, logger: LogSink().logger)
                let b = try Self.spool(directory, server, node: "b", lease: lease, logger: LogSink().logger)
                try a.open()
                try b.open()
                defer {
                    a.close()
                    b.close()
                }
                let woken = Mutex(0)
                b.onOutboxTakeover { woken.withLock { $0 += 1 } }
                let runB = Task { await b.run() }
                defer { runB.cancel() }
                try await withRunning(a) {
                    guard case .stored(let name) = await a.store(Self.record("m1", conversation: "c")) else {
                        Issue.record("not stored")
                        return
                    }
                    _ = try await a.perform { writer throws(SpoolError) in try writer.claim(name, messageFile: false) }
                    try await a.perform { writer throws(SpoolError) in try writer.complete(name, replies: ["{}"]) }
                    try await Task.sleep(for: lease * 2)
                    #expect(woken.withLock { $0 } == 0, "taken over while a lives")
                    #expect(try b.transaction { writer throws(SpoolError) in try writer.outboxEntries() }.isEmpty)
                }
                // a is gone: b takes its outbox after the lease.
                try await waitUntil("b takes the outbox over", timeout: .seconds(10)) { woken.withLock { $0 } > 0 }
                #expect(try b.transaction { writer throws(SpoolError) in try writer.outboxEntries() }.map(\.value) == [try server.psql("SELECT name FROM message")])
                try await b.perform { writer throws(SpoolError) in
                    try writer.finishDelivery(try writer.outboxEntries()[0])
                }
                #expect(try server.psql("SELECT state || ' ' || coalesce(claimed_by, '-') FROM message") == "done -")
            }
        }
    }

    /// While PostgreSQL is down nothing is acked (each frame fails, with a line that says what
    /// is wrong); once it is back the redelivery is stored, and what was acked before is there.
    @Test(.timeLimit(.minutes(2))) func nothingIsAckedWhileTheDatabaseIsDownAndIntakeResumes() async throws {
        try await withPostgres { server in
            try await withTemporaryDirectory { directory in
                let sink = LogSink()
                let spool = try Self.spool(directory, server, node: "a", logger: sink.logger)
                try spool.open()
                defer { spool.close() }
                try await withRunning(spool) {
                    guard case .stored = await spool.store(Self.record("before", conversation: "c")) else {
                        Issue.record("not stored while the database runs")
                        return
                    }
                    try server.stop()
                    for id in ["during-1", "during-2"] {
                        let outcome = await spool.store(Self.record(id, conversation: "c"))
                        guard case .failed(let error) = outcome else {
                            Issue.record("\(id) acked while the database is down: \(outcome)")
                            continue
                        }
                        #expect(error.code == .database)
                        #expect(!"\(error)".contains(PostgresServer.password))
                    }
                    #expect(sink.count(.error, containing: "cluster database") == 1, "logged once: \(sink.messages(containing: "cluster"))")
                    #expect(spool.currentFault?.code == .database, "STATUS= says why nothing is acked")

                    try server.startServer()
                    // DingTalk pushes the unacked frame again until it is acked.
                    var outcome = IntakeOutcome.duplicate
                    try await waitUntil("the redelivery stored", timeout: .seconds(15)) {
                        if case .stored = outcome { return true }
                        return false
                    } poll: {
                        outcome = await spool.store(Self.record("during-1", conversation: "c"))
                    }
                    #expect(sink.count(.notice, containing: "intake recovered") == 1)
                    #expect(spool.currentFault == nil)
                }
                #expect(try server.psql("SELECT string_agg(business_id, ',' ORDER BY id) FROM message") == "before,during-1")
            }
        }
    }

    /// `dingstream spool` on the shared store: it lists what any host stored, and a retried dead
    /// letter wakes the running hosts at once (NOTIFY), well before their next rescan.
    @Test(.timeLimit(.minutes(1))) func spoolCommandsWorkOnTheSharedStore() async throws {
        try await withPostgres { server in
            try await withTemporaryDirectory { directory in
                let tool = SpoolInspector(directory: directory + "/tool", cluster: try server.settings(node: "tool"))
                let empty = #expect(throws: SpoolError.self) { try tool.list() }
                #expect(empty?.code == .noSpool, "\(empty.map { "\($0)" } ?? "")")

                let spool = Spool(
                    directory: directory + "/a", rescanInterval: .seconds(30), cluster: try server.settings(node: "a"), logger: LogSink().logger)
                try spool.open()
                defer { spool.close() }
                try await withRunning(spool) {
                    var announced = spool.entries.makeAsyncIterator()
                    guard case .stored(let name) = await spool.store(Self.record("m1", conversation: "c")) else {
                        Issue.record("not stored")
                        return
                    }
                    #expect(await announced.next()?.name == name)
                    _ = try await spool.perform { writer throws(SpoolError) in try writer.claim(name, messageFile: false) }
                    try await spool.perform { writer throws(SpoolError) in try writer.deadLetter(name, reason: "exit 2") }

                    let listing = try tool.list()
                    #expect(listing.map(\.state) == [.failed] && listing.first?.businessID == "m1")
                    #expect(try tool.show("m1").reason == "exit 2\n")
                    let started = ContinuousClock.now
                    #expect(try tool.retry("m1") == name)
                    #expect(await announced.next()?.name == name)
                    #expect(ContinuousClock.now - started < .seconds(5), "woken by the rescan, not by NOTIFY")

                    // `status` and `doctor`: the node, its heartbeat, what it holds, the clock skew.
                    let report = try #require(try tool.clusterReport())
                    #expect(report.schemaVersion == Int(PostgresStore.schemaVersion))
                    #expect(report.nodes.map(\.name) == ["a"], "the tool registers no node of its own")
                    #expect(report.nodes.first?.alive == true && report.nodes.first?.pid == Int(getpid()))
                    #expect(report.clockSkew < .seconds(1) && report.clockSkew > .seconds(-1))
                }
            }
        }
    }

    /// A conversation runs in the order its messages were sent (DingTalk's `createAt`), not the
    /// order the hosts stored them: the first message, pushed again and stored last on the other
    /// host, still runs first. And while one of its messages runs anywhere, no other starts,
    /// also not one sent before it.
    @Test(.timeLimit(.minutes(1))) func aConversationRunsInTheOrderSentNotTheOrderStored() async throws {
        try await withPostgres { server in
            try await withTemporaryDirectory { directory in
                let hosts = try ["a", "b"].map { try Self.spool(directory, server, node: $0, logger: LogSink().logger) }
                for host in hosts { try host.open() }
                defer { for host in hosts { host.close() } }
                let (a, b) = (hosts[0], hosts[1])
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { await a.run() }
                    group.addTask { await b.run() }
                    defer { group.cancelAll() }
                    func stored(_ spool: Spool, _ id: String, sent: Int64) async throws -> EntryName {
                        let outcome = await spool.store(Self.record(id, conversation: "c", sent: sent))
                        guard case .stored(let name) = outcome else { throw SpoolError(.notFound, path: id, detail: "(not stored: \(outcome))") }
                        return name
                    }
                    func claims(_ spool: Spool, _ name: EntryName) async -> Bool {
                        (try? await spool.perform { writer throws(SpoolError) in try writer.claim(name, messageFile: false) }) != nil
                    }
                    let sent = Int64(Date().timeIntervalSince1970 * 1000) - 60_000
                    let second = try await stored(a, "second", sent: sent + 1)
                    let third = try await stored(a, "third", sent: sent + 2)
                    let first = try await stored(b, "first", sent: sent)

                    #expect(await !claims(a, second), "second started while first, sent before it, waits")
                    #expect(await !claims(b, third))
                    #expect(await claims(a, first))
                    #expect(await !claims(b, second), "second started while first runs on a")
                    try await a.perform { writer throws(SpoolError) in try writer.complete(first, replies: nil) }
                    #expect(await !claims(b, third), "third started before second")
                    #expect(await claims(b, second))
                    // Something sent earlier than a running message waits for it too.
                    let early = try await stored(a, "early", sent: sent - 1)
                    #expect(await !claims(a, early), "two messages of one conversation ran at once")
                    try await b.perform { writer throws(SpoolError) in try writer.complete(second, replies: nil) }
                    #expect(await claims(a, early))
                }
            }
        }
    }

    /// The pruning host removes the rows of nodes that have not heartbeated for a day, and
    /// keeps those still about (and its own).
    @Test(.timeLimit(.minutes(1))) func pruningForgetsNodesSilentForADay() async throws {
        try await withPostgres { server in
            try await withTemporaryDirectory { directory in
                let a = try Self.spool(directory, server, node: "a", logger: LogSink().logger)
                try a.open()
                defer { a.close() }
                _ = try server.psql(
                    """
                    INSERT INTO node (name, started_at, heartbeat_at, pid) VALUES
                        ('gone', now() - interval '3 days', now() - interval '25 hours', 1),
                        ('asleep', now() - interval '3 days', now() - interval '23 hours', 2)
                    """)
                try a.prune()
                #expect(try server.psql("SELECT string_agg(name, ' ' ORDER BY name) FROM node") == "a asleep")
            }
        }
    }

    /// What `doctor` reports for the connection (`SpoolInspector.clusterReport`): each TLS
    /// failure that real servers and certificates produce here is told apart from a refused
    /// login and from an unreachable server, with its remedy.
    @Test(.timeLimit(.minutes(1))) func doctorTellsTLSProblemsFromLoginAndConnectionProblems() async throws {
        try await withPostgres(tcp: true) { plain in
            try await withPostgres(tls: true) { secure in
                try await withTemporaryDirectory { directory in
                    func problem(_ settings: ClusterSettings) -> String {
                        do {
                            _ = try SpoolInspector(directory: directory, cluster: settings).clusterReport()
                            return "no problem"
                        } catch {
                            return "\(error)"
                        }
                    }
                    let noSSL = problem(try plain.tcpSettings(node: "x", sslmode: "require"))
                    #expect(noSSL.contains("TLS: the server does not support SSL") && noSSL.contains("turn ssl on"), "\(noSSL)")
                    let untrusted = problem(try secure.tcpSettings(node: "x", host: "localhost", sslmode: "verify-full"))
                    #expect(untrusted.contains("TLS: the server's certificate is not trusted") && untrusted.contains("set ca_file"), "\(untrusted)")
                    let mismatch = problem(try secure.tcpSettings(node: "x", sslmode: "verify-full", caFile: secure.caFile))
                    #expect(mismatch.contains("TLS: hostname mismatch") && mismatch.contains("sslmode=verify-ca"), "\(mismatch)")
                    // With the CA and the name it was made for, TLS and the login pass: what is left is the empty database.
                    let good = try secure.tcpSettings(node: "x", host: "localhost", sslmode: "verify-full", caFile: secure.caFile)
                    #expect(problem(good).contains("no dingstream schema"), "\(problem(good))")
                    var wrongPassword = good
                    wrongPassword.password = "not-the-password"
                    let refused = problem(wrongPassword)
                    #expect(refused.contains("refused the login") && !refused.contains("TLS"), "\(refused)")
                    try plain.stop()
                    let down = problem(try plain.tcpSettings(node: "x", sslmode: "disable"))
                    #expect(down.contains("unreachable") && down.contains("check that PostgreSQL runs") && !down.contains("TLS"), "\(down)")
                }
            }
        }
    }

    /// Wrong credentials or no server: `open` fails with what is wrong and what to do, never
    /// the password.
    @Test(.timeLimit(.minutes(1))) func openSaysWhatIsWrongWithTheDatabase() async throws {
        try await withPostgres { server in
            try await withTemporaryDirectory { directory in
                let wrong = Spool(
                    directory: directory + "/x", cluster: try server.settings(node: "x", password: "not-the-password"), logger: LogSink().logger)
                let refused = #expect(throws: SpoolError.self) { try wrong.open() }
                #expect(refused?.code == .database)
                #expect(refused?.description.contains("refused the login") == true, "\(refused.map { "\($0)" } ?? "")")
                #expect(refused?.description.contains("not-the-password") == false)

                try server.stop()
                let down = Spool(directory: directory + "/y", cluster: try server.settings(node: "y"), logger: LogSink().logger)
                let unreachable = #expect(throws: SpoolError.self) { try down.open() }
                #expect(unreachable?.description.contains("unreachable") == true, "\(unreachable.map { "\($0)" } ?? "")")
                #expect(unreachable?.description.contains("check that PostgreSQL runs") == true)
            }
        }
    }
}

/// Polls like `waitUntil`, running `poll` before each check.
func waitUntil(
    _ what: String, timeout: Duration, _ condition: () throws -> Bool, poll: () async throws -> Void
) async throws {
    let end = ContinuousClock.now + timeout
    while true {
        try await poll()
        if try condition() { return }
        if ContinuousClock.now >= end { throw WaitTimedOut(description: "after \(timeout) still waiting for \(what)") }
        try await Task.sleep(for: .milliseconds(200))
    }
}

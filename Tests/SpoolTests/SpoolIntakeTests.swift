import Foundation
import Logging
import StreamProtocol
import Synchronization
import Testing

@testable import Spool

@Suite struct SpoolIntakeTests {
    @Test(.timeLimit(.minutes(1))) func storedEntryReadsBackWithModes() async throws {
        try await withTemporaryDirectory { root in
            let clock = TestClock()
            let spool = Spool(directory: root + "/spool", logger: LogSink().logger, now: clock.closure)
            try spool.open()
            defer { spool.close() }
            let record = botRecord(msgID: "msgA==", text: "hello \"world\"\n", millis: millis(clock.now))
            let outcome = try await withRunning(spool) { await spool.store(record) }
            guard case .stored(let name) = outcome else {
                Issue.record("expected stored, got \(outcome)")
                return
            }
            #expect(name.app == "helpdesk")
            #expect(name.value.hasSuffix(record.key.hash))
            #expect(name.receivedMillis == record.receivedMillis)

            let row = try spool.row(name)
            #expect(row.state == .new)
            let entry = row.entry
            #expect(entry.app == "helpdesk")
            #expect(entry.kind == .bot)
            #expect(entry.key == "msgA==")
            #expect(entry.topic == Topic.botMessage)
            #expect(entry.headers["messageId"] == record.headers["messageId"])
            #expect(entry.connection == "conn-1")
            #expect(entry.attempts == 0)
            #expect(entry.botMessage?.text == "hello \"world\"")
            #expect(entry.botMessage?.senderNick == "Zhang San")
            // The payload is plain JSON with data as an object, not a string.
            let object = try #require(JSON.object(entry.raw))
            #expect(object["data"] is [String: Any])
            #expect((object["receivedAt"] as? NSNumber)?.int64Value == record.receivedMillis)

            for folder in ["", "/running", "/handlers"] {
                #expect(mode(root + "/spool" + folder) == 0o750, "mode of spool\(folder)")
            }
            for file in ["spool.db", "spool.db-wal", "spool.lock"] {
                #expect(mode(root + "/spool/" + file) == 0o640, "mode of \(file)")
            }
        }
    }

    /// The UNIQUE business key is the dedup: copies in one round, in later rounds, on other
    /// sockets and after a restart are all acked as duplicates and stored once.
    @Test(.timeLimit(.minutes(1))) func duplicatesInARoundAcrossRoundsAndRestartsAreStoredOnce() async throws {
        try await withTemporaryDirectory { root in
            let spool = Spool(directory: root, logger: LogSink().logger)
            try spool.open()
            // Queued before the writer runs: all three land in its first round.
            let first = Task { await spool.store(botRecord(msgID: "dup", millis: 1_700_000_000_000, connection: "a")) }
            let second = Task { await spool.store(botRecord(msgID: "dup", millis: 1_700_000_000_500, connection: "b")) }
            let event = Task { await spool.store(eventRecord(eventID: "ev1")) }
            try await waitUntil("three frames queued") { spool.queue.queuedCount == 3 }
            let outcomes = try await withRunning(spool) {
                let sameRound = [await first.value, await second.value]
                let later = await spool.store(botRecord(msgID: "dup", millis: 1_700_000_060_000, connection: "c"))
                return sameRound + [later, await event.value]
            }
            #expect(outcomes.filter { if case .stored = $0 { true } else { false } }.count == 2)
            #expect(outcomes.filter { $0 == .duplicate }.count == 2)
            #expect(try spool.names(in: .new).count == 2)
            spool.close()

            let restarted = Spool(directory: root, logger: LogSink().logger)
            try restarted.open()
            defer { restarted.close() }
            let again = try await withRunning(restarted) {
                [await restarted.store(botRecord(msgID: "dup", millis: 1_700_000_100_000)), await restarted.store(eventRecord(eventID: "ev1"))]
            }
            #expect(again == [.duplicate, .duplicate])
            #expect(try restarted.names(in: .new).count == 2)
        }
    }

    /// A duplicate is acked only once the round that found it committed: when that round fails,
    /// the copy fails too, so no ack goes out for a message whose original might not be stored.
    /// Nothing of a failed round counts for dedup: DingTalk's redelivery afterwards is stored,
    /// not dismissed as a duplicate of something that never became durable.
    @Test(.timeLimit(.minutes(1))) func copyInAFailedRoundIsNotAckedAndItsRedeliveryIsStored() async throws {
        try await withTemporaryDirectory { root in
            let spool = Spool(directory: root, logger: LogSink().logger)
            try spool.open()
            defer { spool.close() }
            // Another process holds the write lock for the whole round (as a sqlite3 shell could).
            let holder = try SQLiteConnection(path: spool.databasePath)
            try holder.execute("BEGIN IMMEDIATE")
            let (outcomes, redelivery) = try await withRunning(spool) {
                async let original = spool.store(botRecord(msgID: "m1", millis: 1_700_000_000_000))
                async let copy = spool.store(botRecord(msgID: "m1", millis: 1_700_000_000_001))
                let outcomes = await [original, copy]
                try holder.execute("ROLLBACK")
                return (outcomes, await spool.store(botRecord(msgID: "m1", millis: 1_700_000_060_000)))
            }
            for outcome in outcomes {
                guard case .failed(let error) = outcome else {
                    Issue.record("expected failure while the database is locked, got \(outcome)")
                    continue
                }
                #expect(error.code == .locked)
                #expect(error.description.contains("locked by another process"))
            }
            guard case .stored = redelivery else {
                Issue.record("the redelivery after the failed round must be stored, got \(redelivery)")
                return
            }
            #expect(try spool.names(in: .new).count == 1)
        }
    }

    @Test(.timeLimit(.minutes(1))) func manyConcurrentFramesAreStoredAndAnnouncedOnce() async throws {
        try await withTemporaryDirectory { root in
            let spool = Spool(directory: root, logger: LogSink().logger)
            try spool.open()
            defer { spool.close() }
            let count = 500
            let (outcomes, announced) = try await withRunning(spool) {
                let collector = Task {
                    var names: [EntryName] = []
                    for await name in spool.entries {
                        names.append(name.name)
                        if names.count == count { break }
                    }
                    return names
                }
                let outcomes = await withTaskGroup(of: IntakeOutcome.self) { group in
                    for index in 0..<count {
                        group.addTask { await spool.store(botRecord(msgID: "m\(index)", millis: 1_700_000_000_000 + Int64(index))) }
                    }
                    return await group.reduce(into: []) { $0.append($1) }
                }
                return (outcomes, await collector.value)
            }
            #expect(outcomes.allSatisfy { if case .stored = $0 { true } else { false } })
            #expect(Set(announced).count == count)
            #expect(try spool.names(in: .new).count == count)
        }
    }

    /// A frame that comes while the writer has had nothing to do is committed and announced on
    /// the thread that submits it, so that its handler's call goes out without first waking the
    /// writer; the writer fsyncs it, and only then is it told that it is stored (its ack).
    /// Frames that come faster wait for the writer's rounds. Either way, no entry is announced
    /// before one committed earlier.
    @Test(.timeLimit(.minutes(1))) func framesToAnIdleWriterAreCommittedHereAndToldAfterTheFsync() async throws {
        try await withTemporaryDirectory { root in
            let spool = Spool(directory: root, rescanInterval: .seconds(3600), logger: LogSink().logger)
            try spool.open()
            defer { spool.close() }
            let submitter = Mutex<pthread_t?>(nil)
            let announced = Mutex<[(name: EntryName, here: Bool)]>([])
            spool.announce(to: { announcement, _ in
                let here = submitter.withLock { $0.map { pthread_equal($0, pthread_self()) != 0 } ?? false }
                announced.withLock { $0.append((announcement.name, here)) }
            })
            let unsyncedMessages: @Sendable () -> Bool = { spool.writer.withLock { ($0?.store as? SQLiteStore)?.hasUnsyncedMessages ?? true } }
            let committedOrder = {
                try await spool.perform { writer throws(SpoolError) in
                    let statement = try (writer.store as! SQLiteStore).connection.statement("SELECT name FROM message ORDER BY id")
                    defer { statement.reset() }
                    var names: [String] = []
                    while try statement.step() { names.append(statement.text(0) ?? "") }
                    return names
                }
            }
            try await withRunning(spool) {
                for index in 0..<5 {
                    try await Task.sleep(for: .milliseconds(20))
                    let record = botRecord(msgID: "one-\(index)", millis: 1_700_000_000_000 + Int64(index))
                    let name = EntryName(receivedMillis: record.receivedMillis, key: record.key)
                    let told = Mutex<(outcome: IntakeOutcome, unsynced: Bool)?>(nil)
                    let storedOnReturn = await onThread {
                        submitter.withLock { $0 = pthread_self() }
                        spool.submit(record) { outcome in
                            let unsynced = unsyncedMessages()
                            told.withLock { $0 = (outcome, unsynced) }
                        }
                        return (try? spool.row(name)) != nil
                    }
                    #expect(storedOnReturn, "committed before submit returned")
                    try await waitUntil("frame \(index) told") { told.withLock { $0 != nil } }
                    let result = try #require(told.withLock { $0 })
                    #expect(result.outcome == .stored(name))
                    #expect(!result.unsynced, "told only once fsynced")
                }
                #expect(announced.withLock { $0.map(\.here) } == Array(repeating: true, count: 5))

                // Four threads at once, one conversation: rounds here and the writer's alike.
                submitter.withLock { $0 = nil }
                let outcomes = Mutex<[IntakeOutcome]>([])
                let threads = (0..<4).map { thread in
                    Thread {
                        for index in 0..<100 {
                            let record = botRecord(msgID: "many-\(thread)-\(index)", millis: 1_700_000_001_000 + Int64(index))
                            spool.submit(record) { outcome in outcomes.withLock { $0.append(outcome) } }
                            if index % 10 == 0 { usleep(2000) }
                        }
                    }
                }
                for thread in threads { thread.start() }
                try await waitUntil("400 frames told") { outcomes.withLock { $0.count } == 400 }
                #expect(outcomes.withLock { $0 }.allSatisfy { if case .stored = $0 { true } else { false } })
                #expect(announced.withLock { $0.map(\.name.value) } == (try await committedOrder()))
            }
        }
    }

    /// A message of an app no handler serves is stored as done in its round and never
    /// announced; a card callback (its ack waits for an answer) and other apps are stored as new
    /// and announced. What the spool is told applies from the next round on.
    @Test(.timeLimit(.minutes(1))) func messagesNoHandlerReadsAreStoredDoneAndNotAnnounced() async throws {
        try await withTemporaryDirectory { root in
            let spool = Spool(directory: root, logger: LogSink().logger)
            let handlerless = Mutex<Set<String>>(["helpdesk"])
            spool.storeHandlerless { handlerless.withLock { $0 } }
            try spool.open()
            defer { spool.close() }
            let card = IntakeRecord(
                app: "helpdesk",
                frame: StreamFrame(
                    kind: .callback, headers: ["messageId": "card-1", "topic": Topic.cardCallback],
                    data: #"{"outTrackId":"t1","userId":"u1"}"#),
                connection: "conn-1", receivedMillis: 1_700_000_000_000)!
            let (outcomes, announced) = try await withRunning(spool) {
                let collector = Task {
                    var names: [EntryName] = []
                    for await announcement in spool.entries {
                        names.append(announcement.name)
                        if names.count == 3 { break }
                    }
                    return names
                }
                var outcomes: [IntakeOutcome] = []
                for record in [
                    botRecord(msgID: "unread", millis: 1_700_000_000_001), card, botRecord(app: "sales", msgID: "other", millis: 1_700_000_000_002),
                    botRecord(msgID: "unread", millis: 1_700_000_000_003),
                ] {
                    outcomes.append(await spool.store(record))
                }
                handlerless.withLock { $0 = [] }
                outcomes.append(await spool.store(botRecord(msgID: "handled", millis: 1_700_000_000_004)))
                return (outcomes, await collector.value)
            }
            guard case .stored(let unread) = outcomes[0], case .stored(let cardName) = outcomes[1], case .stored(let other) = outcomes[2],
                case .stored(let handled) = outcomes[4]
            else {
                Issue.record("expected four stored and a duplicate, got \(outcomes)")
                return
            }
            #expect(outcomes[3] == .duplicate)
            #expect(try spool.row(unread).state == .done)
            #expect(try spool.row(unread).entry.key == "unread")
            #expect(try spool.names(in: .new) == [cardName, other, handled])
            #expect(announced == [cardName, other, handled])
        }
    }

    /// An intake round takes what its decision picks for handling: stored as `running`, its
    /// message file written, handed to the sink with the claim, in arrival order with the
    /// entries it announces as new. A claim whose file cannot be written goes back to new and is
    /// announced; and a claimed entry nobody handled (the daemon stopped first) is new again
    /// after a restart.
    @Test(.timeLimit(.minutes(1))) func intakeClaimsAreRunningAtCommitAndNewAgainAfterARestart() async throws {
        try await withTemporaryDirectory { root in
            let spool = Spool(directory: root, logger: LogSink().logger)
            try spool.open()
            let handed = Mutex<[(name: EntryName, claim: ClaimedEntry?)]>([])
            spool.announce(
                to: { announcement, claim in handed.withLock { $0.append((announcement.name, claim)) } },
                claims: { candidates in candidates.map { $0.name.value.contains("-helpdesk-") ? .claim(messageFile: true) : .queue } })
            let claimed = botRecord(msgID: "claimed", millis: 1_700_000_000_000)
            let queued = botRecord(app: "sales", msgID: "queued", millis: 1_700_000_000_001)
            let unwritable = botRecord(msgID: "unwritable", millis: 1_700_000_000_002)
            // Its message file's path is taken by a directory: the write fails for real.
            let blocked = EntryName(receivedMillis: unwritable.receivedMillis, key: unwritable.key)
            try FileManager.default.createDirectory(atPath: spool.messageFile(of: blocked), withIntermediateDirectories: false)
            // Submitted in this order before the writer runs: one round, in this arrival order.
            let records = [claimed, queued, unwritable]
            let outcomes = Mutex<[IntakeOutcome]>([])
            for record in records { spool.submit(record) { outcome in outcomes.withLock { $0.append(outcome) } } }
            let names = records.map { EntryName(receivedMillis: $0.receivedMillis, key: $0.key) }
            try await withRunning(spool) {
                try await waitUntil("three outcomes") { outcomes.withLock { $0.count } == 3 }
            }
            #expect(outcomes.withLock { $0 } == names.map { .stored($0) })
            let handedOver = handed.withLock { $0 }
            #expect(handedOver.map(\.name) == names)
            let claim = try #require(handedOver.first?.claim)
            #expect(handedOver.dropFirst().allSatisfy { $0.claim == nil })
            #expect(claim.entry.botMessage?.text == "hello")
            let path = try #require(claim.path)
            #expect(FileManager.default.contents(atPath: path) == claim.entry.handlerInput)
            #expect(try spool.names(in: .running) == [names[0]])
            #expect(try spool.names(in: .new) == [names[1], names[2]])
            #expect(files(root + "/running") == [names[0].fileName, blocked.fileName].sorted())
            spool.close()
            try FileManager.default.removeItem(atPath: spool.messageFile(of: blocked))

            let restarted = Spool(directory: root, logger: LogSink().logger)
            try restarted.open()
            defer { restarted.close() }
            #expect(try restarted.names(in: .new) == names)
            #expect(files(root + "/running").isEmpty)
        }
    }

    /// The writer reads its hooks every round, for as long as the daemon runs. Read half a
    /// million times (months of quiet traffic, one message a round), each is still one call:
    /// closures held in a way that wraps them anew at every read would by now nest so deep that
    /// calling one overflows the stack.
    @Test(.timeLimit(.minutes(1))) func hooksReadEveryRoundStayOneCallDeep() async throws {
        try await withTemporaryDirectory { root in
            let spool = Spool(directory: root, logger: LogSink().logger)
            let announced = Mutex(0)
            spool.storeHandlerless { ["sales"] }
            spool.announce(to: { _, _ in announced.withLock { $0 += 1 } }, claims: { $0.map { _ in .queue } })
            for _ in 0..<500_000 { _ = spool.roundHooks }
            let hooks = spool.roundHooks
            #expect(hooks.handlerlessApps?() == ["sales"])
            hooks.announcementSink?(Announcement(name: EntryName(receivedMillis: 1, key: botRecord(msgID: "m").key), kind: .bot, conversation: nil), nil)
            #expect(announced.withLock { $0 } == 1)
        }
    }

    @Test(.timeLimit(.minutes(1))) func submitAfterShutdownFailsClosed() async throws {
        try await withTemporaryDirectory { root in
            let spool = Spool(directory: root, logger: LogSink().logger)
            try spool.open()
            defer { spool.close() }
            _ = try await withRunning(spool) { await spool.store(botRecord(msgID: "a")) }
            let outcome = await spool.store(botRecord(msgID: "b"))
            #expect(outcome == .failed(SpoolError(.closed, path: root)))
        }
    }

    /// Issue 15, bug 1: two daemons on one spool handled messages twice. The second owner is
    /// refused at once and told who owns it; once the first lets go, the spool opens again.
    @Test(.timeLimit(.minutes(1))) func aSecondOwnerIsRefusedWithThePidOfTheFirst() async throws {
        try await withTemporaryDirectory { root in
            let first = Spool(directory: root, logger: LogSink().logger)
            try first.open()
            let second = Spool(directory: root, logger: LogSink().logger)
            #expect {
                try second.open()
            } throws: { error in
                guard let error = error as? SpoolError else { return false }
                return error.code == .inUse && error.description.contains("in use by pid \(getpid())")
            }
            first.close()
            try second.open()
            second.close()
        }
    }

    @Test(.timeLimit(.minutes(1))) func namesParseAndSort() throws {
        let key = MessageKey(app: "help desk", kind: .bot, id: "abc")
        let name = EntryName(receivedMillis: 1_700_000_000_123, key: key)
        #expect(name.value.hasPrefix("1700000000123-help_desk-"))
        #expect(EntryName(name.fileName) == name)
        #expect(EntryName("junk") == nil)
        #expect(EntryName(receivedMillis: 5, key: key) < name)
        #expect(name.app == "help_desk")
    }
}

/// Runs `body` on a thread of its own (as an event loop would submit) and returns its result.
private func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        Thread { continuation.resume(returning: body()) }.start()
    }
}

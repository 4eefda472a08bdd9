import Foundation
import Logging
import StreamProtocol
import Testing

@testable import Spool

@Suite struct SpoolIntakeTests {
    @Test(.timeLimit(.minutes(1))) func storedEntryReadsBackWithModes() async throws {
        try await withTemporaryDirectory { root in
            let clock = TestClock()
            let spool = Spool(directory: root + "/spool", logger: LogSink().logger, now: clock.closure)
            try spool.open()
            let record = botRecord(msgID: "msgA==", text: "hello \"world\"\n", millis: millis(clock.now))
            let outcome = try await withRunning(spool) { await spool.store(record) }
            guard case .stored(let name) = outcome else {
                Issue.record("expected stored, got \(outcome)")
                return
            }
            #expect(name.app == "helpdesk")
            #expect(name.keyHash == record.key.hash)
            #expect(name.receivedMillis == record.receivedMillis)
            #expect(files(root + "/spool/new") == [name.fileName])
            #expect(files(root + "/spool/tmp").isEmpty)

            let entry = try spool.read(name, in: .new)
            #expect(entry.app == "helpdesk")
            #expect(entry.kind == .bot)
            #expect(entry.key == "msgA==")
            #expect(entry.topic == Topic.botMessage)
            #expect(entry.headers["messageId"] == record.headers["messageId"])
            #expect(entry.connection == "conn-1")
            #expect(entry.attempts == 0)
            #expect(entry.botMessage?.text == "hello \"world\"")
            #expect(entry.botMessage?.senderNick == "Zhang San")
            // The file is plain JSON with data as an object, not a string.
            let object = try #require(JSON.object(entry.raw))
            #expect(object["data"] is [String: Any])
            #expect((object["receivedAt"] as? NSNumber)?.int64Value == record.receivedMillis)

            for folder in ["", "/tmp", "/new", "/cur", "/outbox", "/done", "/failed", "/handlers"] {
                #expect(mode(root + "/spool" + folder) == 0o750, "mode of spool\(folder)")
            }
            #expect(mode(spool.path(of: name, in: .new)) == 0o640)
        }
    }

    @Test(.timeLimit(.minutes(1))) func duplicatesWithinAndAcrossBatchesAreNotStoredTwice() async throws {
        try await withTemporaryDirectory { root in
            let spool = Spool(directory: root, logger: LogSink().logger)
            try spool.open()
            // Two copies queued before the loop runs land in the same batch.
            let first = Task { await spool.store(botRecord(msgID: "dup", millis: 1_700_000_000_000, connection: "a")) }
            let second = Task { await spool.store(botRecord(msgID: "dup", millis: 1_700_000_000_500, connection: "b")) }
            let event = Task { await spool.store(eventRecord(eventID: "ev1")) }
            try await Task.sleep(for: .milliseconds(50))
            let outcomes = try await withRunning(spool) {
                let sameBatch = [await first.value, await second.value]
                // A redelivery on another socket, later, with a new messageId.
                let later = await spool.store(botRecord(msgID: "dup", millis: 1_700_000_060_000, connection: "c"))
                let eventAgain = await spool.store(eventRecord(eventID: "ev1", millis: 1_700_000_070_000))
                let otherApp = await spool.store(botRecord(app: "sales", msgID: "dup"))
                return (sameBatch, later, await event.value, eventAgain, otherApp)
            }
            #expect(outcomes.0.filter { $0 == .duplicate }.count == 1)
            #expect(outcomes.0.filter { if case .stored = $0 { true } else { false } }.count == 1)
            #expect(outcomes.1 == .duplicate)
            if case .stored = outcomes.2 {} else { Issue.record("event not stored: \(outcomes.2)") }
            #expect(outcomes.3 == .duplicate)
            if case .stored = outcomes.4 {} else { Issue.record("same msgId of another app must be stored: \(outcomes.4)") }
            #expect(files(root + "/new").count == 3)
        }
    }

    /// A copy of a frame in the same batch as its first is acked only once the first is stored:
    /// when that write fails, acking the copy would lose the message.
    @Test(.timeLimit(.minutes(1))) func copyInTheSameBatchIsNotAckedWhenTheWriteFails() async throws {
        try await withTemporaryDirectory { root in
            let spool = Spool(directory: root, logger: LogSink().logger)
            try spool.open()
            // tmp/ as a plain file: every write fails (ENOTDIR), even for root.
            try FileManager.default.removeItem(atPath: root + "/tmp")
            try #require(FileManager.default.createFile(atPath: root + "/tmp", contents: nil))
            let first = Task { await spool.store(botRecord(msgID: "dup", millis: 1_700_000_000_000, connection: "a")) }
            let copy = Task { await spool.store(botRecord(msgID: "dup", millis: 1_700_000_000_500, connection: "b")) }
            try await Task.sleep(for: .milliseconds(50))
            let outcomes = try await withRunning(spool) { [await first.value, await copy.value] }
            for outcome in outcomes {
                guard case .failed = outcome else {
                    Issue.record("nothing was stored, so nothing may be acked; got \(outcomes)")
                    return
                }
            }
            #expect(files(root + "/new").isEmpty)
        }
    }

    @Test(.timeLimit(.minutes(1))) func duplicateAcrossRestartInAnyState() async throws {
        try await withTemporaryDirectory { root in
            let first = Spool(directory: root, logger: LogSink().logger)
            try first.open()
            let stored = try await withRunning(first) {
                [await first.store(botRecord(msgID: "m1")), await first.store(botRecord(msgID: "m2"))]
            }
            guard case .stored(let done) = stored[1] else {
                Issue.record("not stored")
                return
            }
            _ = try first.claim(done)
            try first.complete(done, replies: nil)
            #expect(files(root + "/done") == [done.fileName])

            let second = Spool(directory: root, logger: LogSink().logger)
            try second.open()
            let again = try await withRunning(second) {
                [await second.store(botRecord(msgID: "m1", millis: 1_700_000_090_000)),
                 await second.store(botRecord(msgID: "m2", millis: 1_700_000_090_000)),
                 await second.store(botRecord(msgID: "m3"))]
            }
            #expect(again[0] == .duplicate)
            #expect(again[1] == .duplicate)
            if case .stored = again[2] {} else { Issue.record("new message refused: \(again[2])") }
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: [Spool.SyncMode.filesystem, .perFile])
    func groupCommitStoresManyConcurrentFramesAndAnnouncesThem(mode: Spool.SyncMode) async throws {
        try await withTemporaryDirectory { root in
            let spool = Spool(directory: root, syncMode: mode, logger: LogSink().logger)
            try spool.open()
            let count = 2000
            let outcomes = try await withRunning(spool) {
                await withTaskGroup(of: IntakeOutcome.self) { group in
                    for index in 0..<count {
                        group.addTask { await spool.store(botRecord(msgID: "bulk-\(index % 1500)", millis: 1_700_000_000_000 + Int64(index))) }
                    }
                    return await group.reduce(into: [IntakeOutcome]()) { $0.append($1) }
                }
            }
            let stored = outcomes.compactMap { if case .stored(let name) = $0 { name } else { nil } }
            #expect(stored.count == 1500)
            #expect(outcomes.filter { $0 == .duplicate }.count == 500)
            #expect(files(root + "/new").count == 1500)
            #expect(files(root + "/tmp").isEmpty)
            // Every stored name was announced to the dispatcher, and the stream ends with run().
            var announced: Set<EntryName> = []
            for await name in spool.entries { announced.insert(name) }
            #expect(announced == Set(stored))
        }
    }

    /// Redeliveries that arrive while their original is still between the writer and the syncer
    /// (a later batch than the original's) are stored once, and acked only as duplicates.
    @Test(.timeLimit(.minutes(1))) func copiesOfFramesInFlightAreStoredOnce() async throws {
        try await withTemporaryDirectory { root in
            let spool = Spool(directory: root, logger: LogSink().logger)
            try spool.open()
            let rounds = 30
            let perRound = 100
            let outcomes = try await withRunning(spool) {
                await withTaskGroup(of: (String, IntakeOutcome).self) { group in
                    for round in 0..<rounds {
                        for index in 0..<perRound {
                            let id = "r\(round)-\(index)"
                            group.addTask { (id, await spool.store(botRecord(msgID: id, millis: 1_700_000_000_000 + Int64(round)))) }
                        }
                        // Copies of the previous round, submitted before its outcomes are known.
                        if round > 0 {
                            for index in 0..<perRound {
                                let id = "r\(round - 1)-\(index)"
                                group.addTask { (id, await spool.store(botRecord(msgID: id, millis: 1_700_000_100_000, connection: "b"))) }
                            }
                        }
                        await Task.yield()
                    }
                    return await group.reduce(into: [String: [IntakeOutcome]]()) { $0[$1.0, default: []].append($1.1) }
                }
            }
            var storedTwice: [String] = []
            var neverStored: [String] = []
            for (id, results) in outcomes {
                let stored = results.filter { if case .stored = $0 { true } else { false } }.count
                if stored > 1 { storedTwice.append(id) }
                if stored == 0 { neverStored.append(id) }
                #expect(results.count - stored == results.filter { $0 == .duplicate }.count, "\(id): \(results)")
            }
            #expect(storedTwice.isEmpty)
            #expect(neverStored.isEmpty)
            #expect(outcomes.count == rounds * perRound)
            #expect(files(root + "/new").count == rounds * perRound)
        }
    }

    @Test(.timeLimit(.minutes(1))) func submitAfterShutdownFailsClosed() async throws {
        try await withTemporaryDirectory { root in
            let spool = Spool(directory: root, logger: LogSink().logger)
            try spool.open()
            try await withRunning(spool) {}
            let outcome = await spool.store(botRecord(msgID: "late"))
            #expect(outcome == .failed(SpoolError(.closed, path: root)))
            #expect(files(root + "/new").isEmpty)
        }
    }

    @Test func namesParseAndSort() throws {
        let key = MessageKey(app: "help/desk-1", kind: .bot, id: "x")
        let name = EntryName(receivedMillis: 42, key: key)
        #expect(name.value == "0000000000042-help_desk-1-\(key.hash)")
        let parsed = try #require(EntryName(name.fileName))
        #expect(parsed == name)
        #expect(parsed.app == "help_desk-1")
        #expect(parsed.receivedMillis == 42)
        #expect(EntryName("notes.txt") == nil)
        #expect(EntryName("0000000000042-a-zzzzzzzzzzzzzzzz") == nil)
        #expect(EntryName(receivedMillis: 9, key: key) < EntryName(receivedMillis: 10, key: key))
    }
}

import Foundation
import Logging
import StreamProtocol
import Synchronization
import Testing

@testable import Spool

@Suite struct SpoolRecoveryTests {
    /// `message` and its name index as schemas 1 and 2 made them: the dedup a table constraint.
    static let messageTableBeforeSchemaThree = """
        CREATE TABLE message (
            id INTEGER PRIMARY KEY, name TEXT NOT NULL, app TEXT NOT NULL, kind TEXT NOT NULL,
            business_id TEXT NOT NULL, state TEXT NOT NULL, conversation TEXT, received_ms INTEGER NOT NULL,
            changed_ms INTEGER NOT NULL, not_before_ms INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            entry BLOB NOT NULL, replies TEXT, delivered INTEGER NOT NULL DEFAULT 0,
            delivery_attempts INTEGER NOT NULL DEFAULT 0, reason TEXT, UNIQUE (app, kind, business_id));
        CREATE UNIQUE INDEX message_name ON message (name);
        """

    func name(_ id: String, _ millis: Int64 = 1_700_000_000_000) -> EntryName {
        EntryName(receivedMillis: millis, key: MessageKey(app: "helpdesk", kind: .bot, id: id))
    }

    /// A crash while handlers run (no `complete`) leaves the entry `running`; the next start
    /// makes it runnable again and announces it, and its stale message file is gone.
    @Test(.timeLimit(.minutes(1))) func entriesInterruptedByACrashRunAgain() async throws {
        try await withTemporaryDirectory { root in
            let spool = Spool(directory: root, logger: LogSink().logger)
            try spool.open()
            let stored = try await withRunning(spool) {
                [await spool.store(botRecord(msgID: "handling")), await spool.store(botRecord(msgID: "waiting", millis: 1_700_000_000_001))]
            }
            guard case .stored(let handling) = stored[0], case .stored(let waiting) = stored[1] else {
                Issue.record("expected both stored: \(stored)")
                return
            }
            let claimed = try spool.claim(handling)
            #expect(FileManager.default.fileExists(atPath: try #require(claimed.path)))
            spool.close()  // the process dies here

            let sink = LogSink()
            let restarted = Spool(directory: root, logger: sink.logger)
            try restarted.open()
            defer { restarted.close() }
            #expect(files(root + "/running").isEmpty)
            #expect(try restarted.names(in: .new) == [handling, waiting])
            #expect(sink.count(.notice, containing: "1 entries whose handlers were interrupted") == 1)
            let announced = try await withRunning(restarted) {
                var names: [EntryName] = []
                for await name in restarted.entries {
                    names.append(name.name)
                    if names.count == 2 { break }
                }
                return names
            }
            #expect(Set(announced) == [handling, waiting])
        }
    }

    /// Two messages of one conversation stored in the same millisecond: after a restart they come
    /// back, to the handlers and to the outbox, in the order they arrived, not in the order of their
    /// names (which then sort by key hash).
    @Test(.timeLimit(.minutes(1))) func sameMillisecondEntriesComeBackInArrivalOrder() async throws {
        // Ids whose names sort against their arrival order.
        let hash = { (id: String) in MessageKey(app: "helpdesk", kind: .bot, id: id).hash }
        let ids = (0..<64).map { "m\($0)" }
        let first = try #require(ids.first { id in ids.contains { hash($0) < hash(id) } })
        let second = try #require(ids.first { hash($0) < hash(first) })
        try await withTemporaryDirectory { root in
            let spool = Spool(directory: root, logger: LogSink().logger)
            try spool.open()
            let stored = try await withRunning(spool) {
                [await spool.store(botRecord(msgID: first)), await spool.store(botRecord(msgID: second))]
            }
            guard case .stored(let earlier) = stored[0], case .stored(let later) = stored[1] else {
                Issue.record("expected both stored: \(stored)")
                return
            }
            #expect(later.value < earlier.value, "the names sort against arrival")
            spool.close()

            let restarted = Spool(directory: root, logger: LogSink().logger)
            try restarted.open()
            #expect(try restarted.names(in: .new) == [earlier, later])
            for name in [earlier, later] {
                _ = try restarted.claim(name)
                try restarted.complete(name, replies: [#"{"msgtype":"text","text":{"content":"r"}}"#])
            }
            #expect(try restarted.transaction { writer throws(SpoolError) in try writer.outboxEntries() } == [earlier, later])
            restarted.close()
        }
    }

    /// new → running (message file) → outbox (replies, progress) → done, every step a committed
    /// transaction; the message file goes when the handlers are through.
    @Test(.timeLimit(.minutes(1))) func dispatchLifecycleThroughOutboxToDone() async throws {
        try await withTemporaryDirectory { root in
            let spool = Spool(directory: root, logger: LogSink().logger)
            try spool.open()
            defer { spool.close() }
            try await withRunning(spool) {
                guard case .stored(let name) = await spool.store(botRecord(msgID: "m1")) else {
                    Issue.record("not stored")
                    return
                }
                let claimed = try await spool.perform { writer throws(SpoolError) in try writer.claim(name) }
                let file = try #require(claimed.path)
                #expect(JSON.object(try Data(contentsOf: URL(fileURLWithPath: file)))?["key"] as? String == "m1")
                #expect(try spool.row(name).state == .running)
                // A second claim (a stale announcement) finds nothing to take.
                await #expect(throws: SpoolError.self) { try await spool.perform { writer throws(SpoolError) in try writer.claim(name) } }

                try await spool.perform { writer throws(SpoolError) in try writer.complete(name, replies: ["{\"msgtype\":\"text\"}", "second"]) }
                #expect(!FileManager.default.fileExists(atPath: file))
                var row = try spool.row(name)
                #expect(row.state == .outbox)
                #expect(row.entry.replies == ["{\"msgtype\":\"text\"}", "second"])
                try await spool.perform { writer throws(SpoolError) in try writer.updateOutbox(name, delivered: 1, deliveryAttempts: 1) }
                row = try spool.row(name)
                #expect(row.entry.delivered == 1 && row.entry.deliveryAttempts == 1)
                #expect(try await spool.perform { writer throws(SpoolError) in try writer.outboxEntries() } == [name])
                try await spool.perform { writer throws(SpoolError) in try writer.finishDelivery(name) }
                #expect(try spool.row(name).state == .done)
            }
        }
    }

    /// A round with frames returns from COMMIT once fsynced (they are acked after it). A round of
    /// state changes alone is committed to the log without waiting for the disk, and fsynced by
    /// the next round with frames or after the deferred sync delay, whichever comes first.
    @Test(.timeLimit(.minutes(1))) func stateChangesAloneAreFsyncedLaterFramesAtOnce() async throws {
        try await withTemporaryDirectory { root in
            let spool = Spool(directory: root, deferredSyncDelay: .seconds(2), logger: LogSink().logger)
            try spool.open()
            defer { spool.close() }
            let unsynced = { spool.writer.withLock { $0?.store.hasUnsyncedCommits ?? false } }
            try await withRunning(spool) {
                guard case .stored(let name) = await spool.store(botRecord(msgID: "m1")) else {
                    Issue.record("not stored")
                    return
                }
                #expect(!unsynced())
                let mode = try await spool.perform { writer throws(SpoolError) in
                    _ = try writer.claim(name, messageFile: false)
                    return try (writer.store as! SQLiteStore).connection.integer("PRAGMA synchronous")
                }
                #expect(mode == 1, "a claim alone is committed with synchronous = NORMAL")
                #expect(unsynced())
                guard case .stored = await spool.store(botRecord(msgID: "m2")) else {
                    Issue.record("not stored")
                    return
                }
                #expect(!unsynced(), "the round with a frame fsyncs the log, the claim before it too")
                #expect(try spool.row(name).state == .running)

                try await spool.perform { writer throws(SpoolError) in try writer.complete(name, replies: nil) }
                #expect(unsynced())
                let completed = ContinuousClock.now
                try await waitUntil("the deferred fsync") { !unsynced() }
                #expect(ContinuousClock.now - completed >= .seconds(1), "synced after the delay, not at once")
                #expect(try spool.row(name).state == .done)
            }
        }
    }

    /// A handler's outcome recorded on the caller's thread (`performHere`): only while the
    /// writer is free and the frames committed before are on disk, committed to the log at once
    /// and fsynced by the writer after the deferred sync delay, once woken for it.
    @Test(.timeLimit(.minutes(1))) func outcomesRecordedHereWaitForTheWriterAndTheFramesFsync() async throws {
        try await withTemporaryDirectory { root in
            // No rescan or prune wakes the writer in this test: only `performHere` can.
            let spool = Spool(
                directory: root, rescanInterval: .seconds(3600), deferredSyncDelay: .milliseconds(300), logger: LogSink().logger)
            try spool.open()
            defer { spool.close() }
            let unsynced = { spool.writer.withLock { $0?.store.hasUnsyncedCommits ?? false } }
            try await withRunning(spool) {
                var stored: [EntryName] = []
                for msgID in ["m1", "m2"] {
                    guard case .stored(let name) = await spool.store(botRecord(msgID: msgID)) else {
                        Issue.record("not stored")
                        return
                    }
                    stored.append(name)
                    _ = try await spool.perform { writer throws(SpoolError) in try writer.claim(name, messageFile: false) }
                }
                let names = stored
                try await waitUntil("the claims' deferred fsync") { !unsynced() }

                // The writer busy (a round, an fsync): nothing is done here.
                let holding = Mutex(false)
                let release = Mutex(false)
                let holder = Thread {
                    spool.writer.withLock { _ in
                        holding.withLock { $0 = true }
                        while !release.withLock({ $0 }) { usleep(1000) }
                    }
                }
                holder.start()
                try await waitUntil("the writer's lock taken") { holding.withLock { $0 } }
                let whileBusy = spool.performHere { writer throws(SpoolError) in try writer.complete(names[0], replies: nil) }
                release.withLock { $0 = true }
                #expect(whileBusy == nil, "refused while the writer is busy")
                #expect(try spool.row(names[0]).state == .running)

                // A round of frames committed and not yet fsynced (its sync thread has not run):
                // an outcome must wait for it, or a power cut could keep the outcome's reply
                // and lose the message. The round's insert and COMMIT are made here by hand,
                // after a state change that has the writer fsync within the delay.
                try await spool.perform { writer throws(SpoolError) in
                    try writer.retryLater(names[1], attempts: 1, notBefore: Date().addingTimeInterval(3600))
                }
                #expect(unsynced())
                try spool.writer.withLock { (writer: inout Spool.Writer?) throws(SpoolError) in
                    guard let store = writer?.store else { return }
                    let record = botRecord(msgID: "m3")
                    try store.begin(durable: false)
                    _ = try store.insert(
                        record, name: EntryName(receivedMillis: record.receivedMillis, key: record.key), bytes: record.encoded(), state: .new,
                        nowMillis: record.receivedMillis)
                    try store.commit()
                }
                #expect(spool.performHere { writer throws(SpoolError) in try writer.complete(names[0], replies: nil) } == nil)
                try await waitUntil("the deferred fsync") { !unsynced() }

                // Free, and nothing unsynced before it: committed here, fsynced later.
                let done = spool.performHere { writer throws(SpoolError) in try writer.complete(names[0], replies: nil) }
                #expect(done.map { (try? $0.get()) != nil } == true)
                #expect(unsynced(), "committed to the log only")
                spool.syncCommittedHere()
                let committed = ContinuousClock.now
                try await waitUntil("the writer's fsync of it") { !unsynced() }
                #expect(ContinuousClock.now - committed >= .milliseconds(200), "synced after the delay, not at once")
                // (Read after: a read here is a transaction of its own, which fsyncs.)
                #expect(try spool.row(names[0]).state == .done)

                // A change that fails (not running any more) rolls back and says why.
                let again = spool.performHere { writer throws(SpoolError) in try writer.complete(names[0], replies: nil) }
                #expect(again.map { (try? $0.get()) == nil } == true)
                #expect(try spool.row(names[0]).state == .done)
            }
        }
    }

    @Test(.timeLimit(.minutes(1))) func retryWaitsUntilDueAndDeadLetterKeepsItsReason() async throws {
        try await withTemporaryDirectory { root in
            let clock = TestClock()
            let spool = Spool(directory: root, rescanInterval: .milliseconds(20), logger: LogSink().logger, now: clock.closure)
            try spool.open()
            defer { spool.close() }
            try await withRunning(spool) {
                guard case .stored(let name) = await spool.store(botRecord(msgID: "m1", millis: millis(clock.now))) else {
                    Issue.record("not stored")
                    return
                }
                var iterator = spool.entries.makeAsyncIterator()
                #expect(await iterator.next()?.name == name)
                _ = try await spool.perform { writer throws(SpoolError) in try writer.claim(name) }
                let due = clock.now.addingTimeInterval(60)
                try await spool.perform { writer throws(SpoolError) in try writer.retryLater(name, attempts: 1, notBefore: due) }
                // Not announced before it is due, however often the writer looks.
                try await Task.sleep(for: .milliseconds(100))
                #expect(try spool.row(name).state == .new)
                clock.advance(61)
                #expect(await iterator.next()?.name == name)
                let claimed = try await spool.perform { writer throws(SpoolError) in try writer.claim(name) }
                #expect(claimed.entry.attempts == 1)
                #expect(JSON.object(try Data(contentsOf: URL(fileURLWithPath: try #require(claimed.path))))?["attempts"] as? Int == 1)
                try await spool.perform { writer throws(SpoolError) in try writer.deadLetter(name, reason: "handler 10-x exited 3\nstderr: boom") }
                let row = try spool.row(name)
                #expect(row.state == .failed)
                #expect(row.reason == "handler 10-x exited 3\nstderr: boom\n")
            }
        }
    }

    /// Done rows go after `retention`; while within `dedup_window` they stay as tombstones, so a
    /// late redelivery is still a duplicate; after the window it is a new message.
    @Test(.timeLimit(.minutes(1))) func pruneKeepsKeysDedupedWithinTheWindowAndGoesInSlices() async throws {
        try await withTemporaryDirectory { root in
            let clock = TestClock()
            let spool = Spool(
                directory: root, dedupWindow: .seconds(24 * 3600), retention: .seconds(3600), rescanInterval: .milliseconds(20),
                pruneInterval: .milliseconds(50), logger: LogSink().logger, now: clock.closure)
            try spool.open()
            defer { spool.close() }
            let count = 2500  // more than two prune slices
            try await withRunning(spool) {
                var names: [EntryName] = []
                for index in 0..<count {
                    if case .stored(let name) = await spool.store(botRecord(msgID: "m\(index)", millis: millis(clock.now))) {
                        names.append(name)
                    }
                }
                try #require(names.count == count)
                for name in names {
                    _ = try await spool.perform { writer throws(SpoolError) in
                        _ = try writer.claim(name, messageFile: false)
                        try writer.complete(name, replies: nil)
                    }
                }
                clock.advance(2 * 3600)
                // Frames keep being stored while the writer prunes in slices.
                var during = 0
                try await waitUntil("every done row pruned") {
                    try spool.transaction { writer throws(SpoolError) in try writer.store.counts()[.done] ?? 0 } == 0
                }
                for index in 0..<20 {
                    if case .stored = await spool.store(botRecord(msgID: "fresh\(index)", millis: millis(clock.now))) { during += 1 }
                }
                #expect(during == 20)
                #expect(await spool.store(botRecord(msgID: "m7", millis: millis(clock.now))) == .duplicate)
                // Pruned: no longer listed or shown, only its key remains.
                #expect(throws: SpoolError.self) { try spool.row(names[7]) }

                clock.advance(23 * 3600)
                try await waitUntil("tombstones dropped after the window") {
                    try spool.transaction { writer throws(SpoolError) -> Int in
                        let statement = try (writer.store as! SQLiteStore).connection.statement("SELECT count(*) FROM message WHERE state = 'purged'")
                        defer { statement.reset() }
                        _ = try statement.step()
                        return statement.int(0)
                    } == 0
                }
                guard case .stored = await spool.store(botRecord(msgID: "m7", millis: millis(clock.now))) else {
                    Issue.record("after the dedup window a redelivery is a new message")
                    return
                }
            }
        }
    }

    /// Upgrade from 0.1: a folder-layout spool with entries in every state, a crash's double copy,
    /// a retry waiting in new/, a dead letter with its reason and dedup.log records is imported
    /// once, with nothing lost or doubled, and the folders are gone.
    @Test(.timeLimit(.minutes(1))) func folderLayoutIsImportedOnceWithNothingLostOrDoubled() async throws {
        try await withTemporaryDirectory { root in
            let clock = TestClock()
            for folder in ["tmp", "new", "cur", "outbox", "done", "failed", "handlers"] {
                try FileManager.default.createDirectory(atPath: root + "/" + folder, withIntermediateDirectories: true)
            }
            func put(_ record: IntakeRecord, _ folder: String, change: (inout [String: Any]) -> Void = { _ in }) throws -> EntryName {
                let name = EntryName(receivedMillis: record.receivedMillis, key: record.key)
                var object = try #require(JSON.object(Data(record.encoded())))
                change(&object)
                try JSON.encode(object).write(toFile: "\(root)/\(folder)/\(name.fileName)", atomically: false, encoding: .utf8)
                return name
            }
            let now = millis(clock.now)
            let fresh = try put(botRecord(msgID: "fresh", millis: now - 5000), "new")
            let retry = try put(botRecord(msgID: "retry", millis: now - 4000), "new") { $0["attempts"] = 2 }
            try FileManager.default.setAttributes([.modificationDate: clock.now.addingTimeInterval(600)], ofItemAtPath: "\(root)/new/\(retry.fileName)")
            let running = try put(botRecord(msgID: "running", millis: now - 3000), "cur")
            let replied = try put(botRecord(msgID: "replied", millis: now - 2000), "outbox") {
                $0["replies"] = ["{\"msgtype\":\"text\",\"text\":{\"content\":\"hi\"}}"]
                $0["delivered"] = 0
            }
            _ = try put(botRecord(msgID: "replied", millis: now - 2000), "cur")  // crash between outbox and unlink of cur/
            let finished = try put(botRecord(msgID: "finished", millis: now - 1000), "done")
            let dead = try put(eventRecord(eventID: "dead", millis: now - 500), "failed")
            try "handler 10-x exited 3\n".write(toFile: "\(root)/failed/\(dead.value).reason", atomically: false, encoding: .utf8)
            try "{\"app\":\"help".write(toFile: root + "/tmp/partial.json", atomically: false, encoding: .utf8)
            let pruned = botRecord(msgID: "pruned-earlier", millis: now - 60_000)
            try "\(now - 60_000) helpdesk-\(pruned.key.hash)\n".write(toFile: root + "/dedup.log", atomically: false, encoding: .utf8)

            let sink = LogSink()
            let spool = Spool(directory: root, logger: sink.logger, now: clock.closure)
            try spool.open()
            #expect(sink.count(.notice, containing: "imported 6 entries") == 1)
            for folder in ["tmp", "new", "cur", "outbox", "done", "failed"] {
                #expect(!FileManager.default.fileExists(atPath: root + "/" + folder), "\(folder)/ removed")
            }
            #expect(!FileManager.default.fileExists(atPath: root + "/dedup.log"))
            #expect(try spool.names(in: .new) == [fresh, retry, running])
            #expect(try spool.row(retry).entry.attempts == 2)
            #expect(abs(try spool.row(retry).notBeforeMillis - millis(clock.now.addingTimeInterval(600))) < 1000)
            let outbox = try spool.row(replied)
            #expect(outbox.state == .outbox && outbox.entry.replies.count == 1)
            #expect(try spool.row(finished).state == .done)
            let failed = try spool.row(dead)
            #expect(failed.state == .failed && failed.reason == "handler 10-x exited 3\n")

            // Everything imported, and everything in dedup.log, is a duplicate from now on.
            let redeliveries = try await withRunning(spool) {
                [
                    await spool.store(botRecord(msgID: "fresh", millis: now)), await spool.store(botRecord(msgID: "replied", millis: now)),
                    await spool.store(eventRecord(eventID: "dead", millis: now)),
                    await spool.store(botRecord(msgID: "pruned-earlier", millis: now)),
                ]
            }
            #expect(redeliveries == [.duplicate, .duplicate, .duplicate, .duplicate])
            spool.close()

            // A second start imports nothing again.
            let again = Spool(directory: root, logger: LogSink().logger, now: clock.closure)
            try again.open()
            defer { again.close() }
            #expect(try again.transaction { writer throws(SpoolError) in try writer.store.counts().values.reduce(0, +) } == 6)
        }
    }

    /// A file that is not a database is moved aside with a critical log line, never emptied in
    /// place, and a new spool starts.
    @Test(.timeLimit(.minutes(1))) func corruptDatabaseIsMovedAsideNotEmptied() async throws {
        try await withTemporaryDirectory { root in
            let garbage = Data((0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 31) })
            try garbage.write(to: URL(fileURLWithPath: root + "/spool.db"))
            let sink = LogSink()
            let spool = Spool(directory: root, logger: sink.logger)
            try spool.open()
            defer { spool.close() }
            let aside = try #require(files(root).first { $0.hasPrefix("spool.db.corrupt-") })
            #expect(try Data(contentsOf: URL(fileURLWithPath: root + "/" + aside)) == garbage)
            #expect(sink.messages(containing: "is damaged").count == 1)
            let outcome = try await withRunning(spool) { await spool.store(botRecord(msgID: "after")) }
            guard case .stored = outcome else {
                Issue.record("a new database takes frames: \(outcome)")
                return
            }
        }
    }

    /// A schema 2 file (dedup by UNIQUE (app, kind, business_id)) is rebuilt at start into
    /// the current schema with every row and id kept; each row gets its fingerprint, and redeliveries of
    /// what it held are duplicates, new messages are stored after them in arrival order.
    @Test(.timeLimit(.minutes(1))) func schemaTwoIsRebuiltWithFingerprintsAndKeepsDeduplicating() async throws {
        try await withTemporaryDirectory { root in
            do {
                let old = try SQLiteConnection(path: root + "/" + SQLiteStore.fileName)
                try old.execute(
                    """
                    PRAGMA journal_mode = WAL;
                    \(Self.messageTableBeforeSchemaThree)
                    CREATE INDEX message_waiting ON message (state, not_before_ms)
                        WHERE state = 'new' OR state = 'running' OR state = 'outbox' OR state = 'failed';
                    CREATE TABLE legacy_seen (key TEXT PRIMARY KEY, received_ms INTEGER NOT NULL) WITHOUT ROWID;
                    INSERT INTO message (id, name, app, kind, business_id, state, received_ms, changed_ms, not_before_ms, attempts, entry, reason)
                        VALUES (7, '\(name("waiting").value)', 'helpdesk', 'bot', 'waiting', 'new', 1700000000000, 1700000000000, 0, 2, x'7b7d', NULL),
                               (9, '\(name("finished", 1_700_000_000_001).value)', 'helpdesk', 'bot', 'finished', 'done', 1700000000001, 1700000000001, 0, 0, x'7b7d', 'refused: x'),
                               (12, '\(name("old", 1_700_000_000_002).value)', 'helpdesk', 'bot', 'old', 'purged', 1700000000002, 1700000000002, 0, 0, x'', NULL);
                    PRAGMA user_version = 2;
                    """)
            }
            let spool = Spool(directory: root, logger: LogSink().logger)
            try spool.open()
            defer { spool.close() }
            let rows = try spool.transaction { writer throws(SpoolError) -> [[String]] in
                let store = writer.store as! SQLiteStore
                #expect(try store.connection.integer("PRAGMA user_version") == SQLiteStore.schemaVersion)
                let statement = try store.connection.statement("SELECT id, business_id, state, attempts, dedup, reason FROM message ORDER BY id")
                var rows: [[String]] = []
                while try statement.step() { rows.append((0..<6).map { statement.text(Int32($0)) ?? "-" }) }
                return rows
            }
            func fingerprint(_ id: String) -> String { "\(Int64(bitPattern: MessageKey(app: "helpdesk", kind: .bot, id: id).fingerprint))" }
            #expect(rows == [
                ["7", "waiting", "new", "2", fingerprint("waiting"), "-"], ["9", "finished", "done", "0", fingerprint("finished"), "refused: x"],
                ["12", "old", "purged", "0", fingerprint("old"), "-"],
            ])
            let outcomes = try await withRunning(spool) {
                [
                    await spool.store(botRecord(msgID: "waiting")), await spool.store(botRecord(msgID: "finished")),
                    await spool.store(botRecord(msgID: "old")), await spool.store(botRecord(msgID: "new", millis: 1_700_000_000_003)),
                ]
            }
            #expect(outcomes.prefix(3) == [.duplicate, .duplicate, .duplicate])
            #expect(outcomes.last == .stored(name("new", 1_700_000_000_003)))
            #expect(try spool.names(in: .new) == [name("waiting"), name("new", 1_700_000_000_003)])
        }
    }

    /// The dedup key is 64 bits: a message whose fingerprint another row holds (made here by
    /// giving a row another message's fingerprint) is stored once, without one, and its
    /// redeliveries are duplicates; when the holder is pruned, the row takes its fingerprint.
    @Test(.timeLimit(.minutes(1))) func aMessageWhoseFingerprintIsTakenIsStoredOnceAndStaysDeduplicated() async throws {
        try await withTemporaryDirectory { root in
            let clock = TestClock()
            let spool = Spool(directory: root, logger: LogSink().logger, now: clock.closure)
            try spool.open()
            defer { spool.close() }
            let now = millis(clock.now)
            let taken = Int64(bitPattern: MessageKey(app: "helpdesk", kind: .bot, id: "late").fingerprint)
            func dedup(of id: String) throws -> Int64? {
                try spool.transaction { writer throws(SpoolError) -> Int64? in
                    let store = writer.store as! SQLiteStore
                    let statement = try store.connection.statement("SELECT dedup FROM message WHERE business_id = ?1")
                    statement.bind(1, id)
                    defer { statement.reset() }
                    guard try statement.step(), statement.text(0) != nil else { return nil }
                    return statement.int64(0)
                }
            }
            let outcomes = try await withRunning(spool) {
                // Eight days old and done: the holder, which the next prune removes.
                guard case .stored(let holder) = await spool.store(botRecord(msgID: "holder", millis: now - 8 * 86_400_000)) else {
                    return [IntakeOutcome]()
                }
                try spool.transaction { writer throws(SpoolError) in
                    let store = writer.store as! SQLiteStore
                    try store.connection.execute(
                        """
                        UPDATE dedup_recent SET dedup = \(taken) WHERE message = (SELECT id FROM message WHERE name = '\(holder.value)');
                        UPDATE message SET dedup = \(taken), state = 'done' WHERE name = '\(holder.value)';
                        """)
                }
                var outcomes = [
                    await spool.store(botRecord(msgID: "late", millis: now)), await spool.store(botRecord(msgID: "late", millis: now + 1)),
                ]
                #expect(try dedup(of: "late") == nil)
                try spool.prune()
                #expect(try spool.transaction { writer throws(SpoolError) in try writer.store.counts() } == [.new: 1])
                #expect(try dedup(of: "late") == taken)
                outcomes.append(await spool.store(botRecord(msgID: "late", millis: now + 2)))
                return outcomes
            }
            #expect(outcomes.count == 3)
            #expect(outcomes.first.map { if case .stored = $0 { true } else { false } } == true)
            #expect(outcomes.dropFirst() == [.duplicate, .duplicate])
            #expect(try spool.names(in: .new).count == 1)
        }
    }

    /// A schema 1 file (its waiting index on `state IN (…)`) is brought to the current schema at start with
    /// its rows kept, and afterwards neither the intake's INSERT nor a state change makes SQLite
    /// build a temporary b-tree for the index's condition.
    @Test(.timeLimit(.minutes(1))) func schemaOneIsMigratedAndWritesNeedNoTemporaryTree() async throws {
        try await withTemporaryDirectory { root in
            let path = root + "/" + SQLiteStore.fileName
            do {
                let old = try SQLiteConnection(path: path)
                try old.execute(
                    """
                    PRAGMA journal_mode = WAL;
                    \(Self.messageTableBeforeSchemaThree)
                    CREATE INDEX message_waiting ON message (state, not_before_ms) WHERE state IN ('new', 'running', 'outbox', 'failed');
                    CREATE TABLE legacy_seen (key TEXT PRIMARY KEY, received_ms INTEGER NOT NULL) WITHOUT ROWID;
                    INSERT INTO message (name, app, kind, business_id, state, received_ms, changed_ms, not_before_ms, entry)
                        VALUES ('\(name("kept").value)', 'helpdesk', 'bot', 'kept', 'new', 1700000000000, 1700000000000, 0, x'7b7d');
                    PRAGMA user_version = 1;
                    """)
            }
            func temporaryTrees(_ connection: SQLiteConnection, _ sql: String) throws -> Int {
                let explain = try connection.statement("EXPLAIN " + sql)
                var count = 0
                while try explain.step() {
                    if explain.text(1) == "OpenEphemeral" { count += 1 }
                }
                return count
            }
            let store = try SQLiteStore(path: path)
            #expect(try store.connection.integer("PRAGMA user_version") == SQLiteStore.schemaVersion)
            #expect(try store.counts() == [.new: 1])
            #expect(try store.runnable(dueBy: .max, limit: 10).map(\.name) == [name("kept")])
            #expect(try temporaryTrees(store.connection, "UPDATE message SET state = ?2, changed_ms = ?3 WHERE name = ?1 AND state IN ('new')") == 0)
            #expect(
                try temporaryTrees(
                    store.connection,
                    "INSERT INTO message (name, app, kind, business_id, state, received_ms, changed_ms, not_before_ms, entry) VALUES (?1, 'a', 'bot', ?2, 'new', 0, 0, 0, x'')"
                ) == 0)
            let plan = try store.connection.statement("EXPLAIN QUERY PLAN SELECT count(*) FROM message WHERE state = 'new'")
            #expect(try plan.step() && (plan.text(3) ?? "").contains("message_waiting"))
        }
    }
}

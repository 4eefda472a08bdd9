import Foundation
import Logging
import StreamProtocol
import Testing

@testable import Spool

@Suite struct SpoolRecoveryTests {
    func write(_ root: String, _ folder: String, _ name: EntryName, attempts: Int = 0) throws {
        let text = "{\"app\":\"helpdesk\",\"kind\":\"bot\",\"key\":\"\(name.keyHash)\",\"headers\":{},\"data\":{},\"attempts\":\(attempts)}\n"
        try text.write(toFile: "\(root)/\(folder)/\(name.fileName)", atomically: false, encoding: .utf8)
    }

    func name(_ id: String, _ millis: Int64 = 1_700_000_000_000) -> EntryName {
        EntryName(receivedMillis: millis, key: MessageKey(app: "helpdesk", kind: .bot, id: id))
    }

    @Test(.timeLimit(.minutes(1))) func openRecoversAfterACrash() async throws {
        try await withTemporaryDirectory { root in
            try Spool(directory: root, logger: LogSink().logger).open()
            try "{\"app\":\"help".write(toFile: root + "/tmp/partial.json", atomically: false, encoding: .utf8)
            let handling = name("handling")
            let replied = name("replied")
            let finished = name("finished")
            let waiting = name("waiting")
            try write(root, "cur", handling)
            try write(root, "cur", replied)
            try write(root, "outbox", replied)  // crash after the outbox commit, before unlink of cur/
            try write(root, "new", finished)
            try write(root, "done", finished)  // crash between link into done/ and unlink of new/
            try write(root, "new", waiting)

            let sink = LogSink()
            let spool = Spool(directory: root, logger: sink.logger)
            try spool.open()
            #expect(files(root + "/tmp").isEmpty)
            #expect(files(root + "/cur").isEmpty)
            #expect(try spool.newEntries() == [handling, waiting].sorted())
            #expect(try spool.outboxEntries() == [replied])
            #expect(files(root + "/done") == [finished.fileName])
            #expect(sink.count(.notice, containing: "after a crash") == 2)

            // Recovered entries are announced when the loop starts; the outbox entry is not.
            let announced = try await withRunning(spool) {
                var names: [EntryName] = []
                for await name in spool.entries {
                    names.append(name)
                    if names.count == 2 { break }
                }
                return names
            }
            #expect(Set(announced) == [handling, waiting])
        }
    }

    @Test(.timeLimit(.minutes(1))) func pruneKeepsPrunedKeysDedupedWithinTheWindow() async throws {
        try await withTemporaryDirectory { root in
            let clock = TestClock()
            let spool = Spool(
                directory: root, dedupWindow: .seconds(24 * 3600), retention: .seconds(3600),
                logger: LogSink().logger, now: clock.closure)
            try spool.open()
            let outcome = try await withRunning(spool) { await spool.store(botRecord(msgID: "old", millis: millis(clock.now))) }
            guard case .stored(let stored) = outcome else {
                Issue.record("not stored: \(outcome)")
                return
            }
            _ = try spool.claim(stored)
            try spool.complete(stored, replies: nil)

            clock.advance(2 * 3600)  // past retention, within the dedup window
            let restarted = Spool(
                directory: root, dedupWindow: .seconds(24 * 3600), retention: .seconds(3600),
                logger: LogSink().logger, now: clock.closure)
            try restarted.open()
            #expect(files(root + "/done").isEmpty)
            let log = try String(contentsOfFile: root + "/dedup.log", encoding: .utf8)
            #expect(log.contains(String(stored.dedupKey)))
            let redelivered = try await withRunning(restarted) {
                await restarted.store(botRecord(msgID: "old", millis: millis(clock.now)))
            }
            #expect(redelivered == .duplicate)

            clock.advance(24 * 3600)  // the window has passed: the record is compacted away
            let later = Spool(
                directory: root, dedupWindow: .seconds(24 * 3600), retention: .seconds(3600),
                logger: LogSink().logger, now: clock.closure)
            try later.open()
            #expect(try String(contentsOfFile: root + "/dedup.log", encoding: .utf8).isEmpty)
            let fresh = try await withRunning(later) { await later.store(botRecord(msgID: "old", millis: millis(clock.now))) }
            if case .stored = fresh {} else { Issue.record("expired key must be accepted again: \(fresh)") }
        }
    }

    /// A day's worth of `done/` expiring at once is removed in slices by the writer thread, which
    /// stores incoming frames between them; every pruned key stays a duplicate.
    @Test(.timeLimit(.minutes(1))) func largePruneGoesInSlicesWhileFramesAreStored() async throws {
        try await withTemporaryDirectory { root in
            let clock = TestClock()
            let sink = LogSink()
            let spool = Spool(
                directory: root, dedupWindow: .seconds(24 * 3600), retention: .seconds(3600), rescanInterval: .milliseconds(20),
                logger: sink.logger, now: clock.closure)
            try spool.open()
            try await withRunning(spool) {
                let total = Spool.pruneSliceLimit * 2 + 500
                let names = await withTaskGroup(of: IntakeOutcome.self) { group in
                    for index in 0..<total {
                        group.addTask { await spool.store(botRecord(msgID: "old-\(index)", millis: millis(clock.now))) }
                    }
                    var names: [EntryName] = []
                    for await case .stored(let name) in group { names.append(name) }
                    return names
                }
                try #require(names.count == total)
                for name in names {
                    _ = try spool.claim(name)
                    try spool.complete(name, replies: nil)
                }
                try #require(files(root + "/done").count == total)

                clock.advance(2 * 3600)  // past retention and the prune interval, within the dedup window
                var storedWhilePruning = 0
                var index = 0
                while true {
                    let left = files(root + "/done").count
                    if left == 0 { break }
                    let outcome = await spool.store(botRecord(msgID: "new-\(index)", millis: millis(clock.now)))
                    if case .stored = outcome {} else { Issue.record("not stored while pruning: \(outcome)") }
                    if left < total { storedWhilePruning += 1 }
                    index += 1
                    try await Task.sleep(for: .milliseconds(10))
                }
                let slices = sink.messages(containing: "spool: pruned done entries")
                #expect(slices.count == 3, "\(slices)")
                #expect(slices.allSatisfy { $0.contains("spool.pruned=1000") || $0.contains("spool.pruned=500") }, "\(slices)")
                #expect(slices.last?.contains("spool.pruneLeft=0") == true, "\(slices)")
                #expect(storedWhilePruning > 0, "no frame was stored between two slices")
                for probe in ["old-0", "old-\(total / 2)", "old-\(total - 1)"] {
                    #expect(await spool.store(botRecord(msgID: probe, millis: millis(clock.now))) == .duplicate, "\(probe)")
                }
                #expect(files(root + "/new").count == index)
            }
        }
    }

    @Test(.timeLimit(.minutes(1))) func dispatchLifecycleThroughOutboxToDone() async throws {
        try await withTemporaryDirectory { root in
            let clock = TestClock()
            let spool = Spool(directory: root, rescanInterval: .milliseconds(20), logger: LogSink().logger, now: clock.closure)
            try spool.open()
            try await withRunning(spool) {
                var iterator = spool.entries.makeAsyncIterator()
                guard case .stored(let name) = await spool.store(botRecord(msgID: "flow", millis: millis(clock.now))) else {
                    Issue.record("not stored")
                    return
                }
                #expect(await iterator.next() == name)

                let claimed = try spool.claim(name)
                #expect(claimed.path == root + "/cur/" + name.fileName)
                #expect(claimed.entry.key == "flow")
                #expect(throws: SpoolError.self) { try spool.claim(name) }

                // Exit 75: back to new/, due in a minute; announced only once due.
                let due = clock.now.addingTimeInterval(60)
                try spool.retryLater(name, attempts: 1, notBefore: due)
                let pending = try spool.pendingEntries()
                #expect(pending.map(\.name) == [name])
                #expect(abs(pending[0].notBefore.timeIntervalSince(due)) < 0.01)
                #expect(try spool.read(name, in: .new).attempts == 1)
                try await Task.sleep(for: .milliseconds(100))
                clock.advance(61)
                #expect(await iterator.next() == name)

                _ = try spool.claim(name)
                try spool.complete(name, replies: [Data("part one".utf8), Data("{\"msgtype\":\"markdown\"}".utf8)])
                #expect(files(root + "/cur").isEmpty)
                #expect(try spool.outboxEntries() == [name])
                var outbox = try spool.read(name, in: .outbox)
                #expect(outbox.replies == ["part one", "{\"msgtype\":\"markdown\"}"])
                #expect(outbox.attempts == 1)
                #expect(outbox.botMessage?.msgID == "flow")

                try spool.updateOutbox(name, delivered: 1, deliveryAttempts: 2)
                outbox = try spool.read(name, in: .outbox)
                #expect(outbox.delivered == 1)
                #expect(outbox.deliveryAttempts == 2)
                #expect(outbox.replies.count == 2)

                try spool.finishDelivery(name, outcome: .delivered)
                #expect(files(root + "/done") == [name.fileName])
                #expect(files(root + "/outbox").isEmpty)
                #expect(files(root + "/tmp").isEmpty)
            }
        }
    }

    @Test(.timeLimit(.minutes(1))) func deadLetterWritesReason() async throws {
        try await withTemporaryDirectory { root in
            let spool = Spool(directory: root, logger: LogSink().logger)
            try spool.open()
            let outcome = try await withRunning(spool) { await spool.store(eventRecord(eventID: "bad")) }
            guard case .stored(let name) = outcome else {
                Issue.record("not stored")
                return
            }
            _ = try spool.claim(name)
            try spool.deadLetter(name, reason: "handler 10-echo exited 3\nstderr: boom")
            #expect(files(root + "/failed") == [name.fileName, name.value + ".reason"])
            #expect(try String(contentsOfFile: root + "/failed/\(name.value).reason", encoding: .utf8).contains("exited 3"))
            #expect(mode(root + "/failed/\(name.value).reason") == 0o640)
            #expect(throws: SpoolError(.notFound, path: name.value)) { try spool.deadLetter(name, reason: "again") }
        }
    }
}

import Foundation
import Logging
import StreamProtocol
import Testing

@testable import Spool

@Suite struct SpoolInspectorTests {
    @Test(.timeLimit(.minutes(1))) func listShowRetryPurgeWhileTheSpoolRuns() async throws {
        try await withTemporaryDirectory { root in
            let clock = TestClock()
            // The spool and the purge agree on a 30-day window, so m0 (8 days old at the end) must
            // stay a duplicate whether or not the spool's own prune ran in between.
            let spool = Spool(
                directory: root, dedupWindow: .seconds(30 * 86400), rescanInterval: .milliseconds(20),
                logger: LogSink().logger, now: clock.closure)
            try spool.open()
            defer { spool.close() }
            let start = millis(clock.now)
            try await withRunning(spool) {
                var iterator = spool.entries.makeAsyncIterator()
                var names: [EntryName] = []
                for (index, text) in ["first question", "second\nline", "third"].enumerated() {
                    guard case .stored(let name) = await spool.store(botRecord(msgID: "m\(index)", text: text, millis: start + Int64(index) * 1000)) else {
                        Issue.record("not stored")
                        return
                    }
                    names.append(name)
                    _ = await iterator.next()
                }
                _ = try spool.claim(names[0])
                try spool.complete(names[0], replies: nil)
                _ = try spool.claim(names[1])
                try spool.deadLetter(names[1], reason: "exit 2")

                clock.advance(90)
                let inspector = SpoolInspector(directory: root, now: clock.closure)
                let listing = try inspector.list()
                #expect(listing.map(\.state) == [.new, .done, .failed])
                #expect(listing[0].excerpt == "third")
                #expect(listing[0].sender == "Zhang San (0423297)")
                #expect(listing[0].age.components.seconds == 88)
                #expect(listing[2].excerpt == "second line")

                // Issue 15, bug 15: a limited listing said "done (2)" with 8 there, "spool is empty" at 0.
                let limited = try inspector.list(limit: 0)
                #expect(SpoolInspector.table(limited, totals: try inspector.counts()) == "3 entries, none listed (raise --limit)\n")
                #expect(SpoolInspector.table(listing, totals: [.new: 5, .done: 1, .failed: 1]).contains("new (1 of 5)"))

                let table = SpoolInspector.table(listing)
                #expect(table.contains("new (1)"))
                #expect(table.contains("failed (1)"))
                #expect(table.contains(names[2].value))
                #expect(table.contains("1m"))
                let json = try #require(try JSONSerialization.jsonObject(with: Data(SpoolInspector.json(listing).utf8)) as? [[String: Any]])
                #expect(json.count == 3)
                #expect(json[0]["key"] as? String == names[2].value)
                #expect(json[0]["state"] as? String == "new")
                #expect(json[0]["businessId"] as? String == "m2")
                #expect(json[0]["text"] as? String == "third")
                #expect(json[2]["text"] as? String == "second\nline", "--json keeps the whole text")

                // show by full name, by unique prefix, by msgId.
                let shown = try inspector.show(names[1].value)
                #expect(shown.state == .failed)
                #expect(shown.reason == "exit 2\n")
                #expect(try inspector.show(String(names[2].value.prefix(13))).name == names[2])
                #expect(try inspector.resolve("m2").entry.name == names[2])
                #expect(try inspector.resolve(names[0].fileName).state == .done)
                #expect(throws: SpoolError.self) { try inspector.resolve("nothing-like-it") }
                #expect(throws: SpoolError.self) { try inspector.resolve("1") }  // every name starts with 1

                // retry: failed → new, reason gone, attempts reset; the running spool announces it.
                #expect(try inspector.retry("m1") == names[1])
                let retried = try spool.row(names[1])
                #expect(retried.state == .new && retried.entry.attempts == 0 && retried.reason == nil)
                // The rescan announces it (entries still new, such as m2, may come again first).
                var announcedAgain = false
                for _ in 0..<20 where !announcedAgain { announcedAgain = await iterator.next()?.name == names[1] }
                #expect(announcedAgain)
                #expect(throws: SpoolError.self) { try inspector.retry("m2") }  // not a dead letter

                // purge: done older than 7 days goes, its key stays a duplicate.
                #expect(try inspector.purge(olderThan: .seconds(7 * 86400)) == 0)
                clock.advance(8 * 86400)
                let purged = try inspector.purge(olderThan: .seconds(7 * 86400), dedupWindow: .seconds(30 * 86400))
                #expect(purged == 1)
                #expect(try inspector.list(states: [.done]).isEmpty)
                #expect(throws: SpoolError.self) { try inspector.show("m0") }
                #expect(await spool.store(botRecord(msgID: "m0", millis: millis(clock.now))) == .duplicate)
            }
        }
    }

    @Test(.timeLimit(.minutes(1))) func retryAllFailedAndDeliveryFailuresGoBackToOutbox() async throws {
        try await withTemporaryDirectory { root in
            let spool = Spool(directory: root, logger: LogSink().logger)
            try spool.open()
            defer { spool.close() }
            let names = try await withRunning(spool) {
                var names: [EntryName] = []
                for id in ["a", "b"] {
                    if case .stored(let name) = await spool.store(botRecord(msgID: id)) { names.append(name) }
                }
                return names
            }
            try #require(names.count == 2)
            _ = try spool.claim(names[0])
            try spool.deadLetter(names[0], reason: "timeout")
            _ = try spool.claim(names[1])
            try spool.complete(names[1], replies: ["hi"])
            try spool.deadLetter(names[1], reason: "webhook 300001, OpenAPI 403")
            #expect(try spool.names(in: .failed).count == 2)

            let inspector = SpoolInspector(directory: root)
            #expect(try inspector.retryAllFailed().sorted() == names.sorted())
            #expect(try spool.names(in: .new) == [names[0]])
            #expect(try spool.names(in: .outbox) == [names[1]])
            #expect(try spool.row(names[1]).entry.replies == ["hi"])
            #expect(try spool.names(in: .failed).isEmpty)
        }
    }

    @Test(.timeLimit(.minutes(1))) func purgingADeadLetterTakesItsReasonAndAttachmentsAndKeepsItADuplicate() async throws {
        try await withTemporaryDirectory { root in
            let clock = TestClock()
            let spool = Spool(directory: root, logger: LogSink().logger, now: clock.closure)
            try spool.open()
            defer { spool.close() }
            let name = try await withRunning(spool) { () -> EntryName? in
                guard case .stored(let name) = await spool.store(botRecord(msgID: "dead", millis: millis(clock.now))) else { return nil }
                return name
            }
            let dead = try #require(name)
            _ = try spool.claim(dead)
            try spool.deadLetter(dead, reason: "exit 3")
            let attachments = root + "/attachments/" + dead.value
            try FileManager.default.createDirectory(atPath: attachments, withIntermediateDirectories: true)
            try #require(FileManager.default.createFile(atPath: attachments + "/picture", contents: Data([1, 2, 3])))

            let inspector = SpoolInspector(directory: root, now: clock.closure)
            #expect(try inspector.purge(.failed, olderThan: .seconds(3600)) == 0)
            clock.advance(2 * 3600)
            #expect(try inspector.purge(.failed, olderThan: .seconds(3600)) == 1)
            #expect(try spool.names(in: .failed).isEmpty)
            #expect(!FileManager.default.fileExists(atPath: attachments))
            // Its key stays: a redelivery within the dedup window is still a duplicate.
            spool.close()
            let restarted = Spool(directory: root, logger: LogSink().logger, now: clock.closure)
            try restarted.open()
            defer { restarted.close() }
            let redelivery = try await withRunning(restarted) { await restarted.store(botRecord(msgID: "dead", millis: millis(clock.now))) }
            #expect(redelivery == .duplicate)
        }
    }

    /// Issue 15 (confusing, polish): a refused message looked like any handled one in `spool ls`,
    /// a dead letter showed no reason there, and `spool purge` had no dry run.
    @Test(.timeLimit(.minutes(1))) func listingShowsRefusalsAndReasonsAndPurgeHasADryRun() async throws {
        try await withTemporaryDirectory { root in
            let clock = TestClock()
            let spool = Spool(directory: root, logger: LogSink().logger, now: clock.closure)
            try spool.open()
            defer { spool.close() }
            let names = try await withRunning(spool) {
                var names: [EntryName] = []
                for id in ["refused", "failed", "fine"] {
                    if case .stored(let name) = await spool.store(botRecord(msgID: id, millis: millis(clock.now))) { names.append(name) }
                }
                return names
            }
            try #require(names.count == 3)
            _ = try spool.claim(names[0])
            try spool.complete(names[0], replies: nil, note: "refused: 0423297 is not in allowed_users of app helpdesk\n")
            _ = try spool.claim(names[1])
            try spool.deadLetter(names[1], reason: "handler: /var/spool/dingstream/handlers/10-check\nstatus: exited with status 3\nduration: 0.010s\n")
            _ = try spool.claim(names[2])
            try spool.complete(names[2], replies: nil)

            let inspector = SpoolInspector(directory: root, now: clock.closure)
            let listing = try inspector.list()
            let table = SpoolInspector.table(listing)
            #expect(table.contains("NOTE"), "\(table)")
            #expect(table.contains("refused: 0423297 is not in allowed_users of app helpdesk"), "\(table)")
            #expect(table.contains("10-check: exited with status 3"), "\(table)")
            #expect(listing.first { $0.name == names[2] }?.note == "", "a plain done entry has no note")
            let json = try #require(try JSONSerialization.jsonObject(with: Data(SpoolInspector.json(listing).utf8)) as? [[String: Any]])
            #expect(json.contains { ($0["reason"] as? String)?.contains("duration: 0.010s") == true }, "--json has the whole reason")

            clock.advance(2 * 86400)
            #expect(try inspector.purgeable(.done, olderThan: .seconds(86400)) == 2)
            #expect(try inspector.purgeable(.failed, olderThan: .seconds(86400)) == 1)
            #expect(try inspector.purgeable(.done, olderThan: .seconds(3 * 86400)) == 0)
            #expect(try inspector.list(states: [.done]).count == 2, "a dry run removes nothing")
        }
    }
}

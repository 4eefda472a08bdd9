import Foundation
import Logging
import Testing

@testable import Spool

@Suite struct WALCheckpointerTests {
    /// The checkpoint sequence number in the log's header, which goes up each time the log starts over.
    static func logGeneration(_ path: String) throws -> UInt32 {
        let header = try #require(FileManager.default.contents(atPath: path + "-wal")?.prefix(16))
        try #require(header.count == 16)
        return header.suffix(4).reduce(0) { $0 << 8 | UInt32($1) }
    }

    /// With light traffic (a few pages per commit) the log is copied into the database beside
    /// the writer and starts over soon after it reaches `requestPages`, far before the writer
    /// would checkpoint in its own commit at `inlinePages`. A checkpointer that did nothing
    /// would let the log grow to the inline limit first.
    @Test(.timeLimit(.minutes(1))) func lightTrafficIsCheckpointedBesideTheWriter() async throws {
        try await withTemporaryDirectory { root in
            let path = root + "/" + SQLiteStore.fileName
            let store = try SQLiteStore(path: path)
            try store.connection.execute("CREATE TABLE scratch (payload BLOB)")
            let start = try Self.logGeneration(path)
            let frameBytes = 4096 + 24
            var largestLog = 0
            var commits = 0
            // Two pages of payload a commit (plus the table's leaf): well under a burst's rounds.
            let insert = try store.connection.statement("INSERT INTO scratch (payload) VALUES (zeroblob(6000))")
            while try Self.logGeneration(path) == start {
                try #require(commits < 4 * Int(WALCheckpointer.inlinePages), "the log never started over")
                try store.begin(durable: false)
                insert.reset()
                try insert.step()
                try store.commit()
                commits += 1
                let attributes = try FileManager.default.attributesOfItem(atPath: path + "-wal")
                largestLog = max(largestLog, (attributes[.size] as? Int) ?? 0)
            }
            #expect(largestLog > Int(WALCheckpointer.requestPages) * frameBytes)
            #expect(largestLog < Int(WALCheckpointer.requestPages + WALCheckpointer.inlinePages) / 2 * frameBytes)
            #expect(try store.connection.integer("SELECT count(*) FROM scratch") == Int64(commits))
        }
    }

    /// A checkpoint that cannot grow the database because the disk is full says so once, naming
    /// the file and the remedy; commits go on (they overwrite the log's file, which needs no new
    /// space), and once space is back the next checkpoint copies the log and says so.
    @Test(
        .timeLimit(.minutes(1)),
        .enabled(if: getuid() == 0, "needs root to mount a small tmpfs; run the tests as root to cover a checkpoint on a full disk"))
    func aCheckpointOnAFullDiskIsReportedAndTheNextOneCopiesTheLog() async throws {
        // Its store is released when the closure returns, before the unmount.
        try await withSmallFilesystem(size: "96m") { root in
            let path = root + "/" + SQLiteStore.fileName
            let sink = LogSink()
            let store = try SQLiteStore(path: path, logger: sink.logger)
            try store.connection.execute("CREATE TABLE scratch (payload BLOB)")
            let light = try store.connection.statement("INSERT INTO scratch (payload) VALUES (zeroblob(6000))")
            var rows: Int64 = 0
            func commitLight() throws {
                try store.begin(durable: false)
                light.reset()
                try light.step()
                try store.commit()
                rows += 1
            }
            // One round of a burst's size grows the log past the checkpoint threshold; the writer
            // copies it in that commit and the next starts the log over, keeping its file.
            let start = try Self.logGeneration(path)
            try store.begin(durable: false)
            try store.connection.execute("INSERT INTO scratch (payload) SELECT zeroblob(6000) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 4000) SELECT i FROM n)")
            try store.commit()
            rows += 4000
            try commitLight()
            try #require(try Self.logGeneration(path) != start)
            let frameBytes = 4096 + 24
            let logCapacity = try #require(FileManager.default.attributesOfItem(atPath: path + "-wal")[.size] as? Int) / frameBytes
            try #require(logCapacity > Int(WALCheckpointer.requestPages) + 40)

            let filler = root + "/filler"
            let descriptor = open(filler, O_WRONLY | O_CREAT, 0o600)
            let block = [UInt8](repeating: 0x61, count: 65536)
            while write(descriptor, block, block.count) > 0 {}
            close(descriptor)

            // Light commits up to the threshold: the checkpoint they ask for cannot grow the database.
            while try #require(store.logPages) < WALCheckpointer.requestPages { try commitLight() }
            let deadline = ContinuousClock.now + .seconds(10)
            while sink.count(.warning, containing: "checkpoint") == 0, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            let warnings = sink.messages(containing: "checkpoint")
            #expect(warnings.count == 1)
            #expect(warnings.first?.contains("disk full") == true)
            #expect(warnings.first?.contains(path) == true)
            #expect(warnings.first?.contains("free space") == true)

            try FileManager.default.removeItem(atPath: filler)
            let generation = try Self.logGeneration(path)
            while try Self.logGeneration(path) == generation {
                try #require(try #require(store.logPages) < logCapacity, "the log did not start over once space was back")
                try commitLight()
                try await Task.sleep(for: .milliseconds(1))
            }
            #expect(sink.count(.notice, containing: "checkpoints of \(path) work again") == 1)
            #expect(try store.connection.integer("SELECT count(*) FROM scratch") == rows)
        }
    }
}

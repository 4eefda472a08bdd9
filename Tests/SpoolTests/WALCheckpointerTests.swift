import Foundation
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
}

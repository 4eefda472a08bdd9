import Foundation
import Logging
import StreamProtocol
import Testing

@testable import Spool

/// The dedup keys live in a small table of recent keys and a large one they are moved into in
/// key order (`SQLiteStore.keyTables`); a business message is one row whichever table holds its
/// key, across moves, restarts and the upgrade from schema 3, where the keys were an index.
@Suite struct DedupKeyTests {
    private static let base: Int64 = 1_700_000_000_000

    /// One message per transaction, as an intake round of one frame stores it.
    private func store(_ store: SQLiteStore, _ id: String, at millis: Int64) throws -> Bool {
        let record = botRecord(msgID: id, millis: millis)
        try store.begin(durable: false)
        let inserted = try store.insert(
            record, name: EntryName(receivedMillis: millis, key: record.key), bytes: record.encoded(), state: .new, nowMillis: millis)
        try store.commit()
        return inserted
    }

    private func count(_ store: SQLiteStore, _ table: String) throws -> Int64 {
        try store.connection.integer("SELECT count(*) FROM \(table)")
    }

    @Test(.timeLimit(.minutes(1))) func redeliveriesAreDuplicatesWhetherTheirKeyIsRecentOrSettled() async throws {
        try await withTemporaryDirectory { root in
            let path = root + "/" + SQLiteStore.fileName
            do {
                let spool = try SQLiteStore(path: path, recentKeyLimit: 4, settleSliceKeys: 2)
                for index in 0..<10 {
                    let recentBefore = try count(spool, "dedup_recent")
                    #expect(try store(spool, "m\(index)", at: Self.base + Int64(index)))
                    #expect(try recentBefore + 1 - count(spool, "dedup_recent") <= 4, "a commit moves a slice of 2 and twice the keys it added")
                    #expect(try count(spool, "dedup_settled") + count(spool, "dedup_recent") == Int64(index + 1))
                }
                #expect(try count(spool, "dedup_settled") > 0)
                for index in 0..<10 { #expect(try !store(spool, "m\(index)", at: Self.base + 1000 + Int64(index))) }
                #expect(try count(spool, "message") == 10)
            }
            // Reopened: the recent keys are counted again, and the next move takes them along.
            let reopened = try SQLiteStore(path: path, recentKeyLimit: 4, settleSliceKeys: 2)
            #expect(try store(reopened, "m10", at: Self.base + 2000))
            #expect(try store(reopened, "m11", at: Self.base + 2001))
            #expect(try count(reopened, "dedup_settled") + count(reopened, "dedup_recent") == 12)
            for index in 0..<12 { #expect(try !store(reopened, "m\(index)", at: Self.base + 3000 + Int64(index))) }
            let keyed = try reopened.connection.integer(
                """
                SELECT count(*) FROM message JOIN (SELECT dedup, message FROM dedup_settled UNION ALL SELECT dedup, message FROM dedup_recent) AS keys
                ON keys.message = message.id AND keys.dedup = message.dedup
                """)
            #expect(keyed == 12, "every row's key points at it")
        }
    }

    /// A move starts at the COMMIT that finds `recentKeyLimit` recent keys, takes a slice in
    /// key order at each COMMIT from it on (and twice the keys the COMMIT added), and ends once
    /// no recent key is left above its slices.
    @Test(.timeLimit(.minutes(1))) func recentKeysMoveInSlicesInKeyOrder() async throws {
        try await withTemporaryDirectory { root in
            let store = try SQLiteStore(path: root + "/" + SQLiteStore.fileName, recentKeyLimit: 8, settleSliceKeys: 3)
            for index in 0..<7 { #expect(try self.store(store, "m\(index)", at: Self.base + Int64(index))) }
            #expect(try count(store, "dedup_settled") == 0)
            #expect(try self.store(store, "m7", at: Self.base + 7))
            func keys(in table: String) throws -> [Int64] {
                let statement = try store.connection.statement("SELECT dedup FROM \(table) ORDER BY dedup")
                var keys: [Int64] = []
                while try statement.step() { keys.append(statement.int64(0)) }
                statement.reset()
                return keys
            }
            func settled() throws -> [Int64] { try keys(in: "dedup_settled") }
            func recent() throws -> [Int64] { try keys(in: "dedup_recent") }
            // The eighth key's COMMIT started the move with the five smallest keys: a slice of
            // three, and two for the key it added.
            let moved = try settled()
            #expect(moved.count == 5)
            #expect(try moved.max()! < recent().min()!)
            // A commit without new keys takes the next slice, the last three.
            try store.begin(durable: false)
            try store.commit()
            #expect(try settled().count == 8)
            #expect(try recent().isEmpty)
            // The move is over: the next commits move nothing until the limit is reached again.
            #expect(try self.store(store, "m8", at: Self.base + 8))
            #expect(try settled().count == 8)
            #expect(try recent().count == 1)
            // A move keeps up with commits that add many keys: each moves twice what it added.
            let many = try SQLiteStore(path: root + "/many.db", recentKeyLimit: 8, settleSliceKeys: 1)
            for round in 0..<40 {
                try many.begin(durable: false)
                for index in 0..<6 {
                    let id = "r\(round)-\(index)"
                    let record = botRecord(msgID: id, millis: Self.base + Int64(round))
                    _ = try many.insert(
                        record, name: EntryName(receivedMillis: Self.base + Int64(round), key: record.key), bytes: record.encoded(), state: .new,
                        nowMillis: Self.base)
                }
                try many.commit()
                #expect(try count(many, "dedup_recent") < 8 + 6 * 17, "the recent keys stay bounded")
            }
        }
    }

    /// A schema 3 file (the keys a UNIQUE index on `message.dedup`) is brought to schema 4 at
    /// start: its keys move into `dedup_settled`, the index goes, and what it held stays deduplicated.
    @Test(.timeLimit(.minutes(1))) func schemaThreeKeysMoveIntoTheKeyTable() async throws {
        try await withTemporaryDirectory { root in
            let path = root + "/" + SQLiteStore.fileName
            func fingerprint(_ id: String) -> Int64 { Int64(bitPattern: MessageKey(app: "helpdesk", kind: .bot, id: id).fingerprint) }
            func name(_ id: String, _ millis: Int64) -> String { EntryName(receivedMillis: millis, key: MessageKey(app: "helpdesk", kind: .bot, id: id)).value }
            do {
                let old = try SQLiteConnection(path: path)
                try old.execute(
                    """
                    PRAGMA journal_mode = WAL;
                    CREATE TABLE message (
                        id INTEGER PRIMARY KEY, name TEXT NOT NULL, app TEXT NOT NULL, kind TEXT NOT NULL,
                        business_id TEXT NOT NULL, state TEXT NOT NULL, conversation TEXT, received_ms INTEGER NOT NULL,
                        changed_ms INTEGER NOT NULL, not_before_ms INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
                        entry BLOB NOT NULL, replies TEXT, delivered INTEGER NOT NULL DEFAULT 0,
                        delivery_attempts INTEGER NOT NULL DEFAULT 0, reason TEXT, dedup INTEGER);
                    CREATE UNIQUE INDEX message_dedup ON message (dedup);
                    CREATE UNIQUE INDEX message_name ON message (name);
                    CREATE UNIQUE INDEX message_collided ON message (app, kind, business_id) WHERE dedup IS NULL;
                    CREATE INDEX message_waiting ON message (state, not_before_ms)
                        WHERE state = 'new' OR state = 'running' OR state = 'outbox' OR state = 'failed';
                    CREATE TABLE legacy_seen (key TEXT PRIMARY KEY, received_ms INTEGER NOT NULL) WITHOUT ROWID;
                    INSERT INTO message (id, name, app, kind, business_id, state, received_ms, changed_ms, not_before_ms, entry, dedup)
                        VALUES (3, '\(name("waiting", Self.base))', 'helpdesk', 'bot', 'waiting', 'new', \(Self.base), \(Self.base), 0, x'7b7d', \(fingerprint("waiting"))),
                               (5, '\(name("finished", Self.base + 1))', 'helpdesk', 'bot', 'finished', 'done', \(Self.base + 1), \(Self.base + 1), 0, x'7b7d', \(fingerprint("finished"))),
                               (8, '\(name("collided", Self.base + 2))', 'helpdesk', 'bot', 'collided', 'new', \(Self.base + 2), \(Self.base + 2), 0, x'7b7d', NULL),
                               (9, '\(name("holder", Self.base + 3))', 'helpdesk', 'bot', 'holder', 'done', \(Self.base + 3), \(Self.base + 3), 0, x'7b7d', \(fingerprint("collided")));
                    PRAGMA user_version = 3;
                    """)
            }
            let store = try SQLiteStore(path: path)
            #expect(try store.connection.integer("PRAGMA user_version") == SQLiteStore.schemaVersion)
            #expect(try store.connection.integer("SELECT count(*) FROM sqlite_master WHERE name = 'message_dedup'") == 0)
            let settled = try store.connection.statement("SELECT message, dedup FROM dedup_settled ORDER BY message")
            var keys: [[Int64]] = []
            while try settled.step() { keys.append([settled.int64(0), settled.int64(1)]) }
            settled.reset()
            // Row 9 holds the fingerprint of row 8, which is stored without one (a collision).
            #expect(keys == [[3, fingerprint("waiting")], [5, fingerprint("finished")], [9, fingerprint("collided")]])
            #expect(try !self.store(store, "waiting", at: Self.base + 10))
            #expect(try !self.store(store, "finished", at: Self.base + 11))
            #expect(try !self.store(store, "collided", at: Self.base + 12))
            #expect(try self.store(store, "new", at: Self.base + 13))
            #expect(try count(store, "message") == 5)
        }
    }
}

import Foundation
import Logging
import StreamProtocol

/// The spool's state in `<spool_dir>/spool.db`: WAL journal with `synchronous=FULL`, so a COMMIT
/// returns once its WAL frames are fsynced. The schema is described in docs/spool-schema.md.
final class SQLiteStore: SpoolStore {
    static let fileName = "spool.db"
    /// Bumped with every change of the schema; `migrate` brings older files up to it.
    static let schemaVersion: Int64 = 4
    /// Rows removed by a prune are tombstones of this state while they still count for dedup.
    static let purgedState = "purged"

    let connection: SQLiteConnection
    var path: String { connection.path }
    /// Takes the checkpoints off the writer's commits (nil for `dingstream spool` commands).
    private var checkpointer: WALCheckpointer?
    /// Pages in the write-ahead log after the last commit (nil for `dingstream spool` commands).
    var logPages: Int32? { checkpointer?.logPages }
    /// Statements run for every message, kept here so that a call does not hash their SQL text.
    private var insertStatement: SQLiteStatement?
    private var claimKeyStatement: SQLiteStatement?
    /// Keys in `dedup_recent`, and at the start of the transaction (restored by a rollback).
    private var recentKeys = 0
    private var recentKeysAtBegin = 0
    /// Keys `dedup_recent` holds before the COMMITs start moving them into `dedup_settled`.
    let recentKeyLimit: Int
    /// Keys a COMMIT moves, and twice the keys it added (`settleNextSlice`).
    let settleSliceKeys: Int
    /// While a move is under way: the smallest recent key it has not reached yet; and at the
    /// start of the transaction (restored by a rollback).
    private var settleFrom: Int64?
    private var settleFromAtBegin: Int64?
    private var transitionStatements: [Int: SQLiteStatement] = [:]
    /// Whether the connection's `synchronous` is FULL (else NORMAL).
    private var commitsSynced = true
    private var changesAtBegin: Int64 = 0
    private(set) var hasUnsyncedCommits = false
    /// Whether one of those unsynced commits stored messages (see `Spool.performHere`).
    private(set) var hasUnsyncedMessages = false
    private var insertedInTransaction = false
    /// How long a statement waits for another connection's lock before it fails.
    private let busyTimeoutMilliseconds: Int32

    /// Opens (creating when missing) and migrates the database at `path`, checkpointing on a
    /// queue of its own (`WALCheckpointer`), whose faults go to `logger`.
    /// - Throws: `SpoolError`; `.corrupt` when the file is not a usable database.
    init(
        path: String, busyTimeoutMilliseconds: Int32 = 1000, recentKeyLimit: Int = SQLiteStore.defaultRecentKeyLimit,
        settleSliceKeys: Int? = nil, logger: Logger = Logger(label: "dingstream.spool")
    ) throws(SpoolError) {
        self.recentKeyLimit = recentKeyLimit
        self.settleSliceKeys = settleSliceKeys ?? Self.settleSlice(recentKeyLimit: recentKeyLimit)
        self.busyTimeoutMilliseconds = busyTimeoutMilliseconds
        // SQLite creates files 0644 and gives the WAL the database's mode: create it 0640 first.
        let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, FileIO.fileMode)
        guard descriptor >= 0 else { throw SpoolError.posix(errno, path: path, doing: "creating") }
        close(descriptor)
        connection = try SQLiteConnection(path: path)
        connection.setBusyTimeout(milliseconds: busyTimeoutMilliseconds)
        try migrate()
        recentKeys = Int(try connection.integer("SELECT count(*) FROM dedup_recent"))
        let checkpointer = WALCheckpointer(path: path, logger: logger)
        connection.onWALCommit { pages in checkpointer.walCommitted(pages: pages) }
        self.checkpointer = checkpointer
    }

    deinit {
        // Before the writer's connection closes: the last connection's close checkpoints the
        // whole log and removes it.
        checkpointer?.close()
    }

    /// Opens an existing database for reading and repairs by `dingstream spool` (no migration).
    init(existingAt path: String, readOnly: Bool) throws(SpoolError) {
        recentKeyLimit = Self.defaultRecentKeyLimit
        settleSliceKeys = Self.settleSlice(recentKeyLimit: Self.defaultRecentKeyLimit)
        busyTimeoutMilliseconds = 5000
        connection = try SQLiteConnection(path: path, readOnly: readOnly, create: false)
        connection.setBusyTimeout(milliseconds: busyTimeoutMilliseconds)
        _ = try schemaVersionKnown()
    }

    /// The file's schema version, if this binary knows it.
    private func schemaVersionKnown() throws(SpoolError) -> Int64 {
        let version = try connection.integer("PRAGMA user_version")
        guard version <= Self.schemaVersion else {
            throw SpoolError(.corrupt, path: path, detail: "(schema version \(version) is newer than this dingstream knows, \(Self.schemaVersion); run the newer binary)")
        }
        return version
    }

    /// Whole-file check, for start-up: a damaged file is moved aside rather than written to.
    func quickCheck() throws(SpoolError) -> String? {
        let result = try connection.text("PRAGMA quick_check")
        return result == "ok" ? nil : result
    }

    private func migrate() throws(SpoolError) {
        // auto_vacuum must be chosen before the first table exists.
        try connection.execute("PRAGMA auto_vacuum = INCREMENTAL", doing: "setting auto_vacuum")
        let mode = try connection.text("PRAGMA journal_mode = WAL")
        guard mode == "wal" else {
            throw SpoolError(.io, path: path, detail: "(the filesystem does not support a WAL journal: journal_mode is \(mode ?? "unknown"))")
        }
        // An 8 MiB page cache keeps the indexes' hot pages in memory under a burst (the default
        // 2 MiB made every round read index pages back); filled only as pages are used.
        // Checkpoints are `WALCheckpointer`'s; a log that grew past 16 MiB is cut back to it
        // when it starts over.
        try connection.execute(
            "PRAGMA synchronous = FULL; PRAGMA cache_size = -8192; PRAGMA journal_size_limit = 16777216",
            doing: "setting durability")
        let version = try schemaVersionKnown()
        if version == Self.schemaVersion { return }
        try inTransaction { () throws(SpoolError) in
            if version < 1 {
                try connection.execute(
                    "CREATE TABLE message (\(Self.messageColumns));" + Self.keyTables + Self.otherIndexes
                        + "CREATE TABLE legacy_seen (key TEXT PRIMARY KEY, received_ms INTEGER NOT NULL) WITHOUT ROWID;",
                    doing: "creating the schema")
            } else if version < 3 {
                try rebuildWithDedupKey()
            } else if version < 4 {
                try connection.execute(
                    Self.keyTables + """
                        INSERT INTO dedup_settled (dedup, message) SELECT dedup, id FROM message WHERE dedup IS NOT NULL ORDER BY dedup;
                        DROP INDEX message_dedup;
                        """, doing: "moving the dedup keys into their tables for schema 4")
            }
            try connection.execute("PRAGMA user_version = \(Self.schemaVersion)", doing: "recording the schema version")
        }
    }

    /// The columns of `message`. `dedup` is `MessageKey.fingerprint` (64 bits of FNV-1a over app,
    /// kind and business id), NULL for the rare message whose fingerprint another row holds.
    private static let messageColumns = """
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        app TEXT NOT NULL,
        kind TEXT NOT NULL,
        business_id TEXT NOT NULL,
        state TEXT NOT NULL,
        conversation TEXT,
        received_ms INTEGER NOT NULL,
        changed_ms INTEGER NOT NULL,
        not_before_ms INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        entry BLOB NOT NULL,
        replies TEXT,
        delivered INTEGER NOT NULL DEFAULT 0,
        delivery_attempts INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        dedup INTEGER
        """

    /// The dedup keys: `MessageKey.fingerprint` of each message (64 bits of its app, kind and
    /// business id, far smaller than the ids), unique across both tables, with the message that
    /// holds it. A message whose fingerprint another message holds is stored without one (NULL
    /// `dedup`) and recognised by `message_collided`, an index that is empty but for those.
    ///
    /// Two tables because fingerprints are random: a new key lands on a random leaf of the key
    /// b-tree, and once that tree has more leaves than a commit has messages, every message
    /// dirtied a leaf of its own, which the commit wrote and the checkpoint copied back (the
    /// spool slowed as it grew: pages written per message went from 0.46 to 1.07 over 500,000
    /// rows). New keys go into `dedup_recent`, small enough for its leaves to be shared by a
    /// commit's messages; once it holds `recentKeyLimit` keys the COMMITs move them into
    /// `dedup_settled` in key order, a slice each (`settleNextSlice`), which writes each of its
    /// leaves once for many keys.
    static let defaultRecentKeyLimit = 16384
    private static let keyTables = """
        CREATE TABLE dedup_recent (dedup INTEGER PRIMARY KEY, message INTEGER NOT NULL);
        CREATE TABLE dedup_settled (dedup INTEGER PRIMARY KEY, message INTEGER NOT NULL);
        """

    /// The waiting index's condition is spelled as ORs: SQLite evaluates an IN list in an
    /// index's WHERE through a temporary b-tree on every write; equalities it compares in place.
    private static let otherIndexes = """
        CREATE UNIQUE INDEX message_name ON message (name);
        CREATE UNIQUE INDEX message_collided ON message (app, kind, business_id) WHERE dedup IS NULL;
        CREATE INDEX message_waiting ON message (state, not_before_ms)
            WHERE state = 'new' OR state = 'running' OR state = 'outbox' OR state = 'failed';
        """

    /// Schema 1 and 2 to 4: the table without its UNIQUE (app, kind, business_id), rows copied
    /// with their ids, each given its fingerprint. SQLite cannot drop a table's constraint, so
    /// the table is rebuilt; it takes a while for a large spool, once, inside the migration's
    /// transaction (a failure leaves the old file as it was).
    private func rebuildWithDedupKey() throws(SpoolError) {
        let copied = "id, name, app, kind, business_id, state, conversation, received_ms, changed_ms, not_before_ms, attempts, entry, replies, delivered, delivery_attempts, reason"
        try connection.execute(
            """
            CREATE TABLE message_rebuilt (\(Self.messageColumns));
            INSERT INTO message_rebuilt (\(copied)) SELECT \(copied) FROM message ORDER BY id;
            DROP TABLE message;
            ALTER TABLE message_rebuilt RENAME TO message;
            """ + Self.keyTables, doing: "rebuilding the message table for schema 4")
        // The old UNIQUE constraint made (app, kind, business_id) unique, so every row gets its
        // fingerprint unless an earlier row holds it, and creating message_collided cannot fail.
        try reclaimFingerprints()
        try connection.execute(Self.otherIndexes, doing: "indexing the message table for schema 4")
    }

    // MARK: Transactions

    func begin(durable: Bool) throws(SpoolError) {
        if durable != commitsSynced {
            _ = try connection.statement(durable ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL").step()
            commitsSynced = durable
        }
        changesAtBegin = connection.totalChanges
        insertedInTransaction = false
        try connection.statement("BEGIN IMMEDIATE").step()
        recentKeysAtBegin = recentKeys
        settleFromAtBegin = settleFrom
    }

    /// Starts a transaction whose COMMIT only writes the log (as `begin(durable: false)`) unless
    /// another connection holds the write lock: then false at once, where `begin` would wait.
    func beginUnlessLocked() throws(SpoolError) -> Bool {
        connection.setBusyTimeout(milliseconds: 0)
        defer { connection.setBusyTimeout(milliseconds: busyTimeoutMilliseconds) }
        do {
            try begin(durable: false)
            return true
        } catch where error.code == .locked {
            return false
        }
    }

    func commit() throws(SpoolError) {
        if settleFrom == nil, recentKeys >= recentKeyLimit { settleFrom = .min }
        // Twice what this transaction added on top of the slice: the move gains on new keys, so
        // it ends within `settleSlicesPerMove` commits however fast they come.
        if let from = settleFrom { try settleNextSlice(from: from, keys: settleSliceKeys + 2 * max(0, recentKeys - recentKeysAtBegin)) }
        try connection.statement("COMMIT").step()
        // A synced COMMIT fsyncs the whole log, and with it every commit before it.
        if commitsSynced {
            hasUnsyncedCommits = false
            hasUnsyncedMessages = false
        } else if connection.totalChanges != changesAtBegin {
            hasUnsyncedCommits = true
            if insertedInTransaction { hasUnsyncedMessages = true }
        }
    }

    func syncDeferred() throws(SpoolError) {
        guard hasUnsyncedCommits else { return }
        try connection.syncJournal()
        hasUnsyncedCommits = false
        hasUnsyncedMessages = false
    }

    func rollback() {
        if connection.inTransaction { try? connection.execute("ROLLBACK") }
        recentKeys = recentKeysAtBegin
        settleFrom = settleFromAtBegin
    }

    /// A move of the recent keys goes through them in key order over several COMMITs, a slice
    /// of `settleSliceKeys` in each (and twice what the COMMIT added). Moved in one, they made
    /// every `recentKeyLimit`th COMMIT rewrite nearly every leaf of `dedup_settled` (28 ms and
    /// 6.6 MB of log at 300,000 keys, 84 ms and 20 MB at a million), and every frame of that
    /// round waited for it and its fsync. A slice covers a range of keys, so each leaf is still
    /// written once per move. Keys that arrive below the range already moved wait for the next move.
    static let settleSlicesPerMove = 16

    /// The slice of a move for a given `recentKeyLimit`, unless one is chosen (tests).
    static func settleSlice(recentKeyLimit: Int) -> Int { max(1, recentKeyLimit / settleSlicesPerMove) }

    /// Moves the next `keys` recent keys, from `from` up, into `dedup_settled`; the move ends
    /// when no recent key is left above them.
    private func settleNextSlice(from: Int64, keys: Int) throws(SpoolError) {
        let last = try connection.statement("SELECT dedup FROM dedup_recent WHERE dedup >= ?1 ORDER BY dedup LIMIT 1 OFFSET ?2")
        last.bind(1, from)
        last.bind(2, keys - 1)
        let upTo = try last.step() ? last.int64(0) : Int64.max
        last.reset()
        try connection.statement(
            "INSERT INTO dedup_settled (dedup, message) SELECT dedup, message FROM dedup_recent WHERE dedup BETWEEN ?1 AND ?2"
        ).bindAndStep(from, upTo)
        try connection.statement("DELETE FROM dedup_recent WHERE dedup BETWEEN ?1 AND ?2").bindAndStep(from, upTo)
        recentKeys -= connection.changes
        settleFrom = upTo == .max ? nil : upTo + 1
    }

    // MARK: Intake

    /// The row goes in first, then its key: a new message (nearly every one) costs two
    /// statements, and the rare duplicate takes its row out again.
    func insert(_ record: IntakeRecord, name: EntryName, bytes: [UInt8], state: EntryState, nowMillis: Int64) throws(SpoolError) -> Bool {
        let statement: SQLiteStatement
        if let cached = insertStatement {
            statement = cached
        } else {
            statement = try connection.statement(Self.insertSQL)
            insertStatement = statement
        }
        let fingerprint = Int64(bitPattern: record.key.fingerprint)
        statement.bind(1, name.value)
        statement.bind(2, record.app)
        statement.bind(3, record.kind.rawValue)
        statement.bind(4, record.key.id)
        statement.bind(5, record.conversation)
        statement.bind(6, record.receivedMillis)
        statement.bind(7, nowMillis)
        statement.bind(9, state.rawValue)
        statement.bind(10, fingerprint)
        try statement.step(borrowing: bytes, at: 8)
        guard connection.changes == 1 else { return false }  // the name was taken: a duplicate
        let id = connection.lastInsertRowID
        insertedInTransaction = true
        if try claimKey(fingerprint, for: id) { return true }
        return try keepWithoutKey(id, fingerprint, record.key)
    }

    /// Records `fingerprint` as held by message `id` unless some message holds it already.
    private func claimKey(_ fingerprint: Int64, for id: Int64) throws(SpoolError) -> Bool {
        let statement: SQLiteStatement
        if let cached = claimKeyStatement {
            statement = cached
        } else {
            statement = try connection.statement(
                """
                INSERT INTO dedup_recent (dedup, message) SELECT ?1, ?2
                WHERE NOT EXISTS (SELECT 1 FROM dedup_settled WHERE dedup = ?1) ON CONFLICT DO NOTHING
                """)
            claimKeyStatement = statement
        }
        statement.bind(1, fingerprint)
        statement.bind(2, id)
        defer { statement.reset() }
        try statement.step()
        guard connection.changes == 1 else { return false }
        recentKeys += 1
        return true
    }

    /// After message `id` was refused its fingerprint: when another message holds it, the row
    /// stays without one (`message_collided` keeps such rows unique); when `key` itself holds
    /// it (a duplicate), or a row without one has `key` already, the row goes.
    private func keepWithoutKey(_ id: Int64, _ fingerprint: Int64, _ key: MessageKey) throws(SpoolError) -> Bool {
        switch try holder(of: fingerprint, key) {
        case .another:
            try connection.statement("UPDATE OR IGNORE message SET dedup = NULL WHERE id = ?1").bindAndStep(id)
            if connection.changes == 1 { return true }
        case .nobody:
            // A key whose message is gone (no path leaves one behind): it is this message's now.
            try dropKey(fingerprint)
            if try claimKey(fingerprint, for: id) { return true }
        case .this:
            break
        }
        try connection.statement("DELETE FROM message WHERE id = ?1").bindAndStep(id)
        return false
    }

    private enum KeyHolder { case this, another, nobody }

    /// Which message holds `fingerprint`: `key` itself, another, or none.
    private func holder(of fingerprint: Int64, _ key: MessageKey) throws(SpoolError) -> KeyHolder {
        let holder = try connection.statement(
            """
            SELECT app, kind, business_id FROM message WHERE id IN
                (SELECT message FROM dedup_recent WHERE dedup = ?1 UNION ALL SELECT message FROM dedup_settled WHERE dedup = ?1)
            """)
        holder.bind(1, fingerprint)
        defer { holder.reset() }
        guard try holder.step() else { return .nobody }
        return holder.text(0) == key.app && holder.text(1) == key.kind.rawValue && holder.text(2) == key.id ? .this : .another
    }

    private func dropKey(_ fingerprint: Int64) throws(SpoolError) {
        try connection.statement("DELETE FROM dedup_recent WHERE dedup = ?1").bindAndStep(fingerprint)
        recentKeys -= connection.changes
        try connection.statement("DELETE FROM dedup_settled WHERE dedup = ?1").bindAndStep(fingerprint)
    }

    private static let insertSQL = """
        INSERT INTO message (name, app, kind, business_id, state, conversation, received_ms, changed_ms, not_before_ms, entry, dedup)
        VALUES (?1, ?2, ?3, ?4, ?9, ?5, ?6, ?7, ?6, ?8, ?10) ON CONFLICT DO NOTHING
        """

    // MARK: Entries

    private static let rowColumns =
        "name, state, entry, attempts, replies, delivered, delivery_attempts, not_before_ms, changed_ms, reason"

    private func readRow(_ statement: SQLiteStatement) throws(SpoolError) -> StoredRow? {
        guard let text = statement.text(0), let name = EntryName(text) else { return nil }
        guard let state = EntryState(rawValue: statement.text(1) ?? "") else { return nil }
        var entry = try SpoolEntry.parse(statement.data(2), name: name, path: "\(path) entry \(name)")
        entry.attempts = statement.int(3)
        if let replies = statement.text(4) { entry.replies = Self.strings(replies) }
        entry.delivered = statement.int(5)
        entry.deliveryAttempts = statement.int(6)
        return StoredRow(
            entry: entry, state: state, notBeforeMillis: statement.int64(7), changedMillis: statement.int64(8),
            reason: statement.text(9))
    }

    func row(_ name: EntryName) throws(SpoolError) -> StoredRow {
        let statement = try connection.statement("SELECT \(Self.rowColumns) FROM message WHERE name = ?1 AND state != 'purged'")
        statement.bind(1, name.value)
        defer { statement.reset() }
        guard try statement.step(), let row = try readRow(statement) else {
            throw SpoolError(.notFound, path: name.value)
        }
        return row
    }

    func transition(_ name: EntryName, from: Set<EntryState>, to: EntryState, change: RowChange, nowMillis: Int64) throws(SpoolError) {
        // One statement per shape of change, each prepared once and found by a bit per column
        // and per state: this runs for every message, the SQL text is only built the first time.
        var shape = 0
        if change.attempts != nil { shape |= 1 << 0 }
        if change.notBeforeMillis != nil { shape |= 1 << 1 }
        if change.replies != nil { shape |= 1 << 2 }
        if change.delivered != nil { shape |= 1 << 3 }
        if change.deliveryAttempts != nil { shape |= 1 << 4 }
        if change.reason != nil { shape |= 1 << 5 }
        for (offset, state) in EntryState.allCases.enumerated() where from.contains(state) { shape |= 1 << (8 + offset) }
        var states: String { from.map { "'\($0.rawValue)'" }.sorted().joined(separator: ", ") }
        let statement: SQLiteStatement
        if let cached = transitionStatements[shape] {
            cached.reset()
            statement = cached
        } else {
            var assignments = ["state = ?2", "changed_ms = ?3"]
            let columns = ["attempts = ?4", "not_before_ms = ?5", "replies = ?6", "delivered = ?7", "delivery_attempts = ?8", "reason = ?9"]
            for (bit, column) in columns.enumerated() where shape & (1 << bit) != 0 { assignments.append(column) }
            statement = try connection.statement(
                "UPDATE message SET \(assignments.joined(separator: ", ")) WHERE name = ?1 AND state IN (\(states))")
            transitionStatements[shape] = statement
        }
        statement.bind(1, name.value)
        statement.bind(2, to.rawValue)
        statement.bind(3, nowMillis)
        if let attempts = change.attempts { statement.bind(4, attempts) }
        if let notBefore = change.notBeforeMillis { statement.bind(5, notBefore) }
        if let replies = change.replies { statement.bind(6, JSON.encode(replies)) }
        if let delivered = change.delivered { statement.bind(7, delivered) }
        if let deliveryAttempts = change.deliveryAttempts { statement.bind(8, deliveryAttempts) }
        if let reason = change.reason { statement.bind(9, reason) }
        try statement.step()
        guard connection.changes == 1 else {
            throw SpoolError(.notFound, path: name.value, detail: "in \(states)")
        }
    }

    func names(in state: EntryState, dueBy: Int64?, limit: Int) throws(SpoolError) -> [(name: EntryName, notBeforeMillis: Int64)] {
        let statement = try connection.statement(
            "SELECT name, not_before_ms FROM message WHERE state = ?1 AND not_before_ms <= ?2 ORDER BY id LIMIT ?3")
        statement.bind(1, state.rawValue)
        statement.bind(2, dueBy ?? Int64.max)
        statement.bind(3, limit)
        var result: [(name: EntryName, notBeforeMillis: Int64)] = []
        while try statement.step() {
            if let text = statement.text(0), let name = EntryName(text) { result.append((name, statement.int64(1))) }
        }
        return result
    }

    func runnable(dueBy byMillis: Int64, limit: Int) throws(SpoolError) -> [Announcement] {
        let statement = try connection.statement(
            "SELECT name, kind, conversation FROM message WHERE state = 'new' AND not_before_ms <= ?1 ORDER BY id LIMIT ?2")
        statement.bind(1, byMillis)
        statement.bind(2, limit)
        var result: [Announcement] = []
        while try statement.step() {
            guard let text = statement.text(0), let name = EntryName(text) else { continue }
            result.append(
                Announcement(name: name, kind: MessageKind(rawValue: statement.text(1) ?? "") ?? .other, conversation: statement.text(2)))
        }
        return result
    }

    func listing(states: [EntryState], limit: Int?) throws(SpoolError) -> [StoredRow] {
        var rows: [StoredRow] = []
        let statement = try connection.statement(
            "SELECT \(Self.rowColumns) FROM message WHERE state = ?1 ORDER BY name DESC LIMIT ?2")
        for state in states {
            statement.reset()
            statement.bind(1, state.rawValue)
            statement.bind(2, limit ?? Int.max)
            while try statement.step() {
                do throws(SpoolError) {
                    if let row = try readRow(statement) { rows.append(row) }
                } catch {
                    continue  // an unreadable payload is shown by `show`, not fatal to a listing
                }
            }
        }
        return rows
    }

    func count(in state: EntryState) throws(SpoolError) -> Int {
        // Every state but done has the partial index: this reads the index, not the table.
        let statement = try connection.statement("SELECT count(*) FROM message WHERE state = ?1")
        statement.bind(1, state.rawValue)
        defer { statement.reset() }
        guard try statement.step() else { return 0 }
        return statement.int(0)
    }

    func counts() throws(SpoolError) -> [EntryState: Int] {
        let statement = try connection.statement("SELECT state, count(*) FROM message GROUP BY state")
        var result: [EntryState: Int] = [:]
        while try statement.step() {
            if let state = EntryState(rawValue: statement.text(0) ?? "") { result[state] = statement.int(1) }
        }
        return result
    }

    func lookup(_ key: String) throws(SpoolError) -> [EntryName] {
        let exact = try connection.statement("SELECT name FROM message WHERE (name = ?1 OR business_id = ?1) AND state != 'purged' LIMIT 6")
        exact.bind(1, key)
        var names: [EntryName] = []
        while try exact.step() { if let name = statement(exact) { names.append(name) } }
        if !names.isEmpty { return names }
        // A prefix of a name: names sort by arrival, so the range scan uses the name index.
        let prefix = try connection.statement(
            "SELECT name FROM message WHERE name >= ?1 AND name < ?2 AND state != 'purged' ORDER BY name LIMIT 6")
        prefix.bind(1, key)
        // Names are made of [0-9A-Za-z._-], all below '~'.
        prefix.bind(2, key + "~")
        while try prefix.step() { if let name = statement(prefix) { names.append(name) } }
        return names
    }

    static func strings(_ json: String) -> [String] {
        (try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? [String] ?? []
    }

    private func statement(_ statement: SQLiteStatement) -> EntryName? {
        statement.text(0).flatMap { EntryName($0) }
    }

    // MARK: Maintenance

    func resetRunning() throws(SpoolError) -> Int {
        try connection.statement("UPDATE message SET state = 'new' WHERE state = 'running'").step()
        return connection.changes
    }

    func prune(states: Set<EntryState>, receivedBefore before: Int64, dedupFrom: Int64, limit: Int) throws(SpoolError) -> Int {
        let list = states.map { "'\($0.rawValue)'" }.sorted().joined(separator: ", ")
        let bound = EntryName.lowerBound(receivedMillis: before)
        let window = EntryName.lowerBound(receivedMillis: dedupFrom)
        // Older than the dedup window: gone, as are tombstones that have left it, with their
        // keys. The same rows three times: the first `limit` in name order.
        let expired = "SELECT id FROM message WHERE name < ?1 AND name < ?2 AND state IN (\(list), 'purged') ORDER BY name LIMIT ?3"
        func deleteExpired(_ sql: String) throws(SpoolError) -> Int {
            let delete = try connection.statement(sql)
            delete.bind(1, bound)
            delete.bind(2, window)
            delete.bind(3, limit)
            try delete.step()
            return connection.changes
        }
        let keysOfExpired = "SELECT dedup FROM message WHERE id IN (\(expired)) AND dedup IS NOT NULL"
        recentKeys -= try deleteExpired("DELETE FROM dedup_recent WHERE dedup IN (\(keysOfExpired))")
        _ = try deleteExpired("DELETE FROM dedup_settled WHERE dedup IN (\(keysOfExpired))")
        var touched = try deleteExpired("DELETE FROM message WHERE id IN (\(expired))")
        if touched > 0 { try reclaimFingerprints() }
        guard touched < limit, before > dedupFrom else { return touched }
        // Still within the dedup window: the payload goes, the row stays to recognise a redelivery.
        let tombstone = try connection.statement(
            """
            UPDATE message SET state = 'purged', entry = x'', replies = NULL, reason = NULL
            WHERE id IN (SELECT id FROM message WHERE name >= ?2 AND name < ?1 AND state IN (\(list)) LIMIT ?3)
            """)
        tombstone.bind(1, bound)
        tombstone.bind(2, window)
        tombstone.bind(3, limit - touched)
        try tombstone.step()
        touched += connection.changes
        return touched
    }

    /// Gives rows stored without their fingerprint (another message held it) the fingerprint once
    /// its holder is gone, so that their redeliveries stay recognised by the fingerprint alone.
    /// The partial index makes the look almost free: it holds only such rows, nearly always none.
    private func reclaimFingerprints() throws(SpoolError) {
        let rows = try connection.statement("SELECT id, app, kind, business_id FROM message WHERE dedup IS NULL")
        var waiting: [(id: Int64, fingerprint: Int64)] = []
        while try rows.step() {
            let key = MessageKey(app: rows.text(1) ?? "", kind: MessageKind(rawValue: rows.text(2) ?? "") ?? .other, id: rows.text(3) ?? "")
            waiting.append((rows.int64(0), Int64(bitPattern: key.fingerprint)))
        }
        rows.reset()
        for row in waiting where try claimKey(row.fingerprint, for: row.id) {
            let update = try connection.statement("UPDATE message SET dedup = ?2 WHERE id = ?1")
            update.bind(1, row.id)
            update.bind(2, row.fingerprint)
            try update.step()
        }
    }

    func reclaimSpace() throws(SpoolError) {
        try connection.execute("PRAGMA incremental_vacuum(256)", doing: "reclaiming free pages")
    }

    // MARK: Upgrade from the folder layout

    /// Dedup records of the folder layout (`dedup.log`): app and key hash, no business id.
    func insertLegacySeen(_ key: String, receivedMillis: Int64) throws(SpoolError) {
        let statement = try connection.statement("INSERT OR REPLACE INTO legacy_seen (key, received_ms) VALUES (?1, ?2)")
        statement.bind(1, key)
        statement.bind(2, receivedMillis)
        try statement.step()
    }

    func legacySeen(since: Int64) throws(SpoolError) -> Set<String> {
        try connection.statement("DELETE FROM legacy_seen WHERE received_ms < ?1").bindAndStep(since)
        let statement = try connection.statement("SELECT key FROM legacy_seen")
        var keys: Set<String> = []
        while try statement.step() { if let key = statement.text(0) { keys.insert(key) } }
        return keys
    }

    /// Stores an entry of the folder layout as it was, in its state.
    func importEntry(
        _ entry: SpoolEntry, state: EntryState, notBeforeMillis: Int64, changedMillis: Int64, reason: String?
    ) throws(SpoolError) -> Bool {
        let key = MessageKey(app: entry.app, kind: entry.kind, id: entry.key)
        let fingerprint = Int64(bitPattern: key.fingerprint)
        guard try importEntry(entry, dedup: fingerprint, state: state, notBeforeMillis: notBeforeMillis, changedMillis: changedMillis, reason: reason) else {
            return false
        }
        let id = connection.lastInsertRowID
        if try claimKey(fingerprint, for: id) { return true }
        return try keepWithoutKey(id, fingerprint, key)
    }

    private func importEntry(
        _ entry: SpoolEntry, dedup: Int64?, state: EntryState, notBeforeMillis: Int64, changedMillis: Int64, reason: String?
    ) throws(SpoolError) -> Bool {
        let statement = try connection.statement(
            """
            INSERT INTO message (name, app, kind, business_id, state, conversation, received_ms, changed_ms, not_before_ms,
                attempts, entry, replies, delivered, delivery_attempts, reason, dedup)
            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16) ON CONFLICT DO NOTHING
            """)
        if let dedup { statement.bind(16, dedup) }
        statement.bind(1, entry.name.value)
        statement.bind(2, entry.app)
        statement.bind(3, entry.kind.rawValue)
        statement.bind(4, entry.key)
        statement.bind(5, state.rawValue)
        statement.bind(6, entry.botMessage.map { entry.app + "/" + $0.conversationID })
        statement.bind(7, entry.receivedMillis)
        statement.bind(8, changedMillis)
        statement.bind(9, notBeforeMillis)
        statement.bind(10, entry.attempts)
        statement.bind(11, data: entry.raw)
        statement.bind(12, entry.replies.isEmpty ? nil : JSON.encode(entry.replies))
        statement.bind(13, entry.delivered)
        statement.bind(14, entry.deliveryAttempts)
        statement.bind(15, reason)
        try statement.step()
        return connection.changes == 1
    }
}

extension SQLiteStatement {
    /// Binds `values` to ?1, ?2… and runs the statement.
    func bindAndStep(_ values: Int64...) throws(SpoolError) {
        for (index, value) in values.enumerated() { bind(Int32(index + 1), value) }
        try step()
    }
}

extension EntryName {
    /// The smallest name of an entry received at `receivedMillis`: names sort by arrival.
    static func lowerBound(receivedMillis: Int64) -> String {
        let millis = String(max(receivedMillis, 0))
        return String(repeating: "0", count: max(0, 13 - millis.count)) + millis
    }
}

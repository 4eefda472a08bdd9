import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO
import StreamProtocol
import Synchronization

/// The spool's rows in a PostgreSQL shared by several hosts (`[cluster]`); docs/cluster.md
/// describes the schema. Same rows as `SQLiteStore`, plus who holds a message (`claimed_by`)
/// and until when (`lease_until`, the database's clock, so the hosts' clocks do not matter).
///
/// Synchronous like the protocol: every call blocks the spool's writer thread on a future,
/// never an event loop. Each wait is bounded; a connection that failed or timed out is dropped
/// and the next transaction connects again, so intake resumes by itself once the server answers.
final class PostgresStore: SpoolStore {
    static let schemaVersion: Int64 = 2
    /// The NOTIFY channel: "something may have become runnable".
    static let channel = "dingstream"
    /// `pg_advisory_xact_lock` keys ("ding" + purpose): schema changes, pruning.
    static let migrationLock: Int64 = 0x6469_6E67_0001
    static let pruneLock: Int64 = 0x6469_6E67_0002
    /// Seed of the conversations' claim locks (`hashtextextended`), apart from the keys above.
    static let conversationLockSeed: Int64 = 0x6469_6E67_0003

    let settings: ClusterSettings
    let logger: Logger
    private let onNotify: @Sendable () -> Void
    private let tls: PostgresConnection.Configuration.TLS
    private let eventLoops: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    /// A statement that takes longer is given up and its connection dropped (a hung server
    /// or a silent network must not stop the writer for good).
    private let queryTimeout: TimeAmount
    private var connection: PostgresConnection?
    private var listener: PostgresConnection?
    private var inTransaction = false
    /// BEGIN is sent with the transaction's first statement, not waited for on its own.
    private var beginPending = false
    /// Statements sent and not waited for yet (BEGIN, the round's locks): the next `run` waits
    /// for them with its own, so that they cost no wake-up of the writer thread each.
    private var unanswered: [(result: EventLoopFuture<PostgresQueryResult>, doing: String)] = []
    /// Set by a change that may make a message runnable elsewhere: COMMIT then notifies.
    private var wakesOthers = false
    /// A failed connect is not tried again before this, so a dead server costs each round nothing.
    private var retryConnectAt = Date.distantPast
    private var connectFailure: SpoolError?
    /// The wake-up connection is not tried again before this (a blackholed server costs a
    /// connect timeout per try, on the writer thread).
    private var retryListenerAt = Date.distantPast
    private var connectionCount = 0
    private let startedAt = Date()

    var leaseMillis: Int64 { Spool.millis(settings.lease) }
    private var url: String { "\(settings.database)" }

    /// Connects, creates or migrates the schema (under an advisory lock: hosts starting together
    /// take turns), registers this node and starts listening for wake-ups.
    /// - Throws: `SpoolError(.database)` naming the server and the remedy (unreachable,
    ///   login refused, TLS, a schema newer than this binary).
    /// `asTool` (`dingstream spool`): no schema changes, no heartbeat, no wake-ups; a database
    /// without the schema is `.noSpool`.
    init(
        settings: ClusterSettings, logger: Logger, queryTimeout: Duration = .seconds(10), asTool: Bool = false,
        onNotify: @escaping @Sendable () -> Void = {}
    ) throws(SpoolError) {
        self.settings = settings
        self.logger = logger
        self.onNotify = onNotify
        self.queryTimeout = .milliseconds(Spool.millis(queryTimeout))
        self.tls = try Self.tls(settings)
        if asTool {
            try checkSchema()
        } else {
            try migrate()
            ensureListener()
        }
    }

    private func checkSchema() throws(SpoolError) {
        let version: Int64
        do throws(SpoolError) {
            let rows = try run("SELECT coalesce(max(version), 0) FROM dingstream_schema", doing: "reading the schema version").rows
            version = (try? rows.first?.decode(Int64.self)) ?? 0
        } catch where error.detail?.contains("42P01") == true {
            throw SpoolError(.noSpool, path: url, detail: "(the database has no dingstream schema yet)")
        }
        guard version <= Self.schemaVersion else {
            throw SpoolError(.database, path: url, detail: ": schema version \(version) is newer than this dingstream knows (\(Self.schemaVersion)); use the newer binary")
        }
    }

    deinit {
        connection.map(Self.close)
        listener.map(Self.close)
    }

    /// Closes without waiting (also from an event loop, where waiting is not allowed).
    /// The connection is kept until it is closed: postgres-nio asserts on dropping an open one.
    private static func close(_ connection: PostgresConnection) {
        let closed: EventLoopFuture<Void> = connection.close()
        closed.whenComplete { _ in withExtendedLifetime(connection) {} }
    }

    private static func tls(_ settings: ClusterSettings) throws(SpoolError) -> PostgresConnection.Configuration.TLS {
        var configuration = TLSConfiguration.makeClientConfiguration()
        switch settings.database.tls {
        case .disable: return .disable
        case .require: configuration.certificateVerification = .none
        case .verifyCA: configuration.certificateVerification = .noHostnameVerification
        case .verifyFull: configuration.certificateVerification = .fullVerification
        }
        if let caFile = settings.caFile { configuration.trustRoots = .file(caFile) }
        do {
            return .require(try NIOSSLContext(configuration: configuration))
        } catch {
            throw SpoolError(.database, path: "\(settings.database)", detail: ": cannot set up TLS (\(error)); check ca_file")
        }
    }

    // MARK: Connections

    private func connect() throws(SpoolError) -> PostgresConnection {
        var configuration: PostgresConnection.Configuration
        let url = settings.database
        switch url.endpoint {
        case .tcp(let host, let port):
            configuration = .init(host: host, port: port, username: url.user, password: settings.password, database: url.database, tls: tls)
        case .unixSocket(let path):
            configuration = .init(unixSocketPath: path, username: url.user, password: settings.password, database: url.database)
        }
        configuration.options.connectTimeout = .milliseconds(Spool.millis(url.connectTimeout))
        configuration.options.additionalStartupParameters = [("application_name", "dingstream \(settings.node)")]
        connectionCount += 1
        var quiet = logger
        quiet.logLevel = .critical  // postgres-nio's own lines; failures are reported by the spool
        let future = PostgresConnection.connect(on: eventLoops.next(), configuration: configuration, id: connectionCount, logger: quiet)
        do {
            return try future.wait()
        } catch {
            throw failure(error, doing: "connecting")
        }
    }

    /// The connection for the next statement; connects when there is none (at most once a second).
    private func current() throws(SpoolError) -> PostgresConnection {
        if let connection, !connection.isClosed { return connection }
        connection = nil
        if let connectFailure, Date() < retryConnectAt { throw connectFailure }
        do {
            let fresh = try connect()
            connection = fresh
            connectFailure = nil
            return fresh
        } catch {
            connectFailure = error
            retryConnectAt = Date().addingTimeInterval(1)
            throw error
        }
    }

    /// Runs `query` after what was sent before it, waiting at most `queryTimeout` for each.
    @discardableResult
    private func run(_ query: PostgresQuery, doing: String) throws(SpoolError) -> PostgresQueryResult {
        let connection = try send(query, doing: doing)
        let sent = unanswered
        unanswered = []
        var last: PostgresQueryResult?
        for statement in sent {
            do {
                last = try statement.result.wait()
            } catch {
                let failure = failure(error, doing: statement.doing)
                // A server error (a constraint, a deadlock) leaves the connection usable; anything
                // else (network, timeout, protocol) may not, so it is made anew. The statements
                // after a failed one fail too (the transaction is aborted): the first one says why.
                let serverError = (error as? PSQLError)?.code == .server
                for rest in sent { _ = try? rest.result.wait() }
                if connection.isClosed || !serverError { drop() }
                throw failure
            }
        }
        guard let last else { throw SpoolError(.database, path: url, detail: " \(doing): no answer") }
        return last
    }

    /// Queues `query` on the connection (after a pending BEGIN) without waiting for it.
    @discardableResult
    private func send(_ query: PostgresQuery, doing: String) throws(SpoolError) -> PostgresConnection {
        let connection = try current()
        if beginPending {
            beginPending = false
            unanswered.append((bounded(connection.query("BEGIN", logger: logger), closing: connection), "starting a transaction"))
        }
        unanswered.append((bounded(connection.query(query, logger: logger), closing: connection), doing))
        return connection
    }

    private func drop() {
        connection.map(Self.close)
        connection = nil
        inTransaction = false
        beginPending = false
        unanswered = []
    }

    /// `future`, or a timeout failure after `queryTimeout` that also closes `connection`.
    private func bounded<T: Sendable>(_ future: EventLoopFuture<T>, closing connection: PostgresConnection) -> EventLoopFuture<T> {
        let loop = future.eventLoop
        let promise = loop.makePromise(of: T.self)
        let settled = Atomic<Bool>(false)
        let timeout = queryTimeout
        let timer = loop.scheduleTask(in: timeout) {
            guard !settled.exchange(true, ordering: .relaxed) else { return }
            promise.fail(QueryTimeout(after: timeout))
            Self.close(connection)
        }
        future.whenComplete { result in
            timer.cancel()
            guard !settled.exchange(true, ordering: .relaxed) else { return }
            promise.completeWith(result)
        }
        return promise.futureResult
    }

    struct QueryTimeout: Error, CustomStringConvertible {
        var after: TimeAmount
        var description: String { "no answer within \(after.nanoseconds / 1_000_000_000) s" }
    }

    /// Maps a postgres-nio or network failure to a `SpoolError` that says what to do.
    private func failure(_ error: any Error, doing: String) -> SpoolError {
        let doing = " \(doing)"
        if let error = error as? PSQLError {
            if error.code == .server, let info = error.serverInfo {
                let state = info[.sqlState] ?? ""
                let message = info[.message] ?? "error"
                if state.hasPrefix("28") {
                    return SpoolError(.database, path: url, detail: "\(doing): the server refused the login (\(message)); check the user in [cluster] database and the password in password_file or the credential \"cluster\"")
                }
                if state == "3D000" {
                    return SpoolError(.database, path: url, detail: "\(doing): \(message); create it (createdb -O \(settings.database.user) \(settings.database.database)) or fix [cluster] database")
                }
                if state.hasPrefix("57") || state.hasPrefix("08") || state.hasPrefix("53") {
                    return SpoolError(.database, path: url, detail: "\(doing): the server is not available (\(message), SQLSTATE \(state)); intake resumes by itself when it is back")
                }
                return SpoolError(.database, path: url, detail: "\(doing): \(message) (SQLSTATE \(state))")
            }
            let cause = error.underlying.map { "\($0)" } ?? "\(error.code)"
            if error.code == .sslUnsupported {
                return SpoolError(
                    .database, path: url,
                    detail: "\(doing): TLS: the server does not support SSL (sslmode=\(settings.database.tls.rawValue) wants it); turn ssl on in its postgresql.conf, or set sslmode=disable only on a network you trust")
            }
            if let tls = tlsProblem(error.underlying) {
                return SpoolError(.database, path: url, detail: "\(doing): TLS: \(tls)")
            }
            return SpoolError(.database, path: url, detail: "\(doing): unreachable (\(cause)); check that PostgreSQL runs and [cluster] database, intake resumes by itself")
        }
        if error is QueryTimeout {
            return SpoolError(.database, path: url, detail: "\(doing): \(error); the connection was dropped and is made again at the next round")
        }
        return SpoolError(.database, path: url, detail: "\(doing): unreachable (\(error)); check that PostgreSQL runs and [cluster] database, intake resumes by itself")
    }

    /// What a TLS handshake failure means and what to do; nil when `error` is not one.
    private func tlsProblem(_ error: (any Error)?) -> String? {
        guard let error else { return nil }
        let host: String
        switch settings.database.endpoint {
        case .tcp(let name, _): host = name
        case .unixSocket(let path): host = path
        }
        if let extra = error as? NIOSSLExtraError, extra == .failedToValidateHostname {
            return "hostname mismatch: the server's certificate is not for \(host) (\(extra)); connect by a name its subjectAltName lists, or use sslmode=verify-ca, which checks the CA but not the name"
        }
        guard error is NIOSSLError || error is BoringSSLError else { return nil }
        let text = "\(error)"
        if text.contains("CERTIFICATE_VERIFY_FAILED") {
            let trust = settings.caFile.map { "ca_file \($0)" } ?? "the system's CAs (no ca_file set)"
            return "the server's certificate is not trusted by \(trust) (\(text)); set ca_file to the CA certificate that signed the server's (its root.crt)"
        }
        return "the handshake failed (\(text)); check ssl_cert_file and ssl_key_file on the server and ca_file here"
    }

    /// The wake-up connection: LISTEN on its own connection, so that a new message committed by
    /// any host starts here within milliseconds. Made again when lost; notifications missed
    /// meanwhile are made up for by a rescan (`onNotify` once it is back).
    func ensureListener() {
        if let listener, !listener.isClosed { return }
        listener = nil
        guard Date() >= retryListenerAt else { return }
        retryListenerAt = Date().addingTimeInterval(5)
        let fresh: PostgresConnection
        do {
            fresh = try connect()
        } catch {
            logger.debug("cluster: wake-up connection not made: \(error)")
            return
        }
        do {
            let onNotify = self.onNotify
            fresh.addListener(channel: Self.channel) { _, _ in onNotify() }
            _ = try bounded(fresh.query("LISTEN dingstream", logger: logger), closing: fresh).wait()
            fresh.closeFuture.whenComplete { _ in onNotify() }  // lost: the next rescan makes it again
            listener = fresh
            onNotify()
        } catch {
            Self.close(fresh)
            logger.debug("cluster: wake-up connection not made: \(error)")
        }
    }

    // MARK: Schema

    private func migrate() throws(SpoolError) {
        try begin()
        do throws(SpoolError) {
            try run("SELECT pg_advisory_xact_lock(\(Self.migrationLock))", doing: "waiting for the schema lock")
            try run(
                "CREATE TABLE IF NOT EXISTS dingstream_schema (version bigint NOT NULL, migrated_at timestamptz NOT NULL DEFAULT now())",
                doing: "creating the schema")
            let rows = try run("SELECT coalesce(max(version), 0) FROM dingstream_schema", doing: "reading the schema version").rows
            let version = (try? rows.first?.decode(Int64.self)) ?? 0
            guard version <= Self.schemaVersion else {
                throw SpoolError(.database, path: url, detail: ": schema version \(version) is newer than this dingstream knows (\(Self.schemaVersion)); upgrade this host to the version the others run")
            }
            for (number, statements) in [(Int64(1), Self.schemaV1), (2, Self.schemaV2)] where version < number {
                for statement in statements { try run(PostgresQuery(unsafeSQL: statement), doing: "migrating the schema to version \(number)") }
                try run("INSERT INTO dingstream_schema (version) VALUES (\(number))", doing: "recording the schema version")
            }
            if version < Self.schemaVersion {
                logger.notice(
                    "cluster: \(version == 0 ? "created" : "migrated") the schema (version \(Self.schemaVersion))", metadata: ["cluster.database": "\(url)"])
            }
            try heartbeat()
            try commit()
        } catch {
            rollback()
            throw error
        }
    }

    static let schemaV1 = [
        """
        CREATE TABLE message (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name text NOT NULL UNIQUE,
            app text NOT NULL,
            kind text NOT NULL,
            business_id text NOT NULL,
            state text NOT NULL,
            conversation text,
            received_ms bigint NOT NULL,
            changed_ms bigint NOT NULL,
            not_before_ms bigint NOT NULL,
            attempts bigint NOT NULL DEFAULT 0,
            entry bytea NOT NULL,
            replies text,
            delivered bigint NOT NULL DEFAULT 0,
            delivery_attempts bigint NOT NULL DEFAULT 0,
            reason text,
            claimed_by text,
            lease_until timestamptz,
            UNIQUE (app, kind, business_id)
        )
        """,
        "CREATE INDEX message_waiting ON message (state, not_before_ms) WHERE state IN ('new', 'running', 'outbox')",
        "CREATE INDEX message_conversation ON message (conversation, id) WHERE state IN ('new', 'running')",
        "CREATE INDEX message_claims ON message (claimed_by) WHERE state IN ('running', 'outbox')",
        "CREATE INDEX message_received ON message (received_ms)",
        """
        CREATE TABLE node (
            name text PRIMARY KEY,
            started_at timestamptz NOT NULL,
            heartbeat_at timestamptz NOT NULL,
            pid bigint NOT NULL
        )
        """,
    ]

    /// When a message was sent (DingTalk's `createAt`), so that a conversation runs in the order
    /// sent, not the order the hosts happened to store it. And an index for the dead letters,
    /// which every rescan counts: without it each count read the whole table.
    static let schemaV2 = [
        "CREATE INDEX message_failed ON message (id) WHERE state = 'failed'",
        "ALTER TABLE message ADD COLUMN sent_ms bigint",
        "UPDATE message SET sent_ms = received_ms",
        "ALTER TABLE message ALTER COLUMN sent_ms SET NOT NULL",
        "DROP INDEX message_conversation",
        "CREATE INDEX message_conversation ON message (conversation, sent_ms, id) WHERE state IN ('new', 'running')",
    ]

    // MARK: Transactions

    /// Every commit is durable: the server's `synchronous_commit` decides.
    func begin(durable: Bool) throws(SpoolError) {
        beginPending = true
        inTransaction = true
        wakesOthers = false
    }

    func commit() throws(SpoolError) {
        if beginPending {
            // Nothing was sent: nothing to commit.
            beginPending = false
            inTransaction = false
            return
        }
        // Delivered by the server at COMMIT, coalesced per transaction.
        if wakesOthers { try send("SELECT pg_notify('dingstream', \(settings.node))", doing: "notifying the other hosts") }
        try run("COMMIT", doing: "committing")
        inTransaction = false
        wakesOthers = false
    }

    func rollback() {
        beginPending = false
        guard inTransaction, let connection, !connection.isClosed else {
            inTransaction = false
            return
        }
        inTransaction = false
        do {
            try run("ROLLBACK", doing: "rolling back")
        } catch {
            drop()
        }
    }

    // MARK: Intake

    /// Two hosts storing copies of the same messages in opposite orders would deadlock on the
    /// unique key (each waits for the other's uncommitted row) and lose a round to it. So a
    /// round first takes a transaction lock per business key in one global (sorted) order;
    /// the inserts then keep arrival order, which is the conversations' order.
    func prepareIntake(_ entries: [NewEntry]) throws(SpoolError) {
        let keys = Set(entries.map { Self.lockKey(app: $0.record.app, kind: $0.record.kind.rawValue, id: $0.record.key.id) }).sorted()
        try send(
            "SELECT count(pg_advisory_xact_lock(k)) FROM (SELECT k FROM unnest(\(keys)::bigint[]) AS k ORDER BY k) AS sorted",
            doing: "locking the round's business keys")
    }

    /// FNV-1a over app, kind and business id: the same on every host and every run.
    static func lockKey(app: String, kind: String, id: String) -> Int64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in app.utf8 + [0] + kind.utf8 + [0] + id.utf8 {
            hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
        }
        return Int64(bitPattern: hash)
    }

    func insert(_ record: IntakeRecord, name: EntryName, bytes: [UInt8], state: EntryState, nowMillis: Int64) throws(SpoolError) -> Bool {
        try insert([NewEntry(pending: Spool.Pending(record: record, bytes: bytes) { _ in }, name: name, state: state)], nowMillis: nowMillis)[0]
    }

    /// One statement for the round: the rows go in as arrays and come out in arrival order, so
    /// that ids keep it (ties of `sent_ms` within a conversation are broken by id).
    func insert(_ entries: [NewEntry], nowMillis: Int64) throws(SpoolError) -> [Bool] {
        guard !entries.isEmpty else { return [] }
        let rows = try run(
            """
            INSERT INTO message (name, app, kind, business_id, state, conversation, received_ms, sent_ms, changed_ms, not_before_ms, entry)
            SELECT name, app, kind, business_id, state, nullif(conversation, ''), received_ms, sent_ms, \(nowMillis), received_ms, entry
            FROM unnest(
                \(entries.map(\.name.value))::text[], \(entries.map(\.record.app))::text[], \(entries.map(\.record.kind.rawValue))::text[],
                \(entries.map(\.record.key.id))::text[], \(entries.map(\.state.rawValue))::text[], \(entries.map { $0.record.conversation ?? "" })::text[],
                \(entries.map(\.record.receivedMillis))::bigint[], \(entries.map(\.record.sentMillis))::bigint[],
                \(entries.map { ByteBuffer(bytes: $0.pending.bytes) })::bytea[])
                WITH ORDINALITY AS round(name, app, kind, business_id, state, conversation, received_ms, sent_ms, entry, position)
            ORDER BY position
            ON CONFLICT DO NOTHING
            RETURNING name
            """, doing: "storing \(entries.count) message(s)"
        ).rows
        // No wake-up: this host announces what it stored and runs it; the others come across
        // it at their regular rescan if it is still waiting then (this host died, say). Waking
        // them would have every host go for every message, and wait for each other's rows.
        var inserted = Set<String>()
        for row in rows { if let name = try? row.decode(String.self) { inserted.insert(name) } }
        // A name twice in the round (the same message twice in one millisecond): the first is stored.
        return entries.map { inserted.remove($0.name.value) != nil }
    }

    // MARK: Entries

    private static let rowColumns =
        "name, state, entry, attempts, replies, delivered, delivery_attempts, not_before_ms, changed_ms, reason"

    private func readRow(_ row: PostgresRow) throws(SpoolError) -> StoredRow? {
        let columns: (String, String, ByteBuffer, Int64, String?, Int64, Int64, Int64, Int64, String?)
        do {
            columns = try row.decode((String, String, ByteBuffer, Int64, String?, Int64, Int64, Int64, Int64, String?).self)
        } catch {
            throw SpoolError(.corrupt, path: url, detail: "(a row does not decode: \(error))")
        }
        guard let name = EntryName(columns.0), let state = EntryState(rawValue: columns.1) else { return nil }
        var entry = try SpoolEntry.parse(Data(columns.2.readableBytesView), name: name, path: "\(url) entry \(name)")
        entry.attempts = Int(columns.3)
        if let replies = columns.4 { entry.replies = SQLiteStore.strings(replies) }
        entry.delivered = Int(columns.5)
        entry.deliveryAttempts = Int(columns.6)
        return StoredRow(entry: entry, state: state, notBeforeMillis: columns.7, changedMillis: columns.8, reason: columns.9)
    }

    func row(_ name: EntryName) throws(SpoolError) -> StoredRow {
        let rows = try run(
            "SELECT \(unescaped: Self.rowColumns) FROM message WHERE name = \(name.value) AND state <> 'purged'", doing: "reading \(name)"
        ).rows
        guard let first = rows.first, let row = try readRow(first) else { throw SpoolError(.notFound, path: name.value) }
        return row
    }

    func transition(_ name: EntryName, from: Set<EntryState>, to: EntryState, change: RowChange, nowMillis: Int64) throws(SpoolError) {
        var bindings = PostgresBindings()
        var assignments: [String] = []
        func set(_ column: String, _ append: (inout PostgresBindings) -> Void) {
            append(&bindings)
            assignments.append("\(column) = $\(bindings.count)")
        }
        set("state") { $0.append(to.rawValue) }
        set("changed_ms") { $0.append(nowMillis) }
        if let attempts = change.attempts { set("attempts") { $0.append(Int64(attempts)) } }
        if let notBefore = change.notBeforeMillis { set("not_before_ms") { $0.append(notBefore) } }
        if let replies = change.replies { set("replies") { $0.append(JSON.encode(replies)) } }
        if let delivered = change.delivered { set("delivered") { $0.append(Int64(delivered)) } }
        if let deliveryAttempts = change.deliveryAttempts { set("delivery_attempts") { $0.append(Int64(deliveryAttempts)) } }
        if let reason = change.reason { set("reason") { $0.append(reason) } }
        switch to {
        case .outbox where !from.contains(.running) && !from.contains(.outbox):
            // A dead letter put back by `dingstream spool retry`: any host's next upkeep takes it.
            assignments.append("claimed_by = NULL")
            assignments.append("lease_until = NULL")
        case .running, .outbox:
            // Held by this host: its lease starts (or goes on) now.
            set("claimed_by") { $0.append(settings.node) }
            set("lease_until") { $0.append(leaseMillis) }
            assignments[assignments.count - 1] = "lease_until = clock_timestamp() + $\(bindings.count)::bigint * interval '1 millisecond'"
        case .new, .done, .failed:
            assignments.append("claimed_by = NULL")
            assignments.append("lease_until = NULL")
        }
        bindings.append(name.value)
        let nameIndex = bindings.count
        bindings.append(settings.node)
        let nodeIndex = bindings.count
        let states = from.map { "'\($0.rawValue)'" }.sorted().joined(separator: ", ")
        // A claimed row changes only by its holder: after a takeover the old holder's late
        // completion finds nothing (`.notFound`) instead of moving the row under the new one.
        var sql = """
            UPDATE message SET \(assignments.joined(separator: ", "))
            WHERE name = $\(nameIndex) AND state IN (\(states)) AND (state NOT IN ('running', 'outbox') OR claimed_by = $\(nodeIndex))
            """
        if from == [.new] {
            // A new row another host is changing right now (finishing it too, or claiming it) is
            // theirs: refused at once rather than waited for until their round commits.
            sql = """
                UPDATE message SET \(assignments.joined(separator: ", "))
                WHERE id = (SELECT id FROM message WHERE name = $\(nameIndex) AND state = 'new' FOR UPDATE SKIP LOCKED)
                """
        }
        let result = try run(PostgresQuery(unsafeSQL: sql, binds: bindings), doing: "moving \(name) to \(to.rawValue)")
        guard result.metadata.rows == 1 else {
            throw SpoolError(.notFound, path: name.value, detail: "in \(states) held by \(settings.node)")
        }
        if from.contains(.running) || to == .new { wakesOthers = true }
    }

    /// One statement; rows another host is changing right now are theirs (`SKIP LOCKED`).
    func finishNew(_ names: [EntryName], nowMillis: Int64) throws(SpoolError) {
        guard !names.isEmpty else { return }
        try run(
            """
            UPDATE message SET state = 'done', changed_ms = \(nowMillis), claimed_by = NULL, lease_until = NULL
            WHERE id IN (SELECT id FROM message WHERE name = ANY(\(names.map(\.value))) AND state = 'new' FOR UPDATE SKIP LOCKED)
            """, doing: "finishing \(names.count) message(s) no handler needs")
    }

    /// Moves `name` from `new` to `running`, held by this node, when nothing of its conversation
    /// runs on any host and nothing sent before it is due in `new`. `SKIP LOCKED`: a row another
    /// host is claiming right now is theirs, not waited for.
    ///
    /// Claims in one conversation take turns through a transaction lock taken in a statement of
    /// its own: two hosts claiming two of its messages at once would each see the other's as
    /// still new (uncommitted) and both run. The claim's statement then sees every claim that
    /// committed before it. The lock is only tried: when another host holds it, that host is
    /// claiming in the conversation right now and this claim is refused like a running one.
    func claim(_ name: EntryName, nowMillis: Int64) throws(SpoolError) {
        // No row: not stored (refused below); NULL: no conversation, nothing to take turns with.
        let rows = try run(
            "SELECT pg_try_advisory_xact_lock(hashtextextended(conversation, \(Self.conversationLockSeed))) FROM message WHERE name = \(name.value)",
            doing: "claiming \(name)"
        ).rows
        if let first = rows.first, (try? first.decode(Bool?.self)) == false {
            throw SpoolError(.notFound, path: name.value, detail: "(another host is claiming in its conversation)")
        }
        let result = try run(
            """
            UPDATE message SET state = 'running', changed_ms = \(nowMillis), claimed_by = \(settings.node),
                lease_until = clock_timestamp() + \(leaseMillis)::bigint * interval '1 millisecond'
            WHERE id = (
                SELECT m.id FROM message m
                WHERE m.name = \(name.value) AND m.state = 'new'
                  AND NOT EXISTS (\(unescaped: Self.unfinishedBefore(dueBy: nowMillis)))
                FOR UPDATE OF m SKIP LOCKED)
            """, doing: "claiming \(name)")
        guard result.metadata.rows == 1 else {
            throw SpoolError(.notFound, path: name.value, detail: "in new and first of its conversation")
        }
    }

    /// What keeps `m` from running: a message of its conversation running anywhere, or one sent
    /// before it (ties: stored before it) due in `new`. Sent, not stored: a redelivery stored
    /// late on another host does not overtake what was sent after it but still waits.
    private static func unfinishedBefore(dueBy: Int64) -> String {
        """
        SELECT 1 FROM message e
        WHERE e.conversation = m.conversation AND e.id <> m.id
          AND (e.state = 'running' OR (e.state = 'new' AND e.not_before_ms <= \(dueBy) AND (e.sent_ms, e.id) < (m.sent_ms, m.id)))
        """
    }

    func names(in state: EntryState, dueBy: Int64?, limit: Int) throws(SpoolError) -> [(name: EntryName, notBeforeMillis: Int64)] {
        let rows = try run(
            """
            SELECT name, not_before_ms FROM message WHERE state = \(state.rawValue) AND not_before_ms <= \(dueBy ?? Int64.max)
            ORDER BY id LIMIT \(Int64(min(limit, Int(Int64.max))))
            """, doing: "listing \(state.rawValue)"
        ).rows
        return rows.compactMap { row in
            guard let (text, notBefore) = try? row.decode((String, Int64).self), let name = EntryName(text) else { return nil }
            return (name, notBefore)
        }
    }

    /// Due entries of `new` whose conversation has nothing unfinished before them: what a
    /// claim would take now. Also remakes the wake-up connection when it was lost.
    func runnable(dueBy: Int64, limit: Int) throws(SpoolError) -> [Announcement] {
        ensureListener()
        let rows = try run(
            """
            SELECT m.name, m.kind, m.conversation FROM message m
            WHERE m.state = 'new' AND m.not_before_ms <= \(dueBy)
              AND NOT EXISTS (\(unescaped: Self.unfinishedBefore(dueBy: dueBy)))
            ORDER BY m.sent_ms, m.id LIMIT \(Int64(limit))
            """, doing: "looking for runnable messages"
        ).rows
        return rows.compactMap { row in
            guard let (text, kind, conversation) = try? row.decode((String, String, String?).self), let name = EntryName(text) else { return nil }
            return Announcement(name: name, kind: MessageKind(rawValue: kind) ?? .other, conversation: conversation)
        }
    }

    func count(in state: EntryState) throws(SpoolError) -> Int {
        let rows = try run("SELECT count(*) FROM message WHERE state = \(state.rawValue)", doing: "counting \(state.rawValue) messages").rows
        return rows.first.flatMap { try? $0.decode(Int.self) } ?? 0
    }

    /// This node's outbox: replies are delivered by the host that ran the handlers, or by the
    /// one that took them over after its lease ran out (`upkeep`).
    func outboxNames(limit: Int) throws(SpoolError) -> [EntryName] {
        let rows = try run(
            "SELECT name FROM message WHERE state = 'outbox' AND claimed_by = \(settings.node) ORDER BY id LIMIT \(Int64(limit))",
            doing: "listing the outbox"
        ).rows
        return rows.compactMap { (try? $0.decode(String.self)).flatMap { EntryName($0) } }
    }

    func listing(states: [EntryState], limit: Int?) throws(SpoolError) -> [StoredRow] {
        var result: [StoredRow] = []
        for state in states {
            let rows = try run(
                """
                SELECT \(unescaped: Self.rowColumns) FROM message WHERE state = \(state.rawValue)
                ORDER BY id DESC LIMIT \(Int64(min(limit ?? Int(Int64.max), Int(Int64.max))))
                """, doing: "listing \(state.rawValue)"
            ).rows
            for row in rows {
                if let stored = try? readRow(row) { result.append(stored) }
            }
        }
        return result
    }

    func counts() throws(SpoolError) -> [EntryState: Int] {
        let rows = try run("SELECT state, count(*) FROM message GROUP BY state", doing: "counting").rows
        var result: [EntryState: Int] = [:]
        for row in rows {
            if let (state, count) = try? row.decode((String, Int64).self), let known = EntryState(rawValue: state) { result[known] = Int(count) }
        }
        return result
    }

    func lookup(_ key: String) throws(SpoolError) -> [EntryName] {
        var rows = try run(
            "SELECT name FROM message WHERE (name = \(key) OR business_id = \(key)) AND state <> 'purged' LIMIT 6", doing: "looking up \(key)"
        ).rows
        if rows.isEmpty {
            rows = try run(
                "SELECT name FROM message WHERE name >= \(key) AND name < \(key + "~") AND state <> 'purged' ORDER BY name LIMIT 6",
                doing: "looking up \(key)"
            ).rows
        }
        return rows.compactMap { (try? $0.decode(String.self)).flatMap { EntryName($0) } }
    }

    // MARK: Maintenance

    /// This node's running rows back to new: at start, its previous process died with them.
    func resetRunning() throws(SpoolError) -> Int {
        let result = try run(
            "UPDATE message SET state = 'new', claimed_by = NULL, lease_until = NULL WHERE state = 'running' AND claimed_by = \(settings.node)",
            doing: "taking back interrupted messages")
        let count = result.metadata.rows ?? 0
        if count > 0 { wakesOthers = true }
        return count
    }

    /// One host at a time: the others skip the round while one holds the prune lock.
    func prune(states: Set<EntryState>, receivedBefore before: Int64, dedupFrom: Int64, limit: Int) throws(SpoolError) -> Int {
        let locked = try run("SELECT pg_try_advisory_xact_lock(\(Self.pruneLock))", doing: "taking the prune lock").rows.first
        guard (try? locked?.decode(Bool.self)) == true else { return 0 }
        try forgetSilentNodes()
        let list = states.map { "'\($0.rawValue)'" }.sorted().joined(separator: ", ")
        let deleted = try run(
            """
            DELETE FROM message WHERE id IN (
                SELECT id FROM message WHERE received_ms < \(before) AND received_ms < \(dedupFrom)
                  AND state IN (\(unescaped: list), 'purged') LIMIT \(Int64(limit)))
            """, doing: "pruning")
        var touched = deleted.metadata.rows ?? 0
        guard touched < limit, before > dedupFrom else { return touched }
        let tombstoned = try run(
            """
            UPDATE message SET state = 'purged', entry = '', replies = NULL, reason = NULL WHERE id IN (
                SELECT id FROM message WHERE received_ms >= \(dedupFrom) AND received_ms < \(before)
                  AND state IN (\(unescaped: list)) LIMIT \(Int64(limit - touched)))
            """, doing: "pruning")
        touched += tombstoned.metadata.rows ?? 0
        return touched
    }

    /// A node that has not heartbeated for this long is gone for good (renamed, decommissioned):
    /// its row goes, so that `status` and the table do not keep every name ever used. A day,
    /// so that a host that died overnight still shows; longer for a lease of hours.
    var nodeForgetMillis: Int64 { max(24 * 3600 * 1000, 7 * leaseMillis) }

    /// Removes the rows of nodes silent for `nodeForgetMillis` that hold nothing (what they held
    /// was taken over after the lease, long before).
    private func forgetSilentNodes() throws(SpoolError) {
        let rows = try run(
            """
            DELETE FROM node n WHERE n.heartbeat_at < clock_timestamp() - \(nodeForgetMillis)::bigint * interval '1 millisecond'
              AND NOT EXISTS (SELECT 1 FROM message m WHERE m.claimed_by = n.name AND m.state IN ('running', 'outbox'))
            RETURNING n.name
            """, doing: "forgetting silent nodes"
        ).rows
        let names = rows.compactMap { try? $0.decode(String.self) }
        if !names.isEmpty {
            logger.notice(
                "cluster: forgot \(names.count) node(s) silent for more than \(nodeForgetMillis / 3_600_000) h",
                metadata: ["cluster.node": "\(names.sorted().joined(separator: " "))"])
        }
    }

    /// Autovacuum returns the space.
    func reclaimSpace() throws(SpoolError) {}

    var hasUnsyncedCommits: Bool { false }
    func syncDeferred() throws(SpoolError) {}

    var upkeepInterval: Duration? { settings.lease / 3 }

    /// Every `upkeepInterval`, in a transaction: records this node's heartbeat, renews the
    /// leases of what it holds, puts running messages of hosts whose lease ran out back to new
    /// and takes over their outbox.
    /// Only `held` is renewed: a claim whose end failed to commit (the database was away) is
    /// no longer worked on, so it runs out and is taken over (here or elsewhere) rather than
    /// renewed for as long as this host lives.
    func upkeep(nowMillis: Int64, held: Set<EntryName>) throws(SpoolError) -> Upkeep {
        try heartbeat()
        if !held.isEmpty {
            try run(
                """
                UPDATE message SET lease_until = clock_timestamp() + \(leaseMillis)::bigint * interval '1 millisecond'
                WHERE claimed_by = \(settings.node) AND state IN ('running', 'outbox') AND name = ANY(\(held.map(\.value)))
                """, doing: "renewing leases")
        }
        var upkeep = Upkeep()
        let reclaimed = try run(
            """
            WITH expired AS (
                SELECT id, claimed_by FROM message WHERE state = 'running' AND lease_until < clock_timestamp()
                FOR UPDATE SKIP LOCKED)
            UPDATE message m SET state = 'new', claimed_by = NULL, lease_until = NULL, changed_ms = \(nowMillis)
            FROM expired WHERE m.id = expired.id
            RETURNING m.name, expired.claimed_by
            """, doing: "taking over expired claims"
        ).rows
        for row in reclaimed {
            if let (name, holder) = try? row.decode((String, String?).self) { upkeep.reclaimed.append((name, holder ?? "?")) }
        }
        if !reclaimed.isEmpty { wakesOthers = true }
        let outbox = try run(
            """
            WITH expired AS (
                SELECT id, claimed_by FROM message
                WHERE state = 'outbox' AND (claimed_by IS NULL OR lease_until < clock_timestamp())
                FOR UPDATE SKIP LOCKED)
            UPDATE message m SET claimed_by = \(settings.node), lease_until = clock_timestamp() + \(leaseMillis)::bigint * interval '1 millisecond'
            FROM expired WHERE m.id = expired.id
            RETURNING m.name, expired.claimed_by
            """, doing: "taking over expired outbox entries"
        ).rows
        for row in outbox {
            if let (name, holder) = try? row.decode((String, String?).self) { upkeep.outbox.append((name, holder ?? "?")) }
        }
        return upkeep
    }

    private func heartbeat() throws(SpoolError) {
        try run(
            """
            INSERT INTO node (name, started_at, heartbeat_at, pid) VALUES (\(settings.node), \(startedAt), clock_timestamp(), \(Int64(getpid())))
            ON CONFLICT (name) DO UPDATE SET heartbeat_at = clock_timestamp(), started_at = excluded.started_at, pid = excluded.pid
            """, doing: "recording the heartbeat")
    }
}

extension PostgresStore {
    /// The nodes, what each holds, the schema version and the clock skew against the database.
    func report() throws(SpoolError) -> ClusterReport {
        let before = Date()
        let clock = try run("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint", doing: "reading the clock").rows
        let after = Date()
        let serverMillis = (try? clock.first?.decode(Int64.self)) ?? 0
        // The server read its clock somewhere within the round trip: compare with its middle.
        let localMillis = Spool.millis(before.addingTimeInterval(after.timeIntervalSince(before) / 2))
        let version = (try? run("SELECT coalesce(max(version), 0) FROM dingstream_schema", doing: "reading the schema version").rows.first?.decode(Int64.self)) ?? 0
        let rows = try run(
            """
            SELECT n.name, (extract(epoch FROM clock_timestamp() - n.heartbeat_at) * 1000)::bigint, n.pid,
                   count(m.id) FILTER (WHERE m.state = 'running'), count(m.id) FILTER (WHERE m.state = 'outbox')
            FROM node n LEFT JOIN message m ON m.claimed_by = n.name AND m.state IN ('running', 'outbox')
            GROUP BY n.name, n.heartbeat_at, n.pid ORDER BY n.name
            """, doing: "listing the nodes"
        ).rows
        var nodes: [ClusterReport.Node] = []
        for row in rows {
            guard let (name, age, pid, running, outbox) = try? row.decode((String, Int64, Int64, Int64, Int64).self) else { continue }
            nodes.append(
                ClusterReport.Node(
                    name: name, sinceHeartbeat: .milliseconds(age), pid: Int(pid), running: Int(running), outbox: Int(outbox),
                    alive: age <= leaseMillis))
        }
        return ClusterReport(
            database: url, schemaVersion: Int(version), clockSkew: .milliseconds(serverMillis - localMillis), nodes: nodes)
    }
}

/// `dingstream status` and `doctor` on a cluster.
public struct ClusterReport: Sendable {
    public struct Node: Sendable {
        public var name: String
        public var sinceHeartbeat: Duration
        public var pid: Int
        /// Messages whose handlers it runs, replies it delivers.
        public var running: Int
        public var outbox: Int
        /// Its last heartbeat is within the lease.
        public var alive: Bool
    }
    public var database: String
    public var schemaVersion: Int
    /// Database clock minus this host's (positive: the database is ahead).
    public var clockSkew: Duration
    public var nodes: [Node]
}

/// What an upkeep round changed: entries taken over from hosts whose lease ran out.
struct Upkeep {
    /// Running entries put back to new, with the node that held them.
    var reclaimed: [(name: String, holder: String)] = []
    /// Outbox entries now delivered by this node.
    var outbox: [(name: String, holder: String)] = []
}

extension IntakeRecord {
    /// When DingTalk says the message was sent (`createAt`, its servers' clock), else its arrival.
    /// Only a conversation's order needs it; the intake's quick scan does not read it, so a
    /// message in a conversation is parsed here unless that was done already.
    var sentMillis: Int64 {
        if let createAt = botMessage?.createAt { return createAt }
        guard conversation != nil, let object = JSON.object(data) else { return receivedMillis }
        return BotMessage(data: object)?.createAt ?? receivedMillis
    }
}

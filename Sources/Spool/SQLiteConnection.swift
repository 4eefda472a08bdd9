import CSQLite
import Foundation

/// One connection to a SQLite database, used by one thread at a time (its owner serialises
/// access). Statements are prepared once and cached by their SQL text.
final class SQLiteConnection {
    let path: String
    private let handle: OpaquePointer
    private var statements: [String: SQLiteStatement] = [:]
    private var walHook: WALHook?

    /// Opens (or with `create`, creates) the database at `path`.
    /// - Throws: `SpoolError` naming `path` (`.permissionDenied`, `.corrupt`, `.io`, …).
    init(path: String, readOnly: Bool = false, create: Bool = true) throws(SpoolError) {
        _ = Self.configured
        self.path = path
        var pointer: OpaquePointer?
        var flags = SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_PRIVATECACHE
        flags |= readOnly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE
        if create && !readOnly { flags |= SQLITE_OPEN_CREATE }
        let code = sqlite3_open_v2(path, &pointer, flags, nil)
        guard code == SQLITE_OK, let pointer else {
            let message = pointer.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            if let pointer { sqlite3_close_v2(pointer) }
            throw Self.error(code: code, message: message, path: path, doing: "opening")
        }
        handle = pointer
        sqlite3_extended_result_codes(handle, 1)
    }

    /// Process-wide settings, made once before the first connection initialises SQLite.
    private static let configured: Void = {
        _ = dingstream_disable_memory_statistics()
    }()

    deinit {
        for statement in statements.values { statement.finalize() }
        sqlite3_close_v2(handle)
    }

    /// Runs one or more statements that return no rows of interest.
    func execute(_ sql: String, doing: String = "") throws(SpoolError) {
        var message: UnsafeMutablePointer<CChar>?
        let code = sqlite3_exec(handle, sql, nil, nil, &message)
        guard code == SQLITE_OK else {
            let text = message.map { String(cString: $0) } ?? String(cString: sqlite3_errmsg(handle))
            sqlite3_free(message)
            throw Self.error(code: code, message: text, path: path, doing: doing, systemErrno: sqlite3_system_errno(handle))
        }
    }

    /// The cached statement for `sql`, reset and with its bindings cleared.
    func statement(_ sql: String) throws(SpoolError) -> SQLiteStatement {
        if let cached = statements[sql] {
            cached.reset()
            return cached
        }
        var pointer: OpaquePointer?
        let code = sqlite3_prepare_v3(handle, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &pointer, nil)
        guard code == SQLITE_OK, let pointer else {
            throw Self.error(code: code, message: String(cString: sqlite3_errmsg(handle)), path: path, doing: "preparing")
        }
        let statement = SQLiteStatement(pointer, connection: self)
        statements[sql] = statement
        return statement
    }

    /// Rows changed by the last INSERT, UPDATE or DELETE.
    var changes: Int { Int(sqlite3_changes(handle)) }

    /// Rows changed since the connection was opened.
    var totalChanges: Int64 { sqlite3_total_changes64(handle) }
    /// The rowid of the last row an INSERT added on this connection.
    var lastInsertRowID: Int64 { sqlite3_last_insert_rowid(handle) }

    /// fsyncs the write-ahead log, making what was committed with `synchronous = NORMAL` durable
    /// (such commits survive a crash of the process, but a power cut could undo them).
    func syncJournal() throws(SpoolError) {
        var file: UnsafeMutablePointer<sqlite3_file>?
        let code = sqlite3_file_control(handle, "main", SQLITE_FCNTL_JOURNAL_POINTER, &file)
        // No log open yet: nothing was written to it.
        guard code == SQLITE_OK, let file, let sync = file.pointee.pMethods?.pointee.xSync else { return }
        let result = sync(file, SQLITE_SYNC_NORMAL)
        guard result == SQLITE_OK else {
            throw Self.error(code: result, message: "syncing the write-ahead log failed", path: path + "-wal", doing: "syncing", systemErrno: errno)
        }
    }

    /// Copies what the write-ahead log holds into the database without waiting for anyone
    /// (SQLite's PASSIVE checkpoint); the next writer starts the log over once all of it is copied.
    /// - Returns: the pages in the log when the checkpoint ended.
    /// - Throws: `SpoolError`; `.locked` when another connection is checkpointing.
    func checkpoint() throws(SpoolError) -> Int32 {
        var logged: Int32 = 0
        let code = sqlite3_wal_checkpoint_v2(handle, "main", SQLITE_CHECKPOINT_PASSIVE, &logged, nil)
        guard code == SQLITE_OK else { throw failure(code, doing: "checkpointing the write-ahead log") }
        return logged
    }

    /// Replaces SQLite's automatic checkpoint: after each commit, on the committing thread,
    /// `body` gets the pages now in the log and answers whether to checkpoint there and then.
    func onWALCommit(_ body: @escaping (_ pages: Int32) -> Bool) {
        let hook = WALHook(body)
        walHook = hook
        sqlite3_wal_hook(
            handle,
            { context, database, _, pages in
                guard let context, Unmanaged<WALHook>.fromOpaque(context).takeUnretainedValue().body(pages) else { return SQLITE_OK }
                // As SQLite's own hook does: the commit stands whatever the checkpoint gives.
                _ = sqlite3_wal_checkpoint_v2(database, "main", SQLITE_CHECKPOINT_PASSIVE, nil, nil)
                return SQLITE_OK
            }, Unmanaged.passUnretained(hook).toOpaque())
    }

    /// Whether a transaction is open (SQLite rolls one back by itself after some errors).
    var inTransaction: Bool { sqlite3_get_autocommit(handle) == 0 }

    func setBusyTimeout(milliseconds: Int32) { sqlite3_busy_timeout(handle, milliseconds) }

    /// An integer from a single-value query such as `PRAGMA user_version`.
    func integer(_ sql: String) throws(SpoolError) -> Int64 {
        let statement = try statement(sql)
        // A statement left on a row keeps a read snapshot open, which stops checkpoints.
        defer { statement.reset() }
        guard try statement.step() else { return 0 }
        return statement.int64(0)
    }

    /// A text from a single-value query such as `PRAGMA quick_check`.
    func text(_ sql: String) throws(SpoolError) -> String? {
        let statement = try statement(sql)
        defer { statement.reset() }
        guard try statement.step() else { return nil }
        return statement.text(0)
    }

    func failure(_ code: Int32, doing: String) -> SpoolError {
        Self.error(
            code: code, message: String(cString: sqlite3_errmsg(handle)), path: path, doing: doing,
            systemErrno: sqlite3_system_errno(handle))
    }

    /// Maps a SQLite result code to a spool error whose description says what to do.
    static func error(code: Int32, message: String, path: String, doing: String, systemErrno: Int32 = 0) -> SpoolError {
        let primary = code & 0xff
        let detail = "\(doing.isEmpty ? "" : doing + ": ")\(message)"
        switch primary {
        case SQLITE_FULL: return SpoolError(.diskFull, path: path, detail: detail)
        case SQLITE_READONLY, SQLITE_PERM, SQLITE_AUTH, SQLITE_CANTOPEN:
            return SpoolError(.permissionDenied, path: path, detail: detail)
        case SQLITE_BUSY, SQLITE_LOCKED: return SpoolError(.locked, path: path, detail: detail)
        case SQLITE_CORRUPT, SQLITE_NOTADB: return SpoolError(.corrupt, path: path, detail: detail)
        case SQLITE_IOERR:
            // A full disk can surface as an I/O error; the kernel's reason tells.
            if systemErrno == ENOSPC || systemErrno == EDQUOT { return SpoolError(.diskFull, path: path, errno: systemErrno, detail: detail) }
            return SpoolError(.io, path: path, errno: systemErrno == 0 ? nil : systemErrno, detail: detail)
        default: return SpoolError(.io, path: path, detail: detail)
        }
    }
}

/// The closure behind a connection's WAL hook; the connection keeps it alive.
private final class WALHook {
    let body: (Int32) -> Bool
    init(_ body: @escaping (Int32) -> Bool) { self.body = body }
}

/// A prepared statement of a `SQLiteConnection`; bind parameters by position (from 1).
final class SQLiteStatement {
    private let pointer: OpaquePointer
    private unowned let connection: SQLiteConnection

    init(_ pointer: OpaquePointer, connection: SQLiteConnection) {
        self.pointer = pointer
        self.connection = connection
    }

    func finalize() { sqlite3_finalize(pointer) }

    func reset() {
        sqlite3_reset(pointer)
        sqlite3_clear_bindings(pointer)
    }

    func bind(_ index: Int32, _ value: Int64) { sqlite3_bind_int64(pointer, index, value) }
    func bind(_ index: Int32, _ value: Int) { sqlite3_bind_int64(pointer, index, Int64(value)) }

    func bind(_ index: Int32, _ value: String?) {
        guard let value else {
            sqlite3_bind_null(pointer, index)
            return
        }
        var text = value
        text.withUTF8 { bytes in
            bytes.withMemoryRebound(to: CChar.self) { characters in
                if let base = characters.baseAddress {
                    _ = dingstream_bind_text(pointer, index, base, Int32(characters.count))
                } else {
                    _ = dingstream_bind_text(pointer, index, "", 0)
                }
            }
        }
    }

    func bind(_ index: Int32, bytes: [UInt8]) {
        bytes.withUnsafeBytes { buffer in
            _ = dingstream_bind_blob(pointer, index, buffer.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, Int32(buffer.count))
        }
    }

    func bind(_ index: Int32, data: Data) {
        data.withUnsafeBytes { buffer in
            _ = dingstream_bind_blob(pointer, index, buffer.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, Int32(buffer.count))
        }
    }

    /// Binds `bytes` at `index` without copying them, steps once (no rows expected) and resets,
    /// so that nothing points at the bytes after the call.
    /// - Throws: `SpoolError` mapped from the result code.
    func step(borrowing bytes: [UInt8], at index: Int32) throws(SpoolError) {
        let failure = bytes.withUnsafeBytes { buffer -> SpoolError? in
            _ = dingstream_bind_blob_static(pointer, index, buffer.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, Int32(buffer.count))
            let code = sqlite3_step(pointer)
            let failure =
                code == SQLITE_DONE || code == SQLITE_ROW
                ? nil : connection.failure(code, doing: "running \(String(cString: sqlite3_sql(pointer)).prefix(60))")
            reset()
            return failure
        }
        if let failure { throw failure }
    }

    /// Steps once: true with a row to read, false when done.
    /// - Throws: `SpoolError` mapped from the result code.
    @discardableResult
    func step() throws(SpoolError) -> Bool {
        let code = sqlite3_step(pointer)
        switch code {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        default:
            let failure = connection.failure(code, doing: "running \(String(cString: sqlite3_sql(pointer)).prefix(60))")
            sqlite3_reset(pointer)
            throw failure
        }
    }

    func int64(_ column: Int32) -> Int64 { sqlite3_column_int64(pointer, column) }
    func int(_ column: Int32) -> Int { Int(sqlite3_column_int64(pointer, column)) }
    func isNull(_ column: Int32) -> Bool { sqlite3_column_type(pointer, column) == SQLITE_NULL }

    func text(_ column: Int32) -> String? {
        guard let bytes = sqlite3_column_text(pointer, column) else { return nil }
        let count = Int(sqlite3_column_bytes(pointer, column))
        return String(decoding: UnsafeBufferPointer(start: bytes, count: count), as: UTF8.self)
    }

    func data(_ column: Int32) -> Data {
        let count = Int(sqlite3_column_bytes(pointer, column))
        guard count > 0, let bytes = sqlite3_column_blob(pointer, column) else { return Data() }
        return Data(bytes: bytes, count: count)
    }
}

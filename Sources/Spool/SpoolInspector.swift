import Foundation
import Logging
import StreamProtocol

/// One line of `dingstream spool ls`.
public struct SpoolListing: Sendable, Equatable {
    public var state: EntryState
    public var name: EntryName
    public var app: String
    /// `data.msgId` of a bot message, `eventId` of an event: what DingTalk and the logs call it.
    public var businessID: String
    /// Sender nick and staff id of a bot message, the event type of an event.
    public var sender: String
    /// The text (bot), or the message type / event type, whole (`--json`).
    public var text: String
    /// Its start, for the table.
    public var excerpt: String { SpoolInspector.excerpt(text) }
    /// Time since the frame was received.
    public var age: Duration
    public var attempts: Int
    /// A dead letter's reason, or why a done entry had no handler run ("refused: …"); may be empty.
    public var reason: String = ""
    /// The reason in one short line for the table: "10-check: exited with status 3", "refused".
    public var note: String { SpoolInspector.note(state: state, reason: reason) }
}

/// A single entry as `dingstream spool show KEY` prints it.
public struct ShownEntry: Sendable {
    public var state: EntryState
    public var name: EntryName
    /// The stored entry (what handlers get on stdin).
    public var contents: String
    /// Replies waiting for delivery or delivered, as the handlers printed them.
    public var replies: [String]
    public var delivered: Int
    public var attempts: Int
    /// A dead letter's reason.
    public var reason: String?
}

/// Reads and repairs the spool from outside the daemon (the `dingstream spool` command), while
/// the daemon runs: SQLite lets readers in beside the writer (WAL), and retry and purge are
/// short transactions that only touch dead letters and finished entries, which the daemon no
/// longer writes. Retried entries are picked up at the daemon's next rescan.
public struct SpoolInspector: Sendable {
    public let directory: String
    /// `[cluster]`: the rows are in the shared PostgreSQL (read and repaired there for every host).
    public let cluster: ClusterSettings?
    let now: @Sendable () -> Date

    public init(directory: String, cluster: ClusterSettings? = nil, now: @escaping @Sendable () -> Date = { Date() }) {
        self.directory = directory.count > 1 && directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        self.cluster = cluster
        self.now = now
    }

    var databasePath: String { "\(directory)/\(SQLiteStore.fileName)" }

    /// A spool the daemon has not created yet is an error that says where it looked.
    func store(readOnly: Bool = true) throws(SpoolError) -> any SpoolStore {
        if let cluster {
            var quiet = Logger(label: "dingstream.spool")
            quiet.logLevel = .critical
            return try PostgresStore(settings: cluster, logger: quiet, asTool: true)
        }
        guard FileIO.exists(directory) else { throw SpoolError(.noSpool, path: directory) }
        guard FileIO.exists(databasePath) else {
            throw SpoolError(.noSpool, path: directory, detail: "(no \(SQLiteStore.fileName) yet)")
        }
        return try SQLiteStore(existingAt: databasePath, readOnly: readOnly)
    }

    /// Entries per state, newest first (at most `limit` per state); one whose payload does not
    /// parse is left out (`show` names it).
    /// - Throws: `SpoolError` when the database cannot be read (wrong directory, permissions).
    public func list(states: [EntryState] = EntryState.allCases, limit: Int? = nil) throws(SpoolError) -> [SpoolListing] {
        let nowMillis = Spool.millis(now())
        return try store().listing(states: states, limit: limit).map { row in
            let (sender, text) = Self.summary(row.entry)
            return SpoolListing(
                state: row.state, name: row.entry.name, app: row.entry.app, businessID: row.entry.key, sender: sender,
                text: text, age: .milliseconds(max(0, nowMillis - row.entry.receivedMillis)), attempts: row.entry.attempts,
                reason: row.reason ?? "")
        }
    }

    /// The cluster's nodes and the clock skew against its database; nil without `[cluster]`.
    /// - Throws: `SpoolError(.database)` when the database cannot be reached.
    public func clusterReport() throws(SpoolError) -> ClusterReport? {
        guard cluster != nil, let store = try store() as? PostgresStore else { return nil }
        return try store.report()
    }

    /// How many entries each state holds.
    public func counts() throws(SpoolError) -> [EntryState: Int] {
        try store().counts()
    }

    static func summary(_ entry: SpoolEntry) -> (sender: String, text: String) {
        let data = entry.dataObject() ?? [:]
        switch entry.kind {
        case .bot:
            let message = BotMessage(data: data)
            let sender = [message?.senderNick, message?.senderStaffID.map { "(\($0))" }].compactMap { $0 }.joined(separator: " ")
            let text = message?.text ?? "[\(message?.msgtype ?? "unknown")]"
            return (sender, text)
        case .event:
            return (entry.headers["eventCorpId"] ?? "", entry.headers["eventType"] ?? "event")
        case .card:
            return (data["userId"] as? String ?? "", "card \(data["type"] as? String ?? "callback")")
        case .other:
            return ("", entry.topic ?? "other")
        }
    }

    /// A reason as one line: a handler's dead letter as "<handler>: <status>", a refusal as
    /// "refused: …", anything else as its first line; cut to `length` characters.
    static func note(state: EntryState, reason: String, length: Int = 60) -> String {
        let lines = reason.split(separator: "\n").map(String.init)
        let handler = lines.first { $0.hasPrefix("handler: ") }.map { String($0.dropFirst("handler: ".count).split(separator: "/").last ?? "") }
        let status = lines.first { $0.hasPrefix("status: ") }.map { String($0.dropFirst("status: ".count)) }
        let line: String
        if let handler, let status {
            line = "\(handler): \(status)"
        } else {
            line = lines.first ?? ""
        }
        return excerpt(line, length: length)
    }

    static func excerpt(_ text: String, length: Int = 40) -> String {
        let flat = text.replacingOccurrences(of: "\n", with: " ").replacingOccurrences(of: "\t", with: " ")
        return flat.count <= length ? flat : String(flat.prefix(length - 1)) + "…"
    }

    /// A table per state (`new/ (2)` then rows of KEY, APP, SENDER, AGE, TEXT, and NOTE where a
    /// row has one: a dead letter's reason, a refusal); empty states are skipped.
    /// With `totals` (the counts per state), a state shown in part says so: `done (2 of 8)`.
    public static func table(_ listings: [SpoolListing], totals: [EntryState: Int]? = nil) -> String {
        var out = ""
        for state in EntryState.allCases {
            let rows = listings.filter { $0.state == state }
            guard !rows.isEmpty else { continue }
            if !out.isEmpty { out += "\n" }
            let total = totals?[state] ?? rows.count
            out += total > rows.count ? "\(state.rawValue) (\(rows.count) of \(total))\n" : "\(state.rawValue) (\(rows.count))\n"
            let notes = rows.contains { !$0.note.isEmpty }
            let cells = [["KEY", "APP", "SENDER", "AGE", "TEXT"] + (notes ? ["NOTE"] : [])]
                + rows.map { [$0.name.value, $0.app, $0.sender, formatAge($0.age), $0.excerpt] + (notes ? [$0.note] : []) }
            var widths = [Int](repeating: 0, count: cells[0].count)
            for row in cells { for (column, cell) in row.enumerated() { widths[column] = max(widths[column], cell.count) } }
            for row in cells {
                let padded = row.enumerated().map { column, cell in
                    column == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[column] - cell.count)
                }
                out += padded.joined(separator: "  ") + "\n"
            }
        }
        if out.isEmpty, let totals, case let stored = totals.values.reduce(0, +), stored > 0 {
            return "\(stored) entries, none listed (raise --limit)\n"
        }
        return out.isEmpty ? "spool is empty\n" : out
    }

    /// The listing as a JSON array (`--json`), ages in seconds.
    public static func json(_ listings: [SpoolListing]) -> String {
        let objects: [[String: Any]] = listings.map { listing in
            [
                "state": listing.state.rawValue, "key": listing.name.value, "app": listing.app, "businessId": listing.businessID,
                "sender": listing.sender, "text": listing.text, "ageSeconds": listing.age.components.seconds,
                "receivedAt": listing.name.receivedMillis, "attempts": listing.attempts, "reason": listing.reason,
            ]
        }
        guard let text = JSON.text(objects) else { return "[]" }
        return text + "\n"
    }

    public static func formatAge(_ age: Duration) -> String {
        let seconds = age.components.seconds
        switch seconds {
        case ..<60: return "\(seconds)s"
        case ..<3600: return "\(seconds / 60)m"
        case ..<86400: return "\(seconds / 3600)h"
        default: return "\(seconds / 86400)d"
        }
    }

    /// Finds an entry by its full name, a unique prefix of it, or the business id (`msgId`, `eventId`).
    /// - Throws: `.notFound`, or `.ambiguous` when a prefix or id matches several entries.
    public func resolve(_ key: String) throws(SpoolError) -> StoredRow {
        try resolve(key, in: store())
    }

    private func resolve(_ key: String, in store: any SpoolStore) throws(SpoolError) -> StoredRow {
        let trimmed = key.hasSuffix(".json") ? String(key.dropLast(5)) : key
        let matches = try store.lookup(trimmed)
        guard let first = matches.first else { throw SpoolError(.notFound, path: key) }
        guard matches.count == 1 else {
            throw SpoolError(.ambiguous, path: key, detail: "(\(matches.prefix(5).map(\.value).joined(separator: ", ")))")
        }
        return try store.row(first)
    }

    /// The entry for `show KEY`.
    /// - Throws: like `resolve`.
    public func show(_ key: String) throws(SpoolError) -> ShownEntry {
        let row = try resolve(key)
        return ShownEntry(
            state: row.state, name: row.entry.name, contents: String(decoding: row.entry.raw, as: UTF8.self),
            replies: row.entry.replies, delivered: row.entry.delivered, attempts: row.entry.attempts, reason: row.reason)
    }

    /// Puts a dead letter back: to `outbox` when it failed in delivery (it has replies), else to
    /// `new` to run the handlers again; attempts are reset and the reason cleared. The running
    /// daemon picks it up at its next rescan.
    /// - Throws: `.notFound` unless the key names a dead letter.
    @discardableResult
    public func retry(_ key: String) throws(SpoolError) -> EntryName {
        let store = try store(readOnly: false)
        let row = try resolve(key, in: store)
        guard row.state == .failed else {
            throw SpoolError(.notFound, path: key, detail: "among the dead letters (it is \(row.state.rawValue))")
        }
        try retry(row, in: store)
        return row.entry.name
    }

    /// Retries every dead letter; returns their names.
    /// - Throws: the first failure; the entries before it were retried.
    public func retryAllFailed() throws(SpoolError) -> [EntryName] {
        let store = try store(readOnly: false)
        let rows = try store.listing(states: [.failed], limit: nil).sorted { $0.entry.name < $1.entry.name }
        for row in rows { try retry(row, in: store) }
        return rows.map(\.entry.name)
    }

    private func retry(_ row: StoredRow, in store: any SpoolStore) throws(SpoolError) {
        let target: EntryState = row.entry.replies.isEmpty ? .new : .outbox
        let nowMillis = Spool.millis(now())
        try store.inTransaction { () throws(SpoolError) in
            try store.transition(
                row.entry.name, from: [.failed], to: target,
                change: RowChange(attempts: 0, notBeforeMillis: nowMillis, deliveryAttempts: 0, reason: .some(nil)),
                nowMillis: nowMillis)
        }
    }

    /// How many entries `purge` would remove now, without removing any (`spool purge --dry-run`).
    /// - Throws: like `purge`.
    public func purgeable(_ state: EntryState, olderThan age: Duration) throws(SpoolError) -> Int {
        guard state == .done || state == .failed else {
            throw SpoolError(.notFound, path: state.rawValue, detail: "(only done and failed entries can be purged)")
        }
        let before = Spool.millis(now()) - Spool.millis(age)
        return try store().listing(states: [state], limit: nil).filter { $0.entry.receivedMillis < before }.count
    }

    /// Removes entries of `done` (or `failed`, with their attachments) received more than `age`
    /// ago. Those still within `dedupWindow` stay as tombstones without payload, so that a late
    /// redelivery is still recognised.
    /// - Returns: how many entries were removed.
    @discardableResult
    public func purge(_ state: EntryState = .done, olderThan age: Duration, dedupWindow: Duration = .seconds(24 * 3600)) throws(SpoolError) -> Int {
        guard state == .done || state == .failed else {
            throw SpoolError(.notFound, path: state.rawValue, detail: "(only done and failed entries can be purged)")
        }
        let store = try store(readOnly: false)
        let nowMillis = Spool.millis(now())
        let before = nowMillis - Spool.millis(age)
        let doomed = state == .failed ? try store.listing(states: [.failed], limit: nil).filter { $0.entry.receivedMillis < before } : []
        var total = 0
        while true {
            try store.begin()
            let touched: Int
            do throws(SpoolError) {
                touched = try store.prune(states: [state], receivedBefore: before, dedupFrom: nowMillis - Spool.millis(dedupWindow), limit: 1000)
                try store.commit()
            } catch {
                store.rollback()
                throw error
            }
            total += touched
            if touched < 1000 { break }
        }
        // Dead letters keep their downloaded attachments for a retry; a purge ends that.
        for row in doomed {
            let attachments = "\(directory)/attachments/\(row.entry.name.value)"
            if FileManager.default.fileExists(atPath: attachments) {
                do {
                    try FileManager.default.removeItem(atPath: attachments)
                } catch {
                    throw SpoolError(.io, path: attachments, detail: "removing the attachments of a purged entry: \(error)")
                }
            }
        }
        try? store.reclaimSpace()
        return total
    }

}

import Foundation
import StreamProtocol

/// One line of `dingstream spool ls`.
public struct SpoolListing: Sendable, Equatable {
    public var state: EntryState
    public var name: EntryName
    public var app: String
    /// Sender nick and staff id of a bot message, the event type of an event.
    public var sender: String
    /// The start of the text (bot), or the message type / event type.
    public var excerpt: String
    /// Time since the frame was received.
    public var age: Duration
    public var attempts: Int
}

/// A single entry as `dingstream spool show KEY` prints it.
public struct ShownEntry: Sendable {
    public var state: EntryState
    public var name: EntryName
    public var path: String
    /// The entry file as stored.
    public var contents: String
    /// `failed/<name>.reason`, for dead letters.
    public var reason: String?
}

/// Read and repair the spool from outside the daemon (the `dingstream spool` command), while the
/// daemon runs: reads need no lock because every state change is one rename; retry and purge only
/// touch `failed/` and `done/`, which the daemon does not write into except by rename.
public struct SpoolInspector: Sendable {
    public let directory: String
    let now: @Sendable () -> Date

    public init(directory: String, now: @escaping @Sendable () -> Date = { Date() }) {
        self.directory = directory.count > 1 && directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        self.now = now
    }

    func folder(_ state: EntryState) -> String { "\(directory)/\(state.rawValue)" }
    func path(of name: EntryName, in state: EntryState) -> String { "\(folder(state))/\(name.fileName)" }

    /// A state folder the daemon has not made yet is empty; a missing spool is an error that says
    /// where it looked.
    func names(in state: EntryState) throws(SpoolError) -> [EntryName] {
        guard FileIO.exists(directory) else {
            throw SpoolError(.noSpool, path: directory)
        }
        guard FileIO.exists(folder(state)) else { return [] }
        return try FileIO.list(folder(state)).compactMap { $0.hasSuffix(".json") ? EntryName($0) : nil }
    }

    /// Entries per state, newest first. An entry that moves or vanishes while listing is skipped;
    /// one that does not parse is listed with `(corrupt)` as its excerpt.
    /// - Throws: `SpoolError` when a state folder cannot be listed (wrong directory, permissions).
    public func list(states: [EntryState] = EntryState.allCases, limit: Int? = nil) throws(SpoolError) -> [SpoolListing] {
        let nowMillis = Int64((now().timeIntervalSince1970 * 1000).rounded(.down))
        var result: [SpoolListing] = []
        for state in states {
            var names = try names(in: state).sorted(by: >)
            if let limit { names = Array(names.prefix(limit)) }
            for name in names {
                let file = path(of: name, in: state)
                guard let raw = try? FileIO.readFile(file) else { continue }
                let age = Duration.milliseconds(max(0, nowMillis - name.receivedMillis))
                guard let entry = try? SpoolEntry.parse(raw, name: name, path: file) else {
                    result.append(SpoolListing(state: state, name: name, app: name.app, sender: "", excerpt: "(corrupt)", age: age, attempts: 0))
                    continue
                }
                let (sender, excerpt) = Self.summary(entry)
                result.append(SpoolListing(
                    state: state, name: name, app: entry.app, sender: sender, excerpt: excerpt, age: age,
                    attempts: entry.attempts))
            }
        }
        return result
    }

    static func summary(_ entry: SpoolEntry) -> (sender: String, excerpt: String) {
        let data = entry.dataObject() ?? [:]
        switch entry.kind {
        case .bot:
            let message = BotMessage(data: data)
            let sender = [message?.senderNick, message?.senderStaffID.map { "(\($0))" }].compactMap { $0 }.joined(separator: " ")
            let text = message?.text ?? "[\(message?.msgtype ?? "unknown")]"
            return (sender, excerpt(text))
        case .event:
            return (entry.headers["eventCorpId"] ?? "", excerpt(entry.headers["eventType"] ?? "event"))
        case .card:
            return (data["userId"] as? String ?? "", excerpt("card \(data["type"] as? String ?? "callback")"))
        case .other:
            return ("", excerpt(entry.topic ?? "other"))
        }
    }

    static func excerpt(_ text: String, length: Int = 40) -> String {
        let flat = text.replacingOccurrences(of: "\n", with: " ").replacingOccurrences(of: "\t", with: " ")
        return flat.count <= length ? flat : String(flat.prefix(length - 1)) + "…"
    }

    /// A table per state (`new/ (2)` then rows of KEY, APP, SENDER, AGE, TEXT); empty states are skipped.
    public static func table(_ listings: [SpoolListing]) -> String {
        var out = ""
        for state in EntryState.allCases {
            let rows = listings.filter { $0.state == state }
            guard !rows.isEmpty else { continue }
            if !out.isEmpty { out += "\n" }
            out += "\(state.rawValue)/ (\(rows.count))\n"
            let cells = [["KEY", "APP", "SENDER", "AGE", "TEXT"]]
                + rows.map { [$0.name.value, $0.app, $0.sender, formatAge($0.age), $0.excerpt] }
            var widths = [Int](repeating: 0, count: 5)
            for row in cells { for (column, cell) in row.enumerated() { widths[column] = max(widths[column], cell.count) } }
            for row in cells {
                let padded = row.enumerated().map { column, cell in
                    column == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[column] - cell.count)
                }
                out += padded.joined(separator: "  ") + "\n"
            }
        }
        return out.isEmpty ? "spool is empty\n" : out
    }

    /// The listing as a JSON array (`--json`), ages in seconds.
    public static func json(_ listings: [SpoolListing]) -> String {
        let objects: [[String: Any]] = listings.map { listing in
            [
                "state": listing.state.rawValue, "key": listing.name.value, "app": listing.app,
                "sender": listing.sender, "text": listing.excerpt, "ageSeconds": listing.age.components.seconds,
                "receivedAt": listing.name.receivedMillis, "attempts": listing.attempts,
            ]
        }
        guard let bytes = try? JSONSerialization.data(withJSONObject: objects, options: [.sortedKeys, .withoutEscapingSlashes])
        else { return "[]" }
        return String(decoding: bytes, as: UTF8.self) + "\n"
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
    public func resolve(_ key: String) throws(SpoolError) -> (state: EntryState, name: EntryName) {
        var all: [(EntryState, EntryName)] = []
        for state in EntryState.allCases { all += try names(in: state).map { (state, $0) } }
        let trimmed = key.hasSuffix(".json") ? String(key.dropLast(5)) : key
        if let exact = all.first(where: { $0.1.value == trimmed }) { return exact }
        var matches = all.filter { $0.1.value.hasPrefix(trimmed) }
        if matches.isEmpty {
            // A business id: the name holds its hash, one per app and kind.
            var hashes: Set<String> = []
            for app in Set(all.map { $0.1.app }) {
                for kind in [MessageKind.bot, .event, .card, .other] {
                    hashes.insert(MessageKey(app: app, kind: kind, id: key).hash)
                }
            }
            matches = all.filter { hashes.contains($0.1.keyHash) }
        }
        guard let first = matches.first else { throw SpoolError(.notFound, path: key) }
        guard matches.count == 1 else {
            throw SpoolError(.ambiguous, path: key, detail: "(\(matches.prefix(5).map { $0.1.value }.joined(separator: ", ")))")
        }
        return first
    }

    /// The entry for `show KEY`.
    /// - Throws: like `resolve`, or the read error of its file.
    public func show(_ key: String) throws(SpoolError) -> ShownEntry {
        let (state, name) = try resolve(key)
        let file = path(of: name, in: state)
        let contents = String(decoding: try FileIO.readFile(file), as: UTF8.self)
        let reasonPath = "\(folder(.failed))/\(name.value).reason"
        let reason = state == .failed ? (try? FileIO.readFile(reasonPath)).map { String(decoding: $0, as: UTF8.self) } : nil
        return ShownEntry(state: state, name: name, path: file, contents: contents, reason: reason)
    }

    /// Puts a dead letter back: to `outbox/` when it failed in delivery (it has replies), else to
    /// `new/` to run the handlers again; attempts are reset and the reason file removed. The
    /// running daemon picks it up at its next rescan.
    /// - Throws: `.notFound` unless the key names an entry in `failed/`; I/O errors leave it there.
    @discardableResult
    public func retry(_ key: String) throws(SpoolError) -> EntryName {
        let (state, name) = try resolve(key)
        guard state == .failed else {
            throw SpoolError(.notFound, path: key, detail: "in failed/ (it is in \(state.rawValue)/)")
        }
        try retry(name)
        return name
    }

    /// Retries every dead letter; returns their names.
    /// - Throws: the first failure; the entries before it were retried.
    public func retryAllFailed() throws(SpoolError) -> [EntryName] {
        let all = try names(in: .failed).sorted()
        for name in all { try retry(name) }
        return all
    }

    func retry(_ name: EntryName) throws(SpoolError) {
        let source = path(of: name, in: .failed)
        let raw = try FileIO.readFile(source)
        guard var object = JSON.object(raw) else { throw SpoolError(.corrupt, path: source) }
        let target: EntryState = (object["replies"] as? [Any])?.isEmpty == false ? .outbox : .new
        object["attempts"] = 0
        object["deliveryAttempts"] = 0
        try FileIO.writeEntry(
            object, from: source, through: "\(directory)/tmp/\(name.value).retry", to: path(of: name, in: target),
            folder: folder(target))
        try FileIO.remove(source)
        try FileIO.remove("\(folder(.failed))/\(name.value).reason")
        try FileIO.syncDirectory(folder(.failed))
    }

    /// Removes entries of `done/` (or `failed/`, with their reasons) older than `age` by mtime,
    /// recording their keys in `dedup.log` so that redeliveries within `dedupWindow` stay duplicates.
    /// - Throws: `SpoolError`; entries not yet removed stay.
    @discardableResult
    public func purge(_ state: EntryState = .done, olderThan age: Duration, dedupWindow: Duration = .seconds(24 * 3600)) throws(SpoolError) -> Int {
        guard state == .done || state == .failed else {
            throw SpoolError(.notFound, path: folder(state), detail: "(only done/ and failed/ can be purged)")
        }
        let current = now()
        let cutoff = current.addingTimeInterval(-Double(Spool.millis(age)) / 1000)
        let windowStart = Int64((current.timeIntervalSince1970 * 1000).rounded(.down)) - Spool.millis(dedupWindow)
        var old: [EntryName] = []
        for name in try names(in: state) {
            if let modified = FileIO.modified(path(of: name, in: state)), modified < cutoff { old.append(name) }
        }
        let records = old.filter { $0.receivedMillis >= windowStart }.map { "\($0.receivedMillis) \($0.dedupKey)\n" }.joined()
        if !records.isEmpty { try FileIO.appendLines("\(directory)/dedup.log", records, sync: true) }
        for name in old {
            try FileIO.remove(path(of: name, in: state))
            if state == .failed {
                try FileIO.remove("\(folder(.failed))/\(name.value).reason")
                // Dead letters keep their downloaded attachments for a retry; a purge ends that.
                let attachments = "\(directory)/attachments/\(name.value)"
                if FileManager.default.fileExists(atPath: attachments) {
                    do {
                        try FileManager.default.removeItem(atPath: attachments)
                    } catch {
                        throw SpoolError(.io, path: attachments, detail: "removing the attachments of a purged entry: \(error)")
                    }
                }
            }
        }
        if !old.isEmpty { try FileIO.syncDirectory(folder(state)) }
        return old.count
    }

    /// Parses `90s`, `15m`, `12h`, `7d`, `2w` (a bare number is seconds); nil when malformed.
    public static func parseDuration(_ text: String) -> Duration? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard let unit = trimmed.last else { return nil }
        let factors: [Character: Int64] = ["s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604_800]
        if let factor = factors[unit], let value = Int64(trimmed.dropLast()), value >= 0 {
            return .seconds(value * factor)
        }
        if let value = Int64(trimmed), value >= 0 { return .seconds(value) }
        return nil
    }
}

import Foundation
import Logging
import StreamProtocol
import Synchronization

/// An entry taken for handling.
public struct ClaimedEntry: Sendable {
    public var entry: SpoolEntry
    /// Its file in `cur/` (`DINGSTREAM_MESSAGE_FILE`).
    public var path: String
}

/// An entry read from `new/` and when it may run (its mtime).
public struct PeekedEntry: Sendable {
    public var entry: SpoolEntry
    public var notBefore: Date
}

/// An entry of `new/` and when it may run (its mtime; a retry's due time).
public struct PendingEntry: Sendable, Equatable {
    public var name: EntryName
    public var notBefore: Date
}

/// How the delivery of an outbox entry ended.
public enum DeliveryOutcome: Sendable, Equatable {
    case delivered
    case failed(reason: String)
}

extension Spool {
    /// Names in `new/`, in arrival order.
    /// - Throws: `SpoolError` when `new/` cannot be listed.
    public func newEntries() throws(SpoolError) -> [EntryName] {
        try names(in: .new)
    }

    /// Names in `new/` with their due times, in arrival order.
    public func pendingEntries() throws(SpoolError) -> [PendingEntry] {
        try names(in: .new).compactMap { name in
            FileIO.modified(path(of: name, in: .new)).map { PendingEntry(name: name, notBefore: $0) }
        }
    }

    /// Names in `outbox/`, in arrival order (recovery: resume their delivery).
    public func outboxEntries() throws(SpoolError) -> [EntryName] {
        try names(in: .outbox)
    }

    func names(in state: EntryState) throws(SpoolError) -> [EntryName] {
        try FileIO.list(folder(state)).compactMap { $0.hasSuffix(".json") ? EntryName($0) : nil }.sorted()
    }

    /// Reads an entry in any state.
    /// - Throws: `.notFound` when it is not in `state`, `.corrupt` when it does not parse.
    public func read(_ name: EntryName, in state: EntryState) throws(SpoolError) -> SpoolEntry {
        let file = path(of: name, in: state)
        return try SpoolEntry.parse(try FileIO.readFile(file), name: name, path: file)
    }

    /// Reads an entry of `new/` with its due time (mtime), from one open file.
    /// - Throws: `.notFound` when it is not in `new/`, `.corrupt` when it does not parse.
    /// An entry committed by this process moments ago comes from memory (due at once).
    public func peek(_ name: EntryName) throws(SpoolError) -> PeekedEntry {
        if let committed = loop.withLock({ $0.committed.removeValue(forKey: name) }) {
            let entry = committed.record.entry(name: name, bytes: committed.bytes)
            return PeekedEntry(entry: entry, notBefore: Date(timeIntervalSince1970: Double(name.receivedMillis) / 1000))
        }
        let file = path(of: name, in: .new)
        let (raw, modified) = try FileIO.readFileAndModified(file)
        return PeekedEntry(entry: try SpoolEntry.parse(raw, name: name, path: file), notBefore: modified)
    }

    /// Moves `name` from `new/` to `cur/` and reads it (unless `entry`, from `peek`, is given: a
    /// file in `new/` is not rewritten while its one owner holds it). Not synced: a crash puts
    /// `cur/` back to `new/`.
    /// - Throws: `.notFound` when it is no longer in `new/` (claimed already; ignore it).
    ///   `.corrupt` when its file does not parse: it is then in `cur/`, dead-letter it.
    public func claim(_ name: EntryName, entry: SpoolEntry? = nil) throws(SpoolError) -> ClaimedEntry {
        let target = path(of: name, in: .cur)
        try FileIO.rename(path(of: name, in: .new), target)
        // Once out of new/, a later return (retry, `dingstream spool retry`) is announced afresh.
        loop.withLock { state in
            _ = state.announced.remove(name)
            _ = state.committed.removeValue(forKey: name)
        }
        if let entry { return ClaimedEntry(entry: entry, path: target) }
        return ClaimedEntry(entry: try read(name, in: .cur), path: target)
    }

    /// Ends the handling of a claimed entry. With replies, the entry and its replies are written to
    /// `outbox/` (the commit point: the handler will not run again) and `cur/` is cleared; without,
    /// `cur/` moves to `done/`.
    /// - Throws: `SpoolError`; the entry then stays in `cur/` and is handled again after a restart.
    public func complete(_ name: EntryName, replies: [Data]?) throws(SpoolError) {
        guard let replies, !replies.isEmpty else {
            try move(name, from: .cur, to: .done)
            return
        }
        let texts = replies.map { String(decoding: $0, as: UTF8.self) }
        try rewrite(name, from: .cur, to: .outbox) { object in
            object["replies"] = texts
            object["delivered"] = 0
            object["deliveryAttempts"] = 0
        }
    }

    /// Puts a claimed entry back into `new/` with `attempts` recorded; `entries` announces it again
    /// once `notBefore` has passed (kept as the file's mtime, so it survives restarts).
    /// - Throws: `SpoolError`; the entry then stays in `cur/` and runs again after a restart.
    public func retryLater(_ name: EntryName, attempts: Int, notBefore: Date) throws(SpoolError) {
        try rewrite(name, from: .cur, to: .new, modified: notBefore) { object in
            object["attempts"] = attempts
        }
        loop.withLock { _ = $0.announced.remove(name) }
    }

    /// Moves an entry (from `cur/`, or `new/` or `outbox/` when it is there) to `failed/` and
    /// writes `failed/<name>.reason` first, so that every dead letter has its reason.
    /// - Throws: `SpoolError`; `.notFound` when the entry is in none of those folders.
    public func deadLetter(_ name: EntryName, reason: String) throws(SpoolError) {
        guard let state = [EntryState.cur, .new, .outbox].first(where: { FileIO.exists(path(of: name, in: $0)) }) else {
            throw SpoolError(.notFound, path: name.value)
        }
        let reasonPath = "\(folder(.failed))/\(name.value).reason"
        let text = reason.hasSuffix("\n") ? reason : reason + "\n"
        try FileIO.writeFile(reasonPath, Array(text.utf8), exclusive: false, sync: true)
        try move(name, from: state, to: .failed)
        logger.warning("spool: dead letter", metadata: ["msg.key": "\(name)", "spool.reason": "\(reason)"])
    }

    /// Records delivery progress of an outbox entry; `notBefore` (the next attempt) is its mtime.
    /// - Throws: `SpoolError`; the previous progress stays on disk.
    public func updateOutbox(
        _ name: EntryName, delivered: Int, deliveryAttempts: Int, notBefore: Date? = nil
    ) throws(SpoolError) {
        try rewrite(name, from: .outbox, to: .outbox, modified: notBefore) { object in
            object["delivered"] = delivered
            object["deliveryAttempts"] = deliveryAttempts
        }
    }

    /// Ends the delivery of an outbox entry: `done/`, or `failed/` with the reason.
    /// - Throws: `SpoolError`; the entry then stays in `outbox/` and is delivered again after a restart.
    public func finishDelivery(_ name: EntryName, outcome: DeliveryOutcome) throws(SpoolError) {
        switch outcome {
        case .delivered: try move(name, from: .outbox, to: .done)
        case .failed(let reason): try deadLetter(name, reason: reason)
        }
    }

    /// One rename, then the target directory synced so the new state survives a crash. Every
    /// move goes to a state of higher precedence, so the source needs no sync of its own: should
    /// the old name come back after a crash, `open` keeps the new one.
    func move(_ name: EntryName, from: EntryState, to: EntryState) throws(SpoolError) {
        assert(to.precedence > from.precedence, "spool: a move must raise the state's precedence")
        try FileIO.rename(path(of: name, in: from), path(of: name, in: to))
        try syncDirectorySoon(folder(to))
    }

    /// Rewrites an entry through tmp/: write, sync, rename into `to/`, sync, then unlink `from/`.
    /// A crash in between leaves two copies, which `open` resolves by precedence.
    func rewrite(
        _ name: EntryName, from: EntryState, to: EntryState, modified: Date? = nil,
        change: (inout [String: Any]) -> Void
    ) throws(SpoolError) {
        let source = path(of: name, in: from)
        let raw = try FileIO.readFile(source)
        guard var object = JSON.object(raw) else { throw SpoolError(.corrupt, path: source) }
        change(&object)
        // Synced before the unlink, so that a crash never loses both copies.
        try FileIO.writeEntry(
            object, from: source, through: "\(tmpFolder)/\(name.value).\(to.rawValue)", to: path(of: name, in: to),
            folder: folder(to), modified: modified)
        if from != to {
            try FileIO.remove(source)
            try syncDirectorySoon(folder(from))
        }
    }
}

import Foundation
import Logging
import StreamProtocol
import Synchronization

/// An entry taken for handling.
public struct ClaimedEntry: Sendable {
    public var entry: SpoolEntry
    /// Its message file under `running/` (`DINGSTREAM_MESSAGE_FILE`); nil when none was asked for.
    public var path: String?
}

extension Spool.Writer {
    private var nowMillis: Int64 { spool.nowMillis }

    /// Reads an entry in any state.
    /// - Throws: `.notFound`, or `.corrupt` when its stored payload does not parse.
    public func read(_ name: EntryName) throws(SpoolError) -> StoredRow {
        try store.row(name)
    }

    /// Moves `name` from `new` to `running` and returns it (`entry`, from `peek`, saves a read).
    /// With `messageFile`, the entry is also written to `running/<name>.json` for its handlers
    /// (not synced: it is a copy, and a crash puts the entry back to `new`).
    /// - Throws: `.notFound` when it is no longer in `new` (claimed already; ignore it);
    ///   `.corrupt` when its payload does not parse: dead-letter it.
    public func claim(_ name: EntryName, entry: SpoolEntry? = nil, messageFile: Bool = true) throws(SpoolError) -> ClaimedEntry {
        do {
            try store.claim(name, nowMillis: nowMillis)
        } catch {
            // Taken by another host, or waiting for its conversation there: announced again
            // by the rescan that follows the wake-up of its end.
            announced.remove(name)
            throw error
        }
        announced.remove(name)
        // Just committed by this process: built from memory, without reading and parsing the row.
        let cached = committed.removeValue(forKey: name).map { $0.record.entry(name: name, bytes: $0.bytes) }
        held.insert(name)
        let claimed: SpoolEntry
        if let found = entry ?? cached { claimed = found } else { claimed = try store.row(name).entry }
        return ClaimedEntry(entry: claimed, path: messageFile ? try writeMessageFile(claimed) : nil)
    }

    /// Writes `running/<name>.json` for the handlers of a claimed entry (not synced: it is a
    /// copy, and a crash puts the entry back to `new`) and returns its path.
    private func writeMessageFile(_ entry: SpoolEntry) throws(SpoolError) -> String {
        let path = spool.messageFile(of: entry.name)
        try FileIO.writeFile(path, Array(entry.handlerInput), exclusive: false, sync: false)
        messageFiles.insert(entry.name)
        return path
    }

    /// Hands over an entry its intake round stored as `running`, as `claim` would, built from
    /// the frame in memory; with its `messageFile`, writes that file first. When the file cannot be
    /// written the entry goes back to `new` in the same transaction (logged; a later claim tries
    /// again) and nil is returned: announce it instead.
    /// - Throws: `SpoolError` when it cannot go back to `new` either; the round then fails.
    func claimAtIntake(_ new: NewEntry, nowMillis: Int64) throws(SpoolError) -> ClaimedEntry? {
        let entry = new.record.entry(name: new.name, bytes: new.pending.bytes)
        let path: String?
        do throws(SpoolError) {
            path = new.messageFile ? try writeMessageFile(entry) : nil
        } catch {
            spool.logger.error("spool: \(error); the message runs once it can be written", metadata: ["msg.key": "\(new.name)"])
            try store.transition(new.name, from: [.running], to: .new, change: RowChange(), nowMillis: nowMillis)
            return nil
        }
        held.insert(new.name)
        return ClaimedEntry(entry: entry, path: path)
    }

    /// Forgets an intake claim whose round was rolled back.
    func dropClaim(_ claim: ClaimedEntry) {
        held.remove(claim.entry.name)
        removeMessageFile(claim.entry.name)
    }

    /// Ends the handling of a claimed entry: with replies (session webhook bodies) it goes to
    /// `outbox` (the commit point: its handlers will not run again), else to `done`, with `note`
    /// as its reason (why no handler ran: a refused sender), which `spool ls` shows. Its message
    /// file is removed.
    /// - Throws: `SpoolError`; the entry then stays `running` and is handled again after a restart.
    public func complete(_ name: EntryName, replies: [String]?, note: String? = nil) throws(SpoolError) {
        if let replies, !replies.isEmpty {
            try store.transition(
                name, from: [.running], to: .outbox, change: RowChange(notBeforeMillis: nowMillis, replies: replies, delivered: 0, deliveryAttempts: 0),
                nowMillis: nowMillis)
        } else {
            held.remove(name)
            try store.transition(name, from: [.running], to: .done, change: note.map { RowChange(reason: .some($0)) } ?? RowChange(), nowMillis: nowMillis)
        }
        removeMessageFile(name)
    }

    /// Finishes entries that no handler needs to see straight from `new`, without a claim, in
    /// one change; those no longer new are left alone. Never claimed, they have no message file.
    public func skip(_ names: [EntryName]) throws(SpoolError) {
        for name in names {
            held.remove(name)
            announced.remove(name)
            committed.removeValue(forKey: name)
        }
        try store.finishNew(names, nowMillis: nowMillis)
    }

    /// Puts a claimed entry back into `new` with `attempts` recorded; it is announced again
    /// once `notBefore` has passed.
    /// - Throws: `SpoolError`; the entry then stays `running` and runs again after a restart.
    public func retryLater(_ name: EntryName, attempts: Int, notBefore: Date) throws(SpoolError) {
        held.remove(name)
        try store.transition(
            name, from: [.running], to: .new, change: RowChange(attempts: attempts, notBeforeMillis: Spool.millis(notBefore)),
            nowMillis: nowMillis)
        announced.remove(name)
        removeMessageFile(name)
    }

    /// Makes an entry (running, new or outbox) a dead letter with its reason.
    /// - Throws: `SpoolError`; `.notFound` when the entry is in none of those states.
    public func deadLetter(_ name: EntryName, reason: String) throws(SpoolError) {
        let text = reason.hasSuffix("\n") ? reason : reason + "\n"
        held.remove(name)
        try store.transition(name, from: [.running, .new, .outbox], to: .failed, change: RowChange(reason: .some(text)), nowMillis: nowMillis)
        announced.remove(name)
        committed.removeValue(forKey: name)
        removeMessageFile(name)
        spool.deadLetters.add(1, ordering: .relaxed)
        spool.logger.warning("spool: dead letter", metadata: ["msg.key": "\(name)", "spool.reason": "\(reason)"])
    }

    /// Names in `outbox`, in arrival order (resume their delivery).
    public func outboxEntries() throws(SpoolError) -> [EntryName] {
        try store.outboxNames(limit: 100_000)
    }

    /// Records delivery progress of an outbox entry.
    /// - Throws: `SpoolError`; the previous progress stays.
    public func updateOutbox(_ name: EntryName, delivered: Int, deliveryAttempts: Int, notBefore: Date? = nil) throws(SpoolError) {
        try store.transition(
            name, from: [.outbox], to: .outbox,
            change: RowChange(
                notBeforeMillis: notBefore.map { Spool.millis($0) }, delivered: delivered, deliveryAttempts: deliveryAttempts),
            nowMillis: nowMillis)
    }

    /// Ends the delivery of an outbox entry whose replies all went out: `done`. (One that cannot
    /// be delivered becomes a dead letter through `deadLetter`.)
    /// - Throws: `SpoolError`; the entry then stays in `outbox` and is delivered again after a restart.
    public func finishDelivery(_ name: EntryName) throws(SpoolError) {
        held.remove(name)
        try store.transition(name, from: [.outbox], to: .done, change: RowChange(), nowMillis: nowMillis)
    }

    private func removeMessageFile(_ name: EntryName) {
        guard messageFiles.remove(name) != nil else { return }
        unlink(spool.messageFile(of: name))
    }
}

extension SpoolEntry {
    /// What a handler reads on stdin and in `DINGSTREAM_MESSAGE_FILE`: the stored entry, with
    /// the attempts so far when there were any.
    public var handlerInput: Data {
        guard attempts > 0, var object = JSON.object(raw) else { return raw }
        object["attempts"] = attempts
        return Data(JSON.encode(object).utf8) + Data("\n".utf8)
    }
}

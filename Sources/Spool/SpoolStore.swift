import Foundation
import StreamProtocol

/// What a state change of an entry is allowed to start from; the store refuses anything else
/// with `.notFound`, so a stale caller can never move an entry backwards.
public struct StoredRow: Sendable {
    public var entry: SpoolEntry
    public var state: EntryState
    /// When it may run (new) or be delivered again (outbox), epoch milliseconds.
    public var notBeforeMillis: Int64
    /// Millis of the last state change.
    public var changedMillis: Int64
    /// A dead letter's reason (with the handler's stderr tail).
    public var reason: String?
}

/// The engine behind the spool: SQLite on one host, PostgreSQL for several. Every call runs on
/// the spool's writer thread; the calls between `begin` and `commit` form one transaction, so
/// that a batch of frames and the state changes queued with it cost one durable commit.
///
/// Errors: `.notFound` when the entry is not in a state the call may start from (nothing
/// changed, the transaction goes on); every other `SpoolError` (disk full, I/O, locked) ends the
/// transaction, which the caller then rolls back.
protocol SpoolStore: AnyObject {
    /// Starts a transaction. A `durable` one's COMMIT returns once it is on disk; any other's
    /// once it would survive a crash of the process, and on disk after `syncDeferred` (or the
    /// next durable COMMIT).
    func begin(durable: Bool) throws(SpoolError)
    func commit() throws(SpoolError)
    func rollback()
    /// Whether commits made without `durable` since the last sync could still be lost in a power cut.
    var hasUnsyncedCommits: Bool { get }
    /// Puts those commits on disk.
    func syncDeferred() throws(SpoolError)

    /// Called once per round before its inserts, with the round's entries in arrival order.
    func prepareIntake(_ entries: [NewEntry]) throws(SpoolError)

    /// Inserts a new entry in `state` (`new`, or `done` when no handler needs it) unless the same
    /// business message (app, kind, business id) is stored: true when inserted, false for a duplicate.
    func insert(_ record: IntakeRecord, name: EntryName, bytes: [UInt8], state: EntryState, nowMillis: Int64) throws(SpoolError) -> Bool
    /// A round's new entries in arrival order: for each, true when inserted, false for a duplicate.
    func insert(_ entries: [NewEntry], nowMillis: Int64) throws(SpoolError) -> [Bool]
    /// Moves those of `names` still in `new` to `done` (no handler needs them); the others are
    /// left as they are.
    func finishNew(_ names: [EntryName], nowMillis: Int64) throws(SpoolError)

    /// Reads an entry in any state.
    func row(_ name: EntryName) throws(SpoolError) -> StoredRow
    /// Moves a claim from `from` to `to`, setting the given fields; `.notFound` when it is not in `from`.
    func transition(_ name: EntryName, from: Set<EntryState>, to: EntryState, change: RowChange, nowMillis: Int64) throws(SpoolError)

    /// Names in `state` (`notBeforeMillis` at most `dueBy` when given), in arrival order.
    func names(in state: EntryState, dueBy: Int64?, limit: Int) throws(SpoolError) -> [(name: EntryName, notBeforeMillis: Int64)]
    /// Entries per state (newest first, at most `limit` per state) for `dingstream spool ls`.
    func listing(states: [EntryState], limit: Int?) throws(SpoolError) -> [StoredRow]
    /// Entries in `state` (cheap for every state but done).
    func count(in state: EntryState) throws(SpoolError) -> Int
    /// Counts per state.
    func counts() throws(SpoolError) -> [EntryState: Int]
    /// Names whose name or business id matches `key` (exact name, name prefix, business id).
    func lookup(_ key: String) throws(SpoolError) -> [EntryName]

    /// Running entries back to new: what a crash interrupted runs again.
    func resetRunning() throws(SpoolError) -> Int
    /// Removes finished entries received before `before` (`done`, or the given states), keeping
    /// a payload-less tombstone for those received at or after `dedupFrom`; at most `limit`.
    /// Returns how many rows it touched.
    func prune(states: Set<EntryState>, receivedBefore before: Int64, dedupFrom: Int64, limit: Int) throws(SpoolError) -> Int
    /// Returns free pages to the filesystem, a few at a time.
    func reclaimSpace() throws(SpoolError)

    // The cluster's needs; one host (SQLite) has the plain answers below.

    /// Moves `name` from `new` to `running` for this host; `.notFound` when it is not in `new`,
    /// or (cluster) another host holds it or an earlier message of its conversation is unfinished.
    func claim(_ name: EntryName, nowMillis: Int64) throws(SpoolError)
    /// Due entries of `new` (`not_before` at most `dueBy`) that a claim could take now, in
    /// arrival order, with what the dispatcher needs to queue them.
    func runnable(dueBy: Int64, limit: Int) throws(SpoolError) -> [Announcement]
    /// Outbox entries this host delivers, in arrival order.
    func outboxNames(limit: Int) throws(SpoolError) -> [EntryName]
    /// How often `upkeep` runs; nil: never.
    var upkeepInterval: Duration? { get }
    /// Heartbeat, renewal of the leases of `held` (what this host is working on), and takeover
    /// of what dead hosts held; runs in a transaction.
    func upkeep(nowMillis: Int64, held: Set<EntryName>) throws(SpoolError) -> Upkeep
}

extension SpoolStore {
    func begin() throws(SpoolError) { try begin(durable: true) }

    /// Runs `body` between `begin` and `commit`; rolls back and rethrows when either fails.
    func inTransaction<T>(_ body: () throws(SpoolError) -> T) throws(SpoolError) -> T {
        try begin()
        do throws(SpoolError) {
            let result = try body()
            try commit()
            return result
        } catch {
            rollback()
            throw error
        }
    }

    func prepareIntake(_ entries: [NewEntry]) throws(SpoolError) {}

    func claim(_ name: EntryName, nowMillis: Int64) throws(SpoolError) {
        try transition(name, from: [.new], to: .running, change: RowChange(), nowMillis: nowMillis)
    }

    func outboxNames(limit: Int) throws(SpoolError) -> [EntryName] {
        try names(in: .outbox, dueBy: nil, limit: limit).map(\.name)
    }

    var upkeepInterval: Duration? { nil }

    func upkeep(nowMillis: Int64, held: Set<EntryName>) throws(SpoolError) -> Upkeep { Upkeep() }
}

/// Fields a transition sets besides the state.
public struct RowChange: Sendable {
    public var attempts: Int?
    public var notBeforeMillis: Int64?
    public var replies: [String]?
    public var delivered: Int?
    public var deliveryAttempts: Int?
    public var reason: String??

    public init(
        attempts: Int? = nil, notBeforeMillis: Int64? = nil, replies: [String]? = nil, delivered: Int? = nil,
        deliveryAttempts: Int? = nil, reason: String?? = nil
    ) {
        self.attempts = attempts
        self.notBeforeMillis = notBeforeMillis
        self.replies = replies
        self.delivered = delivered
        self.deliveryAttempts = deliveryAttempts
        self.reason = reason
    }
}

/// An entry of an intake round, named. It holds the submitted frame by reference: a round
/// hands its entries around several times, and copying a record retains each of its fields.
struct NewEntry {
    let pending: Spool.Pending
    var name: EntryName
    /// `new`, `done` for a message no handler needs, or `running` when the round takes it for
    /// handling (see `Spool.announce(to:claims:)`).
    var state: EntryState = .new
    /// Taken for handling with a message file for its scripts.
    var messageFile = false

    var record: IntakeRecord { pending.record }

    var announcement: Announcement { Announcement(name: name, kind: record.kind, conversation: record.conversation) }
}

extension SpoolStore {
    /// One row at a time; a store that can take the round in one statement does so.
    func insert(_ entries: [NewEntry], nowMillis: Int64) throws(SpoolError) -> [Bool] {
        var inserted: [Bool] = []
        inserted.reserveCapacity(entries.count)
        for entry in entries {
            inserted.append(try insert(entry.pending.record, name: entry.name, bytes: entry.pending.bytes, state: entry.state, nowMillis: nowMillis))
        }
        return inserted
    }

    func finishNew(_ names: [EntryName], nowMillis: Int64) throws(SpoolError) {
        for name in names {
            do throws(SpoolError) {
                try transition(name, from: [.new], to: .done, change: RowChange(), nowMillis: nowMillis)
            } catch where error.code == .notFound {
            }
        }
    }
}

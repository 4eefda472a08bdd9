import Foundation
import Logging
import StreamProtocol
import Synchronization

/// What became of a submitted frame.
public enum IntakeOutcome: Sendable, Equatable {
    /// Durably stored as a new entry: ack the frame.
    case stored(EntryName)
    /// Already stored (a redelivery, within the dedup window): ack the frame, run nothing.
    case duplicate
    /// Not stored: do not ack (events get `LATER`), DingTalk pushes it again.
    case failed(SpoolError)
}

/// An entry ready to be handled, with what the dispatcher needs to queue it without reading it.
public struct Announcement: Sendable, Equatable {
    public var name: EntryName
    public var kind: MessageKind
    /// `<app>/<conversationId>` of a bot message; nil when it has none (it is then its own queue).
    public var conversation: String?

    public init(name: EntryName, kind: MessageKind, conversation: String?) {
        self.name = name
        self.kind = kind
        self.conversation = conversation
    }
}

/// Takes an announced entry on the spool's writer thread; `claimed` when the intake round
/// already took it for handling (see `Spool.announce(to:)`).
public typealias AnnouncementSink = @Sendable (_ announcement: Announcement, _ claimed: ClaimedEntry?) -> Void

/// Asked once per intake round, on the writer thread, with the round's entries that need a
/// handler: for each, whether to take it for handling in that round.
public typealias IntakeClaimDecision = @Sendable (_ candidates: [Announcement]) -> [IntakeClaim]

/// What an intake round does with a stored entry that needs a handler.
public enum IntakeClaim: Sendable, Equatable {
    /// Stored as `new` and announced: the dispatcher claims it when it can run.
    case queue
    /// Stored as `running` and handed over with its message file written when asked for: its
    /// handlers start at once, without a claim of their own.
    case claim(messageFile: Bool)
    /// Nothing reads it now: stored as `done` and not announced (a card callback, whose ack
    /// waits for an answer, is queued instead).
    case finish
}

/// The durable spool: one row per business message in `<directory>/spool.db` (see `SQLiteStore`),
/// and beside it what people touch: `handlers/`, `attachments/`, and `running/`, which holds the
/// message file of each entry whose handlers run (`DINGSTREAM_MESSAGE_FILE`).
///
/// One writer thread owns the database. Each round it takes every frame submitted meanwhile and
/// every queued state change (`perform`), runs them in one transaction, commits (one WAL fsync),
/// and only then completes them: frames are acked after COMMIT, and a state change is durable
/// before its caller goes on. No cooperative thread ever waits for the disk.
///
/// One owner: `open` takes an exclusive lock on `spool.lock` for the life of the process, so a
/// second daemon (or sandbox) on the same spool refuses to start and names the owner's pid.
public final class Spool: Sendable {
    public let directory: String
    public let dedupWindow: Duration
    public let retention: Duration
    /// How often `run` looks for due retries and entries put back by `dingstream spool retry`.
    public let rescanInterval: Duration
    /// How often `run` prunes finished entries.
    public let pruneInterval: Duration
    /// `[cluster]`: the rows live in a shared PostgreSQL; nil keeps `spool.db`.
    public let cluster: ClusterSettings?
    let logger: Logger
    let now: @Sendable () -> Date
    /// Told how long each round's COMMIT took (metrics); called on the writer thread, so it must be quick.
    let commitObserver: @Sendable (Duration) -> Void

    /// Why the last round with frames (or the last cluster upkeep) failed; nil once it works.
    /// Apart from the writer's lock, so that `STATUS=` never waits for a slow round.
    let storeFault = Mutex<SpoolError?>(nil)

    /// The store's current failure, for `STATUS=`: frames are not acked while it is set.
    public var currentFault: SpoolError? { storeFault.withLock { $0 } }

    /// What the daemon plugs into the writer's rounds, read every round (`roundHooks`).
    struct Hooks {
        /// Called when this host took over another's outbox entries (cluster).
        var outboxWake: (@Sendable () -> Void)?
        /// Asked once per intake round which apps no handler serves now (see `storeHandlerless`).
        var handlerlessApps: (@Sendable () -> Set<String>)?
        /// Where announcements go instead of `entries`, on the writer thread (see `announce(to:)`).
        var announcementSink: AnnouncementSink?
        var intakeClaims: IntakeClaimDecision?
    }

    /// In a struct, not each closure as a `Mutex`'s value: a closure held as a generic value is
    /// wrapped anew each time `withLock` hands it out and writes it back, and the wrappers nest,
    /// so every call would cost one more level than the last (and end in a stack overflow).
    let hooks = Mutex(Hooks())

    var roundHooks: Hooks { hooks.withLock { $0 } }

    /// Entries ready to be handled, in arrival order: committed frames, recovered entries,
    /// retries once due. Each is announced once per stay in `new`; rarely twice, so the consumer
    /// ignores names it already holds and `.notFound` from `claim`. Single consumer.
    public let entries: AsyncStream<Announcement>
    let entriesContinuation: AsyncStream<Announcement>.Continuation

    /// A class: the writer moves it between lists, and a struct of this many fields would be
    /// copied (a retain per field) at every move.
    final class Pending: Sendable {
        let record: IntakeRecord
        /// The entry as stored, encoded by the submitting thread so the writer only does SQL.
        let bytes: [UInt8]
        let completion: @Sendable (IntakeOutcome) -> Void

        init(record: IntakeRecord, bytes: [UInt8], completion: @escaping @Sendable (IntakeOutcome) -> Void) {
            self.record = record
            self.bytes = bytes
            self.completion = completion
        }
    }

    /// Dead letters in the spool, as of the last rescan or dead letter (`STATUS=`, `status`).
    let deadLetters = Atomic<Int>(0)
    public var deadLetterCount: Int { deadLetters.load(ordering: .relaxed) }

    let queue = CommitQueue()
    /// Touched only by the writer thread; a Mutex for the Sendable checks.
    let syncThreadIfStarted = Mutex<SyncThread?>(nil)
    /// The database and the writer's memory; the writer thread holds it for a round, the
    /// synchronous calls (start-up, tests, `dingstream spool`) for one transaction.
    let writer = Mutex<Writer?>(nil)
    let ownership = Mutex<SpoolLock?>(nil)

    /// The largest batch one commit takes; the rest waits for the next round.
    static let maximumBatch = 4096
    /// A pruning round removes at most this many rows, then the writer stores what arrived.
    static let pruneSliceLimit = 1000
    static let pruneSlicePause = 0.05
    /// How long a round of state changes alone may wait for its fsync.
    let deferredSyncDelay: Duration

    /// - Parameters:
    ///   - directory: the spool root, e.g. `/var/spool/dingstream`.
    ///   - dedupWindow: how long a business id stays a duplicate after its entry was pruned (default 24 h).
    ///   - retention: age (since arrival) after which done entries are pruned (default 7 days).
    ///   - now: the wall clock (names, ages, retention); injected for tests.
    ///   - commitObserver: told the duration of every round's successful COMMIT, on the writer thread.
    ///   - deferredSyncDelay: how long a round of state changes alone may wait for its fsync.
    public init(
        directory: String, dedupWindow: Duration = .seconds(24 * 3600), retention: Duration = .seconds(7 * 24 * 3600),
        rescanInterval: Duration = .seconds(5), pruneInterval: Duration = .seconds(3600), deferredSyncDelay: Duration = .milliseconds(50),
        cluster: ClusterSettings? = nil, logger: Logger, now: @escaping @Sendable () -> Date = { Date() },
        commitObserver: @escaping @Sendable (Duration) -> Void = { _ in }
    ) {
        self.cluster = cluster
        self.directory = directory.count > 1 && directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        self.dedupWindow = dedupWindow
        self.retention = retention
        self.rescanInterval = rescanInterval
        self.pruneInterval = pruneInterval
        self.deferredSyncDelay = deferredSyncDelay
        self.logger = logger
        self.now = now
        self.commitObserver = commitObserver
        (entries, entriesContinuation) = AsyncStream.makeStream(of: Announcement.self)
    }

    // MARK: Paths

    public var databasePath: String { "\(directory)/\(SQLiteStore.fileName)" }
    var runningFolder: String { "\(directory)/running" }
    /// The message file of an entry whose handlers run.
    public func messageFile(of name: EntryName) -> String { "\(runningFolder)/\(name.fileName)" }

    var nowMillis: Int64 { Self.millis(now()) }

    static func millis(_ date: Date) -> Int64 {
        let value = (date.timeIntervalSince1970 * 1000).rounded(.down)
        return value.isFinite ? Int64(max(0, min(value, 9e15))) : 0
    }

    static func millis(_ duration: Duration) -> Int64 {
        let (seconds, overflow) = duration.components.seconds.multipliedReportingOverflow(by: 1000)
        return overflow ? .max : seconds + duration.components.attoseconds / 1_000_000_000_000_000
    }

    // MARK: Open and recovery

    /// Takes ownership of the spool, creates the layout (directories 0750) and the database if
    /// missing, migrates its schema, imports a 0.1 folder-layout spool once, and recovers from a
    /// crash: entries whose handlers were running are runnable again. Call before `run`.
    /// - Throws: `SpoolError`: `.inUse` when a running daemon owns the spool (naming its pid),
    ///   `.permissionDenied`, `.io`, `.diskFull` naming the path. A damaged database is moved
    ///   aside (`spool.db.corrupt-<time>`, logged) and a new one started, never emptied in place.
    public func open() throws(SpoolError) {
        try FileIO.makeDirectory(directory)
        let lock = try SpoolLock(directory: directory)
        for sub in ["handlers", "running"] { try FileIO.makeDirectory("\(directory)/\(sub)") }
        for file in try FileIO.list(runningFolder) { try FileIO.remove("\(runningFolder)/\(file)") }

        let store: any SpoolStore
        var legacySeen: Set<String> = []
        if let cluster {
            store = try PostgresStore(settings: cluster, logger: logger) { [queue] in queue.requestRescan() }
            logger.notice("spool: shared store \(cluster)", metadata: ["spool.dir": "\(directory)", "cluster.node": "\(cluster.node)"])
        } else {
            let local = try openStore()
            let legacy = LegacySpool(directory: directory, logger: logger)
            if legacy.exists { try legacy.importInto(local, nowMillis: nowMillis) }
            legacySeen = try local.legacySeen(since: nowMillis - Self.millis(dedupWindow))
            store = local
        }
        let writer = Writer(spool: self, store: store)
        writer.legacySeen = legacySeen
        // Replies this host owes from before a restart: the outbox sender delivers them now.
        if cluster != nil { writer.held = Set(try store.outboxNames(limit: 100_000)) }
        let recovered = try store.inTransaction { () throws(SpoolError) in try store.resetRunning() }
        if recovered > 0 {
            logger.notice("spool: \(recovered) entries whose handlers were interrupted run again", metadata: ["spool.dir": "\(directory)"])
        }
        let counts = try store.counts()
        deadLetters.store(counts[.failed] ?? 0, ordering: .relaxed)
        ownership.withLock { $0 = lock }
        self.writer.withLock { $0 = writer }
        logger.info(
            "spool: opened",
            metadata: [
                "spool.dir": "\(directory)", "spool.entries": "\(counts.values.reduce(0, +))",
                "spool.new": "\(counts[.new] ?? 0)", "spool.outbox": "\(counts[.outbox] ?? 0)",
            ])
    }

    /// Opens the database; a file SQLite calls damaged is moved aside with its journal first.
    private func openStore() throws(SpoolError) -> SQLiteStore {
        do throws(SpoolError) {
            let store = try SQLiteStore(path: databasePath, logger: logger)
            if let problem = try store.quickCheck() { throw SpoolError(.corrupt, path: databasePath, detail: "(\(problem))") }
            return store
        } catch where error.code == .corrupt {
            let aside = "\(databasePath).corrupt-\(Int64(now().timeIntervalSince1970))"
            for suffix in ["", "-wal", "-shm"] where FileIO.exists(databasePath + suffix) {
                try FileIO.rename(databasePath + suffix, aside + suffix)
            }
            logger.critical(
                "spool: \(databasePath) is damaged (\(error.detail ?? "not a database")); moved it to \(aside) and started a new one. Entries in it were not handled: recover them with `sqlite3 \(aside) .recover`, and redeliveries of its messages are not recognised as duplicates",
                metadata: ["spool.dir": "\(directory)", "spool.path": "\(aside)"])
            return try SQLiteStore(path: databasePath, logger: logger)
        }
    }

    /// Sets how the writer learns which apps no handler serves: their frames (card callbacks
    /// excepted, whose ack waits for an answer) are then stored as `done` in the round that
    /// stores them, and not announced. Asked once per round with frames, on the writer thread,
    /// so it must be quick; what it answers applies to that round's frames, and a handler
    /// dropped into `handlers/` before a round is seen by it. Without it every frame is stored
    /// as `new` and announced.
    public func storeHandlerless(_ apps: @escaping @Sendable () -> Set<String>) {
        hooks.withLock { $0.handlerlessApps = apps }
    }

    /// Sends announcements to `sink`, called on the writer thread right after the COMMIT that
    /// made an entry runnable (or the rescan that found one), instead of to `entries`: a consumer
    /// that only queues them spares each message a hand-off to another thread. With `claims`,
    /// an intake round also takes the entries the decision picks for handling (one host only:
    /// a cluster's claim checks the other hosts, so there every entry is announced as new), and
    /// the decision answers for the apps nothing reads too: `storeHandlerless` is then not asked.
    /// A claimed entry that is never handled (the daemon stops first) is `running` until the
    /// next start makes it new again, as after a crash. Set it before `run`.
    public func announce(to sink: @escaping AnnouncementSink, claims: IntakeClaimDecision? = nil) {
        hooks.withLock { [cluster] hooks in
            hooks.announcementSink = sink
            hooks.intakeClaims = cluster == nil ? claims : nil
        }
    }

    /// Sets what runs when this host took over outbox entries of a dead one (cluster).
    public func onOutboxTakeover(_ body: @escaping @Sendable () -> Void) {
        hooks.withLock { $0.outboxWake = body }
    }

    /// Closes the database and gives up ownership; `run` must have ended. For tests and tools
    /// that open the same spool again in one process.
    public func close() {
        writer.withLock { $0 = nil }
        ownership.withLock { $0 = nil }
    }

    /// Runs `body` in a transaction of its own on the caller's thread (blocking on the commit).
    /// For start-up, tools and tests; the daemon's calls go through `perform`, batched.
    /// - Throws: what `body` throws (rolled back), `.closed` before `open`, or the commit's failure.
    public func transaction<T: Sendable>(_ body: (Writer) throws(SpoolError) -> T) throws(SpoolError) -> T {
        try writer.withLock { (writer: inout Writer?) throws(SpoolError) -> T in
            guard let writer else { throw SpoolError(.closed, path: directory) }
            return try writer.store.inTransaction { () throws(SpoolError) in try body(writer) }
        }
    }
}

/// The exclusive claim of one process on a spool directory: `flock` on `spool.lock`, which
/// holds the owner's pid for the message of whoever is refused. The kernel drops it when the
/// process dies, so a crash never leaves a stale lock behind.
final class SpoolLock: Sendable {
    let descriptor: Int32

    init(directory: String) throws(SpoolError) {
        let path = "\(directory)/spool.lock"
        let descriptor = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o640)
        guard descriptor >= 0 else { throw SpoolError.posix(errno, path: path, doing: "opening") }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            let failure = errno
            var buffer = [UInt8](repeating: 0, count: 32)
            let count = pread(descriptor, &buffer, 31, 0)
            Glibc.close(descriptor)
            guard failure == EWOULDBLOCK else { throw SpoolError.posix(failure, path: path, doing: "locking") }
            let owner = count > 0 ? String(decoding: buffer[0..<count], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : "unknown"
            throw SpoolError(.inUse, path: directory, detail: "by pid \(owner)")
        }
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(descriptor, 0)
        _ = pwrite(descriptor, pid, pid.count, 0)
        self.descriptor = descriptor
    }

    deinit { Glibc.close(descriptor) }
}

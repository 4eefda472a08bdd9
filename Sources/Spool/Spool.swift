import Foundation
import Logging
import StreamProtocol
import Synchronization

/// What became of a submitted frame.
public enum IntakeOutcome: Sendable, Equatable {
    /// Durably stored as a new entry: ack the frame.
    case stored(EntryName)
    /// Already in the spool (or received within the dedup window): ack the frame, run nothing.
    case duplicate
    /// Not stored: do not ack (events get `LATER`), DingTalk pushes it again.
    case failed(SpoolError)
}

/// The durable spool: one JSON file per message, its state the folder it is in (maildir style).
///
/// The intake side (`submit` + `run`) group-commits on two threads of the spool's own: one writes
/// everything queued to `tmp/`, the other makes it durable with one filesystem sync, renames it
/// into `new/`, syncs that (or leaves it to its next filesystem sync when more is already
/// written), then completes every frame; no cooperative thread ever waits for the disk. The dispatcher side (`claim`, `complete`, `retryLater`, `deadLetter`, outbox calls) does blocking
/// file I/O on the caller's task, one name at a time; a name must have one owner at a time.
public final class Spool: Sendable {
    /// How a group commit makes its files durable.
    public enum SyncMode: Sendable {
        /// One `syncfs` for the whole batch: cheapest when the spool has its filesystem (or a
        /// quiet one) to itself. Falls back to `.perFile` where syncfs is unavailable.
        case filesystem
        /// One `fdatasync` per file: no cost from other writers on a busy shared filesystem.
        case perFile
    }

    public let directory: String
    public let dedupWindow: Duration
    public let retention: Duration
    /// How often `run` rescans `new/` for due retries and entries put back by `dingstream spool retry`.
    public let rescanInterval: Duration
    /// How often `run` prunes `done/`.
    public let pruneInterval: Duration
    public let syncMode: SyncMode
    let logger: Logger
    let now: @Sendable () -> Date

    /// Names in `new/` ready to be handled, in arrival order: committed frames, recovered
    /// entries, retries once due. Each name is announced once per stay in `new/`; rarely twice,
    /// so the consumer ignores names it already holds and `.notFound` from `claim`. Single consumer.
    public let entries: AsyncStream<EntryName>
    let entriesContinuation: AsyncStream<EntryName>.Continuation

    struct Pending {
        var record: IntakeRecord
        /// The entry file, encoded by the submitting thread so the commit thread only does I/O.
        var bytes: [UInt8]
        var completion: @Sendable (IntakeOutcome) -> Void
    }

    struct LoopState {
        /// Dedup key (`<app>-<hash>`) to receivedMillis.
        var index: [String: Int64] = [:]
        /// Keys being written and synced, each with the copies (redeliveries) that arrived
        /// meanwhile: they are completed with the original's outcome.
        var inFlight: [String: [Pending]] = [:]
        /// Names in `new/` already announced on `entries`.
        var announced: Set<EntryName> = []
        /// The intake failure already logged, so it is logged once rather than per frame.
        var fault: SpoolError?
        var lastPrune: Date = .distantPast
        /// Expired `done/` entries a pruning in slices has still to remove, and when it listed them.
        var pruneBacklog: (names: [EntryName], listedAt: Date)?
        /// Entries just committed, as `peek` would read them back, so that the dispatcher need
        /// not read and parse the file it was announced. Bounded: without a consumer it stays small.
        var committed: [EntryName: (record: IntakeRecord, bytes: [UInt8])] = [:]
    }

    /// At most this many committed entries wait in memory for `peek`; beyond, `peek` reads files.
    static let committedCacheLimit = 8192

    let queue = CommitQueue()
    let io: SpoolIOQueue
    let loop = Mutex(LoopState())

    /// The largest batch one commit takes; the rest waits for the next round.
    static let maximumBatch = 4096

    /// Rounds of at least this many files leave their directory sync to the next round's
    /// filesystem sync when that round is ready to start (a burst); smaller ones sync at once.
    static let smallestRoundLeftToNext = 64

    /// The writer removes at most this many expired `done/` entries at a time (a few tens of
    /// milliseconds of unlinks), then stores what arrived for `pruneSlicePause` before the next.
    static let pruneSliceLimit = 1000
    static let pruneSlicePause = 0.1

    /// - Parameters:
    ///   - directory: the spool root, e.g. `/var/spool/dingstream`.
    ///   - dedupWindow: how long a key stays a duplicate after its entry was pruned (default 24 h).
    ///   - retention: age after which `done/` entries are pruned (default 7 days).
    ///   - now: the wall clock (names, ages, retention); injected for tests.
    public init(
        directory: String, dedupWindow: Duration = .seconds(24 * 3600), retention: Duration = .seconds(7 * 24 * 3600),
        rescanInterval: Duration = .seconds(5), pruneInterval: Duration = .seconds(3600),
        syncMode: SyncMode = .filesystem, logger: Logger, now: @escaping @Sendable () -> Date = { Date() }
    ) {
        self.directory = directory.count > 1 && directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        self.dedupWindow = dedupWindow
        self.retention = retention
        self.rescanInterval = rescanInterval
        self.pruneInterval = pruneInterval
        self.syncMode = syncMode
        self.logger = logger
        self.now = now
        (entries, entriesContinuation) = AsyncStream.makeStream(of: EntryName.self)
        io = SpoolIOQueue(commits: queue)
    }

    // MARK: Paths

    public func path(of name: EntryName, in state: EntryState) -> String {
        "\(directory)/\(state.rawValue)/\(name.fileName)"
    }

    public func folder(_ state: EntryState) -> String { "\(directory)/\(state.rawValue)" }
    var tmpFolder: String { "\(directory)/tmp" }
    var dedupLogPath: String { "\(directory)/dedup.log" }

    // MARK: Open and recovery

    /// Creates the layout (directories 0750) if missing and recovers from a crash: partial files
    /// in `tmp/` are removed, a name found in two folders keeps only the one of highest precedence
    /// (done/failed > outbox > cur > new), `cur/` goes back to `new/`, expired dedup records are
    /// dropped, `done/` is pruned. Then builds the dedup index. Call before `run`.
    /// - Throws: `SpoolError` (`.permissionDenied`, `.io`, `.diskFull`) naming the path; the daemon
    ///   cannot take frames without its spool and should exit with the error.
    public func open() throws(SpoolError) {
        try FileIO.makeDirectory(directory)
        for sub in ["tmp", "handlers"] + EntryState.allCases.map(\.rawValue) {
            try FileIO.makeDirectory("\(directory)/\(sub)")
        }
        for file in try FileIO.list(tmpFolder) { try FileIO.remove("\(tmpFolder)/\(file)") }

        var found: [EntryName: EntryState] = [:]
        var touched: Set<EntryState> = []
        for state in EntryState.allCases {
            for file in try FileIO.list(folder(state)) where file.hasSuffix(".json") {
                guard let name = EntryName(file) else { continue }
                guard let other = found[name] else {
                    found[name] = state
                    continue
                }
                // A crash between link/rename and unlink left two copies; keep the later state.
                let (keep, drop) = other.precedence >= state.precedence ? (other, state) : (state, other)
                logger.notice(
                    "spool: entry in both \(keep.rawValue)/ and \(drop.rawValue)/ after a crash; keeping \(keep.rawValue)/",
                    metadata: ["msg.key": "\(name)"])
                try FileIO.remove(path(of: name, in: drop))
                touched.insert(drop)
                found[name] = keep
            }
        }
        for (name, state) in found where state == .cur {
            try FileIO.rename(path(of: name, in: .cur), path(of: name, in: .new))
            found[name] = .new
            touched.formUnion([.cur, .new])
        }
        for state in touched { try FileIO.syncDirectory(folder(state)) }

        var index: [String: Int64] = [:]
        for name in found.keys { index[String(name.dedupKey)] = name.receivedMillis }
        for (key, millis) in try loadDedupLog() where index[key] == nil { index[key] = millis }
        loop.withLock { $0.index = index }
        try prune()
        logger.info(
            "spool: opened",
            metadata: [
                "spool.dir": "\(directory)", "spool.entries": "\(found.count)",
                "spool.new": "\(found.values.filter { $0 == .new }.count)",
                "spool.outbox": "\(found.values.filter { $0 == .outbox }.count)",
            ])
    }

    var nowMillis: Int64 { Int64((now().timeIntervalSince1970 * 1000).rounded(.down)) }

    static func millis(_ duration: Duration) -> Int64 {
        duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
    }

    /// Reads `dedup.log` (`<millis> <app>-<hash>` per line), keeps the records within the window
    /// and rewrites it compactly when some expired.
    func loadDedupLog() throws(SpoolError) -> [String: Int64] {
        guard FileIO.exists(dedupLogPath) else { return [:] }
        let text = String(decoding: try FileIO.readFile(dedupLogPath), as: UTF8.self)
        let oldest = nowMillis - Self.millis(dedupWindow)
        var kept: [String: Int64] = [:]
        var dropped = 0
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ", maxSplits: 1)
            guard parts.count == 2, let millis = Int64(parts[0]), millis >= oldest else {
                dropped += 1
                continue
            }
            kept[String(parts[1])] = max(millis, kept[String(parts[1])] ?? 0)
        }
        if dropped > 0 {
            let compact = kept.sorted { $0.value < $1.value }.map { "\($0.value) \($0.key)\n" }.joined()
            let temporary = "\(tmpFolder)/dedup.log"
            try FileIO.writeFile(temporary, Array(compact.utf8), exclusive: false, sync: true)
            try FileIO.rename(temporary, dedupLogPath)
            try FileIO.syncDirectory(directory)
        }
        return kept
    }

    /// Removes `done/` entries older than `retention` (by mtime), first recording their keys in
    /// `dedup.log` while they are within the dedup window; at most `limit` per call, so that the
    /// writer thread, which stores incoming frames between calls, is never held up for long.
    /// After the last slice it forgets index keys older than the window that have no file.
    /// - Returns: whether expired entries are left for the next call.
    /// - Throws: `SpoolError`; the entries that were not pruned stay and are tried next time.
    @discardableResult
    func prune(limit: Int = .max) throws(SpoolError) -> Bool {
        let current = now()
        let windowStart = Int64((current.timeIntervalSince1970 * 1000).rounded(.down)) - Self.millis(dedupWindow)
        // Taken out, so that a failure below lists done/ afresh next time.
        let pending = loop.withLock { state in
            let taken = state.pruneBacklog
            state.pruneBacklog = nil
            return taken
        }
        let (backlog, startedAt) = if let pending { pending } else { (try expiredDoneEntries(at: current), current) }

        let slice = backlog.prefix(limit)
        let records = slice.filter { $0.receivedMillis >= windowStart }
            .map { "\($0.receivedMillis) \($0.dedupKey)\n" }.joined()
        if !records.isEmpty { try FileIO.appendLines(dedupLogPath, records, sync: true) }
        for name in slice { try FileIO.remove(path(of: name, in: .done)) }
        if !slice.isEmpty {
            try FileIO.syncDirectory(folder(.done))
            logger.info(
                "spool: pruned done entries",
                metadata: ["spool.pruned": "\(slice.count)", "spool.pruneLeft": "\(backlog.count - slice.count)"])
        }
        if slice.count < backlog.count {
            let rest = Array(backlog.dropFirst(slice.count))
            loop.withLock { $0.pruneBacklog = (rest, startedAt) }
            return true
        }

        // Keys of files still present stay, whatever their age.
        var present: Set<String> = []
        for state in EntryState.allCases {
            for file in try FileIO.list(folder(state)) {
                if let name = EntryName(file) { present.insert(String(name.dedupKey)) }
            }
        }
        loop.withLock { state in
            state.index = state.index.filter { $0.value >= windowStart || present.contains($0.key) }
            state.lastPrune = startedAt
        }
        return false
    }

    /// `done/` entries older than `retention` at `current`, by mtime.
    private func expiredDoneEntries(at current: Date) throws(SpoolError) -> [EntryName] {
        let cutoff = current.addingTimeInterval(-Double(Self.millis(retention)) / 1000)
        var expired: [EntryName] = []
        for file in try FileIO.list(folder(.done)) where file.hasSuffix(".json") {
            guard let name = EntryName(file), let modified = FileIO.modified(path(of: name, in: .done)) else { continue }
            if modified < cutoff { expired.append(name) }
        }
        return expired
    }
}

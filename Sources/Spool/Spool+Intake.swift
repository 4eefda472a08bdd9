import Foundation
import Logging
import StreamProtocol
import Synchronization

extension Spool {
    /// What the writer thread keeps between rounds, and the transaction context of every job:
    /// the store and the memory that spares the dispatcher a read of what was just committed.
    /// Only touched with `Spool.writer` locked.
    public final class Writer: @unchecked Sendable {
        unowned let spool: Spool
        let store: any SpoolStore
        /// Names announced by a rescan and not claimed since, so that the next rescan does not
        /// announce a backlog again.
        var announced: Set<EntryName> = []
        /// Entries just committed, as `peek` would read them back. Bounded: without a consumer it stays small.
        var committed: [EntryName: Pending] = [:]
        /// Dedup keys (`<app>-<hash>`) imported from a 0.1 spool's `dedup.log`, within the window.
        var legacySeen: Set<String> = []
        /// The intake failure already logged, so it is logged once rather than per round.
        var fault: SpoolError?
        var lastPrune: Date = .distantPast
        /// Set by a job whose failure ends the round's transaction; the jobs after it do not run.
        var abort: SpoolError?
        /// Claimed or outbox entries this host works on: their cluster leases are renewed.
        /// Removed when the work ends, also when recording the end failed, so that such an
        /// entry's lease runs out and it is taken over instead of held until a restart.
        var held: Set<EntryName> = []
        /// Entries whose message file this process wrote (open empties `running/`).
        var messageFiles: Set<EntryName> = []

        init(spool: Spool, store: any SpoolStore) {
            self.spool = spool
            self.store = store
        }
    }

    /// At most this many committed entries wait in memory for `peek`; beyond, `peek` reads the row.
    static let committedCacheLimit = 8192

    /// Queues `record` for the next round and returns at once (no task, no wait for the disk; the
    /// entry is encoded on the caller's thread). `completion` is called exactly once, from the
    /// writer thread: `.stored` after COMMIT and fsync, `.duplicate` for a business message
    /// already stored (also only then), `.failed` when the round's transaction or its fsync
    /// failed (do not ack). After `run` has ended it is called at once, on the caller's thread,
    /// with `.failed(.closed)`.
    ///
    /// When the writer has been idle for `idleBeforeRoundHere` (frames come one at a time), the
    /// round runs on the calling thread instead, up to its COMMIT (into the log, not fsynced)
    /// and its announcements, so that a claimed entry's HTTP handler call goes out without
    /// waiting for the writer thread to wake. The writer fsyncs and calls `completion` as for
    /// its own rounds; only a round whose transaction failed is told so on the calling thread.
    public func submit(_ record: IntakeRecord, completion: @escaping @Sendable (IntakeOutcome) -> Void) {
        let item = Pending(record: record, bytes: record.encoded(), completion: completion)
        let hereAfterIdle = cluster == nil && currentFault == nil ? Self.idleBeforeRoundHere : nil
        switch queue.admit(item, roundHereAfterIdle: hereAfterIdle) {
        case .queued:
            break
        case .roundHere:
            commitRound([item], jobs: [], here: true)
            queue.endHere()
        case .closed:
            completion(.failed(SpoolError(.closed, path: directory)))
        }
    }

    /// How long the writer must have been idle before a frame's round runs on the thread that
    /// submits it (nanoseconds). A writer idle this long is not keeping up with a stream.
    static let idleBeforeRoundHere: UInt64 = 1_000_000

    /// Runs `body` on the writer thread inside the next round's transaction and returns once
    /// that transaction committed: a state change made there is durable when this returns.
    /// - Throws: what `body` throws, or why the round was rolled back (the change is then not made),
    ///   or `.closed` after `run` ended.
    /// `afterCommit` runs on the writer thread once the change committed, before the caller
    /// goes on: what must follow the commit at once (a reply's delivery) need not wait for the
    /// caller's thread to wake.
    public func perform<T: Sendable>(
        _ body: @escaping @Sendable (Writer) throws(SpoolError) -> T, afterCommit: (@Sendable (T) -> Void)? = nil
    ) async throws(SpoolError) -> T {
        let result: Result<T, SpoolError> = await withCheckedContinuation { continuation in
            let accepted = queue.append(job: { writer in
                guard let writer else { return { failure in continuation.resume(returning: .failure(failure ?? SpoolError(.closed, path: self.directory))) } }
                let result = Result { () throws(SpoolError) -> T in try body(writer) }
                if case .failure(let error) = result, error.endsTransaction { writer.abort = error }
                return { failure in
                    if failure == nil, let afterCommit, case .success(let value) = result { afterCommit(value) }
                    continuation.resume(returning: failure.map { .failure($0) } ?? result)
                }
            })
            if !accepted { continuation.resume(returning: .failure(SpoolError(.closed, path: directory))) }
        }
        return try result.get()
    }

    /// Runs `body` in a transaction of its own on the calling thread, if the writer is free at
    /// this instant, and commits it to the write-ahead log (which a crash of the process cannot
    /// undo); the writer fsyncs it within `deferredSyncDelay`, as it does its own rounds of state
    /// changes. Returns nil, having done nothing, when the writer is busy (a round, an fsync),
    /// when frames committed before are not yet on disk (a handler's outcome must not be
    /// recorded before its message is), while intake is failing, or on a shared store: use
    /// `perform` then. A handler's outcome goes out this way from the thread that learned it
    /// (the event loop that read an HTTP handler's answer), without waking the writer first.
    /// Call `syncCommittedHere` after a change that succeeded, once what must go out at once is out.
    public func performHere<T: Sendable>(_ body: (Writer) throws(SpoolError) -> T) -> Result<T, SpoolError>? {
        guard cluster == nil else { return nil }
        var commitTime: Duration?
        let outcome = writer.withLockIfAvailable { (writer: inout Writer?) -> Result<T, SpoolError>? in
            guard let writer, writer.fault == nil, let store = writer.store as? SQLiteStore, !store.hasUnsyncedMessages else { return nil }
            do throws(SpoolError) {
                guard try store.beginUnlessLocked() else { return nil }
                let value = try body(writer)
                let commitStart = ContinuousClock.now
                try store.commit()
                commitTime = ContinuousClock.now - commitStart
                return .success(value)
            } catch {
                store.rollback()
                return .failure(error)
            }
        }
        guard let outcome = outcome ?? nil else { return nil }
        if let commitTime { commitObserver(commitTime) }
        return outcome
    }

    /// Wakes the writer to fsync what `performHere` committed within `deferredSyncDelay`.
    public func syncCommittedHere() {
        queue.wake()
    }

    /// Runs `body` on the writer thread in the next round and returns at once (reads, and
    /// changes whose outcome nobody waits for).
    public func perform(_ body: @escaping @Sendable (Writer) -> Void) {
        _ = queue.append(job: { writer in
            if let writer { body(writer) }
            return { _ in }
        })
    }

    /// The writer: commits queued frames and state changes in rounds, announces entries on
    /// `entries`, looks for due retries every `rescanInterval` and prunes every `pruneInterval`,
    /// on a thread of its own so that no cooperative thread waits for the disk. Call `open` first.
    /// Returns when its task is cancelled, after committing what was already queued; later
    /// submits fail with `.closed`. Write failures never end it: they fail the round concerned.
    public func run() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (finished: CheckedContinuation<Void, Never>) in
                let thread = Thread { [self] in
                    FileIO.nameThread("spool-writer")
                    writeLoop()
                    entriesContinuation.finish()
                    finished.resume()
                }
                thread.name = "spool-writer"
                thread.start()
            }
        } onCancel: {
            queue.requestStop()
        }
    }

    private func writeLoop() {
        rescan()
        let interval = Double(Self.millis(rescanInterval)) / 1000
        var nextRescan = Date().addingTimeInterval(interval)
        var nextPruneSlice: Date?  // set while a pruning has rows left
        let upkeepInterval = writer.withLock { $0?.store.upkeepInterval }.map { Double(Self.millis($0)) / 1000 }
        var nextUpkeep = upkeepInterval.map { Date().addingTimeInterval($0) } ?? .distantFuture
        var nextSync: Date?  // set while commits wait for their fsync
        while true {
            let deadline = min(nextPruneSlice.map { min($0, nextRescan) } ?? nextRescan, nextUpkeep, nextSync ?? .distantFuture)
            let (batch, jobs, awaitingSync, stopping, wanted) = queue.next(limit: Self.maximumBatch, deadline: deadline)
            if !batch.isEmpty || !jobs.isEmpty { commitRound(batch, jobs: jobs) }
            if !awaitingSync.isEmpty { syncAndTell(awaitingSync) }
            if stopping { break }
            let current = Date()
            if !unsyncedCommits {
                nextSync = nil
            } else if let due = nextSync, current >= due {
                syncDeferred()
                nextSync = nil
            } else if nextSync == nil {
                nextSync = current.addingTimeInterval(Double(Self.millis(deferredSyncDelay)) / 1000)
            }
            if let upkeepInterval, current >= nextUpkeep {
                upkeep()
                nextUpkeep = Date().addingTimeInterval(upkeepInterval)
            }
            if wanted, current < nextRescan {
                rescan()  // a wake-up: the regular rescan keeps its own pace
            } else if current >= nextRescan {
                rescan(all: upkeepInterval != nil)
                nextRescan = Date().addingTimeInterval(interval)
                if nextPruneSlice == nil, pruneDue { nextPruneSlice = current }
            }
            if let slice = nextPruneSlice, current >= slice {
                nextPruneSlice = pruneSlice() ? Date().addingTimeInterval(Self.pruneSlicePause) : nil
            }
        }
        // Shutting down: store what is queued, refuse the rest.
        let rest = queue.close()
        if !rest.batch.isEmpty || !rest.jobs.isEmpty { commitRound(rest.batch, jobs: rest.jobs) }
        if !rest.awaitingSync.isEmpty { syncAndTell(rest.awaitingSync) }
        syncDeferred()
        if let syncThread = syncThreadIfStarted.withLock({ $0.take() }) { syncThread.stop() }
    }

    /// The thread that fsyncs beside the writer (`SyncThread`), started on first use.
    private var syncThread: SyncThread {
        syncThreadIfStarted.withLock { started in
            if let started { return started }
            let made = SyncThread()
            started = made
            return made
        }
    }

    /// Puts rounds committed on other threads on disk (one fsync for all), then tells their frames.
    private func syncAndTell(_ rounds: [CommitQueue.AfterSync]) {
        let sync = syncFrames()
        for round in rounds { round(sync) }
    }

    private var unsyncedCommits: Bool {
        writer.withLock { $0?.store.hasUnsyncedCommits ?? false }
    }

    /// Puts the state changes of rounds without frames on disk (see `commitRound`).
    private func syncDeferred() {
        let failure: SpoolError? = writer.withLock { writer in
            do throws(SpoolError) {
                try writer?.store.syncDeferred()
                return nil
            } catch {
                return error
            }
        }
        if let failure {
            logger.error("\(failure); tried again with the next change", metadata: ["spool.dir": "\(directory)", "spool.path": "\(failure.path)"])
        }
    }

    /// One round: every frame inserted (the UNIQUE business key decides what is a duplicate),
    /// every job run, one COMMIT; then frames and jobs are told how it ended. A frame of an app
    /// no handler serves is stored as `done` and not announced; one the claim decision picks is
    /// stored as `running` and handed to the announcement sink claimed.
    ///
    /// The COMMIT only writes the round to the write-ahead log, which a crash of the process
    /// cannot undo. A round with frames then announces its new entries, so that a claimed one's
    /// HTTP handler call goes out while the log is fsynced, and only after that fsync acks its
    /// frames: DingTalk does not send an acked frame again. Nothing a handler does reaches
    /// anyone before the fsync: its outcome is committed after it, by a later round or by
    /// `performHere`, which waits for it (`SQLiteStore.hasUnsyncedMessages`). A power cut before
    /// it loses the round's rows and their frames were never acked, so they come again and run
    /// again, as after any power cut during a handler.
    ///
    /// A round of state changes alone (claims, handler results, reply progress) is fsynced with
    /// the next round of frames or after `deferredSyncDelay`. A power cut within that time can
    /// only undo such a change, never lose a message: what was running runs again, a reply sent
    /// then may be sent twice, as after a crash between the send and its record.
    ///
    /// `here`: the round runs on a submitting thread (`submit`), which announces its entries;
    /// the writer fsyncs and tells the frames (`CommitQueue.awaitSync`).
    func commitRound(_ batch: [Pending], jobs: [CommitQueue.Job], here: Bool = false) {
        /// New entries to announce, in arrival order; with a claim when this round took them for
        /// handling (see `announce(to:claims:)`).
        var stored: [(entry: NewEntry, claim: ClaimedEntry?)] = []
        var finished: [NewEntry] = []
        let hooks = roundHooks
        let decideClaims = batch.isEmpty ? nil : hooks.intakeClaims
        // One look at the handlers a round: the claim decision, where there is one, also says
        // what nothing reads.
        let handlerless = batch.isEmpty || decideClaims != nil ? [] : hooks.handlerlessApps?() ?? []
        var duplicates: [Pending] = []
        var finishes: [@Sendable (SpoolError?) -> Void] = []
        var failure: SpoolError?
        var logFailure: SpoolError?
        var commitTime: Duration?
        writer.withLock { writer in
            guard let writer else {
                failure = SpoolError(.closed, path: directory)
                finishes = jobs.map { $0(nil) }
                return
            }
            do throws(SpoolError) {
                try writer.store.begin(durable: false)
                let nowMillis = nowMillis
                var entries: [NewEntry] = []
                entries.reserveCapacity(batch.count)
                for pending in batch {
                    let name = EntryName(receivedMillis: pending.record.receivedMillis, key: pending.record.key)
                    if !writer.legacySeen.isEmpty, writer.legacySeen.contains(String(name.dedupKey)) {
                        duplicates.append(pending)
                        continue
                    }
                    let unread = !handlerless.isEmpty && pending.record.kind != .card && handlerless.contains(pending.record.app)
                    entries.append(NewEntry(pending: pending, name: name, state: unread ? .done : .new))
                }
                if let decideClaims {
                    let candidates = entries.indices.filter { entries[$0].state == .new }
                    let decisions = decideClaims(candidates.map { entries[$0].announcement })
                    for (index, decision) in zip(candidates, decisions) {
                        switch decision {
                        case .claim(let messageFile):
                            entries[index].state = .running
                            entries[index].messageFile = messageFile
                        case .finish where entries[index].record.kind != .card:
                            entries[index].state = .done
                        case .queue, .finish:
                            break
                        }
                    }
                }
                if !entries.isEmpty {
                    try writer.store.prepareIntake(entries)
                    for (entry, inserted) in zip(entries, try writer.store.insert(entries, nowMillis: nowMillis)) {
                        if !inserted {
                            duplicates.append(entry.pending)
                        } else if entry.state == .new {
                            stored.append((entry, nil))
                        } else if entry.state == .running {
                            // nil: its message file could not be written, it went back to new.
                            stored.append((entry, try writer.claimAtIntake(entry, nowMillis: nowMillis)))
                        } else {
                            finished.append(entry)
                        }
                    }
                }
                writer.abort = nil
                for job in jobs {
                    // After a failure that ended the transaction, the rest must not run outside it.
                    finishes.append(job(writer.abort == nil ? writer : nil))
                }
                if let abort = writer.abort { throw abort }
                let commitStart = ContinuousClock.now
                try writer.store.commit()
                commitTime = ContinuousClock.now - commitStart
            } catch {
                writer.store.rollback()
                failure = error
                for case (_, let claim?) in stored { writer.dropClaim(claim) }
                // Jobs the failure came before are told too, without running.
                finishes += jobs.dropFirst(finishes.count).map { $0(nil) }
            }
            writer.abort = nil
            if let failure {
                if !batch.isEmpty, recordIntakeFault(failure, in: writer) { logFailure = failure }
                return
            }
            // Not remembered as announced: a rescan that finds one of these still new announces
            // it again, and the dispatcher ignores names it holds.
            for (item, claim) in stored where claim == nil {
                if writer.committed.count < Self.committedCacheLimit {
                    writer.committed[item.name] = item.pending
                }
            }
        }
        if let logFailure { logIntakeFault(logFailure) }
        if let failure {
            // Every frame of the round, also those the failure came before.
            for pending in batch { pending.completion(.failed(failure)) }
            for finish in finishes { finish(failure) }
            return
        }
        let sink = hooks.announcementSink
        let round = CommittedRound(
            batch: batch, stored: stored.map { ($0.entry.pending, $0.entry.name) } + finished.map { ($0.pending, $0.name) },
            duplicates: duplicates, finishes: finishes, commitTime: commitTime)
        if here {
            // The writer's fsync runs beside the announcements, as the sync thread's does below.
            if !batch.isEmpty { queue.awaitSync { sync in self.tell(round, sync) } }
            for (item, claim) in stored { announce(item.announcement, claimed: claim, sink: sink) }
            return
        }
        // A claimed entry's handler may start on this thread: the fsync runs beside it.
        let syncBeside = !batch.isEmpty && stored.contains { $0.claim != nil }
        if syncBeside { syncThread.start { self.syncFrames() } }
        // In arrival order: a claimed entry goes ahead of its conversation's next one.
        for (item, claim) in stored { announce(item.announcement, claimed: claim, sink: sink) }
        tell(round, syncBeside ? syncThread.finish() : batch.isEmpty ? (nil, .zero) : syncFrames())
    }

    /// What a committed round tells its frames and jobs once the fsync after it is through.
    struct CommittedRound: Sendable {
        var batch: [Pending]
        /// Frames stored, new or done, in arrival order.
        var stored: [(Pending, EntryName)]
        var duplicates: [Pending]
        var finishes: [@Sendable (SpoolError?) -> Void]
        var commitTime: Duration?
    }

    private func tell(_ round: CommittedRound, _ sync: SyncThread.Result) {
        if let failure = sync.failure {
            // Committed, so the jobs' changes stand; the frames wait for a sync that succeeds.
            for pending in round.batch { pending.completion(.failed(failure)) }
            for finish in round.finishes { finish(nil) }
            return
        }
        if let commitTime = round.commitTime { commitObserver(commitTime + sync.time) }
        for (pending, name) in round.stored { pending.completion(.stored(name)) }
        for pending in round.duplicates { pending.completion(.duplicate) }
        for finish in round.finishes { finish(nil) }
    }

    /// Puts a round of frames on disk before their acks: no failure when it is there, else why
    /// not (logged once while it lasts, like a failed COMMIT), and how long it took. A failed fsync leaves the round
    /// committed but not acked; its frames come again as duplicates and are acked after the
    /// next sync that succeeds.
    private func syncFrames() -> (failure: SpoolError?, time: Duration) {
        let start = ContinuousClock.now
        var logFailure = false
        var logRecovery = false
        let failure: SpoolError? = writer.withLock { writer in
            guard let writer else { return SpoolError(.closed, path: directory) }
            do throws(SpoolError) {
                try writer.store.syncDeferred()
            } catch {
                logFailure = recordIntakeFault(error, in: writer)
                return error
            }
            if writer.fault != nil {
                writer.fault = nil
                storeFault.withLock { $0 = nil }
                logRecovery = true
            }
            return nil
        }
        if let failure, logFailure { logIntakeFault(failure) }
        if logRecovery {
            logger.notice("spool: intake recovered, storing frames again", metadata: ["spool.dir": "\(directory)"])
        }
        return (failure, ContinuousClock.now - start)
    }

    /// Remembers why intake stopped (a COMMIT or the fsync after it failed); true when that is a
    /// new reason, to be logged once while it lasts. The writer is locked by the caller.
    private func recordIntakeFault(_ failure: SpoolError, in writer: Writer) -> Bool {
        let isNew = writer.fault?.code != failure.code
        writer.fault = failure
        storeFault.withLock { $0 = failure }
        return isNew
    }

    private func logIntakeFault(_ failure: SpoolError) {
        logger.error(
            "\(failure); frames stay unacked until it is fixed",
            metadata: ["spool.dir": "\(directory)", "spool.path": "\(failure.path)"])
    }

    private var pruneDue: Bool {
        writer.withLock { writer in
            guard let writer else { return false }
            return now().timeIntervalSince(writer.lastPrune) >= Double(Self.millis(pruneInterval)) / 1000
        }
    }

    /// One slice of pruning in a transaction of its own; whether rows are left.
    private func pruneSlice() -> Bool {
        do {
            return try prune(limit: Self.pruneSliceLimit)
        } catch {
            logger.warning("\(error)", metadata: ["spool.dir": "\(directory)"])
            return false
        }
    }

    /// Removes done entries received more than `retention` ago; those still within the dedup
    /// window stay as tombstones without payload, so a late redelivery is still a duplicate.
    /// At most `limit` rows per call, so that the writer is never held up for long.
    /// - Returns: whether expired rows are left for the next call.
    @discardableResult
    func prune(limit: Int = .max) throws(SpoolError) -> Bool {
        let current = now()
        let nowMillis = Self.millis(current)
        let touched = try transaction { (writer: Writer) throws(SpoolError) -> Int in
            try writer.store.prune(
                states: [.done], receivedBefore: nowMillis - Self.millis(retention),
                dedupFrom: nowMillis - Self.millis(dedupWindow), limit: limit)
        }
        if touched > 0 {
            logger.info("spool: pruned done entries", metadata: ["spool.pruned": "\(touched)"])
        }
        if touched >= limit { return true }
        try writer.withLock { (writer: inout Writer?) throws(SpoolError) in
            try writer?.store.reclaimSpace()
            writer?.lastPrune = current
        }
        return false
    }

    /// Heartbeat, lease renewal and takeover of dead hosts' work (cluster); logs what it took over.
    private func upkeep() {
        let result: Upkeep
        do {
            result = try transaction { (writer: Writer) throws(SpoolError) -> Upkeep in
                let result = try writer.store.upkeep(nowMillis: nowMillis, held: writer.held)
                for (name, _) in result.outbox { if let name = EntryName(name) { writer.held.insert(name) } }
                return result
            }
        } catch {
            logger.warning("\(error)", metadata: ["spool.dir": "\(directory)"])
            storeFault.withLock { $0 = error }
            return
        }
        if storeFault.withLock({ $0?.code == .database }) {
            // Reachable again; an intake round that still fails sets it anew.
            storeFault.withLock { $0 = nil }
        }
        for (holder, names) in Dictionary(grouping: result.reclaimed, by: \.holder) {
            logger.warning(
                "cluster: node \(holder) held \(names.count) running message(s) past its lease (dead or cut off); they run again",
                metadata: ["cluster.node": "\(holder)", "msg.key": "\(names.map(\.name).joined(separator: " "))"])
        }
        for (holder, names) in Dictionary(grouping: result.outbox, by: \.holder) {
            logger.warning(
                "cluster: took over \(names.count) outbox entries of node \(holder), whose lease ran out",
                metadata: ["cluster.node": "\(holder)", "msg.key": "\(names.map(\.name).joined(separator: " "))"])
        }
        if !result.reclaimed.isEmpty { rescan() }
        if !result.outbox.isEmpty { roundHooks.outboxWake?() }
    }

    /// Announces due entries in `new` not announced yet (recovered, retried, put back by the CLI,
    /// committed by another host of the cluster).
    ///
    /// `all` (the cluster's regular rescan) announces every runnable entry, announced or not:
    /// a wake-up can come while the dispatcher still holds an entry whose claim another host's
    /// conversation just refused, and such an entry must not wait for a restart. The dispatcher
    /// ignores names it holds.
    func rescan(all: Bool = false) {
        let fresh: [Announcement]
        do {
            fresh = try writer.withLock { (writer: inout Writer?) throws(SpoolError) -> [Announcement] in
                guard let writer else { return [] }
                // Dead letters come and go also through `dingstream spool retry` and `purge`.
                deadLetters.store(try writer.store.count(in: .failed), ordering: .relaxed)
                let due = try writer.store.runnable(dueBy: nowMillis, limit: 10_000)
                writer.announced.formIntersection(due.map(\.name))
                let fresh = all ? due : due.filter { !writer.announced.contains($0.name) }
                writer.announced.formUnion(fresh.map(\.name))
                return fresh
            }
        } catch {
            logger.warning("\(error)", metadata: ["spool.dir": "\(directory)"])
            return
        }
        let sink = roundHooks.announcementSink
        for announcement in fresh { announce(announcement, sink: sink) }
    }

    /// To the sink when one is set, else to `entries` (entries are claimed only where a sink is).
    private func announce(_ announcement: Announcement, claimed: ClaimedEntry? = nil, sink: AnnouncementSink?) {
        if let sink { sink(announcement, claimed) } else { entriesContinuation.yield(announcement) }
    }
}

extension SpoolError {
    /// Failures of the database itself (as opposed to an entry not being where a call expected
    /// it): the transaction they happen in is rolled back.
    var endsTransaction: Bool {
        switch code {
        case .notFound, .ambiguous, .corrupt: false
        default: true
        }
    }
}

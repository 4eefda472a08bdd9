import Foundation

/// The hand-off between `Spool.submit` and `Spool.perform` (any thread, never block on I/O) and
/// the spool's writer thread, which sleeps on a condition variable while there is nothing to do.
///
/// A condition variable rather than a continuation: the commit thread is a plain thread, so that
/// its writes and syncs never occupy one of Swift concurrency's few cooperative threads. It is
/// signalled after the lock is released: woken under it, the commit thread ran at once on the
/// submitter's core, found the lock taken and slept again until the unlock woke it a second time
/// (two switches more per frame, seen in `perf sched`). A thread that wakes for another reason
/// meanwhile finds the work under the lock, so no signal is lost.
final class CommitQueue: @unchecked Sendable {
    // Every stored property below is guarded by `condition`.
    private let condition = NSCondition()
    private var pending: [Spool.Pending] = []
    private var jobs: [Job] = []
    private var stopping = false
    private var closed = false
    private var sleeping = false
    private var rescanRequested = false
    private var wakeRequested = false
    /// A round runs on a submitting thread (`admit`); the writer waits for its end.
    private var roundHere = false
    /// When the writer last went to sleep with nothing to do (`DispatchTime` nanoseconds).
    private var idleSince: UInt64 = 0
    /// Frames committed by rounds here, waiting for an fsync before they are told how they ended.
    private var awaitingSync: [AfterSync] = []

    /// What a round on a submitting thread leaves to the writer: told how the fsync after it went.
    typealias AfterSync = @Sendable (SyncThread.Result) -> Void

    /// Makes `change` under the lock, then wakes the commit thread if it sleeps (frames and jobs
    /// that arrive while a round runs need no wake-up: it looks again after the round). Returns
    /// what `change` returns.
    private func wakingAfter(_ change: () -> Bool) -> Bool {
        condition.lock()
        let changed = change()
        let wake = changed && sleeping
        condition.unlock()
        if wake { condition.signal() }
        return changed
    }

    /// A state change or read run on the writer thread inside the round's transaction. It returns
    /// what to do once the transaction ended: nil after COMMIT, else why it was rolled back.
    /// Given nil instead of the writer (the round failed before it, or the spool is closed), it
    /// must do nothing.
    typealias Job = @Sendable (Spool.Writer?) -> @Sendable (SpoolError?) -> Void

    /// Queues `job` for the next round; false once the queue is closed.
    func append(job: @escaping Job) -> Bool {
        wakingAfter {
            guard !closed else { return false }
            jobs.append(job)
            return true
        }
    }

    /// Asks the writer for a rescan (a cluster wake-up); requests before it wakes make one.
    func requestRescan() {
        _ = wakingAfter {
            rescanRequested = true
            return true
        }
    }

    /// Wakes the writer for its upkeep alone: a change committed on another thread
    /// (`Spool.performHere`) is synced within `deferredSyncDelay`.
    func wake() {
        _ = wakingAfter {
            wakeRequested = true
            return true
        }
    }

    /// What `admit` did with a frame.
    enum Admission {
        case queued
        /// Not queued: the caller runs its round and then calls `endHere`.
        case roundHere
        case closed
    }

    /// Queues `item` and wakes the commit thread; or, given `roundHereAfterIdle`
    /// and a writer asleep with nothing to do for at least that many nanoseconds (light load:
    /// under a stream of frames the writer's own rounds batch them), queues nothing and lets the
    /// caller run the round itself. The caller must then call `endHere` once the round's entries
    /// are announced; until then the writer starts no round, so that no entry of a later round
    /// is announced before the round's own. It may fsync meanwhile (`awaitSync`).
    func admit(_ item: Spool.Pending, roundHereAfterIdle idleFor: UInt64?) -> Admission {
        var admission = Admission.closed
        _ = wakingAfter {
            guard !closed else { return false }
            if let idleFor, sleeping, !roundHere, !stopping, pending.isEmpty, jobs.isEmpty, awaitingSync.isEmpty,
                !rescanRequested, !wakeRequested, DispatchTime.now().uptimeNanoseconds &- idleSince >= idleFor
            {
                roundHere = true
                admission = .roundHere
                return false  // the writer sleeps on: this round needs it only for its fsync
            }
            pending.append(item)
            admission = .queued
            return true
        }
        return admission
    }

    /// Hands the writer frames a round here committed: it fsyncs, then tells them how it went.
    func awaitSync(_ afterSync: @escaping AfterSync) {
        _ = wakingAfter {
            awaitingSync.append(afterSync)
            return true
        }
    }

    /// Ends the round `admit` allowed; the writer goes on with what was queued meanwhile.
    func endHere() {
        _ = wakingAfter {
            roundHere = false
            return true
        }
    }

    /// Frames waiting for the next round.
    var queuedCount: Int {
        condition.lock()
        defer { condition.unlock() }
        return pending.count
    }

    /// Asks the commit thread to finish; it commits what is queued, then `close` refuses the rest.
    func requestStop() {
        _ = wakingAfter {
            stopping = true
            return true
        }
    }

    /// Waits until something is queued, a stop is requested or `deadline` passes, then takes up
    /// to `limit` frames in arrival order (the rest waits for the next call), every job, and the
    /// frames of rounds run elsewhere that await an fsync. While a round runs on another thread
    /// (`admit`) only the latter are taken. `rescan` tells whether a rescan was requested
    /// since the last call.
    func next(limit: Int, deadline: Date) -> (batch: [Spool.Pending], jobs: [Job], awaitingSync: [AfterSync], stopping: Bool, rescan: Bool) {
        condition.lock()
        defer { condition.unlock() }
        idleSince = DispatchTime.now().uptimeNanoseconds
        while awaitingSync.isEmpty && (roundHere || (pending.isEmpty && jobs.isEmpty && !stopping && !rescanRequested && !wakeRequested)) {
            if !roundHere { guard Date() < deadline else { break } }
            sleeping = true
            if roundHere { condition.wait() } else { _ = condition.wait(until: deadline) }
            sleeping = false
        }
        let synced = awaitingSync
        awaitingSync = []
        if roundHere { return ([], [], synced, false, false) }
        wakeRequested = false
        let taken = jobs
        jobs = []
        let rescan = rescanRequested
        rescanRequested = false
        if pending.count <= limit {
            defer { pending = [] }
            return (pending, taken, synced, stopping, rescan)
        }
        let batch = Array(pending.prefix(limit))
        pending.removeFirst(limit)
        return (batch, taken, synced, stopping, rescan)
    }

    /// Refuses later appends and returns what is still queued.
    func close() -> (batch: [Spool.Pending], jobs: [Job], awaitingSync: [AfterSync]) {
        condition.lock()
        defer { condition.unlock() }
        closed = true
        defer {
            pending = []
            jobs = []
            awaitingSync = []
        }
        return (pending, jobs, awaitingSync)
    }
}

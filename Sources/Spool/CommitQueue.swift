import Foundation

/// The hand-off between `Spool.submit` (any thread, never blocks on I/O) and the spool's commit
/// thread, which sleeps on a condition variable while there is nothing to commit.
///
/// A condition variable rather than a continuation: the commit thread is a plain thread, so that
/// its writes and syncs never occupy one of Swift concurrency's few cooperative threads.
final class CommitQueue: @unchecked Sendable {
    // Every stored property below is guarded by `condition`.
    private let condition = NSCondition()
    private var pending: [Spool.Pending] = []
    private var syncs: [SyncRequest] = []
    /// When the oldest waiting sync request came in.
    private var syncsSince: Date?
    private var running = false
    private var stopping = false
    private var closed = false
    private var sleeping = false

    /// Queues `item` and wakes the commit thread; false once the queue is closed.
    func append(_ item: Spool.Pending) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard !closed else { return false }
        pending.append(item)
        // Frames that arrive while a commit runs need no wake-up: the thread looks again after it.
        if sleeping { condition.signal() }
        return true
    }

    /// How long sync requests wait for frames to share a filesystem sync with.
    static let syncDelay: TimeInterval = 0.01

    /// Directories whose changes (made before the request) must become durable, and who to tell.
    struct SyncRequest {
        var folders: Set<String>
        var completion: @Sendable (SpoolError?) -> Void
    }

    /// Hands `request` to the commit thread, whose next filesystem sync covers it (or which syncs
    /// the folders itself when it has nothing to write); false when that thread is not running.
    func appendSync(_ request: SyncRequest) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard running, !closed else { return false }
        if syncs.isEmpty { syncsSince = Date() }
        syncs.append(request)
        if sleeping { condition.signal() }
        return true
    }

    /// Called by the commit thread as it starts.
    func markRunning() {
        condition.lock()
        running = true
        condition.unlock()
    }

    /// Asks the commit thread to finish; it commits what is queued, then `close` refuses the rest.
    func requestStop() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    /// Waits until something is queued, a stop is requested or `deadline` passes, then takes up
    /// to `limit` items in arrival order (the rest waits for the next call).
    /// Sync requests are all taken each time; alone, they wait up to `syncDelay` for frames, whose
    /// filesystem sync then covers them too, so that a quiet moment's directory fsync does not hold
    /// up the frames arriving just after it.
    func next(limit: Int, deadline: Date) -> (batch: [Spool.Pending], syncs: [SyncRequest], stopping: Bool) {
        condition.lock()
        defer { condition.unlock() }
        while pending.isEmpty && !stopping {
            let wake = syncsSince.map { min(deadline, $0.addingTimeInterval(Self.syncDelay)) } ?? deadline
            guard Date() < wake else { break }
            sleeping = true
            _ = condition.wait(until: wake)
            sleeping = false
        }
        let requests = syncs
        syncs = []
        syncsSince = nil
        if pending.count <= limit {
            defer { pending = [] }
            return (pending, requests, stopping)
        }
        let batch = Array(pending.prefix(limit))
        pending.removeFirst(limit)
        return (batch, requests, stopping)
    }

    /// Refuses later appends and returns what is still queued.
    func close() -> (batch: [Spool.Pending], syncs: [SyncRequest]) {
        condition.lock()
        defer { condition.unlock() }
        closed = true
        defer {
            pending = []
            syncs = []
            syncsSince = nil
        }
        return (pending, syncs)
    }
}

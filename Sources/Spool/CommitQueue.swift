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

    /// Asks the commit thread to finish; it commits what is queued, then `close` refuses the rest.
    func requestStop() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    /// Waits until something is queued, a stop is requested or `deadline` passes, then takes up
    /// to `limit` items in arrival order (the rest waits for the next call).
    func next(limit: Int, deadline: Date) -> (batch: [Spool.Pending], stopping: Bool) {
        condition.lock()
        defer { condition.unlock() }
        while pending.isEmpty && !stopping && Date() < deadline {
            sleeping = true
            _ = condition.wait(until: deadline)
            sleeping = false
        }
        if pending.count <= limit {
            defer { pending = [] }
            return (pending, stopping)
        }
        let batch = Array(pending.prefix(limit))
        pending.removeFirst(limit)
        return (batch, stopping)
    }

    /// Refuses later appends and returns what is still queued.
    func close() -> [Spool.Pending] {
        condition.lock()
        defer { condition.unlock() }
        closed = true
        defer { pending = [] }
        return pending
    }
}

import Foundation

/// The hand-off between the spool's two intake threads: the writer puts each batch's files into
/// `tmp/` and passes them here; the syncer makes them durable, links them into `new/` and completes
/// their frames. Each side works while the other waits for the disk, so a burst keeps both cores
/// busy with file work instead of one thread alternating between writing and waiting.
final class SyncStage: @unchecked Sendable {
    typealias Failure = (name: EntryName, pending: Spool.Pending, error: SpoolError)

    /// Files written to `tmp/`, not yet durable, with the frames waiting on them.
    struct Batch {
        var written: [(name: EntryName, file: String, pending: Spool.Pending)] = []
        /// Frames whose file could not be written; completed by the syncer, in order with the rest.
        var failures: [Failure] = []
        var syncs: [CommitQueue.SyncRequest] = []

        var isEmpty: Bool { written.isEmpty && failures.isEmpty && syncs.isEmpty }

        mutating func append(_ other: Batch) {
            written += other.written
            failures += other.failures
            syncs += other.syncs
        }
    }

    /// The writer waits when this many batches are queued: the syncer takes them all at once, so
    /// more would only grow the next sync.
    static let maximumQueued = 2

    // Every stored property below is guarded by `condition`.
    private let condition = NSCondition()
    private var queued: [Batch] = []
    private var finished = false

    /// Queues `batch` for the syncer, first waiting while it is `maximumQueued` batches behind.
    func hand(_ batch: Batch) {
        condition.lock()
        defer { condition.unlock() }
        while queued.count >= Self.maximumQueued { condition.wait() }
        queued.append(batch)
        condition.broadcast()
    }

    /// The writer has stopped: the syncer drains what is queued, then its `take` returns nil.
    func finish() {
        condition.lock()
        finished = true
        condition.broadcast()
        condition.unlock()
    }

    /// Waits for queued batches and takes them all as one; nil once finished and drained.
    func take() -> Batch? {
        condition.lock()
        defer { condition.unlock() }
        while queued.isEmpty && !finished { condition.wait() }
        guard !queued.isEmpty else { return nil }
        var merged = Batch()
        for batch in queued { merged.append(batch) }
        queued = []
        condition.broadcast()
        return merged
    }

    /// Whether a batch is queued already: the syncer's next round then starts at once, and its
    /// filesystem sync can stand in for this round's directory sync.
    var hasQueued: Bool {
        condition.lock()
        defer { condition.unlock() }
        return !queued.isEmpty
    }
}

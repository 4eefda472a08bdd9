import Dispatch
import Logging
import Synchronization

/// Copies the write-ahead log back into the database beside the writer rather than in its way.
///
/// SQLite's automatic checkpoint runs inside the COMMIT that crosses its threshold: that round's
/// frames, and every frame arriving meanwhile, waited for megabytes copied and the database
/// fsynced, which made the tail of the ack latency. Here, while traffic is light, the writer's
/// commit only asks (`walCommitted`), and the copy runs on a queue of its own with a connection
/// of its own while the writer goes on committing (WAL allows one checkpoint beside one writer).
/// The log starts over in the writer's first commit after a checkpoint that copied all of it,
/// unless a checkpoint is running then; so the next is asked for only after `catchUpPages` more,
/// which also lets one that commits overtook be followed by a short one that catches up.
///
/// Under a burst the writer checkpoints in its own commit, as SQLite would: a checkpoint beside
/// a writer that adds large rounds all the time never catches up, and each try copies the hot
/// pages again and fsyncs the database again, which cost the burst CPU; frames queue behind the
/// writer anyway. The same happens when the log reaches `inlinePages`, so it stays bounded.
final class WALCheckpointer: @unchecked Sendable {
    /// Pages in the log at which a checkpoint is due. Large, so that a page written by many
    /// rounds is copied once per checkpoint rather than once per round.
    static let requestPages: Int32 = 4000
    /// New pages after a checkpoint before the next is asked for.
    static let catchUpPages: Int32 = 32
    /// A commit adding this many pages (a round of some twenty messages) means a burst.
    static let burstRoundPages: Int32 = 64
    /// Pages past which the writer checkpoints in its own commit whatever the traffic.
    static let inlinePages: Int32 = 16000

    private let path: String
    private let logger: Logger
    private let queue = DispatchQueue(label: "dingstream.spool.checkpoint", qos: .utility)
    /// Opened on the first checkpoint: an idle daemon never needs it. Touched only on `queue`.
    private var connection: SQLiteConnection?
    private var closed = false
    private var lastFailure: SpoolError.Code?
    private let scheduled = Atomic<Bool>(false)
    /// Pages in the log after the previous commit; touched only on the writer's thread.
    private(set) var logPages: Int32 = 0
    /// Pages in the log when the last checkpoint ended (0 once the log started over).
    private let checkpointedPages = Atomic<Int32>(0)

    init(path: String, logger: Logger) {
        self.path = path
        self.logger = logger
    }

    /// Called by the writer's connection after each commit with the pages now in the log.
    /// - Returns: true when the writer should checkpoint itself now.
    func walCommitted(pages: Int32) -> Bool {
        // Less than before: the log started over.
        let added = pages - logPages
        logPages = pages
        if added < 0 { checkpointedPages.store(0, ordering: .relaxed) }
        if pages >= Self.inlinePages { return true }
        guard pages >= Self.requestPages, pages >= checkpointedPages.load(ordering: .relaxed) + Self.catchUpPages else { return false }
        if added >= Self.burstRoundPages { return true }
        if scheduled.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged {
            queue.async { self.checkpoint() }
        }
        return false
    }

    /// Waits for a running checkpoint and closes the connection; later requests do nothing.
    func close() {
        queue.sync {
            closed = true
            connection = nil
        }
    }

    private func checkpoint() {
        defer { scheduled.store(false, ordering: .releasing) }
        guard !closed else { return }
        do throws(SpoolError) {
            if connection == nil {
                let opened = try SQLiteConnection(path: path, create: false)
                // A connection finds out that the file is in WAL mode on its first read; until
                // then a checkpoint does nothing.
                _ = try opened.integer("PRAGMA user_version")
                connection = opened
            }
            guard let connection else { return }
            checkpointedPages.store(try connection.checkpoint(), ordering: .relaxed)
            if lastFailure != nil {
                lastFailure = nil
                logger.notice("spool: checkpoints of \(path) work again", metadata: ["spool.path": "\(path)"])
            }
        } catch {
            // Busy: another connection (a `dingstream spool` command) is checkpointing.
            guard error.code != .locked, error.code != lastFailure else { return }
            lastFailure = error.code
            connection = nil
            logger.warning(
                "\(error); the write-ahead log grows until a checkpoint succeeds (messages are still stored)",
                metadata: ["spool.path": "\(path)"])
        }
    }
}

import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Runs the dispatcher's blocking spool calls (peek, claim, complete, retryLater, deadLetter) in
/// order on a thread of its own, off Swift's cooperative threads, and batches their directory
/// syncs: every job taken in one round runs, the folders they changed are synced once, and only
/// then is each job told how it ended. A state change is thus still durable before its caller
/// goes on, at one directory fsync per round rather than two per message. While the spool's
/// commit thread runs, the round's syncs go to it: its next filesystem sync covers them, so that
/// the dispatcher adds no journal commits of its own to those of the intake.
///
/// The thread runs at a lower priority (nice +5) than the intake: when the CPU is short, acks
/// (which DingTalk redelivers if late, adding load) go first and handling catches up after. It
/// ends after a second without work and is started again by the next job.
final class SpoolIOQueue: Sendable {
    /// Runs on the queue; returns what to do once the round's directory syncs are done (given the
    /// first sync failure, if any).
    typealias Job = @Sendable () -> @Sendable (SpoolError?) -> Void

    /// Folders whose sync the current round owes; touched only on the queue's thread.
    final class Round: @unchecked Sendable {
        var folders: Set<String> = []
    }

    private struct State {
        var jobs: [Job] = []
        var threadRunning = false
    }

    private static let roundKey = "dingstream.spool.round"
    static let niceness: Int32 = 5
    private let round = Round()
    private let condition = NSCondition()
    // Guarded by `condition`.
    nonisolated(unsafe) private var state = State()
    private let commits: CommitQueue

    init(commits: CommitQueue) {
        self.commits = commits
    }

    /// The round being run when called from a job of this queue, else nil (sync at once).
    static var currentRound: Round? { Thread.current.threadDictionary[roundKey] as? Round }

    func enqueue(_ job: @escaping Job) {
        condition.lock()
        state.jobs.append(job)
        let start = !state.threadRunning
        state.threadRunning = true
        condition.signal()
        condition.unlock()
        guard start else { return }
        let thread = Thread { [self] in
            // On Linux the nice value is per thread, and 0 names the calling one.
            _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, Self.niceness)
            FileIO.nameThread("spool-io")
            Thread.current.threadDictionary[Self.roundKey] = round
            drain()
        }
        thread.name = "spool-io"
        thread.start()
    }

    private func drain() {
        while true {
            condition.lock()
            let idleUntil = Date().addingTimeInterval(1)
            while state.jobs.isEmpty && Date() < idleUntil { _ = condition.wait(until: idleUntil) }
            let jobs = state.jobs
            state.jobs = []
            if jobs.isEmpty { state.threadRunning = false }
            condition.unlock()
            if jobs.isEmpty { return }
            let finishes = jobs.map { $0() }
            let folders = round.folders
            round.folders.removeAll(keepingCapacity: true)
            let finishAll: @Sendable (SpoolError?) -> Void = { failure in for finish in finishes { finish(failure) } }
            if folders.isEmpty || commits.appendSync(CommitQueue.SyncRequest(folders: folders, completion: finishAll)) {
                if folders.isEmpty { finishAll(nil) }
                continue
            }
            var failure: SpoolError?
            for folder in folders.sorted() {
                do {
                    try FileIO.syncDirectory(folder)
                } catch {
                    failure = failure ?? error
                }
            }
            finishAll(failure)
        }
    }
}

extension Spool {
    /// Runs `body` on the spool's I/O queue (see `SpoolIOQueue`); state changes made there have
    /// their directories synced, batched with other calls, before this returns.
    /// - Throws: what `body` throws, or the failed directory sync (the change is then made but
    ///   maybe not durable, as when a synchronous call fails at its sync).
    public func onIOQueue<T: Sendable>(_ body: @escaping @Sendable () throws(SpoolError) -> T) async throws(SpoolError) -> T {
        let result: Result<T, SpoolError> = await withCheckedContinuation { continuation in
            io.enqueue {
                let result = Result { () throws(SpoolError) -> T in try body() }
                return { syncFailure in
                    if case .success = result, let syncFailure {
                        continuation.resume(returning: .failure(syncFailure))
                    } else {
                        continuation.resume(returning: result)
                    }
                }
            }
        }
        return try result.get()
    }

    /// Runs `body` on the spool's I/O queue, in order with the other calls there, and returns at once.
    public func onIOQueue(_ body: @escaping @Sendable () -> Void) {
        io.enqueue {
            body()
            return { _ in }
        }
    }

    /// Syncs `folder` now, or, on the I/O queue, once at the end of the current round.
    func syncDirectorySoon(_ folder: String) throws(SpoolError) {
        if let round = SpoolIOQueue.currentRound {
            round.folders.insert(folder)
        } else {
            try FileIO.syncDirectory(folder)
        }
    }
}

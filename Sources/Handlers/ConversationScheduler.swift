import Synchronization

/// Runs jobs with bounded concurrency: at most `workers` at once, jobs of one conversation
/// strictly one at a time in submission order, different conversations in parallel.
///
/// Only the head job of each conversation competes for a worker, so a slow conversation holds
/// at most one worker and never delays another conversation's queued jobs beyond that. Queued
/// jobs are closures in memory, not tasks.
///
/// A job that can start starts in `submit`, and a worker that finishes takes the next ready
/// job itself: no scheduling task sits between them, since every hand-off between threads
/// costs a wake-up, and those add up on the way from a message to its reply. A job submitted
/// with `startHere` even runs its first steps on the submitting thread, up to its first wait.
public final class ConversationScheduler: Sendable {
    public struct Snapshot: Sendable, Equatable {
        /// Jobs submitted and not yet started.
        public var queued: Int
        /// Jobs running now.
        public var running: Int
    }

    public typealias Job = @Sendable () async -> Void

    /// A job and the executor it prefers (nil: the global one).
    private struct Queued {
        var job: Job
        var executor: (any TaskExecutor)?
    }

    private struct State {
        var queues: [String: [Queued]] = [:]
        /// Conversations whose head job may start, in the order they became ready.
        var ready: [String] = []
        /// Conversations with a job running.
        var busy: Set<String> = []
        var queued = 0
        var running = 0
        var workers: Int
        /// `run()` has begun: jobs start as they come.
        var started = false
        var shuttingDown = false
        /// The worker tasks, so that cancelling `run()` cancels the jobs they run.
        var tasks: [Int: Task<Void, Never>] = [:]
        /// Workers started and not ended; a task is registered in `tasks` only after it starts.
        var live: Set<Int> = []
        var nextTaskID = 0
        /// `run()` was cancelled: a task registered after that is cancelled at once.
        var cancelled = false
        /// `run()` waiting for the last worker after `shutdown()`.
        var drained: CheckedContinuation<Void, Never>?
    }

    /// Jobs that may run at once.
    public var workers: Int { state.withLock { $0.workers } }
    private let state: Mutex<State>

    public init(workers: Int) {
        state = Mutex(State(workers: max(1, workers)))
    }

    /// Queues `job` behind earlier jobs of `conversation`, and starts it at once when a worker is
    /// free and the conversation idle. With `urgent` (card callbacks, whose ack waits for the
    /// answer) the conversation takes the next free worker ahead of the others. With `startHere`
    /// a job that starts at once runs on the calling thread until it first waits (for a job whose
    /// first steps are short and end in I/O: it goes out without waking another thread first).
    /// After a wait the job goes on on `executor` (the event loop its I/O is answered on), else
    /// on the global executor. Returns false (and drops the job) after `shutdown()`.
    @discardableResult
    public func submit(
        conversation: String, urgent: Bool = false, startHere: Bool = false, executor: (any TaskExecutor)? = nil, job: @escaping Job
    ) -> Bool {
        let (accepted, starts) = state.withLock { state -> (Bool, [WorkerStart]) in
            guard !state.shuttingDown else { return (false, []) }
            if state.queues[conversation, default: []].isEmpty && !state.busy.contains(conversation) {
                if urgent { state.ready.insert(conversation, at: 0) } else { state.ready.append(conversation) }
            }
            state.queues[conversation, default: []].append(Queued(job: job, executor: executor))
            state.queued += 1
            return (true, startWorkers(&state))
        }
        launch(starts, here: startHere)
        return accepted
    }

    /// Changes how many jobs may run at once (a reload). More start at once; with fewer, running
    /// jobs finish and no new one starts until the count is below the new limit.
    public func setWorkers(_ workers: Int) {
        let starts = state.withLock { state in
            state.workers = max(1, workers)
            return startWorkers(&state)
        }
        launch(starts)
    }

    /// Stops starting jobs; `run()` returns once the running ones finished. Queued jobs are
    /// dropped (the spool still holds their messages).
    public func shutdown() {
        let drained = state.withLock { state in
            state.shuttingDown = true
            return takeDrainedWaiter(&state)
        }
        drained?.resume()
    }

    /// For jobs about to be submitted for `conversations`, in this order: whether each would
    /// start at once (a worker free for it, its conversation idle, nothing of it queued or
    /// earlier in the list). A prediction for a caller that submits them right after and is
    /// the only one submitting: workers only free up meanwhile.
    public func wouldStart(_ conversations: [String]) -> [Bool] {
        state.withLock { state in
            guard state.started, !state.shuttingDown else { return conversations.map { _ in false } }
            var free = state.workers - state.running
            var seen: Set<String> = []
            return conversations.map { conversation in
                guard seen.insert(conversation).inserted, free > 0, !state.busy.contains(conversation), state.queues[conversation] == nil else { return false }
                free -= 1
                return true
            }
        }
    }

    public var snapshot: Snapshot {
        state.withLock { Snapshot(queued: $0.queued, running: $0.running) }
    }

    /// Starts the jobs submitted so far, and later ones as they come, until `shutdown()` (then it
    /// returns once the running jobs finished) or cancellation of the calling task (which
    /// cancels the running jobs and waits for them).
    public func run() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (drained: CheckedContinuation<Void, Never>) in
                let (starts, now) = state.withLock { state in
                    state.started = true
                    state.drained = drained
                    return (startWorkers(&state), takeDrainedWaiter(&state))
                }
                launch(starts)
                now?.resume()
            }
        } onCancel: {
            // `run()` returns once the cancelled jobs have ended (`finished` resumes it).
            let (tasks, drained) = state.withLock { state in
                state.shuttingDown = true
                state.cancelled = true
                return (Array(state.tasks.values), takeDrainedWaiter(&state))
            }
            for task in tasks { task.cancel() }
            drained?.resume()
        }
    }

    private typealias WorkerStart = (id: Int, first: (conversation: String, job: Queued))

    /// Takes the jobs that may start now, each for a new worker; `launch` starts them once the
    /// lock is released (a job started here may end, and take the lock, before it returns).
    private func startWorkers(_ state: inout State) -> [WorkerStart] {
        guard state.started else { return [] }
        var starts: [WorkerStart] = []
        while let first = nextJob(&state) {
            let id = state.nextTaskID
            state.nextTaskID += 1
            state.live.insert(id)
            starts.append((id, first))
        }
        return starts
    }

    private func launch(_ starts: [WorkerStart], here: Bool = false) {
        for (id, first) in starts {
            let preferred = first.job.executor
            let work: @Sendable () async -> Void = { [self] in
                var current: (conversation: String, job: Queued)? = first
                var isFirst = true
                while let (conversation, queued) = current {
                    if isFirst || (preferred == nil && queued.executor == nil) {
                        await queued.job()
                    } else {
                        // Each job on the executor it prefers, not on the one the worker began with.
                        await withTaskExecutorPreference(queued.executor ?? globalConcurrentExecutor) { await queued.job() }
                    }
                    isFirst = false
                    // The worker goes on with the next ready job, of any conversation.
                    current = finished(conversation, worker: id)
                }
            }
            let task =
                here
                ? Task.immediateDetached(executorPreference: preferred, operation: work)
                : Task.detached(executorPreference: preferred, operation: work)
            let cancel = state.withLock { state in
                guard state.live.contains(id) else { return false }  // already ended
                state.tasks[id] = task
                return state.cancelled
            }
            if cancel { task.cancel() }
        }
    }

    private func nextJob(_ state: inout State) -> (conversation: String, job: Queued)? {
        guard !state.shuttingDown, state.running < state.workers, !state.ready.isEmpty else { return nil }
        let conversation = state.ready.removeFirst()
        guard var queue = state.queues[conversation], !queue.isEmpty else { return nil }
        let job = queue.removeFirst()
        state.queues[conversation] = queue.isEmpty ? nil : queue
        state.busy.insert(conversation)
        state.queued -= 1
        state.running += 1
        return (conversation, job)
    }

    /// Ends a job; returns the worker's next one, or nil when it ends (its task unregistered).
    private func finished(_ conversation: String, worker: Int) -> (conversation: String, job: Queued)? {
        let (next, drained) = state.withLock { state -> ((conversation: String, job: Queued)?, CheckedContinuation<Void, Never>?) in
            state.running -= 1
            state.busy.remove(conversation)
            if let queue = state.queues[conversation], !queue.isEmpty {
                state.ready.append(conversation)
            }
            if let next = nextJob(&state) { return (next, nil) }
            state.tasks[worker] = nil
            state.live.remove(worker)
            return (nil, takeDrainedWaiter(&state))
        }
        drained?.resume()
        return next
    }

    private func takeDrainedWaiter(_ state: inout State) -> CheckedContinuation<Void, Never>? {
        guard state.shuttingDown, state.running == 0 else { return nil }
        defer { state.drained = nil }
        return state.drained
    }
}

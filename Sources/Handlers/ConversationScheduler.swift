import Synchronization

/// Runs jobs with bounded concurrency: at most `workers` at once, jobs of one conversation
/// strictly one at a time in submission order, different conversations in parallel.
///
/// Only the head job of each conversation competes for a worker, so a slow conversation holds
/// at most one worker and never delays another conversation's queued jobs beyond that. `run()`
/// keeps at most `workers` child tasks; queued jobs are closures in memory, not tasks.
public final class ConversationScheduler: Sendable {
    public struct Snapshot: Sendable, Equatable {
        /// Jobs submitted and not yet started.
        public var queued: Int
        /// Jobs running now.
        public var running: Int
    }

    public typealias Job = @Sendable () async -> Void

    private struct State {
        var queues: [String: [Job]] = [:]
        /// Conversations whose head job may start, in the order they became ready.
        var ready: [String] = []
        /// Conversations with a job running.
        var busy: Set<String> = []
        var queued = 0
        var running = 0
        var workers: Int
        var shuttingDown = false
    }

    /// Jobs that may run at once.
    public var workers: Int { state.withLock { $0.workers } }
    private let state: Mutex<State>
    private let wakeups: AsyncStream<Void>
    private let wake: AsyncStream<Void>.Continuation

    public init(workers: Int) {
        state = Mutex(State(workers: max(1, workers)))
        // One buffered wake-up is enough: each wake-up starts everything that can start.
        (wakeups, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Queues `job` behind earlier jobs of `conversation`. With `urgent` (card callbacks, whose
    /// ack waits for the answer) the conversation takes the next free worker ahead of the others.
    /// Returns false (and drops the job) after `shutdown()`.
    @discardableResult
    public func submit(conversation: String, urgent: Bool = false, job: @escaping Job) -> Bool {
        let accepted = state.withLock { state in
            guard !state.shuttingDown else { return false }
            if state.queues[conversation, default: []].isEmpty && !state.busy.contains(conversation) {
                if urgent { state.ready.insert(conversation, at: 0) } else { state.ready.append(conversation) }
            }
            state.queues[conversation, default: []].append(job)
            state.queued += 1
            return true
        }
        if accepted { wake.yield() }
        return accepted
    }

    /// Changes how many jobs may run at once (a reload). More start at once; with fewer, running
    /// jobs finish and no new one starts until the count is below the new limit.
    public func setWorkers(_ workers: Int) {
        state.withLock { $0.workers = max(1, workers) }
        wake.yield()
    }

    /// Stops starting jobs; `run()` returns once the running ones finished. Queued jobs are
    /// dropped (the spool still holds their messages).
    public func shutdown() {
        state.withLock { $0.shuttingDown = true }
        wake.yield()
    }

    public var snapshot: Snapshot {
        state.withLock { Snapshot(queued: $0.queued, running: $0.running) }
    }

    /// Starts jobs as workers free up, until `shutdown()` (after running jobs finish) or
    /// cancellation of the calling task (which cancels the running jobs and waits for them).
    public func run() async {
        await withDiscardingTaskGroup { group in
            for await _ in wakeups {
                while let (conversation, job) = nextJob() {
                    group.addTask {
                        await job()
                        self.finished(conversation)
                    }
                }
                if state.withLock({ $0.shuttingDown && $0.running == 0 }) { break }
            }
        }
    }

    private func nextJob() -> (String, Job)? {
        state.withLock { state in
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
    }

    private func finished(_ conversation: String) {
        state.withLock { state in
            state.running -= 1
            state.busy.remove(conversation)
            if let queue = state.queues[conversation], !queue.isEmpty {
                state.ready.append(conversation)
            }
        }
        wake.yield()
    }
}

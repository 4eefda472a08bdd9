import Foundation
import Synchronization
import Testing

@testable import Handlers

/// A one-shot gate jobs can wait on.
final class Gate: Sendable {
    private let state = Mutex<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func wait() async {
        await withCheckedContinuation { continuation in
            let resumeNow = state.withLock { state in
                if state.open { return true }
                state.waiters.append(continuation)
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }

    func open() {
        let waiters = state.withLock { state in
            state.open = true
            defer { state.waiters = [] }
            return state.waiters
        }
        waiters.forEach { $0.resume() }
    }
}

final class EventLog: Sendable {
    private let state = Mutex<(events: [String], running: Int, maxRunning: Int)>(([], 0, 0))

    func record(_ event: String) { state.withLock { $0.events.append(event) } }
    func enter() { state.withLock { $0.running += 1; $0.maxRunning = max($0.maxRunning, $0.running) } }
    func leave() { state.withLock { $0.running -= 1 } }
    var events: [String] { state.withLock { $0.events } }
    var maxRunning: Int { state.withLock { $0.maxRunning } }
}

@Suite struct ConversationSchedulerTests {
    @Test(.timeLimit(.minutes(1)))
    func perConversationOrderUnderConcurrency() async throws {
        let scheduler = ConversationScheduler(workers: 3)
        let log = EventLog()
        let done = Gate()
        let total = 5 * 40
        let finished = Mutex(0)
        for index in 0..<40 {
            for conversation in ["a", "b", "c", "d", "e"] {
                scheduler.submit(conversation: conversation) {
                    log.enter()
                    log.record("\(conversation) start \(index)")
                    await Task.yield()
                    log.record("\(conversation) end \(index)")
                    log.leave()
                    if finished.withLock({ $0 += 1; return $0 }) == total { done.open() }
                }
            }
        }
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { await scheduler.run() }
            await done.wait()
            scheduler.shutdown()
        }
        let events = log.events
        #expect(events.count == 2 * total)
        for conversation in ["a", "b", "c", "d", "e"] {
            let mine = events.filter { $0.hasPrefix(conversation + " ") }
            // Strictly sequential: start i, end i, start i+1…
            let expected = (0..<40).flatMap { ["\(conversation) start \($0)", "\(conversation) end \($0)"] }
            #expect(mine == expected)
        }
        #expect(log.maxRunning <= 3)
    }

    @Test(.timeLimit(.minutes(1)))
    func aSlowConversationDoesNotBlockOthers() async throws {
        // a1 only finishes after all of b has run. With two workers, a design that lets a2 wait
        // for a1 inside a worker slot would deadlock here (and hit the time limit).
        let scheduler = ConversationScheduler(workers: 2)
        let log = EventLog()
        let bDone = Gate()
        let allDone = Gate()
        scheduler.submit(conversation: "a") {
            log.record("a1 start")
            await bDone.wait()
            log.record("a1 end")
        }
        scheduler.submit(conversation: "a") {
            log.record("a2")
            allDone.open()
        }
        for index in 1...3 {
            scheduler.submit(conversation: "b") {
                log.record("b\(index)")
                if index == 3 { bDone.open() }
            }
        }
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { await scheduler.run() }
            await allDone.wait()
            scheduler.shutdown()
        }
        let events = log.events
        #expect(events.filter { $0.hasPrefix("b") } == ["b1", "b2", "b3"])
        let a1End = try #require(events.firstIndex(of: "a1 end"))
        let b3 = try #require(events.firstIndex(of: "b3"))
        #expect(b3 < a1End)
        #expect(events.last == "a2")
    }

    @Test(.timeLimit(.minutes(1)))
    func neverMoreThanWorkersAtOnce() async throws {
        let scheduler = ConversationScheduler(workers: 2)
        let log = EventLog()
        let bothRunning = Gate()
        let started = Mutex(0)
        let finished = Mutex(0)
        let done = Gate()
        for index in 0..<6 {
            scheduler.submit(conversation: "c\(index)") {
                log.enter()
                // The first two wait for each other: proves two really run at once.
                if started.withLock({ $0 += 1; return $0 }) == 2 { bothRunning.open() }
                await bothRunning.wait()
                log.leave()
                if finished.withLock({ $0 += 1; return $0 }) == 6 { done.open() }
            }
        }
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { await scheduler.run() }
            await done.wait()
            scheduler.shutdown()
        }
        #expect(log.maxRunning == 2)
        #expect(scheduler.snapshot == .init(queued: 0, running: 0))
        #expect(!scheduler.submit(conversation: "late") {})
    }

    /// A reload's new `workers` counts at once: with one worker, three waiting jobs of three
    /// conversations run one at a time; raised to three, all three run together (each waits for
    /// the others, so the test only ends when they do).
    @Test(.timeLimit(.minutes(1)))
    func moreWorkersLetQueuedJobsStartAtOnce() async throws {
        let scheduler = ConversationScheduler(workers: 1)
        let firstRunning = Gate()
        let allRunning = Gate()
        let started = Mutex(0)
        let finished = Mutex(0)
        let done = Gate()
        for index in 0..<3 {
            scheduler.submit(conversation: "c\(index)") {
                let count = started.withLock { $0 += 1; return $0 }
                if count == 1 { firstRunning.open() }
                if count == 3 { allRunning.open() }
                await allRunning.wait()
                if finished.withLock({ $0 += 1; return $0 }) == 3 { done.open() }
            }
        }
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { await scheduler.run() }
            await firstRunning.wait()
            #expect(scheduler.snapshot == .init(queued: 2, running: 1))
            scheduler.setWorkers(3)
            #expect(scheduler.workers == 3)
            await done.wait()
            scheduler.shutdown()
        }
        #expect(started.withLock { $0 } == 3)
    }
}

/// Where jobs start and how they stop.
@Suite struct ConversationSchedulerStartTests {
    /// The thread a job's first step ran on, and the thread that submitted it.
    static func firstStepThread(startHere: Bool, scheduler: ConversationScheduler) async -> (submitter: pthread_t, job: pthread_t) {
        let done = Gate()
        let seen = Mutex<pthread_t?>(nil)
        let submitter = Mutex<pthread_t?>(nil)
        let thread = Thread {
            submitter.withLock { $0 = pthread_self() }
            scheduler.submit(conversation: "c", startHere: startHere) {
                seen.withLock { $0 = pthread_self() }
                await Task.yield()
                done.open()
            }
        }
        thread.start()
        await done.wait()
        return (submitter.withLock { $0! }, seen.withLock { $0! })
    }

    /// With `startHere` a job that can start runs on the submitting thread up to its first wait;
    /// without it, on one of Swift's cooperative threads.
    @Test(.timeLimit(.minutes(1)))
    func startHereRunsTheFirstStepsOnTheSubmittingThread() async throws {
        let scheduler = ConversationScheduler(workers: 2)
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { await scheduler.run() }
            // Jobs start only once `run()` does: wait for that with a first job.
            let started = Gate()
            scheduler.submit(conversation: "first") { started.open() }
            await started.wait()
            let here = await Self.firstStepThread(startHere: true, scheduler: scheduler)
            #expect(pthread_equal(here.submitter, here.job) != 0)
            let elsewhere = await Self.firstStepThread(startHere: false, scheduler: scheduler)
            #expect(pthread_equal(elsewhere.submitter, elsewhere.job) == 0)
            scheduler.shutdown()
        }
    }

    /// An executor that runs its jobs on a thread of its own, so a job can tell it is there.
    final class OwnThreadExecutor: TaskExecutor, @unchecked Sendable {
        let queue = DispatchQueue(label: "test.own-thread-executor")
        let key = DispatchSpecificKey<Bool>()
        init() { queue.setSpecific(key: key, value: true) }
        var isCurrent: Bool { DispatchQueue.getSpecific(key: key) == true }
        func enqueue(_ job: consuming ExecutorJob) {
            let job = UnownedJob(job)
            queue.async { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
        }
    }

    /// A job submitted with an executor goes on on it after it first waits; the job the same
    /// worker takes next does not (it runs on the global executor).
    @Test(.timeLimit(.minutes(1)))
    func aJobGoesOnOnItsExecutorAndTheNextJobOfItsWorkerDoesNot() async throws {
        let scheduler = ConversationScheduler(workers: 1)
        let executor = OwnThreadExecutor()
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { await scheduler.run() }
            let started = Gate()
            scheduler.submit(conversation: "first") { started.open() }
            await started.wait()
            let placed = Mutex<[String: Bool]>([:])
            let done = Gate()
            let release = Gate()
            scheduler.submit(conversation: "a", startHere: true, executor: executor) {
                await release.wait()
                placed.withLock { $0["a"] = executor.isCurrent }
            }
            // One worker: "b" waits for "a" and is taken by the same worker after it.
            scheduler.submit(conversation: "b") {
                await Task.yield()
                placed.withLock { $0["b"] = executor.isCurrent }
                done.open()
            }
            release.open()
            await done.wait()
            #expect(placed.withLock { $0 } == ["a": true, "b": false])
            scheduler.shutdown()
        }
    }

    /// Cancelling `run()` cancels the jobs that run and returns only once they have ended; a job
    /// queued behind them never starts.
    @Test(.timeLimit(.minutes(1)))
    func cancellingRunCancelsTheRunningJobsAndWaitsForThem() async throws {
        let scheduler = ConversationScheduler(workers: 1)
        let running = Gate()
        let log = EventLog()
        scheduler.submit(conversation: "a") {
            running.open()
            try? await Task.sleep(for: .seconds(300))
            log.record(Task.isCancelled ? "cancelled" : "slept")
        }
        scheduler.submit(conversation: "b") { log.record("b ran") }
        let runner = Task { await scheduler.run() }
        await running.wait()
        runner.cancel()
        await runner.value
        #expect(log.events == ["cancelled"])
        #expect(scheduler.snapshot.running == 0)
    }
}

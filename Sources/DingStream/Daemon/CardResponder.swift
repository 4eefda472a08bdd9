import Foundation
import Logging
import ServiceLifecycle
import Spool
import Synchronization

/// The fast path of card callbacks: the intake holds a committed card callback's ack here, the
/// dispatcher (which runs the card's handlers first, like any entry, so they run exactly once)
/// hands in the first JSON object a handler prints, and the ack goes out with it as `response`,
/// so the card updates at once. When no handler answers within `card_timeout` of the commit the
/// ack goes out with a null response and the handlers carry on; when they end without an answer
/// it goes out at once with null.
///
/// The two sides may arrive in either order (the spool announces an entry to the dispatcher
/// around the time it completes the intake), so an answer that comes first is kept until the
/// ack is registered. Answers nobody claims (the ack was never registered: a recovered entry, a
/// failed directory sync) are forgotten after `keep`.
final class CardResponder: Service {
    typealias Ack = @Sendable (_ response: String?) -> Void

    private struct State {
        /// Committed callbacks waiting for their ack.
        var waiting: [EntryName: Ack] = [:]
        /// Answers that came before the ack was registered.
        var early: [EntryName: (response: String?, at: ContinuousClock.Instant)] = [:]
        /// Entries whose ack went out or whose answer is kept: later answers are ignored.
        var settled: [EntryName: ContinuousClock.Instant] = [:]
        var stopped = false
    }

    private let state = Mutex(State())
    private let timeout: Mutex<Duration>
    private let deadlines: AsyncStream<(EntryName, ContinuousClock.Instant)>
    private let deadlineInput: AsyncStream<(EntryName, ContinuousClock.Instant)>.Continuation
    private let keep: Duration
    private let logger: Logger

    init(timeout: Duration, keep: Duration = .seconds(120), logger: Logger) {
        self.timeout = Mutex(timeout)
        self.keep = keep
        self.logger = logger
        (deadlines, deadlineInput) = AsyncStream.makeStream()
    }

    func update(timeout new: Duration) {
        timeout.withLock { $0 = new }
    }

    /// Intake: the card callback `name` is durable; `ack` sends its ack (exactly once).
    func committed(_ name: EntryName, ack: @escaping Ack) {
        let now = ContinuousClock.now
        let answer: String?? = state.withLock { state in
            prune(&state, now: now)
            if let early = state.early.removeValue(forKey: name) { return .some(early.response) }
            if state.stopped || state.settled[name] != nil { return .some(nil) }
            state.waiting[name] = ack
            return .none
        }
        if let answer {
            ack(answer)
            return
        }
        deadlineInput.yield((name, now + timeout.withLock { $0 }))
    }

    /// Dispatcher: a handler of `name` printed the JSON object `response`. Only the first
    /// answer counts.
    func answer(_ name: EntryName, response: String) {
        settle(name, response: response)
    }

    /// Dispatcher: the handlers of `name` are through (or will run again later); if no answer
    /// went out yet, the ack goes out now with a null response.
    func finished(_ name: EntryName) {
        settle(name, response: nil)
    }

    private func settle(_ name: EntryName, response: String?) {
        let now = ContinuousClock.now
        let ack: Ack? = state.withLock { state in
            guard state.settled[name] == nil else { return nil }
            state.settled[name] = now
            if let ack = state.waiting.removeValue(forKey: name) { return ack }
            state.early[name] = (response, now)
            return nil
        }
        ack?(response)
    }

    /// The deadline of `name` passed: ack with a null response, let the handlers finish.
    private func expire(_ name: EntryName) {
        let ack: Ack? = state.withLock { state in
            guard let ack = state.waiting.removeValue(forKey: name) else { return nil }
            state.settled[name] = .now
            return ack
        }
        guard let ack else { return }
        logger.notice(
            "card handlers did not answer within card_timeout; acked without a card update, they go on running",
            metadata: ["msg.key": "\(name)"])
        ack(nil)
    }

    private func prune(_ state: inout State, now: ContinuousClock.Instant) {
        let limit = now - keep
        if state.early.count > 0 { state.early = state.early.filter { $0.value.at > limit } }
        if state.settled.count > 0 { state.settled = state.settled.filter { $0.value > limit } }
    }

    /// Fires deadlines until shutdown; then acks whatever still waits with a null response (the
    /// entries are committed, their handlers run now or after the restart).
    func run() async throws {
        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                for await (name, deadline) in self.deadlines {
                    group.addTask {
                        try? await Task.sleep(until: deadline, clock: .continuous)
                        self.expire(name)
                    }
                }
            }
        }
        let waiting = state.withLock { state in
            state.stopped = true
            defer { state.waiting = [:] }
            return Array(state.waiting.values)
        }
        for ack in waiting { ack(nil) }
    }
}

import Logging
import ServiceLifecycle
import Synchronization

/// The end of a graceful stop: `shutdown_grace` after SIGTERM. Running handlers and reply
/// deliveries share it, so a reply made by a handler that ends during the grace still goes out
/// within it, and the dispatcher's wait and the outbox's do not add up to twice the grace.
final class StopDeadline: Sendable {
    private let state: Mutex<(grace: Duration, end: ContinuousClock.Instant?)>

    init(grace: Duration) { state = Mutex((grace, nil)) }

    /// A reload's new `shutdown_grace`; a stop already under way keeps its end.
    func update(grace: Duration) { state.withLock { $0.grace = grace } }

    var grace: Duration { state.withLock { $0.grace } }

    /// The end of the stop, fixed by the first call (the stop's start).
    @discardableResult
    func begin() -> ContinuousClock.Instant {
        state.withLock { state in
            if let end = state.end { return end }
            let end = ContinuousClock.now + state.grace
            state.end = end
            return end
        }
    }

    /// What is left of the grace (zero once it is over); starts it if it has not started.
    var remaining: Duration { max(.zero, begin() - .now) }

    /// `remaining` in whole seconds, rounded up, for log lines: "14s".
    var remainingText: String {
        let (seconds, attoseconds) = remaining.components
        return "\(seconds + (attoseconds > 0 ? 1 : 0))s"
    }
}

/// The first service to hear of a graceful stop (it is the last one started): it starts the
/// grace and says what the stop is waiting for, since closing the sockets and waiting for
/// handlers and replies can take the whole grace.
struct StopAnnouncer: Service {
    let deadline: StopDeadline
    /// Messages whose handlers are running, and entries in the outbox (replies to deliver).
    let pending: @Sendable () async -> (handlers: Int, replies: Int)
    let logger: Logger

    func run() async throws {
        do {
            try await gracefulShutdown()
        } catch {
            return  // cancelled: no graceful stop to announce
        }
        deadline.begin()
        let (handlers, replies) = await pending()
        let grace = DurationText.format(deadline.grace)
        if handlers == 0 && replies == 0 {
            logger.notice("stopping: closing the sockets; nothing is running and no reply waits")
        } else {
            logger.notice(
                "stopping: closing the sockets, then waiting up to \(grace) for the handlers of \(handlers) message\(handlers == 1 ? "" : "s") and the replies of \(replies) in the outbox to go out; what is left then is done after the next start")
        }
    }
}

import CoreMetrics
import Foundation
import Handlers
import Logging
import Replies
import ServiceLifecycle
import Spool
import StreamProtocol
import Synchronization

/// Delivers what handlers answered: every outbox entry goes out through the session
/// webhook or the OpenAPI, one conversation at a time, and moves it to done, or makes it a dead letter.
/// Delivery progress is written back so a restart resumes after the last part that went out.
final class OutboxSender: Service {
    private let spool: Spool
    private let deliverer: Mutex<ReplyDeliverer>
    private let logger: Logger
    private let stopDeadline: StopDeadline
    private let scheduler = ConversationScheduler(workers: 8)
    private let wakeStream: AsyncStream<Void>
    private let wakeContinuation: AsyncStream<Void>.Continuation
    private let inFlight = Mutex<Set<EntryName>>([])
    /// Entries offered while the stop drains the outbox.
    private let drainOffered = Mutex<Set<EntryName>>([])
    private let metrics: DaemonMetrics

    init(spool: Spool, deliverer: ReplyDeliverer, stopDeadline: StopDeadline, metrics: DaemonMetrics = .disabled, logger: Logger) {
        self.spool = spool
        self.stopDeadline = stopDeadline
        self.metrics = metrics
        self.deliverer = Mutex(deliverer)
        self.logger = logger
        (wakeStream, wakeContinuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    func update(_ new: ReplyDeliverer) { deliverer.withLock { $0 = new } }

    /// Called when something entered the outbox.
    func wake() { wakeContinuation.yield() }

    /// Delivers until graceful shutdown; then it goes on delivering what is in the outbox, replies
    /// of handlers that ended during the stop included, until the stop's deadline, and cancels
    /// what is still under way then (a DingTalk outage would otherwise hold the stop until
    /// systemd's SIGKILL). A cancelled delivery stays in the outbox for the next start.
    func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.scheduler.run() }
            await withGracefulShutdownHandler {
                wake()
                for await _ in wakeStream {
                    offerOutbox()
                }
            } onGracefulShutdown: { [wakeContinuation] in
                wakeContinuation.finish()
            }
            await drain()
            scheduler.shutdown()
            group.addTask { [stopDeadline] in try? await Task.sleep(for: stopDeadline.remaining) }
            await group.next()
            group.cancelAll()
        }
    }

    /// Offers the outbox until nothing in it waits for a delivery or the stop's deadline has passed.
    private func drain() async {
        let end = stopDeadline.begin()
        var told = false
        while ContinuousClock.now < end {
            // Offers what is not yet under way, each entry once: one whose delivery ended and is
            // still in the outbox could not record its end (a spool error), and sending it again
            // and again would only repeat the reply. The count includes what is under way.
            let waiting = (try? await spool.perform { [self] writer throws(SpoolError) in
                var waiting = 0
                for name in try writer.outboxEntries() {
                    if inFlight.withLock({ $0.contains(name) }) {
                        waiting += 1
                    } else if drainOffered.withLock({ $0.insert(name).inserted }) {
                        offer(name, writer: writer)
                        waiting += 1
                    }
                }
                return waiting
            }) ?? 0
            if waiting == 0 { return }
            if !told {
                logger.notice(
                    "stopping: delivering the replies of \(waiting) outbox entr\(waiting == 1 ? "y" : "ies") for up to \(stopDeadline.remainingText); what is left then is sent after the next start")
                told = true
            }
            try? await Task.sleep(for: min(.milliseconds(100), stopDeadline.remaining))
        }
    }

    /// Outbox entries taken for delivery and not finished yet.
    var running: Int { inFlight.withLock { $0.count } }

    /// Listing and reading are blocking database reads: the spool's writer thread does them.
    private func offerOutbox() {
        spool.perform { [self] writer in
            guard let names = try? writer.outboxEntries() else { return }
            for name in names { offer(name, writer: writer) }
        }
    }

    /// Runs on the spool's writer thread.
    private func offer(_ name: EntryName, writer: Spool.Writer) {
        guard inFlight.withLock({ $0.insert(name).inserted }) else { return }
        guard let row = try? writer.read(name), row.state == .outbox else {
            _ = inFlight.withLock { $0.remove(name) }
            return
        }
        schedule(row.entry)
    }

    /// Delivers an entry the dispatcher has just moved to the outbox, as it committed it. Called
    /// on the writer thread right after that commit: the delivery runs there until its first
    /// request is out, which spares waking another thread on the way to the reply.
    func deliver(_ entry: SpoolEntry) {
        guard inFlight.withLock({ $0.insert(entry.name).inserted }) else { return }
        schedule(entry, startHere: true)
    }

    private func schedule(_ entry: SpoolEntry, startHere: Bool = false) {
        let name = entry.name
        let conversation = entry.botMessage.map { entry.app + "/" + $0.conversationID } ?? name.value
        let accepted = scheduler.submit(conversation: conversation, startHere: startHere) { [self] in
            await deliver(entry)
            _ = inFlight.withLock { $0.remove(name) }
        }
        if !accepted { _ = inFlight.withLock { $0.remove(name) } }
    }

    private func deliver(_ entry: SpoolEntry) async {
        let name = entry.name
        let spool = self.spool
        var log = logger
        log[metadataKey: "msg.key"] = "\(name)"
        log[metadataKey: "app"] = "\(entry.app)"
        guard let message = entry.botMessage else {
            metrics.app(entry.app).deadLetters[.reply]?.increment()
            await finish { writer throws(SpoolError) in try writer.deadLetter(name, reason: "replies to \(entry.kind.rawValue) messages have no conversation to go to") }
            return
        }
        var parts: [ReplyMessage] = []
        for reply in entry.replies {
            guard let object = JSON.object(reply) else { continue }
            parts.append(contentsOf: ReplyMessage(webhookObject: object).split())
        }
        var target = ReplyTarget(app: entry.app, message: message)
        if target.robotCode.isEmpty { target.robotCode = message.robotCode ?? "" }
        let deliverer = self.deliverer.withLock { $0 }
        let attempts = entry.deliveryAttempts + 1
        let outcome = await deliverer.deliver(
            parts, to: target, firstAttemptAt: entry.receivedMillis, alreadyDelivered: entry.delivered
        ) { [total = parts.count] delivered in
            // After the last part the move to done below is the record. Rewriting the entry
            // first (one more commit) only widens the window in which a kill sends it twice.
            guard delivered < total else { return }
            _ = try? await spool.perform { writer throws(SpoolError) in try writer.updateOutbox(name, delivered: delivered, deliveryAttempts: attempts) }
        }
        switch outcome {
        case .delivered(let paths, let reported):
            log.info("reply delivered (\(paths.map(\.rawValue).joined(separator: ", ")))")
            for user in reported {
                log.warning("DingTalk did not deliver to user \(user.id): \(user.reason.rawValue)")
            }
            await finish { writer throws(SpoolError) in try writer.finishDelivery(name) }
        case .deadLetter(let reason):
            log.error("reply dead-lettered: \(reason)", metadata: ["message.id": "replyDeadLettered"])
            metrics.app(entry.app).deadLetters[.reply]?.increment()
            await finish { writer throws(SpoolError) in try writer.deadLetter(name, reason: "reply not delivered: \(reason)\n") }
        case .interrupted:
            break  // stays in the outbox; delivered again after the restart
        }
    }

    private func finish(_ body: @escaping @Sendable (Spool.Writer) throws(SpoolError) -> Void) async {
        await spool.change(logger: logger, body)
    }
}

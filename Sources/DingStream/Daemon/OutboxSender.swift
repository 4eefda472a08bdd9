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
    private let shutdownGrace: Duration
    private let scheduler = ConversationScheduler(workers: 8)
    private let wakeStream: AsyncStream<Void>
    private let wakeContinuation: AsyncStream<Void>.Continuation
    private let inFlight = Mutex<Set<EntryName>>([])
    private let metrics: DaemonMetrics

    init(spool: Spool, deliverer: ReplyDeliverer, shutdownGrace: Duration, metrics: DaemonMetrics = .disabled, logger: Logger) {
        self.spool = spool
        self.shutdownGrace = shutdownGrace
        self.metrics = metrics
        self.deliverer = Mutex(deliverer)
        self.logger = logger
        (wakeStream, wakeContinuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    func update(_ new: ReplyDeliverer) { deliverer.withLock { $0 = new } }

    /// Called when something entered the outbox.
    func wake() { wakeContinuation.yield() }

    /// Delivers until graceful shutdown; then deliveries under way get `shutdownGrace` to end
    /// and are cancelled after it (a DingTalk outage would otherwise hold the stop until
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
            scheduler.shutdown()
            let running = scheduler.snapshot.running
            if running > 0 {
                logger.notice("stopping: waiting up to \(shutdownGrace) for \(running) reply deliveries; what is left is sent after the next start")
            }
            group.addTask { [shutdownGrace] in try? await Task.sleep(for: shutdownGrace) }
            await group.next()
            group.cancelAll()
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
        let entry = row.entry
        let conversation = entry.botMessage.map { entry.app + "/" + $0.conversationID } ?? name.value
        let accepted = scheduler.submit(conversation: conversation) { [self] in
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

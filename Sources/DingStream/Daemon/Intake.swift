import CoreMetrics
import Foundation
import Logging
import Spool
import StreamClient
import StreamProtocol

/// Where every frame of every socket goes: into the spool's group commit, and acked on its own
/// socket once it is durable (or known as a duplicate). Runs on the socket's event loop and never
/// blocks it; the ack is written from the spool's completion. A new card callback's ack waits
/// in `cards` for its handlers' answer, at most `card_timeout`.
struct Intake: FrameSink {
    let spool: Spool
    var cards: CardResponder?
    /// This app's series: the intake serves one app, so a frame costs no lookup.
    var metrics: AppSeries?
    let logger: Logger

    func receive(_ frame: StreamFrame, context: ConnectionContext) {
        let received = Int64(Date().timeIntervalSince1970 * 1000)
        guard let record = IntakeRecord(app: context.app, frame: frame, connection: context.connectionID, receivedMillis: received) else {
            if let metrics {
                let kind = MessageKind(frame: frame)
                metrics.received[kind].increment()
                metrics.refused[.noID]?[kind].increment()
            }
            logger.warning(
                "frame without any id (type \(frame.kind), topic \(frame.topic ?? "none")); not stored, not acked",
                metadata: ["app": "\(context.app)", "conn.id": "\(context.connectionID)"])
            return
        }
        let kind = record.kind
        let key = record.key
        // Ack latency runs from here to the ack's hand-over to the socket's event loop.
        let start = ContinuousClock.now
        metrics?.received[kind].increment()
        spool.submit(record) { [logger, metrics] outcome in
            switch outcome {
            case .stored(let name):
                if kind == .card, let cards {
                    cards.committed(name) { response in
                        context.ack(.callback(frame, response: response))
                        metrics?.ackLatency.recordNanoseconds(DaemonMetrics.nanoseconds(ContinuousClock.now - start))
                    }
                } else {
                    context.ack(kind == .event ? .event(frame) : .callback(frame))
                    metrics?.ackLatency.recordNanoseconds(DaemonMetrics.nanoseconds(ContinuousClock.now - start))
                }
                metrics?.stored[kind].increment()
                // msg.key is the spool name, as in every later line about this message. Debug:
                // at info, this line per message was the largest single cost of the intake.
                logger.debug(
                    "message committed (\(key.kind) \(key.id))",
                    metadata: [
                        "message.id": "messageCommitted", "msg.key": "\(name.value)",
                        "app": "\(context.app)", "conn.id": "\(context.connectionID)",
                    ])
            case .duplicate:
                context.ack(kind == .event ? .event(frame) : .callback(frame))
                metrics?.ackLatency.recordNanoseconds(DaemonMetrics.nanoseconds(ContinuousClock.now - start))
                metrics?.duplicates[kind].increment()
            case .failed:
                // Not stored: the server must push it again. Events can say so; callbacks are
                // simply left unacked. The spool logs the failure once with its remedy.
                if kind == .event { context.ack(.event(frame, later: true)) }
                metrics?.refused[.storeFailed]?[kind].increment()
            }
        }
    }
}

import Logging
import Spool
import StreamProtocol
import Synchronization
import Testing

@testable import DingStream

@Suite struct CardResponderTests {
    final class Acks: Sendable {
        let values = Mutex<[String?]>([])
        var all: [String?] { values.withLock { $0 } }
        func ack(_ response: String?) { values.withLock { $0.append(response) } }
    }

    static let name = EntryName(receivedMillis: 1_700_000_000_000, key: MessageKey(app: "a", kind: .card, id: "m1"))

    @Test(.timeLimit(.minutes(1))) func anAnswerBeforeTheCommitIsKeptForTheAck() {
        let responder = CardResponder(timeout: .seconds(60), logger: Logger(label: "test"))
        let acks = Acks()
        responder.answer(Self.name, response: #"{"x":1}"#)
        responder.finished(Self.name)
        responder.committed(Self.name) { acks.ack($0) }
        #expect(acks.all == [#"{"x":1}"#])
    }

    @Test(.timeLimit(.minutes(1))) func onlyTheFirstAnswerCountsAndTheAckGoesOnce() {
        let responder = CardResponder(timeout: .seconds(60), logger: Logger(label: "test"))
        let acks = Acks()
        responder.committed(Self.name) { acks.ack($0) }
        #expect(acks.all.isEmpty)
        responder.answer(Self.name, response: #"{"x":1}"#)
        responder.answer(Self.name, response: #"{"x":2}"#)
        responder.finished(Self.name)
        #expect(acks.all == [#"{"x":1}"#])
    }

    @Test(.timeLimit(.minutes(1))) func handlersEndingWithoutAnAnswerAckNull() {
        let responder = CardResponder(timeout: .seconds(60), logger: Logger(label: "test"))
        let acks = Acks()
        responder.committed(Self.name) { acks.ack($0) }
        responder.finished(Self.name)
        #expect(acks.all == [nil])
    }

    @Test(.timeLimit(.minutes(1)))
    func theDeadlineAcksNullAndALateAnswerIsDropped() async throws {
        let responder = CardResponder(timeout: .milliseconds(50), logger: Logger(label: "test"))
        let acks = Acks()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await responder.run() }
            responder.committed(Self.name) { acks.ack($0) }
            while acks.all.isEmpty { try await Task.sleep(for: .milliseconds(10)) }
            responder.answer(Self.name, response: #"{"late":true}"#)
            group.cancelAll()
        }
        #expect(acks.all == [nil])
    }
}

import Foundation
import Logging
import StreamProtocol
import Synchronization
import Testing

@testable import Spool

/// A wall clock the test moves by hand.
final class TestClock: Sendable {
    private let value: Mutex<Date>
    init(_ start: Date = Date()) { value = Mutex(start) }
    var now: Date { value.withLock { $0 } }
    func advance(_ seconds: TimeInterval) { value.withLock { $0 = $0.addingTimeInterval(seconds) } }
    var closure: @Sendable () -> Date { { self.now } }
}

/// Keeps log lines so tests can count them.
final class LogSink: Sendable {
    let lines = Mutex<[(Logger.Level, String)]>([])
    var logger: Logger {
        Logger(label: "spool-test") { _ in Handler(sink: self) }
    }
    func count(_ level: Logger.Level, containing text: String) -> Int {
        lines.withLock { $0.filter { $0.0 == level && $0.1.contains(text) }.count }
    }
    func messages(containing text: String) -> [String] {
        lines.withLock { $0.map(\.1).filter { $0.contains(text) } }
    }

    struct Handler: LogHandler {
        let sink: LogSink
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            // The message, then its own metadata as key=value, sorted.
            let fields = (event.metadata ?? [:]).sorted { $0.key < $1.key }.map { " \($0.key)=\($0.value)" }.joined()
            sink.lines.withLock { $0.append((event.level, "\(event.message)" + fields)) }
        }
    }
}

/// A fresh directory under /tmp, removed at the end of `body`.
func withTemporaryDirectory<T>(_ body: (String) async throws -> T) async throws -> T {
    let path = NSTemporaryDirectory() + "spooltest-" + UUID().uuidString
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try await body(path)
}

/// Runs the spool's intake loop around `body` and stops it after.
func withRunning<T: Sendable>(_ spool: Spool, _ body: () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { await spool.run() }
        defer { group.cancelAll() }
        return try await body()
    }
}

extension Spool {
    /// Reads an entry in its own transaction.
    func row(_ name: EntryName) throws(SpoolError) -> StoredRow {
        try transaction { writer throws(SpoolError) in try writer.read(name) }
    }

    func claim(_ name: EntryName, messageFile: Bool = true) throws(SpoolError) -> ClaimedEntry {
        try transaction { writer throws(SpoolError) in try writer.claim(name, messageFile: messageFile) }
    }

    /// Names in `state`, in arrival order.
    func names(in state: EntryState) throws(SpoolError) -> [EntryName] {
        try transaction { writer throws(SpoolError) in try writer.store.names(in: state, dueBy: nil, limit: .max).map(\.name) }
    }

    func complete(_ name: EntryName, replies: [String]?, note: String? = nil) throws(SpoolError) {
        try transaction { writer throws(SpoolError) in try writer.complete(name, replies: replies, note: note) }
    }

    func deadLetter(_ name: EntryName, reason: String) throws(SpoolError) {
        try transaction { writer throws(SpoolError) in try writer.deadLetter(name, reason: reason) }
    }


    /// Submits and waits for the outcome.
    func store(_ record: IntakeRecord) async -> IntakeOutcome {
        await withCheckedContinuation { continuation in
            submit(record) { continuation.resume(returning: $0) }
        }
    }
}

/// A bot message record as the intake would build it from a frame.
func botRecord(
    app: String = "helpdesk", msgID: String, text: String = "hello", nick: String = "Zhang San",
    millis: Int64 = 1_700_000_000_000, messageID: String? = nil, connection: String = "conn-1"
) -> IntakeRecord {
    let data = JSON.encode([
        "msgId": msgID, "msgtype": "text", "text": ["content": " " + text], "conversationId": "cid1",
        "conversationType": "1", "senderStaffId": "0423297", "senderNick": nick,
        "sessionWebhook": "https://oapi.dingtalk.com/robot/sendBySession?session=x",
    ] as [String: Any])
    let frame = StreamFrame(
        kind: .callback,
        headers: ["messageId": messageID ?? UUID().uuidString, "topic": Topic.botMessage, "contentType": "application/json"],
        data: data)
    return IntakeRecord(app: app, frame: frame, connection: connection, receivedMillis: millis)!
}

func eventRecord(app: String = "helpdesk", eventID: String, millis: Int64 = 1_700_000_000_000) -> IntakeRecord {
    let frame = StreamFrame(
        kind: .event,
        headers: ["messageId": UUID().uuidString, "topic": "*", "eventId": eventID, "eventType": "chat_update_title"],
        data: "{\"title\":\"x\"}")
    return IntakeRecord(app: app, frame: frame, connection: "conn-2", receivedMillis: millis)!
}

func files(_ directory: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
}

func mode(_ path: String) -> Int {
    var info = stat()
    guard stat(path, &info) == 0 else { return -1 }
    return Int(info.st_mode & 0o777)
}

func millis(_ date: Date) -> Int64 { Int64(date.timeIntervalSince1970 * 1000) }

struct WaitTimedOut: Error, CustomStringConvertible {
    var description: String
}

/// Polls `condition` every 10 ms until it holds.
/// - Throws: `WaitTimedOut` naming `what` after `timeout`.
func waitUntil(_ what: String, timeout: Duration = .seconds(10), _ condition: () throws -> Bool) async throws {
    let end = ContinuousClock.now + timeout
    while try !condition() {
        if ContinuousClock.now >= end { throw WaitTimedOut(description: "after \(timeout) still waiting for \(what)") }
        try await Task.sleep(for: .milliseconds(10))
    }
}

import Foundation
import StreamProtocol

/// What the intake hands to the spool for one pushed frame.
public struct IntakeRecord: Sendable {
    public var app: String
    public var key: MessageKey
    public var kind: MessageKind
    public var topic: String?
    public var headers: [String: String]
    /// The frame's `data`: raw JSON text as the server sent it.
    public var data: String
    /// Id of the socket the frame arrived on (for the log and the entry).
    public var connection: String
    /// `<app>/<conversationId>` of a bot message: its handlers run in order with the others there.
    public var conversation: String?
    /// Epoch milliseconds of arrival; the entry name sorts by it.
    public var receivedMillis: Int64
    /// Whether `data` is a JSON object (stored as is) rather than other text (stored as a string).
    var dataIsObject: Bool
    /// The typed view of a bot message when `data` was parsed already; else `entry` builds it.
    var botMessage: BotMessage?

    public init(
        app: String, key: MessageKey, kind: MessageKind, topic: String?, headers: [String: String],
        data: String, connection: String, receivedMillis: Int64
    ) {
        self.app = app
        self.key = key
        self.kind = kind
        self.topic = topic
        self.headers = headers
        self.data = data
        self.connection = connection
        self.receivedMillis = receivedMillis
        self.dataIsObject = JSONText.isObject(data)
        self.botMessage = Self.botMessage(kind: kind, data: data)
        self.conversation = botMessage.flatMap { $0.conversationID.isEmpty ? nil : app + "/" + $0.conversationID }
    }

    /// The typed bot message in `data`, for a bot message whose data is an object.
    private static func botMessage(kind: MessageKind, data: String) -> BotMessage? {
        kind == .bot ? JSON.object(data).flatMap { BotMessage(data: $0) } : nil
    }

    /// The record of a non-SYSTEM frame, or nil when it carries no usable id.
    /// `data` is only scanned here, for the key and for the entry's validity: this runs on the
    /// socket's event loop, and the typed bot message is built later, by the dispatcher.
    public init?(app: String, frame: StreamFrame, connection: String, receivedMillis: Int64) {
        let shaped = JSONText.hasObjectShape(frame.data)
        if shaped, let members = frame.dataObjectMembers(["msgId", "conversationId"]) {
            guard let key = MessageKey(app: app, frame: frame, dataMsgID: members[0]) else { return nil }
            self.init(app: app, key: key, frame: frame, connection: connection, receivedMillis: receivedMillis, dataIsObject: true, botMessage: nil)
            if key.kind == .bot, let id = members[1], !id.isEmpty { conversation = app + "/" + id }
            return
        }
        // What the quick scan cannot vouch for gets the full parse, whose verdict is the reference.
        let object = shaped ? frame.dataObject() : nil
        guard let key = MessageKey(app: app, frame: frame, data: object) else { return nil }
        self.init(
            app: app, key: key, frame: frame, connection: connection, receivedMillis: receivedMillis,
            dataIsObject: object != nil, botMessage: object.flatMap { BotMessage(data: $0) })
    }

    private init(
        app: String, key: MessageKey, frame: StreamFrame, connection: String, receivedMillis: Int64,
        dataIsObject: Bool, botMessage: BotMessage?
    ) {
        self.app = app
        self.key = key
        self.kind = key.kind
        self.topic = frame.topic
        self.headers = frame.headers
        self.data = frame.data
        self.connection = connection
        self.receivedMillis = receivedMillis
        self.dataIsObject = dataIsObject
        self.botMessage = botMessage
        self.conversation = botMessage.flatMap { $0.conversationID.isEmpty ? nil : app + "/" + $0.conversationID }
    }

    /// The entry file: `{app, kind, topic, key, headers, data, receivedAt, connection, attempts}`.
    /// Built by hand as bytes (fixed key order, no dictionary round trip) because it is on the ack path.
    func encoded() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(data.utf8.count + 512)
        func raw(_ text: StaticString) {
            text.withUTF8Buffer { out.append(contentsOf: $0) }
        }
        raw("{\"app\":")
        JSON.appendQuoted(app, to: &out)
        raw(",\"kind\":")
        JSON.appendQuoted(kind.rawValue, to: &out)
        raw(",\"topic\":")
        if let topic { JSON.appendQuoted(topic, to: &out) } else { raw("null") }
        raw(",\"key\":")
        JSON.appendQuoted(key.id, to: &out)
        raw(",\"headers\":{")
        var first = true
        for (name, value) in headers.sorted(by: { $0.key < $1.key }) {
            if !first { out.append(UInt8(ascii: ",")) }
            first = false
            JSON.appendQuoted(name, to: &out)
            out.append(UInt8(ascii: ":"))
            JSON.appendQuoted(value, to: &out)
        }
        raw("},\"data\":")
        if dataIsObject {
            out.append(contentsOf: data.utf8)
        } else {
            // Not an object: keep the text as a string so that the entry stays valid JSON.
            JSON.appendQuoted(data, to: &out)
        }
        raw(",\"receivedAt\":")
        out.append(contentsOf: String(receivedMillis).utf8)
        raw(",\"connection\":")
        JSON.appendQuoted(connection, to: &out)
        raw(",\"attempts\":0}\n")
        return out
    }

    /// The entry as `SpoolEntry.parse` would read `bytes` (this record's `encoded()`) back.
    func entry(name: EntryName, bytes: [UInt8]) -> SpoolEntry {
        var dataJSON = data
        if !dataIsObject {
            dataJSON = ""
            JSON.appendQuoted(data, to: &dataJSON)
        }
        return SpoolEntry(
            name: name, app: app, kind: kind, topic: topic, key: key.id, headers: headers, dataJSON: dataJSON,
            receivedMillis: receivedMillis, connection: connection, attempts: 0, replies: [], delivered: 0,
            deliveryAttempts: 0, raw: Data(bytes),
            botMessage: botMessage ?? (dataIsObject ? Self.botMessage(kind: kind, data: data) : nil))
    }
}

/// A spool entry as read back from its file.
public struct SpoolEntry: Sendable {
    public var name: EntryName
    public var app: String
    public var kind: MessageKind
    public var topic: String?
    /// The business id (`data.msgId`, `headers.eventId`, or `headers.messageId`).
    public var key: String
    public var headers: [String: String]
    /// `data` as JSON text (an object, or a JSON string when the frame's data was not an object).
    public var dataJSON: String
    public var receivedMillis: Int64
    public var connection: String?
    /// Handler runs so far that asked to be retried (exit 75).
    public var attempts: Int
    /// Replies waiting for delivery (outbox entries), each as the handler printed it.
    public var replies: [String]
    /// Replies already delivered (outbox progress).
    public var delivered: Int
    /// Delivery attempts so far (outbox progress).
    public var deliveryAttempts: Int
    /// The file as stored: what handlers get on stdin.
    public var raw: Data

    /// `data` parsed, or nil when it is not an object.
    public func dataObject() -> [String: Any]? { JSON.object(dataJSON) }

    /// The typed view of a bot message's data, taken when the entry is parsed (the dispatcher
    /// and the outbox ask for it several times per entry).
    public var botMessage: BotMessage?

    /// Parses the bytes of an entry file.
    /// - Throws: `SpoolError(.corrupt)` naming `path` when they are not a spool entry.
    public static func parse(_ raw: Data, name: EntryName, path: String) throws(SpoolError) -> SpoolEntry {
        guard let object = JSON.object(raw) else { throw SpoolError(.corrupt, path: path, detail: "(not a JSON object)") }
        return try parse(object, raw: raw, name: name, path: path)
    }

    static func parse(_ object: [String: Any], raw: Data, name: EntryName, path: String) throws(SpoolError) -> SpoolEntry {
        guard let app = object["app"] as? String, let key = object["key"] as? String else {
            throw SpoolError(.corrupt, path: path, detail: "(no app or key)")
        }
        let dataJSON: String
        switch object["data"] {
        // The stored text itself: cutting it out costs far less than encoding the parsed value again.
        case .some where object["data"] is NSNull: dataJSON = "{}"
        case .some: dataJSON = JSONText.memberText("data", in: raw) ?? "{}"
        default: dataJSON = "{}"
        }
        var headers: [String: String] = [:]
        for (header, value) in object["headers"] as? [String: Any] ?? [:] {
            if let value = value as? String { headers[header] = value }
        }
        return SpoolEntry(
            name: name, app: app,
            kind: MessageKind(rawValue: object["kind"] as? String ?? "") ?? .other,
            topic: object["topic"] as? String, key: key, headers: headers, dataJSON: dataJSON,
            receivedMillis: (object["receivedAt"] as? NSNumber)?.int64Value ?? name.receivedMillis,
            connection: object["connection"] as? String,
            attempts: (object["attempts"] as? NSNumber)?.intValue ?? 0,
            replies: object["replies"] as? [String] ?? [],
            delivered: (object["delivered"] as? NSNumber)?.intValue ?? 0,
            deliveryAttempts: (object["deliveryAttempts"] as? NSNumber)?.intValue ?? 0,
            raw: raw,
            botMessage: (object["data"] as? [String: Any]).flatMap { BotMessage(data: $0) })
    }
}

extension JSON {
    /// A JSON string literal of `text`.
    static func encodeFragment(_ text: String) -> String {
        var out = ""
        JSON.appendQuoted(text, to: &out)
        return out
    }
}

/// JSON shape checks for the hot path.
enum JSONText {
    /// True when `text` parses as a JSON object. A cheap shape check runs first; the full parse
    /// guards the entry against garbage that merely starts with a brace.
    static func isObject(_ text: String) -> Bool {
        hasObjectShape(text) && JSON.object(text) != nil
    }

    /// Starts with `{` and ends with `}` (ignoring white space): worth a full parse.
    static func hasObjectShape(_ text: String) -> Bool {
        let utf8 = text.utf8
        guard let first = utf8.first(where: { !isSpace($0) }), first == UInt8(ascii: "{"),
            let last = utf8.last(where: { !isSpace($0) }), last == UInt8(ascii: "}")
        else { return false }
        return true
    }

    /// The text of the value of top-level member `key` of the JSON object in `raw`, exactly as
    /// stored; nil when there is no such member. `raw` must already be known to be valid JSON.
    static func memberText(_ key: String, in raw: Data) -> String? {
        raw.withUnsafeBytes { buffer -> String? in
            let bytes = buffer.bindMemory(to: UInt8.self)
            let wanted = Array(key.utf8)
            var index = 0
            func skipSpace() { while index < bytes.count, isSpace(bytes[index]) { index += 1 } }
            /// Moves past the string starting at `index` (its opening quote).
            func skipString() {
                index += 1
                while index < bytes.count, bytes[index] != UInt8(ascii: "\"") {
                    index += bytes[index] == UInt8(ascii: "\\") ? 2 : 1
                }
                index += 1
            }
            func skipValue() {
                var depth = 0
                repeat {
                    guard index < bytes.count else { return }
                    switch bytes[index] {
                    case UInt8(ascii: "\""): skipString(); continue
                    case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
                    case UInt8(ascii: "}"), UInt8(ascii: "]"): depth -= 1
                    case UInt8(ascii: ","), 0x20, 0x0A, 0x0D, 0x09: if depth == 0 { return }
                    default: break
                    }
                    index += 1
                } while depth > 0 || (index < bytes.count && !isDelimiter(bytes[index]))
            }
            skipSpace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: "{") else { return nil }
            index += 1
            while true {
                skipSpace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { return nil }
                let nameStart = index + 1
                skipString()
                let name = bytes[nameStart..<max(nameStart, index - 1)]
                skipSpace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { return nil }
                index += 1
                skipSpace()
                let valueStart = index
                skipValue()
                if name.elementsEqual(wanted) {
                    return String(decoding: UnsafeBufferPointer(rebasing: bytes[valueStart..<min(index, bytes.count)]), as: UTF8.self)
                }
                skipSpace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: ",") else { return nil }
                index += 1
            }
        }
    }

    private static func isDelimiter(_ byte: UInt8) -> Bool {
        byte == UInt8(ascii: ",") || byte == UInt8(ascii: "}") || byte == UInt8(ascii: "]") || isSpace(byte)
    }

    private static func isSpace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09
    }
}

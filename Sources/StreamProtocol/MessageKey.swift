/// What a spool entry is about.
public enum MessageKind: String, Sendable, Codable {
    case bot
    case event
    case card
    case other
}

/// The business identity of a pushed frame: stable across redeliveries (which get a new
/// `messageId`), sockets and restarts. Scoped by app.
public struct MessageKey: Sendable, Hashable, CustomStringConvertible {
    public let app: String
    public let kind: MessageKind
    /// `data.msgId` for bot messages, `headers.eventId` for events, `headers.messageId` otherwise.
    public let id: String

    public init(app: String, kind: MessageKind, id: String) {
        self.app = app
        self.kind = kind
        self.id = id
    }

    /// Derives the key of a non-SYSTEM frame; nil when the frame carries no usable id at all.
    public init?(app: String, frame: StreamFrame) {
        self.init(app: app, frame: frame, data: MessageKind(frame: frame) == .bot ? frame.dataObject() : nil)
    }

    /// As `init(app:frame:)`, with the frame's `data` already parsed (nil when it is not an
    /// object), so that the intake parses it once.
    public init?(app: String, frame: StreamFrame, data: [String: Any]?) {
        self.init(app: app, frame: frame, dataMsgID: data?["msgId"] as? String)
    }

    /// As `init(app:frame:)`, given only `data.msgId` (nil when absent or not a string).
    public init?(app: String, frame: StreamFrame, dataMsgID: String?) {
        let kind = MessageKind(frame: frame)
        var id: String?
        switch kind {
        case .bot: id = dataMsgID
        case .event: id = frame.headers["eventId"]
        case .card, .other: break
        }
        guard let chosen = id ?? frame.messageID, !chosen.isEmpty else { return nil }
        self.init(app: app, kind: kind, id: chosen)
    }

    /// 16 hex digits of `fingerprint`: short enough for file names, stable across runs.
    public var hash: String {
        let hex = String(fingerprint, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    /// FNV-1a (64 bits) over app, kind and id: the spool's compact dedup key.
    public var fingerprint: UInt64 {
        var value: UInt64 = 0xcbf2_9ce4_8422_2325
        // The bytes of "<app>\0<kind>\0<id>", hashed part by part rather than joined first.
        func mix(_ byte: UInt8) { value = (value ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
        for byte in app.utf8 { mix(byte) }
        mix(0)
        for byte in kind.rawValue.utf8 { mix(byte) }
        mix(0)
        for byte in id.utf8 { mix(byte) }
        return value
    }

    public var description: String { "\(app)/\(kind.rawValue)/\(id)" }
}

extension MessageKind {
    public init(frame: StreamFrame) {
        switch frame.kind {
        case .event: self = .event
        case .callback:
            switch frame.topic {
            case Topic.botMessage, Topic.botMessageDelegate: self = .bot
            case Topic.cardCallback: self = .card
            default: self = .other
            }
        case .system, .other: self = .other
        }
    }
}

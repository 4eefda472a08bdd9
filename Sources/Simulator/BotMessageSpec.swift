import Foundation

/// A message a user "sends" to a bot. Defaults give a private text chat from staff `0423297`.
public struct BotMessageSpec: Sendable {
    public enum Content: Sendable {
        case text(String)
        /// `bytes` nil: the simulator makes a small deterministic file.
        case picture(bytes: [UInt8]? = nil)
        case file(name: String, bytes: [UInt8]? = nil)
        case audio(recognition: String, bytes: [UInt8]? = nil)
        case video(durationSeconds: Int, bytes: [UInt8]? = nil)
        case richText([RichTextPart])
        /// A raw `msgtype` with an arbitrary content object (JSON text), e.g. `unknownMsgType`.
        case raw(msgtype: String, contentKey: String?, json: String?)
    }

    public enum RichTextPart: Sendable {
        case text(String)
        case picture(bytes: [UInt8]? = nil)
    }

    public enum Conversation: Sendable {
        case privateChat
        case group(conversationId: String, title: String)
    }

    public var app: String
    public var content: Content
    public var conversation: Conversation
    public var senderStaffId: String
    public var senderNick: String
    /// Per message; nil uses `SimulatorConfiguration.webhookLifetime`.
    public var webhookLifetime: Duration?
    public var isInAtList: Bool
    public var topic: String

    public init(
        app: String,
        content: Content,
        conversation: Conversation = .privateChat,
        senderStaffId: String = "0423297",
        senderNick: String = "Zhang San",
        webhookLifetime: Duration? = nil,
        isInAtList: Bool = true,
        topic: String = "/v1.0/im/bot/messages/get"
    ) {
        self.app = app
        self.content = content
        self.conversation = conversation
        self.senderStaffId = senderStaffId
        self.senderNick = senderNick
        self.webhookLifetime = webhookLifetime
        self.isInAtList = isInAtList
        self.topic = topic
    }

    public static func text(_ text: String, app: String) -> BotMessageSpec {
        BotMessageSpec(app: app, content: .text(text))
    }
}

/// What `injectBotMessage` made: the ids a test later looks for.
public struct InjectedMessage: Sendable {
    public var app: String
    public var msgId: String
    /// headers.messageId of the first push; nil when no socket was live (it is pushed later).
    public var messageId: String?
    public var conversationId: String
    public var sessionWebhook: String
    public var sessionWebhookExpiredTime: Int64
    public var downloadCodes: [String]
    /// The `data` string of the frame (the JSON payload of PROTOCOL.md section 3).
    public var data: String
}

public struct InjectedEvent: Sendable {
    public var app: String
    public var eventId: String
    public var messageId: String?
    public var data: String
}

/// Makes a deterministic small file for a download code (same code, same bytes).
func syntheticFile(for code: String, kind: String) -> [UInt8] {
    var rng = SplitMix64(seed: code.utf8.reduce(UInt64(1469598103934665603)) { ($0 ^ UInt64($1)) &* 1099511628211 })
    let header = Array("dingstream-simulator \(kind) \(code)\n".utf8)
    var bytes = header
    for _ in 0..<64 { let v = rng.next(); for s in stride(from: 0, to: 64, by: 8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt64(s))) } }
    return bytes
}

/// The fields of a bot message (`data` of a CALLBACK on the bot topic) that dingstream acts on.
/// The whole payload is kept in the spool entry; this is a typed view over it.
public struct BotMessage: Sendable, Equatable {
    public enum Conversation: String, Sendable {
        case `private`
        case group
    }

    public var msgID: String
    public var msgtype: String
    public var conversationID: String
    public var conversation: Conversation
    public var conversationTitle: String?
    public var senderStaffID: String?
    public var senderNick: String?
    public var robotCode: String?
    /// The text of a text message, trimmed (DingTalk puts a leading space after an @mention).
    public var text: String?
    public var sessionWebhook: String?
    /// Epoch milliseconds after which the session webhook answers 300001.
    public var sessionWebhookExpiredTime: Int64?
    public var createAt: Int64?

    public init?(data: [String: Any]) {
        guard let msgID = data["msgId"] as? String else { return nil }
        self.msgID = msgID
        self.msgtype = data["msgtype"] as? String ?? "unknownMsgType"
        self.conversationID = data["conversationId"] as? String ?? ""
        self.conversation = (data["conversationType"] as? String) == "2" ? .group : .private
        self.conversationTitle = data["conversationTitle"] as? String
        self.senderStaffID = data["senderStaffId"] as? String
        self.senderNick = data["senderNick"] as? String
        self.robotCode = data["robotCode"] as? String
        if let text = data["text"] as? [String: Any], let content = text["content"] as? String {
            self.text = content.trimmingWhitespace()
        } else if let content = data["content"] as? [String: Any], let recognition = content["recognition"] as? String {
            self.text = recognition
        }
        self.sessionWebhook = data["sessionWebhook"] as? String
        self.sessionWebhookExpiredTime = Self.int64(data["sessionWebhookExpiredTime"])
        self.createAt = Self.int64(data["createAt"])
    }

    /// Epoch milliseconds as DingTalk sends them (number or string). Anything outside
    /// 0 ... 2^53 is not a time and is treated as absent, so no later sum or difference of
    /// times can overflow, whatever the network sent.
    private static func int64(_ value: Any?) -> Int64? {
        let number: Int64? =
            switch value {
            case let number as Int64: number
            case let number as Int: Int64(number)
            case let number as Double: number.isFinite ? Int64(exactly: number.rounded()) : nil
            case let string as String: Int64(string)
            default: nil
            }
        guard let number, (0...(Int64(1) << 53)).contains(number) else { return nil }
        return number
    }
}

extension String {
    func trimmingWhitespace() -> String {
        var scalars = Substring(self)
        while let first = scalars.first, first.isWhitespace { scalars.removeFirst() }
        while let last = scalars.last, last.isWhitespace { scalars.removeLast() }
        return String(scalars)
    }
}

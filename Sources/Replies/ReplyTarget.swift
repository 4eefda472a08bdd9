import StreamProtocol

/// Where a reply goes: the conversation a bot message came from, with every path to it.
public struct ReplyTarget: Sendable, Equatable, Codable {
    public enum Conversation: String, Sendable, Codable {
        case `private`
        case group
    }

    /// The app's name in the configuration; selects the OpenAPI client and its token.
    public var app: String
    /// The robot's code (equals the app's clientId); empty means "use the client's clientId".
    public var robotCode: String
    public var conversation: Conversation
    /// The user to write to in a private chat (`batchSend`).
    public var senderStaffID: String?
    /// The group to write to (`groupMessages/send`); a group's `conversationId`.
    public var openConversationID: String?
    public var sessionWebhook: String?
    /// Epoch milliseconds after which the session webhook no longer works.
    public var sessionWebhookExpiresAt: Int64?

    public init(
        app: String, robotCode: String, conversation: Conversation, senderStaffID: String? = nil,
        openConversationID: String? = nil, sessionWebhook: String? = nil, sessionWebhookExpiresAt: Int64? = nil
    ) {
        self.app = app
        self.robotCode = robotCode
        self.conversation = conversation
        self.senderStaffID = senderStaffID
        self.openConversationID = openConversationID
        self.sessionWebhook = sessionWebhook
        self.sessionWebhookExpiresAt = sessionWebhookExpiresAt
    }

    /// The conversation `message` came from. In a group the `conversationId` is the
    /// `openConversationId` the group send needs.
    public init(app: String, message: BotMessage) {
        self.init(
            app: app,
            robotCode: message.robotCode ?? "",
            conversation: message.conversation == .group ? .group : .private,
            senderStaffID: message.senderStaffID,
            openConversationID: message.conversation == .group && !message.conversationID.isEmpty ? message.conversationID : nil,
            sessionWebhook: message.sessionWebhook,
            sessionWebhookExpiresAt: message.sessionWebhookExpiredTime
        )
    }

    /// A key that orders replies: replies to one conversation must go out one after another.
    public var conversationKey: String {
        switch conversation {
        case .private: "\(app)/private/\(senderStaffID ?? "")"
        case .group: "\(app)/group/\(openConversationID ?? "")"
        }
    }
}

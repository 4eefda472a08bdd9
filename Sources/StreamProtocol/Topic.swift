/// Topics and SYSTEM frame names of the Stream protocol.
public enum Topic {
    public static let botMessage = "/v1.0/im/bot/messages/get"
    public static let botMessageDelegate = "/v1.0/im/bot/messages/delegate"
    public static let cardCallback = "/v1.0/card/instances/callback"
    public static let ping = "ping"
    public static let disconnect = "disconnect"
}

/// What a subscription name in the configuration asks the gateway for.
public enum Subscription: String, Sendable, CaseIterable {
    case bot
    case events
    case cards

    /// `{"type":…, "topic":…}` as the registration body lists it.
    public var wire: (type: String, topic: String) {
        switch self {
        case .bot: ("CALLBACK", Topic.botMessage)
        case .events: ("EVENT", "*")
        case .cards: ("CALLBACK", Topic.cardCallback)
        }
    }
}

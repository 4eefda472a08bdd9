import Foundation

/// One `POST /v1.0/gateway/connections/open` that passed the credential check.
public struct RegistrationRecord: Sendable {
    public var app: String
    public var ticket: String
    /// `type` + "|" + `topic` per subscription, in request order.
    public var subscriptions: [String]
    public var ua: String?
    public var localIp: String?
    public var body: String
    public var time: Date
}

public enum SocketState: String, Sendable, Codable {
    /// Upgraded, its handlers not yet in place; the client may already hold the 101 answer.
    case opening
    /// Gets pushes and pings.
    case live
    /// Got a `disconnect` frame: no more pushes, acks still accepted, TCP close pending.
    case draining
    /// Answers pings, never gets pushes.
    case deaf
    case closed
}

public struct SocketInfo: Sendable {
    public var id: Int
    public var app: String
    public var state: SocketState
    public var openedAt: Date
    /// Still `live` to the pushes, but nothing passes (`DisconnectMode.blackHole`).
    public var blackHoled = false
    /// When the simulator saw it close.
    public var closedAt: Date? = nil
}

public enum FrameType: String, Sendable { case system = "SYSTEM", event = "EVENT", callback = "CALLBACK" }

public struct PushRecord: Sendable {
    public var app: String
    public var type: FrameType
    public var topic: String
    public var messageId: String
    /// `data.msgId` for bot messages, `eventId` for events, the first messageId otherwise.
    public var businessId: String
    public var socketId: Int
    public var isRedelivery: Bool
    public var time: Date
}

public struct AckRecord: Sendable {
    public var app: String
    public var code: Int
    public var messageId: String
    public var data: String?
    public var socketId: Int
    /// False when the messageId matched no outstanding push (late, duplicate or invented).
    public var matchedPush: Bool
    /// Whether it came on the socket the push went to; nil when it matched no push.
    public var onPushSocket: Bool?
    public var time: Date
}

public struct PingEchoRecord: Sendable {
    public var app: String
    public var socketId: Int
    public var messageId: String
    public var expectedOpaque: String
    public var echoedOpaque: String?
    public var code: Int
    public var matched: Bool { code == 200 && echoedOpaque == expectedOpaque }
    public var time: Date
}

public struct WebhookReplyRecord: Sendable {
    public var sequence: Int
    public var app: String
    public var session: String
    public var msgId: String?
    public var body: String
    /// What the simulator answered (0 ok, 300001 expired/unknown, 130101 throttled).
    public var errcode: Int
    public var time: Date
}

public enum OpenAPIEndpoint: String, Sendable, CaseIterable, Codable {
    case accessToken, batchSend, groupMessages, messageFiles, webhook, registration
}

public struct OpenAPISendRecord: Sendable {
    public var sequence: Int
    public var app: String
    public var endpoint: OpenAPIEndpoint
    public var body: String
    public var time: Date
}

/// A span during which an app had no live socket (after it first had one). `end` nil = ongoing.
public struct GapRecord: Sendable {
    public var app: String
    public var start: Date
    public var end: Date?
    public func duration(now: Date) -> TimeInterval { (end ?? now).timeIntervalSince(start) }
}

public struct AppStats: Sendable {
    public var liveSockets = 0
    public var openSockets = 0
    public var registrations = 0
    public var pushes = 0
    public var redeliveries = 0
    public var acks = 0
    public var acksOnWrongSocket = 0
    public var pingEchoes = 0
    public var pingMismatches = 0
    public var gaps = 0
    public var gapSeconds: Double = 0
    public var unacked = 0
}

/// How a socket is taken away from a client.
public enum DisconnectMode: String, Sendable, Codable {
    /// SYSTEM `disconnect` frame, no more pushes, acks still accepted, TCP close after the grace.
    case disconnectFrame
    /// TCP reset without a close frame.
    case abruptClose
    /// Still answers WebSocket pings, but sends nothing more: no pushes, no SYSTEM pings.
    case deaf
    /// A TCP black hole: not a byte passes either way, and nothing is closed. The socket still
    /// counts as live, so pushes keep going into it and vanish (unacked, pushed again later).
    /// Ends when the client closes its end, which the simulator does notice.
    case blackHole
}

public enum RegistrationFailure: String, Sendable, Codable {
    case unauthorized, unavailable, noAnswer
    /// Answers 200 with a ticket that has already expired, so the socket upgrade is refused (403).
    case expiredTicket
}

/// What the next calls to one HTTP endpoint do instead of their normal answer.
public enum HTTPFailure: Sendable, Equatable {
    case serverError(status: Int)
    /// 403 `Forbidden.AccessDenied.QpsLimitForApi`.
    case throttle
    /// 403 `Forbidden.AccessDenied.AccessTokenPermissionDenied` naming `qyapi_robot_sendmsg`.
    case permissionDenied
    /// Answers normally after this delay.
    case delay(Duration)
}

/// Every fault switch, one family so new ones fit. Apply with `DingTalkSimulator.apply(_:)`
/// or `POST /_sim/faults`.
public enum SimulatorFault: Sendable {
    /// `socket` nil: every live or deaf socket of the app.
    case disconnect(app: String, socket: Int?, mode: DisconnectMode)
    /// The next `count` registrations (of `app`, or any app when nil) fail this way.
    case registration(app: String?, failure: RegistrationFailure, count: Int)
    /// The next `count` calls to `endpoint` fail this way.
    case http(endpoint: OpenAPIEndpoint, failure: HTTPFailure, count: Int)
    /// Drops the queued faults of `endpoint` (every endpoint when nil): an outage ends.
    case clearHTTPFaults(endpoint: OpenAPIEndpoint?)
    /// Every access token of the app is expired from now on.
    case expireTokens(app: String)
    /// Every session webhook (of `app`, or all when nil) answers 300001 from now on.
    case expireWebhooks(app: String?)
    /// While on, session webhooks answer 130101.
    case throttleWebhooks(Bool)
    /// Rotate every socket once it is this old (nil: never).
    case rotation(age: Duration?)
    /// One text frame of exactly `bytes` bytes (a padded CALLBACK, not tracked, never pushed
    /// again) on `socket`, or on the app's oldest live socket when nil.
    case oversizedFrame(app: String, socket: Int?, bytes: Int)
}

/// How a socket shows that it is alive, and when it counts as dead.
public struct KeepaliveSettings: Sendable, Equatable {
    /// Nothing at all received for this long (no frame, not one byte) means the path is gone, as
    /// in a TCP black hole: the socket is replaced. Any inbound byte counts as life, and we ping
    /// whenever the socket has been quiet for a third of this, so a live link has two chances to
    /// answer before the limit.
    public var silenceTimeout: Duration
    /// No Stream frame (not even a SYSTEM ping) for this long means deaf: pongs come back but
    /// nothing is delivered.
    public var idleTimeout: Duration

    /// Quiet this long → a WebSocket ping (and again after as long while still quiet).
    public var pingInterval: Duration { silenceTimeout / 3 }

    /// Replaces a silent socket within 10 s: 6 s of silence plus a registration and a connect.
    public static let defaultSilenceTimeout: Duration = .seconds(6)

    public init(silenceTimeout: Duration = defaultSilenceTimeout, idleTimeout: Duration = .seconds(90)) {
        self.silenceTimeout = silenceTimeout
        self.idleTimeout = idleTimeout
    }
}

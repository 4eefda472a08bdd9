/// How one call to a reply path ended (metrics label values).
public enum ReplyAttemptResult: String, Sendable, CaseIterable {
    case ok
    /// Throttled (130101, QpsLimit, flow control): retried with backoff.
    case throttled
    /// A failure that may pass (server error, timeout, transport): retried or another path tried.
    case error
    /// Refused for good (expired webhook, permission, invalid recipient): another path or a dead letter.
    case refused

    init(_ error: ReplyError) {
        switch error.code {
        case .webhookThrottled, .throttled: self = .throttled
        case _ where error.isRetryable: self = .error
        default: self = .refused
        }
    }
}

/// Told about reply calls and token refreshes, for metrics. The calls are quick and made on the
/// delivering task; the default ignores everything.
public struct ReplyObserver: Sendable {
    public var attempt: @Sendable (_ app: String, _ path: DeliveryPath, _ result: ReplyAttemptResult) -> Void
    public var tokenRefresh: @Sendable (_ app: String, _ succeeded: Bool) -> Void

    public init(
        attempt: @escaping @Sendable (String, DeliveryPath, ReplyAttemptResult) -> Void = { _, _, _ in },
        tokenRefresh: @escaping @Sendable (String, Bool) -> Void = { _, _ in }
    ) {
        self.attempt = attempt
        self.tokenRefresh = tokenRefresh
    }

    public static let none = ReplyObserver()
}

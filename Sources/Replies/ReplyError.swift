/// The one error type of the Replies module: what failed, where, what the server said, and
/// whether trying again later can help.
public struct ReplyError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// 403 with a `QpsLimit` code: the app called an API too often. Retry later.
        case throttled
        /// 5xx from the OpenAPI or the webhook host. Retry later.
        case server(status: Int)
        /// No answer before the request's deadline. Retry later.
        case timeout
        /// 403 other than throttling: the app lacks a permission; the associated value names it.
        case permission(String)
        /// 400/401 `InvalidAuthentication` even after a fresh token.
        case invalidAuthentication
        /// The token endpoint refused the app's clientId/clientSecret.
        case credentials
        /// Session webhook answered errcode 300001: the session expired or is unknown.
        case webhookExpired
        /// Session webhook answered errcode 130101: sending too fast. Retry later.
        case webhookThrottled
        /// Session webhook answered another non-zero errcode.
        case webhookRejected(errcode: Int)
        /// Another 4xx that retrying will not fix.
        case rejected(status: Int)
        /// The answer was not the JSON the protocol describes, or too large.
        case badResponse
        /// Connection refused, reset, DNS or TLS failure. Retry later.
        case transport
        /// The message has no form for this path (e.g. a raw msgtype the OpenAPI cannot send).
        case unsupportedMessage
        /// The recipient is not a staff id the app can reach (`invalidStaffIdList`).
        case invalidRecipient
        /// No OpenAPI client is configured for the reply's app.
        case unknownApp
    }

    public var code: Code
    /// The URL path called (`/v1.0/robot/oToMessages/batchSend`, `session webhook`…).
    public var endpoint: String
    /// The server's `code` or webhook `errcode`, when it gave one.
    public var serverCode: String?
    /// The server's `message` or `errmsg`, when it gave one.
    public var serverMessage: String?
    /// Extra context: the app name, the underlying error, the recipient.
    public var context: String?

    public init(
        _ code: Code, endpoint: String, serverCode: String? = nil, serverMessage: String? = nil,
        context: String? = nil
    ) {
        self.code = code
        self.endpoint = endpoint
        self.serverCode = serverCode
        self.serverMessage = serverMessage
        self.context = context
    }

    /// Whether the same request may succeed later without anyone changing anything.
    public var isRetryable: Bool {
        switch code {
        case .throttled, .server, .timeout, .webhookThrottled, .transport: true
        case .permission, .invalidAuthentication, .credentials, .webhookExpired, .webhookRejected,
            .rejected, .badResponse, .unsupportedMessage, .invalidRecipient, .unknownApp:
            false
        }
    }

    public var description: String {
        var text = "replies: \(endpoint): \(problem)"
        var said: [String] = []
        if let serverCode { said.append(serverCode) }
        if let serverMessage, !serverMessage.isEmpty { said.append(serverMessage) }
        if !said.isEmpty { text += " (DingTalk said: \(said.joined(separator: ": ")))" }
        if let context, !context.isEmpty { text += " [\(context)]" }
        return text
    }

    private var problem: String {
        switch code {
        case .throttled:
            "throttled (QpsLimit); retrying later with backoff"
        case .server(let status):
            "DingTalk answered HTTP \(status); retrying later with backoff"
        case .timeout:
            "no answer in time; check the network or proxy to DingTalk, retrying later"
        case .permission(let permission):
            "permission denied; grant \(permission) to the app in the DingTalk developer console "
                + "(open-dev.dingtalk.com → app → Permissions) and publish a new version"
        case .invalidAuthentication:
            "the access token was refused even after a refresh; check client_id/client_secret and the app's status"
        case .credentials:
            "the token endpoint refused client_id/client_secret; fix them in the configuration"
        case .webhookExpired:
            "the session webhook expired (errcode 300001); the reply goes through the OpenAPI instead"
        case .webhookThrottled:
            "the session webhook says send too fast (errcode 130101); retrying later with backoff"
        case .webhookRejected(let errcode):
            "the session webhook refused the message (errcode \(errcode)); check the message body"
        case .rejected(let status):
            "DingTalk refused the request with HTTP \(status); check the message and the app's settings"
        case .badResponse:
            "the answer was not the expected JSON; check api_base and any proxy in between"
        case .transport:
            "could not reach DingTalk; check DNS, proxy, CA file and firewall"
        case .unsupportedMessage:
            "this message type cannot be sent on this path; reply with text, markdown, link or actionCard"
        case .unknownApp:
            "no app of this name is configured; check `name` in the [[app]] tables"
        case .invalidRecipient:
            "the recipient is not a staff id this app can reach (invalidStaffIdList); check the user id and the app's visibility range"
        }
    }
}

import AsyncHTTPClient
import Foundation
import Logging
import StreamProtocol

/// The access token of one app: fetched on first use, cached, refreshed ahead of expiry, and
/// dropped when DingTalk refuses it. Callers that arrive during a refresh share that refresh.
public actor AccessTokenProvider {
    public nonisolated let credentials: AppCredentials
    private let exchange: JSONExchange
    private let now: @Sendable () -> Int64
    private let observer: ReplyObserver
    private let logger: Logger

    private struct Cached {
        var token: String
        var fetchedAt: Int64
        var expiresAt: Int64
        /// Refresh once the time left drops below min(5 min, 10% of the lifetime).
        var refreshAt: Int64 {
            let lifetime = expiresAt - fetchedAt
            return expiresAt - min(300_000, lifetime / 10)
        }
    }

    private var cached: Cached?
    /// Callers waiting for the fetch already under way.
    private var waiters: [CheckedContinuation<Result<Cached, ReplyError>, Never>] = []
    private var fetching = false

    static let path = "/v1.0/oauth2/accessToken"

    /// - Parameters:
    ///   - now: epoch milliseconds; injected so tests can move time.
    public init(
        credentials: AppCredentials, httpClient: HTTPClient, requestTimeout: Duration = .seconds(10),
        now: @escaping @Sendable () -> Int64 = epochMilliseconds, observer: ReplyObserver = .none, logger: Logger
    ) {
        self.credentials = credentials
        self.observer = observer
        self.exchange = JSONExchange(httpClient: httpClient, timeout: requestTimeout, bodyCap: 64 * 1024)
        self.now = now
        var logger = logger
        logger[metadataKey: "app"] = "\(credentials.name)"
        self.logger = logger
    }

    /// A token valid now. Refreshes when none is cached or the cached one is near its end; if the
    /// refresh fails while the old token has not yet expired, the old one is returned.
    /// - Throws: `ReplyError` `.credentials` (bad clientId/secret, not retryable), `.throttled`,
    ///   `.server`, `.timeout`, `.transport` (retryable), `.badResponse`.
    public func token() async throws(ReplyError) -> String {
        let current = now()
        if let cached, current < cached.refreshAt { return cached.token }
        let fresh = await refresh()
        switch fresh {
        case .success(let value):
            return value.token
        case .failure(let error):
            if let cached, now() < cached.expiresAt {
                logger.warning("replies: token refresh failed, using the current token until it expires", metadata: ["error": "\(error)"])
                return cached.token
            }
            throw error
        }
    }

    /// Forgets `token` after DingTalk refused it, so the next `token()` fetches a new one.
    /// A token other than the cached one (already replaced) is ignored.
    public func invalidate(_ token: String) {
        if cached?.token == token {
            logger.info("replies: access token refused, fetching a new one")
            cached = nil
        }
    }

    private func refresh() async -> Result<Cached, ReplyError> {
        if fetching {
            return await withCheckedContinuation { waiters.append($0) }
        }
        fetching = true
        let result = await Self.fetch(exchange: exchange, credentials: credentials, now: now, logger: logger)
        fetching = false
        switch result {
        case .success(let value):
            cached = value
            observer.tokenRefresh(credentials.name, true)
        case .failure:
            observer.tokenRefresh(credentials.name, false)
        }
        let waiting = waiters
        waiters = []
        for waiter in waiting { waiter.resume(returning: result) }
        return result
    }

    private static func fetch(
        exchange: JSONExchange, credentials: AppCredentials, now: @Sendable () -> Int64, logger: Logger
    ) async -> Result<Cached, ReplyError> {
        let body = JSON.data(["appKey": credentials.clientID, "appSecret": credentials.clientSecret])
        let started = now()
        let answer: JSONExchange.Answer
        do {
            answer = try await exchange.post(url: credentials.apiBase + path, endpoint: path, body: body, logger: logger)
        } catch {
            return .failure(error.with(context: "app \(credentials.name)"))
        }
        guard answer.status == 200 else {
            var error = openAPIError(status: answer.status, answer: answer, endpoint: path)
            // The token endpoint's 4xx means the credentials are wrong, whatever the code says.
            if (400..<500).contains(answer.status), !error.isRetryable { error.code = .credentials }
            return .failure(error.with(context: "app \(credentials.name)"))
        }
        guard let token = answer.object?.string("accessToken"), !token.isEmpty,
            let expireIn = answer.object?.int("expireIn"), expireIn > 0
        else {
            return .failure(ReplyError(.badResponse, endpoint: path, context: "app \(credentials.name): no accessToken/expireIn"))
        }
        logger.debug("replies: fetched access token", metadata: ["token.expire_in": "\(expireIn)"])
        // DingTalk says 7200 s; a day at most whatever it says, so the sum cannot overflow.
        let lifetime = Int64(min(expireIn, 86_400))
        return .success(Cached(token: token, fetchedAt: started, expiresAt: started + lifetime * 1000))
    }
}

extension ReplyError {
    func with(context extra: String) -> ReplyError {
        var copy = self
        copy.context = [extra, context].compactMap { $0 }.joined(separator: "; ")
        return copy
    }
}

/// Classifies a non-200 OpenAPI answer (`{"code","message","requestid"}`, PROTOCOL.md section 5).
func openAPIError(status: Int, answer: JSONExchange.Answer, endpoint: String) -> ReplyError {
    let code = answer.object?.string("code")
    let message = answer.object?.string("message") ?? (answer.object == nil ? String(answer.rawBody.prefix(200)) : nil)
    let requestID = answer.object?.string("requestid") ?? answer.object?.string("requestId")
    let context = requestID.map { "requestid \($0)" }
    func error(_ kind: ReplyError.Code) -> ReplyError {
        ReplyError(kind, endpoint: endpoint, serverCode: code, serverMessage: message, context: context)
    }
    if code == "InvalidAuthentication" || status == 401 { return error(.invalidAuthentication) }
    if status == 403 {
        // Without a locale: a locale-aware comparison would load ICU's collator for this one word.
        if let code, code.lowercased().contains("qpslimit") { return error(.throttled) }
        return error(.permission(requiredPermission(message: message, endpoint: endpoint)))
    }
    if status == 429 { return error(.throttled) }
    if status >= 500 { return error(.server(status: status)) }
    return error(.rejected(status: status))
}

/// The permission an admin must grant: the scope DingTalk names in its message when it does
/// (`requiredScopes=[qyapi_robot_sendmsg]`), else the one the endpoint is known to need.
func requiredPermission(message: String?, endpoint: String) -> String {
    if let message, let range = message.range(of: "requiredScopes=[") {
        let rest = message[range.upperBound...]
        if let end = rest.firstIndex(of: "]"), rest.startIndex < end {
            return "the permission \(rest[..<end])"
        }
    }
    if endpoint.contains("/robot/") {
        return "the robot-send permission (qyapi_robot_sendmsg, \"企业内机器人发送消息权限\")"
    }
    return "the permission this API needs (see the error message)"
}

import AsyncHTTPClient
import Foundation
import Logging
import StreamProtocol

/// Users DingTalk named as not having received a private message.
public struct BatchSendResult: Sendable, Equatable {
    public var processQueryKey: String?
    /// Not staff ids of the app's organisation or outside its visibility range.
    public var invalidStaffIDs: [String]
    /// Users who got too many messages from the app recently; retry later.
    public var flowControlledStaffIDs: [String]

    public init(processQueryKey: String? = nil, invalidStaffIDs: [String] = [], flowControlledStaffIDs: [String] = []) {
        self.processQueryKey = processQueryKey
        self.invalidStaffIDs = invalidStaffIDs
        self.flowControlledStaffIDs = flowControlledStaffIDs
    }
}

/// The robot OpenAPI of one app (PROTOCOL.md section 5). Each call has a deadline and reads at
/// most `bodyCap` bytes of the answer. A refused token is replaced and the call made once more.
public struct OpenAPIClient: Sendable {
    public let credentials: AppCredentials
    public let tokens: AccessTokenProvider
    private let exchange: JSONExchange
    private let logger: Logger

    /// At most this many user ids per `batchSend` call.
    public static let maxUsersPerCall = 20

    static let batchSendPath = "/v1.0/robot/oToMessages/batchSend"
    static let groupSendPath = "/v1.0/robot/groupMessages/send"
    static let downloadPath = "/v1.0/robot/messageFiles/download"

    /// - Parameters:
    ///   - httpClient: owned by the caller (proxy, CA), who shuts it down.
    ///   - tokens: this app's token provider; never another app's.
    public init(
        credentials: AppCredentials, httpClient: HTTPClient, tokens: AccessTokenProvider,
        requestTimeout: Duration = .seconds(15), logger: Logger
    ) {
        self.credentials = credentials
        self.tokens = tokens
        self.exchange = JSONExchange(httpClient: httpClient, timeout: requestTimeout, bodyCap: 256 * 1024)
        var logger = logger
        logger[metadataKey: "app"] = "\(credentials.name)"
        self.logger = logger
    }

    /// Sends `message` to up to 20 users in private chats (`oToMessages/batchSend`).
    /// - Returns: the users DingTalk reported as invalid or flow-controlled (they did not get it).
    /// - Throws: `ReplyError`; `.throttled`, `.server`, `.timeout`, `.transport` are retryable;
    ///   `.permission` names what to grant; `.unsupportedMessage` for raw types without OpenAPI form.
    public func sendToUsers(_ ids: [String], message: ReplyMessage, robotCode: String? = nil) async throws(ReplyError) -> BatchSendResult {
        guard !ids.isEmpty, ids.count <= Self.maxUsersPerCall else {
            throw ReplyError(.rejected(status: 0), endpoint: Self.batchSendPath, context: "\(ids.count) user ids; send 1 to 20 per call")
        }
        let form = try message.openAPIForm()
        let body: [String: Any] = [
            "robotCode": robot(robotCode), "userIds": ids, "msgKey": form.msgKey, "msgParam": form.msgParam,
        ]
        let answer = try await call(Self.batchSendPath, body: body)
        return BatchSendResult(
            processQueryKey: answer.string("processQueryKey"),
            invalidStaffIDs: answer.strings("invalidStaffIdList"),
            flowControlledStaffIDs: answer.strings("flowControlledStaffIdList")
        )
    }

    /// Sends `message` to a group (`groupMessages/send`).
    /// - Returns: the `processQueryKey`, when DingTalk gave one.
    /// - Throws: `ReplyError`, as `sendToUsers`.
    @discardableResult
    public func sendToGroup(_ openConversationID: String, message: ReplyMessage, robotCode: String? = nil) async throws(ReplyError) -> String? {
        let form = try message.openAPIForm()
        let body: [String: Any] = [
            "robotCode": robot(robotCode), "openConversationId": openConversationID, "msgKey": form.msgKey,
            "msgParam": form.msgParam,
        ]
        return try await call(Self.groupSendPath, body: body).string("processQueryKey")
    }

    /// The temporary URL of a file a user sent (`messageFiles/download`).
    /// - Throws: `ReplyError`; `.badResponse` when the answer has no `downloadUrl`.
    public func downloadURL(downloadCode: String, robotCode: String? = nil) async throws(ReplyError) -> String {
        let answer = try await call(Self.downloadPath, body: ["robotCode": robot(robotCode), "downloadCode": downloadCode])
        guard let url = answer.string("downloadUrl"), !url.isEmpty else {
            throw ReplyError(.badResponse, endpoint: Self.downloadPath, context: "no downloadUrl in the answer")
        }
        return url
    }

    private func robot(_ robotCode: String?) -> String {
        if let robotCode, !robotCode.isEmpty { return robotCode }
        return credentials.clientID
    }

    /// POSTs with the app's token; on `InvalidAuthentication` replaces the token and tries once more.
    private func call(_ path: String, body: [String: Any]) async throws(ReplyError) -> JSONObject {
        let data = JSON.data(body)
        var refreshed = false
        while true {
            let token = try await tokens.token()
            let answer = try await exchange.post(
                url: credentials.apiBase + path, endpoint: path, headers: [("x-acs-dingtalk-access-token", token)],
                body: data, logger: logger
            )
            if answer.status == 200 {
                guard let object = answer.object else {
                    throw ReplyError(.badResponse, endpoint: path, context: "HTTP 200 without a JSON object")
                }
                return object
            }
            let error = openAPIError(status: answer.status, answer: answer, endpoint: path)
            logger.debug(
                "replies: OpenAPI refused",
                metadata: ["http.endpoint": "\(path)", "http.status": "\(answer.status)", "api.code": "\(error.serverCode ?? "")"]
            )
            if error.code == .invalidAuthentication, !refreshed {
                refreshed = true
                await tokens.invalidate(token)
                continue
            }
            throw error.with(context: "app \(credentials.name)")
        }
    }
}

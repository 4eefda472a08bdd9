import Synchronization
import Foundation
import NIOCore
import NIOHTTP1

/// The DingTalk HTTP endpoints (PROTOCOL.md sections 1, 4, 5).
extension DingTalkSimulator {
    func route(_ request: HTTPRequest) -> HTTPAnswer {
        switch (request.method, request.path) {
        case (.POST, "/v1.0/gateway/connections/open"): return openConnection(request)
        case (.GET, "/connect"): return refuseConnect(request)
        case (.POST, "/robot/sendBySession"): return sessionWebhook(request)
        case (.POST, "/v1.0/oauth2/accessToken"): return accessToken(request)
        case (.POST, "/v1.0/robot/oToMessages/batchSend"): return robotSend(request, endpoint: .batchSend)
        case (.POST, "/v1.0/robot/groupMessages/send"): return robotSend(request, endpoint: .groupMessages)
        case (.POST, "/v1.0/robot/messageFiles/download"): return messageFileDownload(request)
        default:
            if request.path.hasPrefix("/_sim/") { return controlRoute(request) }
            return errorAnswer(.notFound, "NotFound", "no such API: \(request.method) \(request.path)")
        }
    }

    func errorAnswer(_ status: HTTPResponseStatus, _ code: String, _ message: String) -> HTTPAnswer {
        let requestId = core.withLock { $0.rng.uuid() }
        return .json(status, #"{"code":\#(JSONText.quote(code)),"requestid":"\#(requestId)","message":\#(JSONText.quote(message))}"#)
    }

    /// Takes one queued fault for `endpoint`, if any.
    func takeHTTPFault(_ endpoint: OpenAPIEndpoint) -> HTTPFailure? {
        core.withLock { c in
            guard var list = c.httpFaults[endpoint], !list.isEmpty else { return nil }
            let failure = list[0].failure
            list[0].remaining -= 1
            if list[0].remaining <= 0 { list.removeFirst() }
            c.httpFaults[endpoint] = list
            if case .delay = failure {} else { c.faultedCalls[endpoint, default: 0] += 1 }
            return failure
        }
    }

    /// Answers for a fault that replaces the normal answer; nil for `.delay` (handled by caller).
    func faultAnswer(_ failure: HTTPFailure) -> HTTPAnswer? {
        switch failure {
        case .serverError(let status):
            return errorAnswer(HTTPResponseStatus(statusCode: status), "ServiceUnavailable", "simulated server error")
        case .throttle:
            return errorAnswer(.forbidden, "Forbidden.AccessDenied.QpsLimitForApi", "simulated: too many calls to this API")
        case .permissionDenied:
            return errorAnswer(.forbidden, "Forbidden.AccessDenied.AccessTokenPermissionDenied", "simulated: the app lacks permission [qyapi_robot_sendmsg]")
        case .delay:
            return nil
        }
    }

    /// Runs `normal` unless a fault for `endpoint` is queued; applies delays.
    func withFaults(_ endpoint: OpenAPIEndpoint, _ normal: () -> HTTPAnswer) -> HTTPAnswer {
        guard let failure = takeHTTPFault(endpoint) else { return normal() }
        if case .delay(let d) = failure {
            var answer = normal()
            answer.delay = d.timeAmount
            return answer
        }
        if endpoint == .webhook, failure == .throttle {
            return .json(.ok, #"{"errcode":130101,"errmsg":"send too fast"}"#)
        }
        return faultAnswer(failure) ?? normal()
    }

    // MARK: registration

    func openConnection(_ request: HTTPRequest) -> HTTPAnswer {
        guard let body = JSONText.object(request.body) else {
            return errorAnswer(.badRequest, "systemError", "body is not a JSON object")
        }
        let clientId = body["clientId"] as? String ?? ""
        let app = appsByClientId[clientId]
        let fault = core.withLock { c -> RegistrationFailure? in
            guard let index = c.registrationFaults.firstIndex(where: { $0.app == nil || $0.app == app?.name }) else { return nil }
            let failure = c.registrationFaults[index].failure
            c.registrationFaults[index].remaining -= 1
            if c.registrationFaults[index].remaining <= 0 { c.registrationFaults.remove(at: index) }
            return failure
        }
        switch fault {
        case .unauthorized?: return errorAnswer(.unauthorized, "authFailed", "鉴权失败")
        case .unavailable?: return errorAnswer(.serviceUnavailable, "ServiceUnavailable", "simulated outage")
        case .noAnswer?: return .never
        case .expiredTicket?, nil: break
        }
        guard let app, body["clientSecret"] as? String == app.clientSecret else {
            return errorAnswer(.unauthorized, "authFailed", "鉴权失败")
        }
        return withFaults(.registration) {
            let subscriptions = (body["subscriptions"] as? [[String: Any]] ?? []).map {
                "\($0["type"] as? String ?? "")|\($0["topic"] as? String ?? "")"
            }
            let now = configuration.now()
            let lifetime = configuration.ticketLifetime.timeAmount
            // `.expiredTicket` hands out a ticket that is already stale: the upgrade is refused.
            let expires = fault == .expiredTicket ? NIODeadline.now() - .seconds(1) : .now() + lifetime
            let ticket = core.withLock { c -> String in
                let ticket = c.rng.uuid()
                c.tickets[ticket] = TicketEntry(app: app.name, expires: expires)
                c.registrations.append(RegistrationRecord(
                    app: app.name, ticket: ticket, subscriptions: subscriptions,
                    ua: body["ua"] as? String, localIp: body["localIp"] as? String,
                    body: String(decoding: request.body, as: UTF8.self), time: now))
                c.stats[app.name, default: AppStats()].registrations += 1
                return ticket
            }
            let endpoint = webSocketBase + "/connect"
            return .json(.ok, #"{"endpoint":\#(JSONText.quote(endpoint)),"ticket":"\#(ticket)"}"#)
        }
    }

    /// A `/connect` that was not upgraded: bad ticket (401 unknown, 403 used or expired) or no upgrade headers.
    func refuseConnect(_ request: HTTPRequest) -> HTTPAnswer {
        switch ticketStatus(request.query["ticket"]) {
        case .unknown: return errorAnswer(.unauthorized, "InvalidTicket", "unknown ticket")
        case .used: return errorAnswer(.forbidden, "InvalidTicket", "ticket already used")
        case .expired: return errorAnswer(.forbidden, "InvalidTicket", "ticket expired")
        case .valid: return errorAnswer(.badRequest, "UpgradeRequired", "a WebSocket upgrade is required")
        }
    }

    // MARK: session webhook

    func sessionWebhook(_ request: HTTPRequest) -> HTTPAnswer {
        withFaults(.webhook) {
            let session = request.query["session"] ?? ""
            let now = configuration.now()
            let body = String(decoding: request.body, as: UTF8.self)
            let valid = JSONText.object(request.body) != nil
            let errcode = core.withLock { c -> Int in
                let entry = c.sessions[session]
                let code: Int
                let live = entry.map { !$0.expiredByCommand && $0.expiresAt >= now } ?? false
                if !live {
                    code = 300001
                } else if c.webhookThrottle {
                    code = 130101
                } else if !valid {
                    code = 400
                } else {
                    code = 0
                }
                c.replySequence += 1
                c.webhookReplies.append(WebhookReplyRecord(sequence: c.replySequence, app: entry?.app ?? "", session: session, msgId: entry?.msgId, body: body, errcode: code, time: now))
                return code
            }
            switch errcode {
            case 0: return .json(.ok, #"{"errcode":0,"errmsg":"ok"}"#)
            case 300001: return .json(.ok, #"{"errcode":300001,"errmsg":"session 不存在"}"#)
            case 130101: return .json(.ok, #"{"errcode":130101,"errmsg":"send too fast"}"#)
            default: return .json(.ok, #"{"errcode":400,"errmsg":"body is not JSON"}"#)
            }
        }
    }

    // MARK: OpenAPI

    func accessToken(_ request: HTTPRequest) -> HTTPAnswer {
        withFaults(.accessToken) {
            guard let body = JSONText.object(request.body) else {
                return errorAnswer(.badRequest, "InvalidParameter", "body is not a JSON object")
            }
            guard let app = appsByClientId[body["appKey"] as? String ?? ""] else {
                return errorAnswer(.badRequest, "invalidClientId", "unknown appKey")
            }
            guard body["appSecret"] as? String == app.clientSecret else {
                return errorAnswer(.badRequest, "invalidClientSecret", "wrong appSecret")
            }
            let lifetime = configuration.tokenLifetimeSeconds
            let now = configuration.now()
            let token = core.withLock { c -> String in
                let token = c.rng.hex(32)
                c.tokens[token] = TokenEntry(app: app.name, expiresAt: now.addingTimeInterval(TimeInterval(lifetime)))
                return token
            }
            return .json(.ok, #"{"accessToken":"\#(token)","expireIn":\#(lifetime)}"#)
        }
    }

    /// Checks the token header and that `robotCode` is the token's app; the app or an error answer.
    /// The calling app (by its access token, matching the body's robotCode) and the JSON body.
    func authenticate(_ request: HTTPRequest) -> Result<(SimulatedApp, [String: Any]), HTTPAnswerError> {
        guard let body = JSONText.object(request.body) else {
            return .failure(HTTPAnswerError(answer: errorAnswer(.badRequest, "InvalidParameter", "body is not a JSON object")))
        }
        guard let token = request.headers.first(name: "x-acs-dingtalk-access-token"), !token.isEmpty else {
            return .failure(HTTPAnswerError(answer: errorAnswer(.badRequest, "InvalidAuthentication", "x-acs-dingtalk-access-token is missing")))
        }
        let now = configuration.now()
        let entry = core.withLock { $0.tokens[token] }
        guard let entry, entry.expiresAt > now, let app = appsByName[entry.app] else {
            return .failure(HTTPAnswerError(answer: errorAnswer(.badRequest, "InvalidAuthentication", "access token is unknown or expired")))
        }
        guard body["robotCode"] as? String == app.clientId else {
            return .failure(HTTPAnswerError(answer: errorAnswer(.badRequest, "InvalidAuthentication", "access token belongs to another app than robotCode")))
        }
        return .success((app, body))
    }

    struct HTTPAnswerError: Error { var answer: HTTPAnswer }

    static let msgKeys: Set<String> = ["sampleText", "sampleMarkdown", "sampleImageMsg", "sampleLink", "sampleActionCard", "sampleActionCard2", "sampleActionCard3", "sampleActionCard4", "sampleActionCard5", "sampleActionCard6", "sampleFile", "sampleAudio", "sampleVideo"]

    func robotSend(_ request: HTTPRequest, endpoint: OpenAPIEndpoint) -> HTTPAnswer {
        withFaults(endpoint) {
            let (app, body): (SimulatedApp, [String: Any])
            switch authenticate(request) {
            case .failure(let e): return e.answer
            case .success(let found): (app, body) = found
            }
            guard let msgKey = body["msgKey"] as? String, Self.msgKeys.contains(msgKey) else {
                return errorAnswer(.badRequest, "InvalidParameter.MsgKey", "msgKey is missing or unknown")
            }
            guard let msgParam = body["msgParam"] as? String, JSONText.object(msgParam) != nil else {
                return errorAnswer(.badRequest, "InvalidParameter.MsgParam", "msgParam must be a JSON object encoded as a string")
            }
            var userIds: [String] = []
            if endpoint == .batchSend {
                guard let ids = body["userIds"] as? [String], !ids.isEmpty else {
                    return errorAnswer(.badRequest, "InvalidParameter.UserIds", "userIds must be a non-empty array of strings")
                }
                guard ids.count <= 20 else {
                    return errorAnswer(.badRequest, "InvalidParameter.UserIds", "at most 20 userIds per call, got \(ids.count)")
                }
                userIds = ids
            } else {
                guard let cid = body["openConversationId"] as? String, !cid.isEmpty else {
                    return errorAnswer(.badRequest, "InvalidParameter.OpenConversationId", "openConversationId is missing")
                }
                guard msgParam.utf8.count <= 15_000 else {
                    return errorAnswer(.badRequest, "InvalidParameter.MsgParam", "msgParam is over 15000 bytes")
                }
            }
            let now = configuration.now()
            let invalid = userIds.filter { configuration.invalidStaffIds.contains($0) }
            let key = core.withLock { c -> String in
                c.replySequence += 1
                c.openAPISends.append(OpenAPISendRecord(sequence: c.replySequence, app: app.name, endpoint: endpoint, body: String(decoding: request.body, as: UTF8.self), time: now))
                return c.rng.alnum(24)
            }
            if endpoint == .batchSend {
                let list = invalid.map { JSONText.quote($0) }.joined(separator: ",")
                return .json(.ok, #"{"processQueryKey":"\#(key)","invalidStaffIdList":[\#(list)],"flowControlledStaffIdList":[]}"#)
            }
            return .json(.ok, #"{"processQueryKey":"\#(key)"}"#)
        }
    }

    func messageFileDownload(_ request: HTTPRequest) -> HTTPAnswer {
        withFaults(.messageFiles) {
            let (app, body): (SimulatedApp, [String: Any])
            switch authenticate(request) {
            case .failure(let e): return e.answer
            case .success(let found): (app, body) = found
            }
            let code = body["downloadCode"] as? String ?? ""
            let token = core.withLock { c -> String? in
                guard let file = c.files[code], file.app == app.name else { return nil }
                return file.urlToken
            }
            guard let token else {
                return errorAnswer(.badRequest, "InvalidParameter.DownloadCode", "unknown downloadCode for this robot")
            }
            return .json(.ok, #"{"downloadUrl":\#(JSONText.quote(baseURL + "/_sim/files/" + token))}"#)
        }
    }
}

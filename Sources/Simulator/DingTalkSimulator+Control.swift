import Synchronization
import Foundation
import NIOCore
import NIOHTTP1

/// The JSON control API under `/_sim/` (for the sandbox and tools outside Swift).
extension DingTalkSimulator {
    func controlRoute(_ request: HTTPRequest) -> HTTPAnswer {
        switch (request.method, request.path) {
        case (.POST, "/_sim/messages"): return controlInject(request)
        case (.POST, "/_sim/events"): return controlEvent(request)
        case (.POST, "/_sim/redeliver"): return controlRedeliver(request)
        case (.GET, "/_sim/replies"): return controlReplies(request)
        case (.GET, "/_sim/stats"): return controlStats()
        case (.POST, "/_sim/faults"): return controlFault(request)
        case (.GET, _) where request.path.hasPrefix("/_sim/files/"):
            let token = String(request.path.dropFirst("/_sim/files/".count))
            let bytes = core.withLock { c in c.fileByURLToken[token].flatMap { c.files[$0]?.bytes } }
            guard let bytes else { return errorAnswer(.notFound, "NotFound", "no such file") }
            return HTTPAnswer(status: .ok, body: bytes, contentType: "application/octet-stream")
        default:
            return errorAnswer(.notFound, "NotFound", "no such control API: \(request.method) \(request.path)")
        }
    }

    func controlError(_ message: String) -> HTTPAnswer {
        .json(.badRequest, #"{"error":\#(JSONText.quote(message))}"#)
    }

    /// `{"app","text","conversation":"private"|"group","sender","conversationId","title","msgtype","fileName","webhookLifetimeMs"}`.
    func controlInject(_ request: HTTPRequest) -> HTTPAnswer {
        guard let body = JSONText.object(request.body) else { return controlError("body is not a JSON object") }
        guard let app = body["app"] as? String ?? configuration.apps.first?.name else { return controlError("no app") }
        let text = body["text"] as? String ?? ""
        let content: BotMessageSpec.Content
        switch body["msgtype"] as? String ?? "text" {
        case "text": content = .text(text)
        case "picture": content = .picture()
        case "file": content = .file(name: body["fileName"] as? String ?? "file.txt")
        case "audio": content = .audio(recognition: text)
        case "video": content = .video(durationSeconds: 5)
        case "richText": content = .richText([.text(text), .picture()])
        case let other: return controlError("unknown msgtype \(other)")
        }
        var spec = BotMessageSpec(app: app, content: content)
        if let sender = body["sender"] as? String { spec.senderStaffId = sender }
        if body["conversation"] as? String == "group" {
            spec.conversation = .group(conversationId: body["conversationId"] as? String ?? "cidSandboxGroup==", title: body["title"] as? String ?? "Sandbox group")
        }
        if let ms = body["webhookLifetimeMs"] as? Int { spec.webhookLifetime = .milliseconds(ms) }
        do {
            let m = try injectBotMessage(spec)
            let object: [String: Any] = [
                "msgId": m.msgId, "messageId": m.messageId ?? NSNull(), "conversationId": m.conversationId,
                "sessionWebhook": m.sessionWebhook, "downloadCodes": m.downloadCodes,
            ]
            return .json(.ok, JSONText.encode(object))
        } catch {
            return controlError("\(error)")
        }
    }

    /// `{"app","eventType","data":{…}}`.
    func controlEvent(_ request: HTTPRequest) -> HTTPAnswer {
        guard let body = JSONText.object(request.body), let app = body["app"] as? String, let type = body["eventType"] as? String else {
            return controlError("need app and eventType")
        }
        let data = body["data"].map { JSONText.encode($0) } ?? "{}"
        do {
            let e = try injectEvent(app: app, eventType: type, data: data)
            return .json(.ok, JSONText.encode(["eventId": e.eventId, "messageId": e.messageId ?? NSNull()] as [String: Any]))
        } catch {
            return controlError("\(error)")
        }
    }

    /// `{"app","msgId"}` (or `"eventId"`).
    func controlRedeliver(_ request: HTTPRequest) -> HTTPAnswer {
        guard let body = JSONText.object(request.body), let app = body["app"] as? String,
              let id = body["msgId"] as? String ?? body["eventId"] as? String
        else { return controlError("need app and msgId") }
        do {
            let messageId = try redeliver(app: app, businessId: id)
            return .json(.ok, JSONText.encode(["messageId": messageId ?? NSNull()] as [String: Any]))
        } catch {
            return controlError("\(error)")
        }
    }

    /// Webhook replies and OpenAPI sends with sequence > `since`, in arrival order.
    func controlReplies(_ request: HTTPRequest) -> HTTPAnswer {
        let since = Int(request.query["since"] ?? "0") ?? 0
        let (hooks, sends, last) = core.withLock { c in
            (c.webhookReplies.filter { $0.sequence > since }, c.openAPISends.filter { $0.sequence > since }, c.replySequence)
        }
        var items: [(Int, [String: Any])] = []
        for h in hooks {
            items.append((h.sequence, [
                "seq": h.sequence, "kind": "webhook", "app": h.app, "msgId": h.msgId ?? NSNull(), "errcode": h.errcode,
                "body": JSONText.object(h.body) ?? h.body, "time": h.time.timeIntervalSince1970,
            ]))
        }
        for s in sends {
            items.append((s.sequence, [
                "seq": s.sequence, "kind": "openapi", "app": s.app, "endpoint": s.endpoint.rawValue,
                "body": JSONText.object(s.body) ?? s.body, "time": s.time.timeIntervalSince1970,
            ]))
        }
        items.sort { $0.0 < $1.0 }
        return .json(.ok, JSONText.encode(["replies": items.map(\.1), "last": last] as [String: Any]))
    }

    func controlStats() -> HTTPAnswer {
        var apps: [String: Any] = [:]
        for app in configuration.apps {
            let s = stats(app: app.name)
            apps[app.name] = [
                "liveSockets": s.liveSockets, "openSockets": s.openSockets, "registrations": s.registrations,
                "pushes": s.pushes, "redeliveries": s.redeliveries, "acks": s.acks, "acksOnWrongSocket": s.acksOnWrongSocket,
                "unacked": s.unacked, "pingEchoes": s.pingEchoes, "pingMismatches": s.pingMismatches,
                "gaps": s.gaps, "gapSeconds": s.gapSeconds,
                // For a `disconnect` fault aimed at one socket.
                "liveSocketIds": liveSockets(app: app.name).map(\.id).sorted(),
            ] as [String: Any]
        }
        return .json(.ok, JSONText.encode(["apps": apps]))
    }

    /// `{"kind":…}`; see `SimulatorFault.init(json:)`.
    func controlFault(_ request: HTTPRequest) -> HTTPAnswer {
        guard let body = JSONText.object(request.body) else { return controlError("body is not a JSON object") }
        do {
            try apply(try SimulatorFault(json: body))
            return .json(.ok, #"{"ok":true}"#)
        } catch {
            return controlError("\(error)")
        }
    }
}

extension SimulatorFault {
    /// Reads the control API form:
    /// `{"kind":"disconnect","app","socket"?,"mode":"disconnectFrame"|"abruptClose"|"deaf"}`,
    /// `{"kind":"registration","app"?,"failure":"unauthorized"|"unavailable"|"noAnswer"|"expiredTicket","count"}`,
    /// `{"kind":"http","endpoint","failure":"serverError"|"throttle"|"permissionDenied"|"delay","status"?,"delayMs"?,"count"}`,
    /// `{"kind":"clearHTTPFaults","endpoint"?}`, `{"kind":"expireTokens","app"}`, `{"kind":"expireWebhooks","app"?}`,
    /// `{"kind":"throttleWebhooks","on"}`, `{"kind":"rotation","ageMs"?}`,
    /// `{"kind":"oversizedFrame","app","socket"?,"bytes"}`; disconnect also takes `"mode":"blackHole"`.
    /// - Throws: `SimulatorError.invalidRequest` naming the bad field.
    public init(json: [String: Any]) throws {
        func bad(_ m: String) -> SimulatorError { SimulatorError(.invalidRequest, "fault: \(m)") }
        let app = json["app"] as? String
        let count = json["count"] as? Int ?? 1
        switch json["kind"] as? String {
        case "disconnect":
            guard let app else { throw bad("disconnect needs app") }
            guard let mode = DisconnectMode(rawValue: json["mode"] as? String ?? "disconnectFrame") else { throw bad("unknown mode") }
            self = .disconnect(app: app, socket: json["socket"] as? Int, mode: mode)
        case "registration":
            guard let failure = RegistrationFailure(rawValue: json["failure"] as? String ?? "") else { throw bad("unknown registration failure") }
            self = .registration(app: app, failure: failure, count: count)
        case "http":
            guard let endpoint = OpenAPIEndpoint(rawValue: json["endpoint"] as? String ?? "") else { throw bad("unknown endpoint") }
            let failure: HTTPFailure
            switch json["failure"] as? String {
            case "serverError": failure = .serverError(status: json["status"] as? Int ?? 503)
            case "throttle": failure = .throttle
            case "permissionDenied": failure = .permissionDenied
            case "delay": failure = .delay(.milliseconds(json["delayMs"] as? Int ?? 1000))
            default: throw bad("unknown http failure")
            }
            self = .http(endpoint: endpoint, failure: failure, count: count)
        case "clearHTTPFaults":
            var endpoint: OpenAPIEndpoint?
            if let name = json["endpoint"] as? String {
                guard let known = OpenAPIEndpoint(rawValue: name) else { throw bad("unknown endpoint") }
                endpoint = known
            }
            self = .clearHTTPFaults(endpoint: endpoint)
        case "expireTokens":
            guard let app else { throw bad("expireTokens needs app") }
            self = .expireTokens(app: app)
        case "expireWebhooks":
            self = .expireWebhooks(app: app)
        case "throttleWebhooks":
            self = .throttleWebhooks(json["on"] as? Bool ?? true)
        case "rotation":
            self = .rotation(age: (json["ageMs"] as? Int).map { .milliseconds($0) })
        case "oversizedFrame":
            guard let app else { throw bad("oversizedFrame needs app") }
            guard let bytes = json["bytes"] as? Int, bytes > 0 else { throw bad("oversizedFrame needs bytes > 0") }
            self = .oversizedFrame(app: app, socket: json["socket"] as? Int, bytes: bytes)
        default:
            throw bad("unknown kind")
        }
    }
}

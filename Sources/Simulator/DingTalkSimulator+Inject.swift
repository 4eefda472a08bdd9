import Synchronization
import Foundation
import NIOCore

/// Injecting what users and the platform do: bot messages, events, card clicks, redeliveries.
extension DingTalkSimulator {
    /// Builds the full bot message payload (PROTOCOL.md section 3) and pushes it as a CALLBACK to
    /// one random live socket of the app; with none live it is pushed when one becomes live.
    /// - Throws: `SimulatorError.unknownApp`.
    @discardableResult
    public func injectBotMessage(_ spec: BotMessageSpec) throws -> InjectedMessage {
        let app = try app(named: spec.app)
        let now = configuration.now()
        let createAt = Int64(now.timeIntervalSince1970 * 1000)
        let lifetime = spec.webhookLifetime ?? configuration.webhookLifetime
        let expiresAt = now.addingTimeInterval(lifetime.seconds)
        let expiredMillis = Int64(expiresAt.timeIntervalSince1970 * 1000)
        let base = baseURL

        let result = core.withLock { c -> (InjectedMessage, PendingWrite?) in
            let msgId = "msg" + c.rng.alnum(22) + "=="
            let session = c.rng.hex(32)
            var codes: [String] = []
            func file(_ kind: String, _ bytes: [UInt8]?) -> String {
                let code = "dc" + c.rng.alnum(30)
                c.files[code] = FileEntry(app: app.name, bytes: bytes ?? syntheticFile(for: code, kind: kind), urlToken: c.rng.hex(24))
                c.fileByURLToken[c.files[code]!.urlToken] = code
                codes.append(code)
                return code
            }
            var payload: [String: Any] = [:]
            switch spec.content {
            case .text(let text):
                payload["msgtype"] = "text"
                payload["text"] = ["content": text]
            case .picture(let bytes):
                let code = file("picture", bytes)
                payload["msgtype"] = "picture"
                payload["content"] = ["downloadCode": code, "pictureDownloadCode": code]
            case .file(let name, let bytes):
                let code = file("file", bytes)
                payload["msgtype"] = "file"
                payload["content"] = ["downloadCode": code, "fileName": name, "fileId": "file" + c.rng.hex(12), "spaceId": "space" + c.rng.hex(8)]
            case .audio(let recognition, let bytes):
                let code = file("audio", bytes)
                payload["msgtype"] = "audio"
                payload["content"] = ["downloadCode": code, "recognition": recognition]
            case .video(let duration, let bytes):
                let code = file("video", bytes)
                payload["msgtype"] = "video"
                payload["content"] = ["downloadCode": code, "duration": duration, "videoType": "mp4"] as [String: Any]
            case .richText(let parts):
                let items: [[String: Any]] = parts.map { part in
                    switch part {
                    case .text(let t): return ["text": t]
                    case .picture(let bytes):
                        let code = file("picture", bytes)
                        return ["type": "picture", "downloadCode": code, "pictureDownloadCode": code]
                    }
                }
                payload["msgtype"] = "richText"
                payload["content"] = ["richText": items]
            case .raw(let msgtype, let key, let json):
                payload["msgtype"] = msgtype
                if let key, let json, let value = try? JSONSerialization.jsonObject(with: Data(json.utf8), options: [.fragmentsAllowed]) {
                    payload[key] = value
                }
            }
            let conversationId: String
            switch spec.conversation {
            case .privateChat:
                conversationId = "cid" + c.rng.alnum(20) + "=="
                payload["conversationType"] = "1"
            case .group(let cid, let title):
                conversationId = cid
                payload["conversationType"] = "2"
                payload["conversationTitle"] = title
            }
            let corpId = "ding" + c.appId(app.name).prefix(16)
            let botUser = "$:LWCP_v1:$" + c.appId(app.name).prefix(24)
            payload["conversationId"] = conversationId
            payload["msgId"] = msgId
            payload["createAt"] = createAt
            payload["senderId"] = "$:LWCP_v1:$" + spec.senderStaffId
            payload["senderStaffId"] = spec.senderStaffId
            payload["senderNick"] = spec.senderNick
            payload["senderCorpId"] = corpId
            payload["isAdmin"] = false
            payload["chatbotUserId"] = botUser
            payload["chatbotCorpId"] = corpId
            payload["robotCode"] = app.clientId
            payload["isInAtList"] = spec.isInAtList
            payload["atUsers"] = [["dingtalkId": botUser]]
            let webhook = base + "/robot/sendBySession?session=" + session
            payload["sessionWebhook"] = webhook
            payload["sessionWebhookExpiredTime"] = expiredMillis
            let data = JSONText.encode(payload)
            c.sessions[session] = SessionEntry(app: app.name, msgId: msgId, expiresAt: expiresAt)
            let id = c.newDelivery(app: app.name, type: .callback, topic: spec.topic, data: data, businessId: msgId, extraHeaders: "")
            let (messageId, write) = c.push(id, now: now, recordDetails: configuration.recordDetails, redeliveryTimeout: redeliveryAmount)
            let injected = InjectedMessage(app: app.name, msgId: msgId, messageId: messageId, conversationId: conversationId, sessionWebhook: webhook, sessionWebhookExpiredTime: expiredMillis, downloadCodes: codes, data: data)
            return (injected, write)
        }
        if let write = result.1 { perform(write) }
        return result.0
    }

    /// Shorthand: a private text message.
    @discardableResult
    public func injectText(_ text: String, app: String, sender: String = "0423297") throws -> InjectedMessage {
        try injectBotMessage(BotMessageSpec(app: app, content: .text(text), senderStaffId: sender))
    }

    /// Pushes an EVENT frame (topic `*`) with a fresh eventId. Acks with `{"status":"LATER"}` leave
    /// it pending, so it is pushed again after the redelivery timeout.
    /// - Throws: `SimulatorError.unknownApp`.
    @discardableResult
    public func injectEvent(app: String, eventType: String, data: String = "{}", corpId: String = "dingcorp") throws -> InjectedEvent {
        let app = try self.app(named: app)
        let now = configuration.now()
        let born = Int64(now.timeIntervalSince1970 * 1000)
        let (event, write) = core.withLock { c -> (InjectedEvent, PendingWrite?) in
            let eventId = c.rng.hex(32)
            let extra = #","eventBornTime":"\#(born)","eventCorpId":\#(JSONText.quote(corpId)),"eventId":"\#(eventId)","eventType":\#(JSONText.quote(eventType)),"eventUnifiedAppId":"\#(c.appId(app.name))""#
            let id = c.newDelivery(app: app.name, type: .event, topic: "*", data: data, businessId: eventId, extraHeaders: extra, isEvent: true)
            let (messageId, write) = c.push(id, now: now, recordDetails: configuration.recordDetails, redeliveryTimeout: redeliveryAmount)
            return (InjectedEvent(app: app.name, eventId: eventId, messageId: messageId, data: data), write)
        }
        if let write { perform(write) }
        return event
    }

    /// Pushes a card click (CALLBACK `/v1.0/card/instances/callback`, PROTOCOL.md section 6) and
    /// waits for its 200 ack; returns the ack's `response` as JSON text (nil when null).
    /// - Throws: `SimulatorError.timeout` when no accepted ack came in time, `.shutDown`, `.unknownApp`.
    public func injectCardCallback(
        app: String, outTrackId: String, userId: String = "0423297", actionIds: [String] = [],
        params: [String: String] = [:], timeout: Duration = .seconds(10)
    ) async throws -> String? {
        let app = try self.app(named: app)
        let privateData: [String: Any] = ["cardPrivateData": ["actionIds": actionIds, "params": params] as [String: Any]]
        let payload: [String: Any] = [
            "type": "actionCallback", "outTrackId": outTrackId, "corpId": "dingcorp", "userId": userId,
            "content": JSONText.encode(privateData),
        ]
        let data = JSONText.encode(payload)
        let now = configuration.now()
        let deadline = NIODeadline.now() + timeout.timeAmount
        return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<String?, any Error>) in
            let (write, refused) = core.withLock { c -> (PendingWrite?, Bool) in
                guard !c.shutDown else { return (nil, true) }
                let id = c.newDelivery(app: app.name, type: .callback, topic: "/v1.0/card/instances/callback", data: data, businessId: nil, extraHeaders: "", isCard: true)
                c.cardWaiters[id] = (continuation, deadline)
                return (c.push(id, now: now, recordDetails: configuration.recordDetails, redeliveryTimeout: redeliveryAmount).write, false)
            }
            if refused {
                continuation.resume(throwing: SimulatorError(.shutDown, "card callback injected after shutdown"))
                return
            }
            if let write { perform(write) }
        }
    }

    /// Pushes an already injected message again with a new messageId and the same business id
    /// (msgId / eventId), whether or not it was acked: tests dedup on purpose.
    /// - Throws: `SimulatorError.invalidRequest` when the id is unknown.
    @discardableResult
    public func redeliver(app: String, businessId: String) throws -> String? {
        let now = configuration.now()
        let (found, messageId, write) = core.withLock { c -> (Bool, String?, PendingWrite?) in
            guard let id = c.deliveryByBusinessKey[SimulatorCore.businessKey(app: app, id: businessId)] else { return (false, nil, nil) }
            let (m, w) = c.push(id, now: now, recordDetails: configuration.recordDetails, redeliveryTimeout: redeliveryAmount)
            return (true, m, w)
        }
        guard found else { throw SimulatorError(.invalidRequest, "no message \(businessId) of app \(app) to redeliver") }
        if let write { perform(write) }
        return messageId
    }

    /// `redeliver(app:businessId:)` for an injected bot message.
    @discardableResult
    public func redeliver(_ message: InjectedMessage) throws -> String? {
        try redeliver(app: message.app, businessId: message.msgId)
    }
}

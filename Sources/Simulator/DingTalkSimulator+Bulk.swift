import Foundation
import NIOCore
import NIOWebSocket
import Synchronization

/// Load for benchmarks: many bot messages at once, cheap to build, written with one flush per
/// socket, and the ack latencies the simulator saw.
extension DingTalkSimulator {
    /// Pushes `count` private text messages from `sender`, each with its own msgId, conversation
    /// and session webhook, in the same wire format as `injectBotMessage` (the payload is rendered
    /// once with placeholders by the same encoder, then only the ids are spliced in). Each goes to
    /// one random live socket; with none live they wait for one. Frames for one socket are written
    /// together and flushed once.
    /// - Returns: the msgIds, in push order.
    /// - Throws: `SimulatorError.unknownApp`.
    @discardableResult
    public func injectTextMessages(
        count: Int, app: String, text: String = "hello", sender: String = "0423297", senderNick: String = "Zhang San"
    ) throws -> [String] {
        let app = try self.app(named: app)
        guard count > 0 else { return [] }
        let now = configuration.now()
        let createAt = Int64(now.timeIntervalSince1970 * 1000)
        let expiresAt = now.addingTimeInterval(configuration.webhookLifetime.seconds)
        let webhookBase = baseURL + "/robot/sendBySession?session="
        let topic = BotMessageSpec.text(text, app: app.name).topic

        let (msgIds, writes) = core.withLock { c -> ([String], [PendingWrite]) in
            let corpId = "ding" + c.appId(app.name).prefix(16)
            let botUser = "$:LWCP_v1:$" + c.appId(app.name).prefix(24)
            let payload: [String: Any] = [
                "msgtype": "text", "text": ["content": text], "conversationType": "1",
                "conversationId": Placeholder.conversation, "msgId": Placeholder.msgId, "createAt": createAt,
                "senderId": "$:LWCP_v1:$" + sender, "senderStaffId": sender, "senderNick": senderNick,
                "senderCorpId": corpId, "isAdmin": false, "chatbotUserId": botUser, "chatbotCorpId": corpId,
                "robotCode": app.clientId, "isInAtList": true, "atUsers": [["dingtalkId": botUser]],
                "sessionWebhook": webhookBase + Placeholder.session,
                "sessionWebhookExpiredTime": Int64(expiresAt.timeIntervalSince1970 * 1000),
            ]
            let template = DataTemplate(JSONText.encode(payload))
            var msgIds: [String] = []
            var writes: [PendingWrite] = []
            msgIds.reserveCapacity(count)
            writes.reserveCapacity(count)
            for _ in 0..<count {
                let msgId = "msg" + c.rng.alnum(22) + "=="
                let session = c.rng.hex(32)
                let data = template.render(msgId: msgId, session: session, conversation: "cid" + c.rng.alnum(20) + "==")
                c.sessions[session] = SessionEntry(app: app.name, msgId: msgId, expiresAt: expiresAt)
                let id = c.newDelivery(app: app.name, type: .callback, topic: topic, data: data, businessId: msgId, extraHeaders: "")
                if let write = c.push(id, now: now, recordDetails: configuration.recordDetails, redeliveryTimeout: redeliveryAmount).write {
                    writes.append(write)
                }
                msgIds.append(msgId)
            }
            return (msgIds, writes)
        }
        performBatched(writes)
        return msgIds
    }

    /// Push-to-ack times of the accepted acks since the last call (when
    /// `recordAckLatencies` is on), in the order the acks arrived; clears them.
    public func takeAckLatencies() -> [Duration] {
        let taken = core.withLock { c -> [TimeAmount] in
            defer { c.ackLatencies = [] }
            return c.ackLatencies
        }
        return taken.map { .nanoseconds($0.nanoseconds) }
    }

    /// Writes frames grouped by socket on the socket's event loop, one flush per socket.
    func performBatched(_ writes: [PendingWrite]) {
        var bySocket: [ObjectIdentifier: (channel: any Channel, texts: [String])] = [:]
        for write in writes {
            bySocket[ObjectIdentifier(write.channel), default: (write.channel, [])].texts.append(write.text)
        }
        for (channel, texts) in bySocket.values {
            channel.eventLoop.execute {
                for text in texts {
                    let buffer = channel.allocator.buffer(string: text)
                    channel.write(WebSocketFrame(fin: true, opcode: .text, data: buffer), promise: nil)
                }
                channel.flush()
            }
        }
    }
}

private enum Placeholder {
    static let msgId = "\u{7F}msgId\u{7F}"
    static let session = "\u{7F}session\u{7F}"
    static let conversation = "\u{7F}conversation\u{7F}"
}

/// A rendered payload cut at its placeholders, so a message costs a few string appends.
private struct DataTemplate {
    enum Slot { case msgId, session, conversation }
    var pieces: [String] = []
    var slots: [Slot] = []

    init(_ rendered: String) {
        var rest = Substring(rendered)
        let marks: [(String, Slot)] = [(Placeholder.msgId, .msgId), (Placeholder.session, .session), (Placeholder.conversation, .conversation)]
        while true {
            let next = marks.compactMap { mark, slot in rest.range(of: mark).map { ($0, slot) } }.min { $0.0.lowerBound < $1.0.lowerBound }
            guard let (range, slot) = next else { break }
            pieces.append(String(rest[..<range.lowerBound]))
            slots.append(slot)
            rest = rest[range.upperBound...]
        }
        pieces.append(String(rest))
    }

    func render(msgId: String, session: String, conversation: String) -> String {
        var out = pieces[0]
        for (index, slot) in slots.enumerated() {
            switch slot {
            case .msgId: out += msgId
            case .session: out += session
            case .conversation: out += conversation
            }
            out += pieces[index + 1]
        }
        return out
    }
}

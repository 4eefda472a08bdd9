import Foundation
import Simulator
import StreamProtocol
import Synchronization

/// The conversations the sandbox page shows: what its users sent, and every reply the simulator
/// received, in order, each with the path it took. Items are kept as JSON text, numbered from 1,
/// so a page asks only for what it has not seen yet.
final class SandboxChat: Sendable {
    /// A made-up DingTalk user of the page.
    struct Person: Sendable {
        var staffId: String
        var nick: String
    }

    static let people = [
        Person(staffId: "0423297", nick: "Zhang San"),
        Person(staffId: "0423298", nick: "Li Si"),
        Person(staffId: "0423299", nick: "Wang Wu"),
    ]
    static let groupConversationId = "cidSandboxGroup=="
    static let groupTitle = "Sandbox group"
    /// Attachments kept for the page to show again; older ones are dropped.
    static let keptFiles = 64

    struct State {
        var items: [String] = []
        /// The chat ("private" or "group") of each message sent to the bot, by msgId.
        var chatOfMessage: [String: String] = [:]
        var seenWebhook = 0
        var seenOpenAPI = 0
        var files: [Int: (contentType: String, bytes: [UInt8])] = [:]
        /// Messages arrive with a session webhook that is already gone, until this is reset.
        var webhooksExpired = false
    }

    let simulator: DingTalkSimulator
    let app: String
    private let state = Mutex(State())

    init(simulator: DingTalkSimulator, app: String) {
        self.simulator = simulator
        self.app = app
    }

    enum SendError: Error, CustomStringConvertible {
        case invalid(String)
        var description: String {
            switch self {
            case .invalid(let message): message
            }
        }
    }

    /// What the page's composer sends: `{"chat","sender","text","at","attachment":{"kind","name","type","base64"}}`.
    func send(_ request: [String: Any]) throws(SendError) -> String {
        let chat = request["chat"] as? String ?? "private"
        guard chat == "private" || chat == "group" else { throw .invalid("chat must be \"private\" or \"group\", not \(chat)") }
        let staffId = request["sender"] as? String ?? Self.people[0].staffId
        guard let person = Self.people.first(where: { $0.staffId == staffId }) else {
            throw .invalid("sender \(staffId) is none of the sandbox's people (\(Self.people.map(\.staffId).joined(separator: ", ")))")
        }
        let text = request["text"] as? String ?? ""
        // A group message reaches the bot only when it is mentioned, as in DingTalk.
        let toBot = chat == "private" || (request["at"] as? Bool ?? false)
        var content = BotMessageSpec.Content.text(text)
        var item: [String: Any] = [
            "from": "user", "chat": chat, "sender": person.staffId, "nick": person.nick, "text": text,
            "at": chat == "group" && toBot, "toBot": toBot, "time": Date().timeIntervalSince1970,
        ]
        var file: (contentType: String, bytes: [UInt8])?
        if let attachment = request["attachment"] as? [String: Any] {
            guard let encoded = attachment["base64"] as? String, let bytes = Data(base64Encoded: encoded) else {
                throw .invalid("attachment.base64 is missing or not base64")
            }
            let name = attachment["name"] as? String ?? "file"
            let type = attachment["type"] as? String ?? "application/octet-stream"
            switch attachment["kind"] as? String {
            case "picture":
                content = .picture(bytes: Array(bytes))
                item["msgtype"] = "picture"
            case "file":
                guard chat == "private" else { throw .invalid("in groups DingTalk users cannot send files to a bot; send it in the private chat") }
                content = .file(name: name, bytes: Array(bytes))
                item["msgtype"] = "file"
            case let other:
                throw .invalid("attachment.kind must be \"picture\" or \"file\", not \(other ?? "nothing")")
            }
            item["fileName"] = name
            item["fileSize"] = bytes.count
            file = (type, Array(bytes))
        } else {
            guard !text.isEmpty else { throw .invalid("nothing to send: write a text or attach a picture or file") }
            item["msgtype"] = "text"
        }
        if toBot {
            var spec = BotMessageSpec(app: app, content: content, senderStaffId: person.staffId, senderNick: person.nick)
            if chat == "group" { spec.conversation = .group(conversationId: Self.groupConversationId, title: Self.groupTitle) }
            let injected: InjectedMessage
            do {
                injected = try simulator.injectBotMessage(spec)
            } catch {
                throw .invalid("the simulator refused the message: \(error)")
            }
            item["msgId"] = injected.msgId
            // Expired right after the push: the handler runs long after, so its reply finds the
            // webhook gone (errcode 300001) and takes the OpenAPI.
            if webhooksExpired { simulator.expireWebhook(injected) }
        }
        return state.withLock { state in
            if let msgId = item["msgId"] as? String { state.chatOfMessage[msgId] = chat }
            let id = state.items.count + 1
            item["id"] = id
            if let file {
                state.files[id] = file
                item["file"] = "/api/files/\(id)"
                state.files = state.files.filter { $0.key > id - Self.keptFiles }
            }
            let json = JSON.encode(item)
            state.items.append(json)
            return json
        }
    }

    var webhooksExpired: Bool {
        get { state.withLock { $0.webhooksExpired } }
        set { state.withLock { $0.webhooksExpired = newValue } }
    }

    /// A card's update after a button click (the ack's `response`, nil when the handlers gave none).
    func cardUpdated(reply: Int, action: String, response: String?) {
        append(["from": "update", "target": reply, "action": action, "response": Self.objectOrNull(response)])
    }

    /// `text` as a JSON object, or null when there is none.
    static func objectOrNull(_ text: String?) -> Any {
        if let text, let object = JSON.object(text) { return object }
        return NSNull()
    }

    /// A line about what the sandbox did (a control used), shown in every chat.
    func notice(_ text: String) {
        append(["from": "notice", "chat": "all", "text": text])
    }

    private func append(_ fields: [String: Any]) {
        var item = fields
        item["time"] = Date().timeIntervalSince1970
        state.withLock { state in
            item["id"] = state.items.count + 1
            state.items.append(JSON.encode(item))
        }
    }

    /// Items after `since` as a JSON object `{"items":[…],"last":N}`, replies received since the
    /// last call included.
    func items(since: Int) -> String {
        collectReplies()
        let (items, last) = state.withLock { state in (state.items.dropFirst(max(0, since)), state.items.count) }
        return #"{"items":[\#(items.joined(separator: ","))],"last":\#(last)}"#
    }

    func file(_ id: Int) -> (contentType: String, bytes: [UInt8])? {
        state.withLock { $0.files[id] }
    }

    /// Turns the simulator's records of webhook replies and OpenAPI sends into chat items.
    private func collectReplies() {
        let webhook = simulator.webhookReplies(app: app)
        let sends = simulator.openAPISends(app: app)
        state.withLock { state in
            var fresh: [(sequence: Int, time: Date, item: [String: Any])] = []
            for reply in webhook.dropFirst(state.seenWebhook) {
                let chat = reply.msgId.flatMap { state.chatOfMessage[$0] } ?? "private"
                if reply.errcode == 0 {
                    fresh.append((reply.sequence, reply.time, ["from": "bot", "chat": chat, "path": "session webhook", "body": JSON.object(reply.body) ?? reply.body]))
                } else {
                    let why = reply.errcode == 300001 ? "the session has expired" : reply.errcode == 130101 ? "sent too fast" : "refused"
                    fresh.append((reply.sequence, reply.time, ["from": "notice", "chat": chat, "text": "session webhook answered errcode \(reply.errcode): \(why)"]))
                }
            }
            for send in sends.dropFirst(state.seenOpenAPI) {
                let chat = send.endpoint == .groupMessages ? "group" : "private"
                let path = send.endpoint == .groupMessages ? "groupSend" : "batchSend"
                fresh.append((send.sequence, send.time, ["from": "bot", "chat": chat, "path": path, "body": JSON.object(send.body) ?? send.body]))
            }
            state.seenWebhook = webhook.count
            state.seenOpenAPI = sends.count
            for (_, time, fields) in fresh.sorted(by: { $0.sequence < $1.sequence }) {
                var item = fields
                item["id"] = state.items.count + 1
                item["time"] = time.timeIntervalSince1970
                state.items.append(JSON.encode(item))
            }
        }
    }
}

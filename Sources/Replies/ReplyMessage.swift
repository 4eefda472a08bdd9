import Foundation
import StreamProtocol

/// One message to send back to DingTalk, built from a handler's stdout.
///
/// Its JSON form (`Codable`) is DingTalk's own webhook body for the known types, so an outbox file
/// reads like the message it will become.
public enum ReplyMessage: Sendable, Equatable {
    case text(String)
    case markdown(title: String, text: String)
    case link(title: String, text: String, messageURL: String, picURL: String?)
    case actionCard(title: String, text: String, singleTitle: String, singleURL: String)
    /// Any other webhook body a handler printed; `body` is the JSON object, `msgtype` its type.
    case raw(msgtype: String, body: Data)

    /// Builds a message from a webhook body (`{"msgtype":"markdown","markdown":{…}}`). Bodies of
    /// unknown types, or known types with missing fields, become `.raw` and are sent unchanged.
    public init(webhookObject object: [String: Any]) {
        let msgtype = object["msgtype"] as? String ?? "text"
        let fields = object[msgtype] as? [String: Any] ?? [:]
        func field(_ key: String) -> String? { fields[key] as? String }
        // Extra keys (e.g. `at`) only survive in .raw, so keep them there.
        let extraKeys = Set(object.keys).subtracting(["msgtype", msgtype])
        switch msgtype {
        case "text" where extraKeys.isEmpty:
            if let content = field("content") { self = .text(content); return }
        case "markdown" where extraKeys.isEmpty:
            if let title = field("title"), let text = field("text") { self = .markdown(title: title, text: text); return }
        case "link" where extraKeys.isEmpty:
            if let title = field("title"), let text = field("text"), let url = field("messageUrl") {
                self = .link(title: title, text: text, messageURL: url, picURL: field("picUrl"))
                return
            }
        case "actionCard" where extraKeys.isEmpty:
            if let title = field("title"), let text = field("text"), let singleTitle = field("singleTitle"),
                let singleURL = field("singleURL"), fields.count == 4
            {
                self = .actionCard(title: title, text: text, singleTitle: singleTitle, singleURL: singleURL)
                return
            }
        default:
            break
        }
        self = .raw(msgtype: msgtype, body: JSON.data(object))
    }

    public var msgtype: String {
        switch self {
        case .text: "text"
        case .markdown: "markdown"
        case .link: "link"
        case .actionCard: "actionCard"
        case .raw(let msgtype, _): msgtype
        }
    }

    /// The message as a session-webhook body object.
    public var webhookObject: [String: Any] {
        switch self {
        case .text(let content):
            return ["msgtype": "text", "text": ["content": content]]
        case .markdown(let title, let text):
            return ["msgtype": "markdown", "markdown": ["title": title, "text": text]]
        case .link(let title, let text, let messageURL, let picURL):
            var link: [String: Any] = ["title": title, "text": text, "messageUrl": messageURL]
            if let picURL { link["picUrl"] = picURL }
            return ["msgtype": "link", "link": link]
        case .actionCard(let title, let text, let singleTitle, let singleURL):
            return [
                "msgtype": "actionCard",
                "actionCard": ["title": title, "text": text, "singleTitle": singleTitle, "singleURL": singleURL],
            ]
        case .raw(let msgtype, let body):
            return (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] ?? ["msgtype": msgtype]
        }
    }

    /// The body to POST to a session webhook (PROTOCOL.md section 4).
    public var webhookBody: Data { JSON.data(webhookObject) }

    /// The robot OpenAPI form (PROTOCOL.md section 5): `msgKey` and `msgParam` (a JSON string).
    /// A `.raw` body may carry its own `msgKey` and `msgParam` (object or string); `image` with
    /// `picURL` maps to `sampleImageMsg`.
    /// - Throws: `ReplyError.Code.unsupportedMessage` when a raw type has no OpenAPI form.
    public func openAPIForm() throws(ReplyError) -> (msgKey: String, msgParam: String) {
        switch self {
        case .text(let content):
            return ("sampleText", paramString(["content": content]))
        case .markdown(let title, let text):
            return ("sampleMarkdown", paramString(["title": title, "text": text]))
        case .link(let title, let text, let messageURL, let picURL):
            return ("sampleLink", paramString(["title": title, "text": text, "messageUrl": messageURL, "picUrl": picURL ?? ""]))
        case .actionCard(let title, let text, let singleTitle, let singleURL):
            return (
                "sampleActionCard",
                paramString(["title": title, "text": text, "singleTitle": singleTitle, "singleURL": singleURL])
            )
        case .raw(let msgtype, _):
            let object = webhookObject
            // A known type with extras (e.g. `at`) goes out without them: the OpenAPI has no place for them.
            if let fields = object[msgtype] {
                let plain = ReplyMessage(webhookObject: ["msgtype": msgtype, msgtype: fields])
                if case .raw = plain {} else { return try plain.openAPIForm() }
            }
            if let msgKey = object["msgKey"] as? String {
                if let param = object["msgParam"] as? String { return (msgKey, param) }
                if let param = object["msgParam"] as? [String: Any] { return (msgKey, paramString(param)) }
            }
            if msgtype == "image", let image = object["image"] as? [String: Any], let url = image["picURL"] as? String {
                return ("sampleImageMsg", paramString(["photoURL": url]))
            }
            throw ReplyError(
                .unsupportedMessage, endpoint: "robot OpenAPI",
                context: "msgtype \(msgtype) has no OpenAPI form; add msgKey and msgParam to the handler's JSON"
            )
        }
    }

    private func paramString(_ object: [String: Any]) -> String {
        JSON.text(object) ?? "{}"
    }
}

extension ReplyMessage: Codable {
    private enum Keys: String, CodingKey {
        case msgtype, text, markdown, link, actionCard, raw
        case content, title, messageUrl, picUrl, singleTitle, singleURL
    }

    /// Stored in DingTalk's webhook shape (`{"msgtype":"text","text":{"content":…}}`), so an
    /// outbox file reads like the message; a `.raw` body is kept as a JSON string under `raw`.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: Keys.self)
        let msgtype = try container.decode(String.self, forKey: .msgtype)
        if let raw = try container.decodeIfPresent(String.self, forKey: .raw) {
            self = .raw(msgtype: msgtype, body: Data(raw.utf8))
            return
        }
        guard let key = Keys(rawValue: msgtype) else {
            throw DecodingError.dataCorruptedError(forKey: .msgtype, in: container, debugDescription: "unknown msgtype \(msgtype) without raw body")
        }
        let fields = try container.nestedContainer(keyedBy: Keys.self, forKey: key)
        switch key {
        case .text:
            self = .text(try fields.decode(String.self, forKey: .content))
        case .markdown:
            self = .markdown(title: try fields.decode(String.self, forKey: .title), text: try fields.decode(String.self, forKey: .text))
        case .link:
            self = .link(
                title: try fields.decode(String.self, forKey: .title), text: try fields.decode(String.self, forKey: .text),
                messageURL: try fields.decode(String.self, forKey: .messageUrl), picURL: try fields.decodeIfPresent(String.self, forKey: .picUrl))
        case .actionCard:
            self = .actionCard(
                title: try fields.decode(String.self, forKey: .title), text: try fields.decode(String.self, forKey: .text),
                singleTitle: try fields.decode(String.self, forKey: .singleTitle), singleURL: try fields.decode(String.self, forKey: .singleURL))
        default:
            throw DecodingError.dataCorruptedError(forKey: .msgtype, in: container, debugDescription: "unknown msgtype \(msgtype) without raw body")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: Keys.self)
        try container.encode(msgtype, forKey: .msgtype)
        switch self {
        case .text(let content):
            var fields = container.nestedContainer(keyedBy: Keys.self, forKey: .text)
            try fields.encode(content, forKey: .content)
        case .markdown(let title, let text):
            var fields = container.nestedContainer(keyedBy: Keys.self, forKey: .markdown)
            try fields.encode(title, forKey: .title)
            try fields.encode(text, forKey: .text)
        case .link(let title, let text, let messageURL, let picURL):
            var fields = container.nestedContainer(keyedBy: Keys.self, forKey: .link)
            try fields.encode(title, forKey: .title)
            try fields.encode(text, forKey: .text)
            try fields.encode(messageURL, forKey: .messageUrl)
            try fields.encodeIfPresent(picURL, forKey: .picUrl)
        case .actionCard(let title, let text, let singleTitle, let singleURL):
            var fields = container.nestedContainer(keyedBy: Keys.self, forKey: .actionCard)
            try fields.encode(title, forKey: .title)
            try fields.encode(text, forKey: .text)
            try fields.encode(singleTitle, forKey: .singleTitle)
            try fields.encode(singleURL, forKey: .singleURL)
        case .raw(_, let body):
            try container.encode(String(decoding: body, as: UTF8.self), forKey: .raw)
        }
    }
}

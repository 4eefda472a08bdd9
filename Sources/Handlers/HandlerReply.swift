import Foundation

/// What a handler's stdout asks to send back.
public enum HandlerReply: Sendable, Equatable {
    /// Plain text: sent as a DingTalk text message.
    case text(String)
    /// A JSON object with a string `msgtype` (markdown, actionCard, link…): sent as it is.
    /// `body` is the object as the handler wrote it (JSON bytes).
    case message(msgtype: String, body: Data)

    /// Reads a handler's stdout. Empty or whitespace-only output means no reply (nil). A JSON
    /// object with a string `msgtype` is a message; anything else, including JSON without
    /// `msgtype`, is text with surrounding whitespace removed and invalid UTF-8 replaced by U+FFFD.
    public static func parse(stdout: [UInt8]) -> HandlerReply? {
        read(stdout: stdout).reply
    }

    /// The message types DingTalk's session webhook and robot OpenAPI take from a handler.
    public static let knownMsgtypes: Set<String> = ["text", "markdown", "link", "actionCard", "feedCard"]

    /// What is odd about output that is still sent, for a warning in the log: nil when nothing is.
    /// Output that starts with `{` but is not a JSON object, or has no string `msgtype`, goes out
    /// as plain text; an unknown `msgtype` goes out as written and DingTalk may refuse it.
    public static func problem(stdout: [UInt8]) -> String? {
        read(stdout: stdout).problem
    }

    /// `parse` and `problem` at once, from one reading of the JSON (every reply on the way to
    /// its user pays for it).
    public static func read(stdout: [UInt8]) -> (reply: HandlerReply?, problem: String?) {
        let trimmed = stdout.drop(while: isSpace).reversed().drop(while: isSpace).reversed()
        guard !trimmed.isEmpty else { return (nil, nil) }
        let bytes = Data(trimmed)
        var text: HandlerReply { .text(String(decoding: trimmed, as: UTF8.self)) }
        guard bytes.first == UInt8(ascii: "{") else { return (text, nil) }
        let object: [String: Any]
        do {
            guard let parsed = try JSONSerialization.jsonObject(with: bytes) as? [String: Any] else {
                return (text, "output starts with \"{\" but is not a JSON object; it is sent as plain text")
            }
            object = parsed
        } catch {
            return (text, "output starts with \"{\" but is not valid JSON (\((error as NSError).userInfo[NSDebugDescriptionErrorKey] ?? "\(error)")); it is sent as plain text")
        }
        guard let msgtype = object["msgtype"] as? String, !msgtype.isEmpty else {
            return (text, "output is a JSON object without a string \"msgtype\"; it is sent as plain text (print {\"msgtype\":\"markdown\",…} for a message)")
        }
        let message = HandlerReply.message(msgtype: msgtype, body: bytes)
        guard knownMsgtypes.contains(msgtype) else {
            return (message, "msgtype \"\(msgtype)\" is not one DingTalk takes (\(knownMsgtypes.sorted().joined(separator: ", "))); it is sent as written and DingTalk may refuse it")
        }
        return (message, nil)
    }

    private static func isSpace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D || byte == 0x0B || byte == 0x0C
    }
}

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
        let trimmed = stdout.drop(while: isSpace).reversed().drop(while: isSpace).reversed()
        guard !trimmed.isEmpty else { return nil }
        let bytes = Data(trimmed)
        if bytes.first == UInt8(ascii: "{"),
            let object = (try? JSONSerialization.jsonObject(with: bytes)) as? [String: Any],
            let msgtype = object["msgtype"] as? String, !msgtype.isEmpty
        {
            return .message(msgtype: msgtype, body: bytes)
        }
        return .text(String(decoding: trimmed, as: UTF8.self))
    }

    private static func isSpace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D || byte == 0x0B || byte == 0x0C
    }
}

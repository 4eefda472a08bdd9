import Foundation

/// The client's answer to a frame, written on the socket the frame arrived on.
public struct StreamAck: Sendable, Equatable {
    public var code: Int
    public var messageID: String
    public var message: String
    /// JSON text carried as a string, as the protocol wants.
    public var data: String

    public init(code: Int = 200, messageID: String, message: String = "OK", data: String) {
        self.code = code
        self.messageID = messageID
        self.message = message
        self.data = data
    }

    /// Echo of a SYSTEM ping: the same `{"opaque":…}` the server sent.
    public static func pong(to frame: StreamFrame) -> StreamAck {
        let opaque = frame.dataObject()?["opaque"] as? String ?? ""
        return StreamAck(messageID: frame.messageID ?? "", data: JSON.encode(["opaque": opaque]))
    }

    /// Ack of an EVENT: `SUCCESS` once stored, `LATER` to have it pushed again.
    public static func event(_ frame: StreamFrame, later: Bool = false) -> StreamAck {
        // Fixed texts (keys sorted, as JSON.encode writes them): this is on every event's ack path.
        StreamAck(messageID: frame.messageID ?? "", data: later ? #"{"status":"LATER"}"# : #"{"message":"success","status":"SUCCESS"}"#)
    }

    /// Ack of a CALLBACK; `response` is a JSON object text (card update) or nil.
    public static func callback(_ frame: StreamFrame, response: String? = nil) -> StreamAck {
        let data = "{\"response\":" + (response ?? "null") + "}"
        return StreamAck(messageID: frame.messageID ?? "", data: data)
    }

    /// The ack as JSON text (keys sorted). Written by hand: it is on the ack path of every frame,
    /// and JSONSerialization's writer costs more than the rest of the ack on Linux.
    public func encoded() -> String {
        var out = "{\"code\":"
        out.reserveCapacity(data.utf8.count + messageID.utf8.count + 112)
        out += String(code)
        out += ",\"data\":"
        JSON.appendQuoted(data, to: &out)
        out += ",\"headers\":{\"contentType\":\"application/json\",\"messageId\":"
        JSON.appendQuoted(messageID, to: &out)
        out += "},\"message\":"
        JSON.appendQuoted(message, to: &out)
        out += "}"
        return out
    }
}

/// Small JSON helpers: parsing through JSONSerialization, which keeps `data` strings and unknown
/// fields as they are; writing through the project's own writer (JSON+Writer.swift).
public enum JSON {
    /// `object` as compact JSON text with sorted keys; `{}` when it cannot be written.
    public static func encode(_ object: Any) -> String {
        text(object) ?? "{}"
    }

    public static func object(_ text: String) -> [String: Any]? {
        guard let bytes = text.data(using: .utf8) else { return nil }
        return (try? JSONSerialization.jsonObject(with: bytes)) as? [String: Any]
    }

    public static func object(_ data: Data) -> [String: Any]? {
        (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
    }

    /// Appends `text` as a JSON string literal: quotes, backslashes and control characters
    /// escaped, nothing else (slashes and non-ASCII stay as they are).
    public static func appendQuoted(_ text: String, to out: inout String) {
        out += "\""
        var plain = text.utf8.startIndex
        var index = plain
        let utf8 = text.utf8
        while index != utf8.endIndex {
            let byte = utf8[index]
            let escape: String? =
                switch byte {
                case UInt8(ascii: "\""): "\\\""
                case UInt8(ascii: "\\"): "\\\\"
                case 0x0A: "\\n"
                case 0x0D: "\\r"
                case 0x09: "\\t"
                case 0..<0x20: "\\u00" + (byte < 0x10 ? "0" : "") + String(byte, radix: 16)
                default: nil
                }
            if let escape {
                out += text[plain..<index]
                out += escape
                plain = utf8.index(after: index)
            }
            index = utf8.index(after: index)
        }
        out += text[plain..<utf8.endIndex]
        out += "\""
    }
}

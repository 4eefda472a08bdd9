import Foundation

/// One frame of a DingTalk Stream socket, as the server sends it.
///
/// Header values are strings on the wire; unknown headers are kept so that an ack or a spool
/// entry can carry them on. `data` stays the raw JSON string the server sent.
public struct StreamFrame: Sendable, Equatable {
    public enum Kind: Sendable, Equatable, CustomStringConvertible {
        case system
        case event
        case callback
        case other(String)

        public init(wireValue: String) {
            switch wireValue {
            case "SYSTEM": self = .system
            case "EVENT": self = .event
            case "CALLBACK": self = .callback
            default: self = .other(wireValue)
            }
        }

        public var wireValue: String {
            switch self {
            case .system: "SYSTEM"
            case .event: "EVENT"
            case .callback: "CALLBACK"
            case .other(let value): value
            }
        }

        public var description: String { wireValue }
    }

    public var specVersion: String
    public var kind: Kind
    public var headers: [String: String]
    public var data: String

    public init(specVersion: String = "1.0", kind: Kind, headers: [String: String], data: String) {
        self.specVersion = specVersion
        self.kind = kind
        self.headers = headers
        self.data = data
    }

    public var messageID: String? { headers["messageId"] }
    public var topic: String? { headers["topic"] }

    /// The default frame size limit (`max_frame_size`): far above anything DingTalk sends (a long
    /// rich-text message or a card is a few KiB), yet bounded so a broken peer cannot make us
    /// buffer without end.
    public static let maximumSize = 16 * 1024 * 1024

    /// Parses a text frame.
    /// - Throws: `FrameError` naming what is wrong; the caller logs it and drops the frame
    ///   without acking, so a well-behaved server pushes it again.
    public static func decode(_ bytes: some Collection<UInt8>, limit: Int = maximumSize) throws(FrameError) -> StreamFrame {
        guard bytes.count <= limit else { throw FrameError(.tooLarge(bytes.count)) }
        let fast = bytes.withContiguousStorageIfAvailable { FastFrameReader.decode($0) }
        if let frame = fast ?? nil { return frame }
        return try decodeFully(bytes)
    }

    /// The full parse through Foundation, for what the fast reader cannot vouch for (and for
    /// the fuzz target that checks the two agree).
    static func decodeFully(_ bytes: some Collection<UInt8>) throws(FrameError) -> StreamFrame {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(bytes), options: [])
        } catch {
            throw FrameError(.notJSON)
        }
        guard let dictionary = object as? [String: Any] else { throw FrameError(.notAnObject) }
        guard let type = dictionary["type"] as? String else { throw FrameError(.missingField("type")) }
        guard let rawHeaders = dictionary["headers"] as? [String: Any] else {
            throw FrameError(.missingField("headers"))
        }
        var headers: [String: String] = [:]
        for (name, value) in rawHeaders {
            // The wire format says strings; be lenient with servers that send numbers.
            switch value {
            case let string as String: headers[name] = string
            case let number as NSNumber: headers[name] = number.stringValue
            default: continue
            }
        }
        let data: String
        switch dictionary["data"] {
        case let string as String: data = string
        case nil, is NSNull: data = ""
        case let other?:
            // Some servers send data as an object; keep it as the JSON text it would have been.
            guard JSONSerialization.isValidJSONObject(other), let encoded = JSON.text(other)
            else { throw FrameError(.missingField("data")) }
            data = encoded
        }
        return StreamFrame(
            specVersion: dictionary["specVersion"] as? String ?? "1.0",
            kind: Kind(wireValue: type),
            headers: headers,
            data: data
        )
    }

    /// The frame as the server would send it (used by tests and tools).
    public func encoded() -> String {
        let object: [String: Any] = [
            "specVersion": specVersion, "type": kind.wireValue, "headers": headers, "data": data,
        ]
        return JSON.text(object) ?? ""
    }

    /// Whether `data` is a JSON object, and its top-level `member` when that is a string, without
    /// building the object: nil when a quick strict scan cannot vouch for it (then use
    /// `dataObject()`), else the member's value (`.some(nil)` when absent or not a string).
    public func dataObjectMember(_ member: String) -> String?? {
        var text = data
        return text.withUTF8 { FastFrameReader.stringMember(member, ofObject: $0) }
    }

    /// As `dataObjectMember`, for several members in one scan: nil when the scan cannot vouch for
    /// `data`, else each member's value when it is a string.
    public func dataObjectMembers(_ members: [String]) -> [String?]? {
        var text = data
        return text.withUTF8 { FastFrameReader.stringMembers(members, ofObject: $0) }
    }

    /// The `data` string parsed as a JSON object, or nil if it is not one.
    public func dataObject() -> [String: Any]? {
        guard let bytes = data.data(using: .utf8) else { return nil }
        return (try? JSONSerialization.jsonObject(with: bytes)) as? [String: Any]
    }
}

public struct FrameError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        case tooLarge(Int)
        case notJSON
        case notAnObject
        case missingField(String)
    }

    public let code: Code

    public init(_ code: Code) { self.code = code }

    public var description: String {
        switch code {
        case .tooLarge(let size):
            "frame of \(size) bytes exceeds the frame size limit (max_frame_size); dropped unacked"
        case .notJSON: "frame is not valid JSON; dropped unacked"
        case .notAnObject: "frame is not a JSON object; dropped unacked"
        case .missingField(let name): "frame has no valid \"\(name)\"; dropped unacked"
        }
    }
}

import StreamProtocol

/// Where a message is in its life: stored (`new`), its handlers running, its replies waiting
/// for delivery (`outbox`), finished (`done`), or a dead letter (`failed`).
public enum EntryState: String, Sendable, CaseIterable, Codable {
    case new
    case running
    case outbox
    case done
    case failed

    /// The folder of this state in the 0.1 layout (one file per message).
    var legacyFolder: String { self == .running ? "cur" : rawValue }

    /// When the 0.1 layout holds one name in two folders (a crash between link/rename and
    /// unlink), the one with the higher precedence is the truth: a message whose reply is already
    /// in the outbox must never be handled again.
    var precedence: Int {
        switch self {
        case .new: 0
        case .running: 1
        case .outbox: 2
        case .done, .failed: 3
        }
    }
}

/// The name of a spool entry: `<receivedMillis, 13 digits>-<app>-<keyhash>`, without `.json`.
/// Names sort by arrival; the part after the millis is the dedup key.
public struct EntryName: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// The name without `.json`; this is the KEY of `dingstream spool show KEY`.
    public let value: String

    /// Builds the name of a new entry. Characters of `app` outside `[A-Za-z0-9._-]` become `_`.
    public init(receivedMillis: Int64, key: MessageKey) {
        let millis = String(max(receivedMillis, 0))
        let padded = String(repeating: "0", count: max(0, 13 - millis.count)) + millis
        value = padded + "-" + Self.sanitize(key.app) + "-" + key.hash
    }

    /// Parses a name, with or without `.json`; nil for anything the spool did not write.
    public init?(_ text: some StringProtocol) {
        var text = Substring(text)
        if text.hasSuffix(".json") { text = text.dropLast(5) }
        let utf8 = Array(text.utf8)
        // 13 digits, '-', at least one app char, '-', 16 hex digits
        guard utf8.count >= 13 + 1 + 1 + 1 + 16 else { return nil }
        for byte in utf8[0..<13] where !(UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) { return nil }
        guard utf8[13] == UInt8(ascii: "-"), utf8[utf8.count - 17] == UInt8(ascii: "-") else { return nil }
        for byte in utf8[(utf8.count - 16)...] {
            let isHex = (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
            if !isHex { return nil }
        }
        value = String(text)
    }

    public var fileName: String { value + ".json" }
    public var description: String { value }

    /// Epoch milliseconds at which the frame was received.
    public var receivedMillis: Int64 { Int64(value.prefix(13)) ?? 0 }
    /// The app part of the name (sanitized).
    public var app: String {
        let utf8 = value.utf8
        let start = utf8.index(utf8.startIndex, offsetBy: 14)
        let end = utf8.index(utf8.endIndex, offsetBy: -17)
        return String(value[start..<end])
    }
    /// What dedup compares: app and key hash, independent of when the frame arrived.
    public var dedupKey: Substring { value.dropFirst(14) }

    public static func < (lhs: EntryName, rhs: EntryName) -> Bool { lhs.value < rhs.value }

    /// `app` with every character outside `[A-Za-z0-9._-]` as `_` (one per character).
    static func sanitize(_ app: String) -> String {
        func allowed(_ byte: UInt8) -> Bool {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"):
                true
            default: false
            }
        }
        // Called for every frame; app names are nearly always fine as they are.
        if !app.isEmpty, app.utf8.allSatisfy(allowed) { return app }
        let mapped = String(app.map { $0.isASCII && allowed($0.asciiValue!) ? $0 : "_" })
        return mapped.isEmpty ? "_" : mapped
    }
}

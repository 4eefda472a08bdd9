import Logging

/// Turns a log event into journald `FIELD=value` entries. Pure, so the mapping is testable
/// without a journal.
public enum JournalFields {
    /// Fields this module sets itself; metadata mapping onto one of them is renamed `META_…`.
    static let reserved: Set<String> = [
        "MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "CODE_FILE", "CODE_LINE", "CODE_FUNC",
        "LOGGER", "SOURCE", "ERROR", "SYSLOG_FACILITY", "SYSLOG_PID", "SYSLOG_TIMESTAMP",
    ]

    /// The journald field for a metadata key: uppercase, every other character than A–Z and 0–9
    /// becomes `_`, no leading `_` or digit (journald drops such fields), at most 64 characters.
    /// `conn.id` → `CONN_ID`, `handler.name` → `HANDLER_NAME`, `message.id` → `MESSAGE_ID`.
    public static func fieldName(forMetadataKey key: String) -> String {
        var name = String(key.uppercased().unicodeScalars.map { scalar -> Character in
            switch scalar {
            case "A"..."Z", "0"..."9": Character(scalar)
            default: "_"
            }
        })
        while name.hasPrefix("_") { name.removeFirst() }
        if name.isEmpty || name.first?.isNumber == true { name = "F_" + name }
        if reserved.contains(name) { name = "META_" + name }
        return String(name.prefix(64))
    }

    /// The syslog priority journald stores in `PRIORITY`.
    public static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    /// All fields of one entry, `MESSAGE` first. Later metadata of the same field name wins.
    public static func fields(
        level: Logger.Level,
        message: String,
        metadata: Logger.Metadata,
        label: String,
        identifier: String,
        file: String,
        function: String,
        line: UInt,
        error: (any Error)? = nil
    ) -> [String] {
        var fields = [
            "MESSAGE=\(message)",
            "PRIORITY=\(priority(level))",
            "SYSLOG_IDENTIFIER=\(identifier)",
            "LOGGER=\(label)",
            "CODE_FILE=\(file)",
            "CODE_LINE=\(line)",
            "CODE_FUNC=\(function)",
        ]
        if let error { fields.append("ERROR=\(error)") }
        var mapped: [String: String] = [:]
        for (key, value) in metadata {
            var text = value.description
            if key == MessageID.metadataKey, let id = MessageID(name: text) { text = id.rawValue }
            mapped[fieldName(forMetadataKey: key)] = text
        }
        for name in mapped.keys.sorted() { fields.append("\(name)=\(mapped[name] ?? "")") }
        return fields
    }
}

import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A swift-log handler writing one readable line per event to a file descriptor (stderr by
/// default): `2025-01-31T12:00:00.123Z info dingstream: socket up app=helpdesk conn.id=2`.
///
/// Write errors are ignored: there is nowhere left to report them.
public struct StderrLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let fileDescriptor: Int32
    private let timestamps: Bool
    private let colour: Bool

    /// - Parameters:
    ///   - fileDescriptor: where lines go; tests pass a file or pipe.
    ///   - timestamps: off when a collector adds its own (e.g. systemd's `StandardError=`).
    ///   - colour: the level in colour (warnings yellow, errors red); for a terminal only.
    public init(label: String, level: Logger.Level = .info, fileDescriptor: Int32 = 2, timestamps: Bool = true,
                colour: Bool = false, metadataProvider: Logger.MetadataProvider? = nil) {
        self.label = label
        self.logLevel = level
        self.fileDescriptor = fileDescriptor
        self.timestamps = timestamps
        self.colour = colour
        self.metadataProvider = metadataProvider
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = mergedMetadata(event)
        if let error = event.error { merged["error"] = .string("\(error)") }
        let line = StderrLogHandler.format(
            timestamp: timestamps ? StderrLogHandler.now() : nil, level: event.level, label: label,
            message: event.message.description, metadata: merged, colour: colour)
        let bytes = Array((line + "\n").utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { raw in
                raw.baseAddress.map { write(fileDescriptor, $0 + offset, raw.count - offset) } ?? 0
            }
            if written < 0 && errno == EINTR { continue }
            if written <= 0 { return }
            offset += written
        }
    }

    /// One line: `[timestamp ]level label: message key=value …`, keys sorted, values with spaces,
    /// quotes or `=` quoted, newlines escaped so one event stays one line.
    public static func format(timestamp: String?, level: Logger.Level, label: String, message: String,
                              metadata: Logger.Metadata, colour: Bool = false) -> String {
        var line = timestamp.map { $0 + " " } ?? ""
        line += "\(colour ? coloured(level) : "\(level)") \(label): \(escapeNewlines(message))"
        for key in metadata.keys.sorted() {
            line += " \(key)=\(quoted(metadata[key]?.description ?? ""))"
        }
        return line
    }

    /// The level word in ANSI colour: quiet levels dim, warnings yellow, errors red.
    static func coloured(_ level: Logger.Level) -> String {
        let code = switch level {
        case .trace, .debug: "2"
        case .info: "0"
        case .notice: "1"
        case .warning: "33"
        case .error: "31"
        case .critical: "1;31"
        }
        return "\u{1B}[\(code)m\(level)\u{1B}[0m"
    }

    /// Colour only where a person watches: `fileDescriptor` is a terminal, `NO_COLOR` is not set
    /// (no-color.org) and `TERM` is not `dumb`. Never into a pipe, a file or the journal.
    public static func wantsColour(environment: [String: String], fileDescriptor: Int32 = 2) -> Bool {
        guard isatty(fileDescriptor) == 1 else { return false }
        if let noColour = environment["NO_COLOR"], !noColour.isEmpty { return false }
        return environment["TERM"] != "dumb"
    }

    private static func escapeNewlines(_ text: String) -> String {
        var out = ""
        for character in text {
            if character == "\n" { out += "\\n" } else if character == "\r\n" { out += "\\r\\n" } else { out.append(character) }
        }
        return out
    }

    private static func quoted(_ value: String) -> String {
        let needsQuotes = value.isEmpty || value.contains { $0 == " " || $0 == "\"" || $0 == "=" || $0.isNewline }
        guard needsQuotes else { return value }
        var escaped = ""
        for character in value {
            if character == "\\" || character == "\"" { escaped.append("\\") }
            escaped.append(character)
        }
        return "\"\(escapeNewlines(escaped))\""
    }

    /// UTC wall-clock time with milliseconds, ISO 8601.
    static func now() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var parts = tm()
        var seconds = ts.tv_sec
        gmtime_r(&seconds, &parts)
        var buffer = [CChar](repeating: 0, count: 32)
        let count = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%S", &parts)
        let base = String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let millis = Int(ts.tv_nsec) / 1_000_000
        return base + "." + String(String(millis + 1000).dropFirst()) + "Z"
    }
}

extension LogHandler {
    /// The handler's metadata, then its provider's, then the event's own: later keys win.
    func mergedMetadata(_ event: LogEvent) -> Logger.Metadata {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided, uniquingKeysWith: { $1 }) }
        if let own = event.metadata { merged.merge(own, uniquingKeysWith: { $1 }) }
        return merged
    }
}

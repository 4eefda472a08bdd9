import CSystemd
import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A swift-log handler writing native journald entries through `sd_journal_sendv`, with
/// `PRIORITY`, `SYSLOG_IDENTIFIER`, `CODE_FILE/LINE/FUNC` and every metadata key as an uppercase
/// field (see `JournalFields`). `message.id` metadata becomes `MESSAGE_ID` (see `MessageID`).
///
/// When journald refuses an entry (not running, socket gone) the line goes to stderr instead,
/// so nothing is lost silently.
public struct JournalLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let identifier: String

    public init(label: String, identifier: String = "dingstream", level: Logger.Level = .info,
                metadataProvider: Logger.MetadataProvider? = nil) {
        self.label = label
        self.identifier = identifier
        self.logLevel = level
        self.metadataProvider = metadataProvider
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let merged = mergedMetadata(event)
        let fields = JournalFields.fields(
            level: event.level, message: event.message.description, metadata: merged, label: label,
            identifier: identifier, file: event.file, function: event.function, line: event.line,
            error: event.error)
        do {
            try JournalLogHandler.send(fields)
        } catch {
            var fallback = StderrLogHandler(label: label, level: logLevel)
            fallback.metadata = merged
            fallback.log(event: event)
        }
    }

    /// Sends one entry of `FIELD=value` strings.
    /// - Throws: `SystemdError.journalFailed` with libsystemd's error when journald refused it.
    public static func send(_ fields: [String]) throws(SystemdError) {
        // One buffer holds every field; the iovecs point into it.
        var storage: [UInt8] = []
        var ranges: [Range<Int>] = []
        for field in fields {
            let start = storage.count
            storage.append(contentsOf: field.utf8)
            ranges.append(start..<storage.count)
        }
        let result: Int32 = storage.withUnsafeMutableBytes { bytes in
            guard let base = bytes.baseAddress else { return -EINVAL }
            let vectors = ranges.map { iovec(iov_base: base + $0.lowerBound, iov_len: $0.count) }
            return vectors.withUnsafeBufferPointer { sd_journal_sendv($0.baseAddress, Int32($0.count)) }
        }
        if result < 0 {
            throw SystemdError(.journalFailed, context: "\(fields.count) fields", osError: -result)
        }
    }
}

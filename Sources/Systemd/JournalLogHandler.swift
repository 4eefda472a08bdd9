import Logging

/// A swift-log handler writing native journald entries (through `JournalSocket`), with
/// `PRIORITY`, `SYSLOG_IDENTIFIER`, `CODE_FILE/LINE/FUNC` and every metadata key as an uppercase
/// field (see `JournalFields`). `message.id` metadata becomes `MESSAGE_ID` (see `MessageID`).
///
/// When journald refuses an entry (not running, socket gone, larger than a datagram may be) the
/// line goes to stderr instead, so nothing is lost silently.
public struct JournalLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let identifier: String
    private let socket: JournalSocket

    /// `socket`: the process's one journal socket (`LoggingSetup.bootstrap` shares one among all
    /// handlers); a new one when not given.
    public init(label: String, identifier: String = "dingstream", level: Logger.Level = .info,
                metadataProvider: Logger.MetadataProvider? = nil, socket: JournalSocket? = nil) {
        self.label = label
        self.identifier = identifier
        self.socket = socket ?? JournalSocket()
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
            try socket.send(fields)
        } catch {
            var fallback = StderrLogHandler(label: label, level: logLevel)
            fallback.metadata = merged
            fallback.log(event: event)
        }
    }
}

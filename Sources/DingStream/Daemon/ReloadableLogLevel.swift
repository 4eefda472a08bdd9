import Logging
import Synchronization

/// The daemon's log level, shared by every copy of its logger, so that a reload can change it:
/// each component keeps its own `Logger` value, and a level stored in those copies would stay.
final class ReloadableLogLevel: Sendable {
    private let level: Mutex<Logger.Level>

    init(_ level: Logger.Level) { self.level = Mutex(level) }

    var current: Logger.Level {
        get { level.withLock { $0 } }
        set { level.withLock { $0 = newValue } }
    }

    /// `logger` writing where it did, at this level from now on.
    func apply(to logger: Logger) -> Logger {
        var shared = logger
        shared.handler = Handler(wrapped: logger.handler, shared: self)
        return shared
    }

    private struct Handler: LogHandler {
        var wrapped: any LogHandler
        let shared: ReloadableLogLevel
        /// Set on one copy (a component made quieter than the rest): that copy keeps it.
        private var own: Logger.Level?

        init(wrapped: any LogHandler, shared: ReloadableLogLevel) {
            self.wrapped = wrapped
            self.shared = shared
        }

        var logLevel: Logger.Level {
            get { own ?? shared.current }
            set { own = newValue }
        }

        var metadata: Logger.Metadata {
            get { wrapped.metadata }
            set { wrapped.metadata = newValue }
        }

        var metadataProvider: Logger.MetadataProvider? {
            get { wrapped.metadataProvider }
            set { wrapped.metadataProvider = newValue }
        }

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { wrapped[metadataKey: key] }
            set { wrapped[metadataKey: key] = newValue }
        }

        // The wrapped handler does not filter again: Logger checks `logLevel` before calling.
        func log(event: LogEvent) { wrapped.log(event: event) }
    }
}

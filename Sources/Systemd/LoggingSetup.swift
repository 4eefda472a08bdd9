import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Where log lines go.
public enum LogDestination: Sendable, Equatable {
    /// Native journald entries (stderr is connected to the journal).
    case journal
    /// Readable lines on stderr.
    case stderr
}

/// Chooses and installs the process's log handler.
public enum LoggingSetup {
    /// `.journal` when `JOURNAL_STREAM` (`device:inode`, set by systemd) names the file behind
    /// `fileDescriptor`, as systemd documents; `.stderr` otherwise, including when stderr was
    /// redirected after systemd started the process.
    public static func destination(environment: [String: String], fileDescriptor: Int32 = 2) -> LogDestination {
        guard let stream = environment["JOURNAL_STREAM"] else { return .stderr }
        let parts = stream.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let device = UInt64(parts[0]), let inode = UInt64(parts[1]) else { return .stderr }
        var info = stat()
        guard fstat(fileDescriptor, &info) == 0 else { return .stderr }
        return UInt64(info.st_dev) == device && UInt64(info.st_ino) == inode ? .journal : .stderr
    }

    /// A handler for `destination`. Under systemd without the journal, timestamps are still
    /// written, since the target may be a plain file.
    /// `colour`: the level words in colour on stderr (see `StderrLogHandler.wantsColour`).
    /// `journal`: the socket journal entries go through (a new one when not given).
    public static func makeHandler(
        label: String, destination: LogDestination, level: Logger.Level, colour: Bool = false, journal: JournalSocket? = nil
    ) -> any LogHandler {
        switch destination {
        case .journal: JournalLogHandler(label: label, level: level, socket: journal)
        case .stderr: StderrLogHandler(label: label, level: level, colour: colour)
        }
    }

    /// Installs the handler for this process (`LoggingSystem.bootstrap`, which may run once per
    /// process; call it first thing in `main`). Returns the destination chosen.
    @discardableResult
    public static func bootstrap(environment: [String: String], level: Logger.Level) -> LogDestination {
        let destination = destination(environment: environment)
        let colour = StderrLogHandler.wantsColour(environment: environment)
        let journal = destination == .journal ? JournalSocket() : nil
        LoggingSystem.bootstrap { label in
            makeHandler(label: label, destination: destination, level: level, colour: colour, journal: journal)
        }
        return destination
    }
}

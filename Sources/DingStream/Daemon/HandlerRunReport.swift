import Foundation
import Handlers
import Spool
import StreamProtocol

/// One handler run as it ended: which entry, which handler, how it ended and what it said on stderr.
public struct HandlerRunReport: Sendable {
    public var entry: EntryName
    public var kind: MessageKind
    public var handler: String
    /// The exit code; nil when it died of a signal, timed out, was stopped or never started.
    public var exitCode: Int32?
    /// "exited with status 0", "timed out after 20 s; …".
    public var status: String
    public var duration: Duration
    public var stderrTail: String
    public var ended: Date

    init(entry: EntryName, kind: MessageKind, handler: String, run: HandlerRun, ended: Date = Date()) {
        self.entry = entry
        self.kind = kind
        self.handler = handler
        if case .exited(let code)? = run.script?.status { exitCode = code } else { exitCode = nil }
        status = run.statusText
        duration = run.duration
        stderrTail = run.script?.stderrTail ?? ""
        self.ended = ended
    }
}

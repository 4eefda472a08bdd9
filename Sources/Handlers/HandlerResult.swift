#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How one handler run ended, with its output.
public struct HandlerResult: Sendable, Equatable {
    public enum Status: Sendable, Equatable {
        /// The handler exited with this code.
        case exited(Int32)
        /// The handler died of this signal (not sent by the runner).
        case signaled(Int32)
        /// It ran past the timeout; its process group was killed.
        case timedOut
        /// The calling task was cancelled (shutdown); its process group was killed.
        case cancelled
        /// It could not be started (not executable, bad interpreter, no pipes…).
        case couldNotStart(HandlerError)
    }

    public enum Outcome: Sendable, Equatable {
        /// Exit 0.
        case done
        /// Exit 75 (EX_TEMPFAIL): run again later, counted in max_attempts.
        case retryLater
        /// Stopped by a graceful shutdown: runs again at the next start, costing no attempt.
        case interrupted
        /// Anything else: a dead letter (state failed).
        case failed(reason: String)
    }

    /// How much of stdout a dead letter's reason keeps.
    public static let stdoutTailBytes = 1024

    /// EX_TEMPFAIL from sysexits.h: "try again later".
    public static let exitTempFail: Int32 = 75

    public var executable: String
    public var status: Status
    /// At most the output limit given to the runner.
    public var stdout: [UInt8]
    /// The handler wrote more than the limit; the rest was read and discarded.
    public var stdoutTruncated: Bool
    /// The last bytes of stderr, invalid UTF-8 replaced.
    public var stderrTail: String
    public var duration: Duration

    public init(
        executable: String, status: Status, stdout: [UInt8] = [], stdoutTruncated: Bool = false,
        stderrTail: String = "", duration: Duration = .zero
    ) {
        self.executable = executable
        self.status = status
        self.stdout = stdout
        self.stdoutTruncated = stdoutTruncated
        self.stderrTail = stderrTail
        self.duration = duration
    }

    public var outcome: Outcome {
        switch status {
        case .exited(0): .done
        case .exited(Self.exitTempFail): .retryLater
        case .cancelled: .interrupted
        default: .failed(reason: statusText)
        }
    }

    /// One line: "exited with status 3", "killed by signal 9 (Killed)", "timed out"…
    public var statusText: String {
        switch status {
        case .exited(let code): "exited with status \(code)"
        case .signaled(let signal): "killed by signal \(signal) (\(Self.signalName(signal)))"
        case .timedOut: "timed out after \(Self.seconds(duration)); its process group was killed"
        case .cancelled: "stopped by shutdown; its process group was killed"
        case .couldNotStart(let error): "could not start: \(error)"
        }
    }

    /// A dead letter's reason: handler, exit status, duration and the stderr tail.
    public var reasonText: String {
        var text = """
            handler: \(executable)
            status: \(statusText)
            duration: \(Self.seconds(duration))

            """
        if stdoutTruncated { text += "stdout: truncated at the output limit\n" }
        // What it printed before it failed often says why (a script echoing its progress).
        if !stdout.isEmpty {
            let tail = String(decoding: stdout.suffix(Self.stdoutTailBytes), as: UTF8.self)
            text += "stdout (\(stdout.count > Self.stdoutTailBytes ? "tail" : "all")):\n" + tail
            if !tail.hasSuffix("\n") { text += "\n" }
        }
        if stderrTail.isEmpty {
            text += "stderr: (empty)\n"
        } else {
            text += "stderr (tail):\n" + stderrTail
            if !stderrTail.hasSuffix("\n") { text += "\n" }
        }
        return text
    }

    public static func seconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        let millis = seconds * 1000 + attoseconds / 1_000_000_000_000_000
        return "\(millis / 1000).\(String(repeating: "0", count: 3 - String(millis % 1000).count))\(millis % 1000)s"
    }

    static func signalName(_ signal: Int32) -> String {
        guard let name = strsignal(signal) else { return "unknown" }
        return String(cString: name)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What went wrong while checking or starting a handler. `description` says what to do about it.
public struct HandlerError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// The handlers directory is missing or cannot be read.
        case directoryUnreadable
        /// The handlers directory is writable by group or others, or has a foreign owner.
        case directoryUnsafe
        /// The message file given as stdin cannot be opened.
        case stdinUnreadable
        /// Pipes, the reader thread or posix_spawn failed.
        case spawnFailed
    }

    public let code: Code
    /// The file the error is about.
    public let path: String
    /// `errno` of the failing call, 0 when there is none.
    public let errno: Int32
    /// A sentence of extra context (mode, owner, remedy).
    public let detail: String

    public init(_ code: Code, path: String, errno: Int32 = 0, detail: String = "") {
        self.code = code
        self.path = path
        self.errno = errno
        self.detail = detail
    }

    public var description: String {
        var text: String
        switch code {
        case .directoryUnreadable:
            text = "handlers: cannot read directory \(path)"
        case .directoryUnsafe:
            text = "handlers: refusing directory \(path)"
        case .stdinUnreadable:
            text = "handlers: cannot open message file \(path) as stdin"
        case .spawnFailed:
            text = "handlers: cannot start \(path)"
        }
        if errno != 0 { text += ": \(Self.errnoText(errno))" }
        if !detail.isEmpty { text += "; \(detail)" }
        return text
    }

    static func errnoText(_ code: Int32) -> String {
        String(cString: strerror(code)) + " (errno \(code))"
    }
}

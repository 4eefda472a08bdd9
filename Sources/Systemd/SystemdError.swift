/// The one error type of the Systemd module: a code, the context it happened in and the OS error.
public struct SystemdError: Error, CustomStringConvertible, Sendable, Equatable {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: Hashable, Sendable {
            case invalidNotifySocket, socketFailed, sendFailed, journalFailed
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// `NOTIFY_SOCKET` is set but is neither an absolute path nor `@abstract`, or is too long.
        public static let invalidNotifySocket = Code(.invalidNotifySocket)
        /// A datagram socket could not be created.
        public static let socketFailed = Code(.socketFailed)
        /// The notification datagram could not be sent to systemd.
        public static let sendFailed = Code(.sendFailed)
        /// journald's socket did not take the entry.
        public static let journalFailed = Code(.journalFailed)

        public var description: String {
            switch base {
            case .invalidNotifySocket: "invalidNotifySocket"
            case .socketFailed: "socketFailed"
            case .sendFailed: "sendFailed"
            case .journalFailed: "journalFailed"
            }
        }
    }

    public var code: Code
    /// What was being done: the socket address, the field count.
    public var context: String
    /// The `errno` when the OS reported one.
    public var osError: Int32?

    public init(_ code: Code, context: String, osError: Int32? = nil) {
        self.code = code
        self.context = context
        self.osError = osError
    }

    public var description: String {
        let cause = osError.map { ": \(String(cString: strerror($0)))" } ?? ""
        switch code {
        case .invalidNotifySocket:
            return "systemd: NOTIFY_SOCKET \(context) is not an absolute path or @abstract name of at most 107 bytes; "
                + "check the unit's environment"
        case .socketFailed:
            return "systemd: cannot create a notification socket (\(context))\(cause); check the process's file limits"
        case .sendFailed:
            return "systemd: cannot notify systemd at \(context)\(cause); check NotifyAccess= of the unit"
        case .journalFailed:
            return "systemd: journald refused an entry (\(context))\(cause); is systemd-journald running?"
        default:
            return "systemd: \(code) (\(context))\(cause)"
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

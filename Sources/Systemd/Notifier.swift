#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// One assignment of the `sd_notify` protocol.
public enum NotifyState: Sendable, Equatable {
    /// `READY=1`: startup (or a reload) finished.
    case ready
    /// `RELOADING=1` plus `MONOTONIC_USEC=` (required by `Type=notify-reload`, harmless otherwise).
    case reloading
    /// `STOPPING=1`: shutdown began.
    case stopping
    /// `STATUS=…`: one readable line; newlines are replaced by spaces.
    case status(String)
    /// `WATCHDOG=1`: the service is alive and making progress.
    case watchdog
}

/// Talks the `sd_notify` datagram protocol to the service manager.
///
/// Outside systemd (no `NOTIFY_SOCKET`) every call is a silent no-op. The datagram is sent by this
/// type rather than by libsystemd's `sd_notify` so that tests can point it at their own socket
/// through the injected environment.
public struct Notifier: Sendable {
    /// Where systemd listens for notifications.
    public enum Address: Sendable, Equatable {
        /// A filesystem socket path.
        case path(String)
        /// A Linux abstract socket name (written `@name` in `NOTIFY_SOCKET`), without the `@`.
        case abstract(String)
    }

    /// The notification socket, `nil` outside systemd or when `NOTIFY_SOCKET` is unusable.
    public let address: Address?
    /// `WATCHDOG_USEC` when it is meant for this process; pings should go out at half of it.
    public var watchdogInterval: Duration?
    /// Set when `NOTIFY_SOCKET` was present but unusable; the notifier is then a no-op.
    public let configurationError: SystemdError?

    private let monotonicMicroseconds: @Sendable () -> UInt64

    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from `environment`.
    ///
    /// An invalid `NOTIFY_SOCKET` does not throw: it is kept in `configurationError` and the
    /// notifier stays silent, as libsystemd does. `WATCHDOG_PID` naming another process disables
    /// the watchdog for this one.
    public init(
        environment: [String: String],
        processID: Int32 = getpid(),
        monotonicMicroseconds: @escaping @Sendable () -> UInt64 = Notifier.monotonicNow
    ) {
        self.monotonicMicroseconds = monotonicMicroseconds
        var address: Address?
        var error: SystemdError?
        if let raw = environment["NOTIFY_SOCKET"], !raw.isEmpty {
            if raw.hasPrefix("/"), raw.utf8.count < Notifier.maxPathLength {
                address = .path(raw)
            } else if raw.hasPrefix("@"), raw.utf8.count <= Notifier.maxPathLength {
                address = .abstract(String(raw.dropFirst()))
            } else {
                error = SystemdError(.invalidNotifySocket, context: "\"\(raw)\"")
            }
        }
        self.address = address
        self.configurationError = error

        var interval: Duration?
        if let usec = environment["WATCHDOG_USEC"].flatMap(UInt64.init), usec > 0 {
            let pidMatches = environment["WATCHDOG_PID"].flatMap(Int32.init).map { $0 == processID } ?? true
            if pidMatches { interval = .microseconds(Int64(clamping: usec)) }
        }
        self.watchdogInterval = interval
    }

    /// Whether notifications go anywhere.
    public var isActive: Bool { address != nil }

    /// Sends `states` as one datagram; failures are swallowed (systemd cannot be told anyway, and
    /// a missed `WATCHDOG=1` shows up as a restart). Returns whether a datagram was sent.
    @discardableResult
    public func send(_ states: NotifyState...) -> Bool {
        (try? deliver(states)) ?? false
    }

    /// Sends `states` as one datagram.
    /// - Returns: `false` outside systemd (nothing to do), `true` once sent.
    /// - Throws: `SystemdError` (`.socketFailed`, `.sendFailed`) when the socket exists but the
    ///   datagram could not be delivered, for example because the listener is gone.
    @discardableResult
    public func deliver(_ states: [NotifyState]) throws(SystemdError) -> Bool {
        guard let address, !states.isEmpty else { return false }
        let payload = Array(encode(states).utf8)
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemdError(.socketFailed, context: "AF_UNIX SOCK_DGRAM", osError: errno) }
        defer { close(fd) }

        let nameBytes: [UInt8]
        switch address {
        case .path(let path): nameBytes = Array(path.utf8)
        case .abstract(let name): nameBytes = [0] + Array(name.utf8)
        }
        let sent = DatagramAddress(name: nameBytes).send(payload, from: fd)
        guard sent == payload.count else {
            throw SystemdError(.sendFailed, context: "\(address)", osError: sent < 0 ? errno : nil)
        }
        return true
    }

    /// The datagram text for `states`, one `KEY=value` per line.
    public func encode(_ states: [NotifyState]) -> String {
        states.map { state -> String in
            switch state {
            case .ready: "READY=1"
            case .reloading: "RELOADING=1\nMONOTONIC_USEC=\(monotonicMicroseconds())"
            case .stopping: "STOPPING=1"
            case .watchdog: "WATCHDOG=1"
            case .status(let line):
                "STATUS=" + String(line.map { $0.isNewline ? " " : $0 })
            }
        }.joined(separator: "\n")
    }

    /// CLOCK_MONOTONIC in microseconds, the clock systemd compares `MONOTONIC_USEC` against.
    @Sendable public static func monotonicNow() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec) / 1_000
    }

    // sun_path is 108 bytes on Linux; a path needs its terminating NUL.
    static let maxPathLength = MemoryLayout.size(ofValue: sockaddr_un().sun_path)
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// journald's native socket, spoken to directly in systemd's documented "Native Journal Protocol"
/// (one datagram per entry) instead of through libsystemd, whose library and the half dozen it
/// pulls in (libgcrypt, liblzma, libzstd, liblz4, libcap) the daemon kept in memory for this one
/// call (README, "Install it").
///
/// One socket serves every log handler of the process; `sendto` on it is safe from any thread.
public final class JournalSocket: Sendable {
    /// Where journald listens. A unit with `LogNamespace=` finds its namespace's socket here too.
    public static let defaultPath = "/run/systemd/journal/socket"

    public let path: String
    private let address: DatagramAddress
    private let fd: Int32
    private let openError: SystemdError?

    public init(path: String = JournalSocket.defaultPath) {
        self.path = path
        address = DatagramAddress(name: Array(path.utf8))
        guard path.utf8.count < Notifier.maxPathLength else {
            fd = -1
            openError = SystemdError(.journalFailed, context: "socket path \(path) is longer than 107 bytes")
            return
        }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd >= 0 {
            // A datagram carries the whole entry: allow large ones, up to the system's wmem_max.
            var size: Int32 = 8 << 20
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        self.fd = fd
        openError = fd >= 0 ? nil : SystemdError(.socketFailed, context: "AF_UNIX SOCK_DGRAM for \(path)", osError: errno)
    }

    deinit {
        if fd >= 0 { close(fd) }
    }

    /// Sends one entry of `FIELD=value` strings as one datagram.
    /// - Throws: `SystemdError` `.journalFailed` when journald does not take it (not running, the
    ///   entry larger than a datagram may be), `.socketFailed` when there is no socket.
    public func send(_ fields: [String]) throws(SystemdError) {
        if let openError { throw openError }
        let datagram = JournalSocket.encode(fields)
        let sent = address.send(datagram, from: fd)
        guard sent == datagram.count else {
            throw SystemdError(.journalFailed, context: "\(fields.count) fields, \(datagram.count) bytes to \(path)",
                               osError: sent < 0 ? errno : nil)
        }
    }

    /// The datagram for `fields`: `FIELD=value\n` each, or, for a value holding a newline,
    /// `FIELD\n`, the value's length as 64-bit little endian, the value and `\n`.
    static func encode(_ fields: [String]) -> [UInt8] {
        var datagram: [UInt8] = []
        datagram.reserveCapacity(fields.reduce(0) { $0 + $1.utf8.count + 9 })
        for field in fields {
            let bytes = field.utf8
            guard let equals = bytes.firstIndex(of: UInt8(ascii: "=")) else { continue }
            let value = bytes[bytes.index(after: equals)...]
            if value.contains(UInt8(ascii: "\n")) {
                datagram.append(contentsOf: bytes[..<equals])
                datagram.append(UInt8(ascii: "\n"))
                withUnsafeBytes(of: UInt64(value.count).littleEndian) { datagram.append(contentsOf: $0) }
                datagram.append(contentsOf: value)
            } else {
                datagram.append(contentsOf: bytes)
            }
            datagram.append(UInt8(ascii: "\n"))
        }
        return datagram
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The address of an AF_UNIX datagram socket (a path, or an abstract name starting with a NUL
/// byte), built once, and the `sendto` of one datagram to it: what `sd_notify` and journald's
/// native protocol both need.
struct DatagramAddress: Sendable {
    private let address: sockaddr_un
    private let length: socklen_t

    /// `name`: the bytes of `sun_path`, at most `Notifier.maxPathLength`.
    init(name: [UInt8]) {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in name.enumerated() where i < raw.count { raw[i] = byte }
        }
        self.address = address
        length = socklen_t((MemoryLayout<sockaddr_un>.offset(of: \.sun_path) ?? MemoryLayout<sa_family_t>.size) + name.count)
    }

    /// Sends `datagram` from `fd`: the bytes sent, or -1 with `errno` set.
    func send(_ datagram: [UInt8], from fd: Int32) -> Int {
        withUnsafePointer(to: address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                datagram.withUnsafeBytes { bytes in sendto(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL), sa, length) }
            }
        }
    }
}

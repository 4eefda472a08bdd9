import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A real unix datagram socket standing in for systemd's notification socket.
final class DatagramListener: Sendable {
    let fd: Int32
    /// The `NOTIFY_SOCKET` value pointing at this listener.
    let notifySocket: String
    private let directory: String?

    /// Binds to `<temp dir>/notify.sock`, or to an abstract name when `abstract` is true.
    init(abstract: Bool = false) throws {
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket: errno \(errno)") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let nameBytes: [UInt8]
        if abstract {
            let name = "dingstream-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            notifySocket = "@" + name
            nameBytes = [0] + Array(name.utf8)
            directory = nil
        } else {
            let dir = try makeTemporaryDirectory()
            directory = dir
            notifySocket = dir + "/notify.sock"
            nameBytes = Array(notifySocket.utf8)
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in nameBytes.enumerated() { raw[i] = b }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + nameBytes.count)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard rc == 0 else { close(fd); throw TestFailure("bind \(notifySocket): errno \(errno)") }
        self.fd = fd
    }

    /// The next datagram as text, or nil after `timeout`.
    func receive(timeout: Duration) async -> String? {
        await receiveBytes(timeout: timeout).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The next datagram (up to `capacity` bytes), or nil after `timeout`. Polls so no
    /// cooperative thread is blocked.
    func receiveBytes(timeout: Duration, capacity: Int = 4096) async -> [UInt8]? {
        let end = ContinuousClock.now + timeout
        var buffer = [UInt8](repeating: 0, count: capacity)
        while ContinuousClock.now < end {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n >= 0 { return Array(buffer.prefix(n)) }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return nil
    }

    /// Every datagram that arrives within `window`.
    func receiveAll(during window: Duration) async -> [String] {
        let end = ContinuousClock.now + window
        var all: [String] = []
        while ContinuousClock.now < end {
            if let next = await receive(timeout: end - ContinuousClock.now) { all.append(next) }
        }
        return all
    }

    deinit {
        close(fd)
        if let directory {
            unlink(directory + "/notify.sock")
            rmdir(directory)
        }
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

func makeTemporaryDirectory() throws -> String {
    var template = Array("/tmp/dingstream-systemd-test-XXXXXX".utf8CString)
    let path = template.withUnsafeMutableBufferPointer { buffer -> String? in
        guard let base = buffer.baseAddress, mkdtemp(base) != nil else { return nil }
        return String(cString: base)
    }
    guard let path else { throw TestFailure("mkdtemp: errno \(errno)") }
    return path
}

/// Records log events for assertions.
struct RecordingLogHandler: LogHandler {
    final class Store: Sendable {
        let events = Mutex<[(level: Logger.Level, message: String, metadata: Logger.Metadata)]>([])
        var snapshot: [(level: Logger.Level, message: String, metadata: Logger.Metadata)] { events.withLock { $0 } }
    }
    let store: Store
    var logLevel: Logger.Level = .trace
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 })
        store.events.withLock { $0.append((event.level, event.message.description, merged)) }
    }
}

import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle
import Spool
import StreamClient
import Synchronization

/// Serves `GET /metrics` on `metrics_listen` and writes `metrics_file`, from this daemon's own
/// Prometheus registry. Gauges that mirror state (sockets, spool entries) are refreshed just
/// before each scrape or write; the spool is counted on a read connection of its own in NIO's
/// blocking thread pool, so neither an event loop nor the spool's writer waits for it.
///
/// A port that cannot be bound is logged and tried again every 30 s: metrics never stop the
/// daemon. On graceful shutdown the listener closes (a scrape under way has 10 s to finish) and
/// the file is written once more with the final counts.
final class MetricsService: Service {
    let registry: PrometheusCollectorRegistry
    let metrics: DaemonMetrics
    let board: ConnectionBoard
    let spoolDirectory: String
    let listen: MetricsAddress?
    let file: String?
    let fileInterval: Duration
    /// Told the bound port once the listener is up (tests listen on port 0).
    let onListening: (@Sendable (Int) -> Void)?
    let logger: Logger
    private let lastSpoolCount = Mutex<ContinuousClock.Instant?>(nil)
    private let fileFailure = Mutex<String?>(nil)

    static let contentType = "text/plain; version=0.0.4; charset=utf-8"
    static let requestTimeout: Duration = .seconds(10)
    static let bindRetry: Duration = .seconds(30)

    init(
        registry: PrometheusCollectorRegistry, metrics: DaemonMetrics, board: ConnectionBoard, spoolDirectory: String,
        listen: MetricsAddress?, file: String?, fileInterval: Duration = .seconds(15),
        onListening: (@Sendable (Int) -> Void)? = nil, logger: Logger
    ) {
        self.registry = registry
        self.metrics = metrics
        self.board = board
        self.spoolDirectory = spoolDirectory
        self.listen = listen
        self.file = file
        self.fileInterval = fileInterval
        self.onListening = onListening
        self.logger = logger
    }

    func run() async throws {
        await cancelWhenGracefulShutdown { [self] in
            await withDiscardingTaskGroup { group in
                if let listen { group.addTask { await self.serve(listen) } }
                if let file {
                    logger.info("metrics: writing \(file) every \(fileInterval)")
                    group.addTask { [self] in
                        while !Task.isCancelled {
                            await write(file)
                            try? await Task.sleep(for: fileInterval)
                        }
                    }
                }
            }
        }
        // Also after a cancellation (no graceful stop): blocking once, at the very end, is fine.
        if let file { writeNow(file) }
    }

    // MARK: Refresh

    /// Brings the state gauges up to date. The spool is counted at most once a second, however
    /// many scrapers ask.
    func refresh() async {
        metrics.refreshSockets(from: board)
        guard spoolCountDue() else { return }
        let directory = spoolDirectory
        do {
            let counts = try await NIOThreadPool.singleton.runIfActive { try SpoolInspector(directory: directory).counts() }
            metrics.recordSpoolCounts(counts)
        } catch {
            logger.debug("metrics: cannot count spool entries: \(error)")
        }
    }

    private func spoolCountDue() -> Bool {
        let now = ContinuousClock.now
        return lastSpoolCount.withLock { last in
            guard last.map({ now - $0 >= .seconds(1) }) ?? true else { return false }
            last = now
            return true
        }
    }

    // MARK: HTTP

    private typealias Connection = HTTPListener.Connection

    private func serve(_ address: MetricsAddress) async {
        while !Task.isCancelled {
            let server: HTTPListener.Server
            do {
                server = try await HTTPListener.bind(address, backlog: 32)
            } catch {
                logger.error(
                    "metrics: cannot listen on \(address) (\(error)); trying again in \(Self.bindRetry). Is another process on that port? Change metrics_listen or free it")
                try? await Task.sleep(for: Self.bindRetry)
                continue
            }
            let port = server.channel.localAddress?.port ?? address.port
            logger.notice("metrics: serving http://\(address.hostForURL):\(port)/metrics")
            if !address.isLoopback {
                logger.warning("metrics: \(address) is not a loopback address; anyone who can reach it reads the metrics, so firewall it")
            }
            onListening?(port)
            do {
                try await HTTPListener.serve(server, timeout: Self.requestTimeout) { try await self.exchange($0) }
            } catch {
                if !Task.isCancelled { logger.warning("metrics: listener failed: \(error)") }
            }
            return
        }
    }

    private func exchange(_ connection: Connection) async throws {
        try await connection.executeThenClose { [self] inbound, outbound in
            var request: HTTPRequestHead?
            for try await part in inbound {
                switch part {
                case .head(let head):
                    request = head
                case .body:
                    continue  // ignored: nothing here takes a body
                case .end:
                    guard let request else { return }
                    let (status, body) = await respond(to: request)
                    var headers = HTTPHeaders()
                    headers.add(name: "Content-Type", value: status == .ok ? Self.contentType : "text/plain; charset=utf-8")
                    headers.add(name: "Content-Length", value: "\(body.readableBytes)")
                    headers.add(name: "Connection", value: "close")
                    if status == .methodNotAllowed { headers.add(name: "Allow", value: "GET, HEAD") }
                    try await outbound.write(.head(HTTPResponseHead(version: request.version, status: status, headers: headers)))
                    if request.method != .HEAD { try await outbound.write(.body(.byteBuffer(body))) }
                    try await outbound.write(.end(nil))
                    return
                }
            }
        }
    }

    private func respond(to request: HTTPRequestHead) async -> (HTTPResponseStatus, ByteBuffer) {
        let path = request.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? request.uri
        guard request.method == .GET || request.method == .HEAD else {
            return (.methodNotAllowed, ByteBuffer(string: "only GET and HEAD\n"))
        }
        switch path {
        case "/metrics":
            await refresh()
            return (.ok, ByteBuffer(bytes: registry.emitToBuffer()))
        case "/":
            return (.ok, ByteBuffer(string: "dingstream: metrics at /metrics\n"))
        default:
            return (.notFound, ByteBuffer(string: "not found; metrics are at /metrics\n"))
        }
    }

    // MARK: File

    /// Writes the text format to `path` through a temporary file and a rename, so that
    /// node_exporter never reads half a file. A failure is logged when it starts and when it ends.
    private func write(_ path: String) async {
        await refresh()
        let bytes = registry.emitToBuffer()
        let failure: String?
        do {
            failure = try await NIOThreadPool.singleton.runIfActive { Self.writeAtomically(bytes, to: path) }
        } catch {
            return  // cancelled (shutdown): the final write in `run` follows
        }
        report(failure, writing: path)
    }

    /// The last write, on the caller's thread, whatever the task's cancellation.
    private func writeNow(_ path: String) {
        metrics.refreshSockets(from: board)
        if let counts = try? SpoolInspector(directory: spoolDirectory).counts() { metrics.recordSpoolCounts(counts) }
        report(Self.writeAtomically(registry.emitToBuffer(), to: path), writing: path)
    }

    private func report(_ failure: String?, writing path: String) {
        let changed = fileFailure.withLock { last in
            defer { last = failure }
            return last != failure
        }
        guard changed else { return }
        if let failure {
            logger.error("metrics: cannot write \(path): \(failure); check that its directory exists and the service user may write there")
        } else {
            logger.notice("metrics: writing \(path) again")
        }
    }

    /// Returns what went wrong, or nil. The temporary name does not end in `.prom`, so the
    /// textfile collector never picks it up. Mode 0644: node_exporter runs as another user.
    static func writeAtomically(_ bytes: [UInt8], to path: String) -> String? {
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { String(path[..<$0]) } ?? "."
        let base = slash.map { String(path[path.index(after: $0)...]) } ?? path
        let temporary = "\(directory)/.\(base).\(getpid()).tmp"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { return "creating \(temporary): \(String(cString: strerror(errno)))" }
        _ = fchmod(descriptor, 0o644)  // whatever the umask
        var written = 0
        while written < bytes.count {
            let count = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress! + written, bytes.count - written) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else {
                let reason = String(cString: strerror(errno))
                close(descriptor)
                unlink(temporary)
                return "writing \(temporary): \(reason)"
            }
            written += count
        }
        close(descriptor)
        guard rename(temporary, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            return "renaming \(temporary) to \(path): \(reason)"
        }
        return nil
    }
}

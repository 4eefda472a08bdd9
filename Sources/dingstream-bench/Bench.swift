import DingStream
import Foundation
import Logging
import Simulator
import PostgresTestServer
import Spool

/// Durable ingest over real loopback, measured from the simulator's side: the daemon (in process,
/// spool in a temporary folder on the real filesystem) and optionally a peer client in another
/// process get the same load, one after the other, from the same simulator.
@main
struct Bench {
    static func main() async {
        let options: BenchOptions
        do {
            options = try BenchOptions(CommandLine.arguments.dropFirst())
        } catch {
            FileHandle.standardError.write(Data("dingstream-bench: \(error)\n\(BenchOptions.usage)\n".utf8))
            exit(64)
        }
        do {
            try await run(options)
        } catch {
            FileHandle.standardError.write(Data("dingstream-bench: \(error)\n".utf8))
            exit(1)
        }
    }

    static func run(_ options: BenchOptions) async throws {
        var simulatorConfiguration = SimulatorConfiguration(apps: [
            SimulatedApp(name: "bench", clientId: "dingbench", clientSecret: "secret-bench"),
            SimulatedApp(name: "bench2", clientId: "dingbench2", clientSecret: "secret-bench2"),
            SimulatedApp(name: "peer", clientId: "dingpeer", clientSecret: "secret-peer"),
            SimulatedApp(name: "http", clientId: "dinghttp", clientSecret: "secret-http"),
            SimulatedApp(name: "script", clientId: "dingscript", clientSecret: "secret-script"),
        ])
        simulatorConfiguration.recordDetails = false
        simulatorConfiguration.recordAckLatencies = true
        // Nothing here is meant to be pushed twice; a redelivery would blur the numbers.
        simulatorConfiguration.redeliveryTimeout = .seconds(600)
        var simulatorLogger = Logger(label: "bench.simulator")
        simulatorLogger.logLevel = .error
        simulatorConfiguration.logger = simulatorLogger

        if options.acks {
            say("dingstream-bench: \(options.messages) messages with \(options.window) in flight, then \(options.rate) msgs/s for \(options.seconds) s")
        }
        if options.replies {
            say("dingstream-bench: replies, \(options.replyRate) msgs/s for \(options.replySeconds) s, then \(options.replyMessages) messages with \(options.replyWindow) waiting for a reply")
        }
        say("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, load average \(loadAverage()) at start")
        // Where the spool goes: as deployed, on a filesystem of its own (a loop-mounted ext4
        // image, when root), and in the temporary folder on the shared root filesystem, whose
        // syncfs also flushes everybody else's dirty data. Never tmpfs: durability is the point.
        var places: [(name: String, parent: String, cleanup: @Sendable () -> Void)] = []
        if !options.acks {
            say("acks: not measured (--replies only)")
        } else if !options.sqlite {
            say("spool: SQLite not measured (--sqlite no)")
        } else if let parent = options.spoolParent {
            places.append(("dingstream", parent, {}))
        } else {
            switch DedicatedFilesystem.make() {
            case .success(let filesystem):
                say("spool filesystem: a \(DedicatedFilesystem.sizeMiB) MiB ext4 image (\(DedicatedFilesystem.rootHasJournal ? "with" : "without") a journal, as /) loop-mounted at \(filesystem.mountPoint)")
                places.append(("dingstream own ext4", filesystem.mountPoint, { filesystem.remove() }))
            case .failure(let reason):
                say("spool filesystem: no dedicated one (\(reason)); only the shared one is measured")
            }
            places.append(("dingstream shared fs", NSTemporaryDirectory(), {}))
        }
        let (ours, peer, replies) = try await DingTalkSimulator.withRunning(simulatorConfiguration) { simulator in
            var ours: [(String, LoadResult)] = []
            for place in places {
                defer { place.cleanup() }
                // Removed only after both runs: on ext4 without a journal, inodes freed within the
                // last minute are skipped by every allocation, which would slow the run after.
                var leftovers: [String] = []
                defer { for path in leftovers { try? FileManager.default.removeItem(atPath: path) } }
                say("\(place.name): spool under \(place.parent)")
                let floor = try await onOwnThread { SyncFloor.measure(directory: place.parent) }
                var result = try await measureDaemon(simulator, parent: place.parent, options, leftovers: &leftovers)
                result.syncFloor = floor
                if options.burstOnly {
                    ours.append((place.name, result))
                    continue
                }
                say("\(place.name): the spool alone, \(options.messages) records")
                let alone = try await SpoolAlone.measure(parent: place.parent, options, leftovers: &leftovers)
                result.spoolAlone = alone.throughput
                result.spoolAloneCPU = alone.cpuMicrosPerMessage
                result.spoolAloneOwnCPU = alone.ownCPUMicrosPerMessage
                ours.append((place.name, result))
            }
            if options.acks && options.cluster {
                var leftovers: [String] = []
                defer { for path in leftovers { try? FileManager.default.removeItem(atPath: path) } }
                say("dingstream cluster: two daemons sharing one PostgreSQL (fsync on) on this machine")
                do {
                    ours.append(("dingstream 2-host cluster", try await measureCluster(simulator, options, leftovers: &leftovers)))
                } catch {
                    say("dingstream cluster: not measured: \(error)")
                }
            }
            var peer: LoadResult?
            if options.acks, let command = options.peerCommand {
                do {
                    peer = try await measurePeer(simulator, command: command, options)
                } catch {
                    say("peer: not measured: \(error)")
                }
            }
            let replies = options.replies ? try await measureReplies(simulator, options) : []
            return (ours, peer, replies)
        }
        if options.acks {
            say("")
            printTable(ours: ours, peer: peer, peerName: options.peerName)
            say("")
            for (name, result) in ours {
                let throughputMet = result.throughput >= 20_000
                let latencyMet = result.p99 < 0.005
                say("target, \(name): >= 20000 acked msgs/s \(throughputMet ? "met" : "missed"); p99 < 5 ms at \(options.rate)/s \(latencyMet ? "met" : "missed")")
            }
        }
        if options.replies {
            say("")
            printReplyTable(replies, options)
        }
        say("load average at end: \(loadAverage()) (other work on this machine shows in these numbers)")
    }

    // MARK: the two subjects

    /// The daemon as it is deployed: the `dingstream` binary beside this one, its own process
    /// (so that its CPU and memory are its own), two apps of two sockets each, the default log
    /// level, no handlers.
    static func measureDaemon(
        _ simulator: DingTalkSimulator, parent: String, _ options: BenchOptions, leftovers: inout [String]
    ) async throws -> LoadResult {
        let root = parent + "/dingstream-bench-\(UUID().uuidString.prefix(8))"
        leftovers.append(root)
        let process = try startDaemon(root: root, simulator: simulator, options)
        defer { stop(process) }
        say("dingstream: pid \(process.processIdentifier)")
        try await simulator.waitUntil(timeout: .seconds(20), "four live daemon sockets") {
            $0.liveSockets(app: "bench").count == 2 && $0.liveSockets(app: "bench2").count == 2
        }
        // The dispatcher (no handlers here: each entry goes new → done) works off what the
        // previous phase left before the next phase starts.
        let inspector = SpoolInspector(directory: root + "/spool")
        var result = try await measure(simulator, app: "bench", options, pids: [process.processIdentifier]) {
            waitUntilNoneNew(inspector)
        }
        result.storedEntries = countEntries(root + "/spool")
        return result
    }

    /// Two hosts of one cluster on this machine: two daemons sharing a PostgreSQL of the bench's
    /// own (Debian's, initdb in a temporary folder, fsync on), the simulator pushing each frame
    /// to any of their four sockets. Own CPU is both daemons' together (PostgreSQL's is not).
    static func measureCluster(_ simulator: DingTalkSimulator, _ options: BenchOptions, leftovers: inout [String]) async throws -> LoadResult {
        let server = try PostgresServer.start(durable: true)
        defer { server.remove() }
        let root = NSTemporaryDirectory() + "dingstream-bench-cluster-\(UUID().uuidString.prefix(8))"
        leftovers.append(root)
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        try Data(PostgresServer.password.utf8).write(to: URL(fileURLWithPath: root + "/cluster.password"))
        func section(_ node: String) -> String {
            """

            [cluster]
            database = "postgresql://\(PostgresServer.user)@/dingstream?host=\(server.directory)"
            password_file = "\(root)/cluster.password"
            node = "\(node)"

            """
        }
        let first = try startDaemon(root: root + "/a", simulator: simulator, options, apps: ["bench"], extra: section("a"))
        defer { stop(first) }
        let second = try startDaemon(root: root + "/b", simulator: simulator, options, apps: ["bench"], extra: section("b"))
        defer { stop(second) }
        try await simulator.waitUntil(timeout: .seconds(30), "four live sockets of the two hosts") {
            $0.liveSockets(app: "bench").count == 4
        }
        let inspector = SpoolInspector(directory: root + "/a/spool", cluster: try server.settings(node: "bench"))
        var result = try await measure(simulator, app: "bench", options, pids: [first.processIdentifier, second.processIdentifier]) {
            waitUntilNoneNew(inspector)
        }
        result.storedEntries = ((try? inspector.counts()) ?? [:]).values.reduce(0, +)
        return result
    }

    static func waitUntilNoneNew(_ inspector: SpoolInspector) {
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline, ((try? inspector.counts()) ?? [:])[.new, default: 0] > 0 {
            usleep(50_000)
        }
    }

    /// Writes a configuration under `root` and starts `dingstream run` on it, output discarded.
    static func startDaemon(
        root: String, simulator: DingTalkSimulator, _ options: BenchOptions, apps: [String] = ["bench", "bench2"],
        appSettings: String = "", extra: String = ""
    ) throws -> Process {
        try FileManager.default.createDirectory(atPath: root + "/spool", withIntermediateDirectories: true)
        let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("dingstream").path
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw BenchOptions.Invalid(description: "no dingstream binary at \(binary); build it (make bench does)")
        }
        var toml = """
            spool_dir = "\(root)/spool"
            runtime_dir = "\(root)/run"
            shutdown_grace = "2s"
            ready_timeout = "5s"

            """
        if let level = options.daemonLogLevel { toml += "log_level = \"\(level)\"\n" }
        if let address = options.daemonMetrics { toml += "metrics_listen = \"\(address)\"\n" }
        for name in apps {
            toml += """

                [[app]]
                name = "\(name)"
                client_id = "ding\(name)"
                client_secret = "secret-\(name)"
                allowed_users = ["*"]
                api_base = "\(simulator.baseURL)"

                """ + appSettings
        }
        toml += extra
        try Data(toml.utf8).write(to: URL(fileURLWithPath: root + "/dingstream.toml"))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["run", "--config", root + "/dingstream.toml"]
        process.environment = ["PATH": "/usr/bin:/bin", "HOME": root, "LANG": "C.UTF-8"]
        process.standardInput = FileHandle.nullDevice
        // Logged at the default level, as deployed; journald's share is not the daemon's.
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    static func stop(_ process: Process) {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
    }

    static func measurePeer(_ simulator: DingTalkSimulator, command: String, _ options: BenchOptions) async throws -> LoadResult {
        let process = try startPeer(simulator, command: command)
        defer { killPeer(process) }
        try await simulator.waitUntil(timeout: .seconds(30), "a live peer socket") { $0.liveSockets(app: "peer").count >= 1 }
        return try await measure(simulator, app: "peer", options, pids: [process.processIdentifier])
    }

    /// Starts the peer client on the simulator's "peer" app.
    static func startPeer(_ simulator: DingTalkSimulator, command: String) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "exec " + command]
        var environment = ProcessInfo.processInfo.environment
        environment["DINGTALK_OPENAPI_ENDPOINT"] = simulator.baseURL
        environment["BENCH_CLIENT_ID"] = "dingpeer"
        environment["BENCH_CLIENT_SECRET"] = "secret-peer"
        process.environment = environment
        try process.run()
        return process
    }

    static func killPeer(_ process: Process) {
        // SIGKILL: the daemon's signal handling leaves SIGTERM ignored, and children inherit that.
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    // MARK: the load

    /// Warm-up, a paced run for latency, then a windowed burst for throughput. `settle` runs
    /// before each measured phase, so that one phase's backlog does not land in the next.
    static func measure(
        _ simulator: DingTalkSimulator, app: String, _ options: BenchOptions, pids: [Int32],
        settle: @escaping @Sendable () -> Void = {}
    ) async throws -> LoadResult {
        let driver = LoadDriver(simulator: simulator, app: app)
        try await Task.sleep(for: .seconds(1))
        let idleRSS = pids.map { ProcessCPU.residentMiB($0) }.reduce(0, +)
        let idleAnonymous = pids.map { ProcessCPU.residentMiB($0, field: "RssAnon") }.reduce(0, +)
        say("\(app): warm-up")
        _ = try await onOwnThread { try driver.burst(count: options.warmup, window: options.window, timeout: 60) }
        try await onOwnThread { settle() }
        _ = simulator.takeAckLatencies()
        var latencies: [Double] = []
        if !options.burstOnly {
            say("\(app): \(options.rate) msgs/s for \(options.seconds) s")
            try await onOwnThread { try driver.paced(rate: options.rate, seconds: options.seconds, timeout: 60) }
            latencies = simulator.takeAckLatencies().map(\.inSeconds).sorted()
            try await onOwnThread { settle() }
        }
        var bursts: [LoadResult] = []
        for round in 1...options.bursts {
            if round > 1 { try await onOwnThread { settle() } }
            say("\(app): burst \(round) of \(options.bursts), \(options.messages) messages")
            let cpu = MachineCPU()
            let own = ProcessCPU(pids)
            let burst = try await onOwnThread { try driver.burst(count: options.messages, window: options.window, timeout: options.timeout) }
            var result = LoadResult(acked: burst.acked, offered: options.messages, elapsed: burst.elapsed)
            result.cpuMicrosPerMessage = cpu.microsPerMessage(burst.acked)
            result.ownCPUMicrosPerMessage = own.microsPerMessage(burst.acked)
            bursts.append(result)
        }
        // The median burst by throughput, with its own CPU figures: one burst, not a mix.
        var result = bursts.sorted { $0.throughput < $1.throughput }[bursts.count / 2]
        result.bursts = bursts
        result.idleRSS = idleRSS
        result.idleAnonymous = idleAnonymous
        result.p50 = percentile(latencies, 0.50)
        result.p99 = percentile(latencies, 0.99)
        result.maximum = latencies.last ?? .nan
        result.samples = latencies.count
        return result
    }

    /// Runs blocking driver code on a thread of its own, away from the cooperative pool (which the
    /// daemon's dispatcher may keep busy) so that pacing and polling stay on time.
    static func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let thread = Thread {
                continuation.resume(with: Result { try body() })
            }
            thread.name = "bench-driver"
            thread.start()
        }
    }

    static func percentile(_ sorted: [Double], _ q: Double) -> Double {
        guard !sorted.isEmpty else { return .nan }
        let rank = Int((q * Double(sorted.count)).rounded(.up)) - 1
        return sorted[min(max(rank, 0), sorted.count - 1)]
    }

    /// Entries stored in the spool, in any state.
    static func countEntries(_ spool: String) -> Int {
        ((try? SpoolInspector(directory: spool).counts()) ?? [:]).values.reduce(0, +)
    }

    static func loadAverage() -> String {
        ((try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8)) ?? "?").split(separator: " ").prefix(3).joined(separator: " ")
    }

    // MARK: report

    static func printTable(ours: [(String, LoadResult)], peer: LoadResult?, peerName: String) {
        func number(_ value: Double, _ digits: Int) -> String {
            value.isFinite ? String(format: "%.\(digits)f", value) : "-"
        }
        func ratio(_ a: Double, _ b: Double?) -> String {
            guard let b, a.isFinite, b.isFinite, b > 0 else { return "-" }
            return String(format: "%.2fx", a / b)
        }
        let metrics: [(String, (LoadResult) -> Double, Int)] = [
            ("acked msgs/s, median burst of \(ours.first?.1.offered ?? 0)", { $0.throughput }, 0),
            ("ack latency p50 (ms), paced", { $0.p50 * 1000 }, 2),
            ("ack latency p99 (ms), paced", { $0.p99 * 1000 }, 2),
            ("ack latency max (ms), paced", { $0.maximum * 1000 }, 2),
            ("  fdatasync alone p50 (ms), same fs", { ($0.syncFloor?.p50 ?? .nan) * 1000 }, 2),
            ("  fdatasync alone p99 (ms), same fs", { ($0.syncFloor?.p99 ?? .nan) * 1000 }, 2),
            ("own CPU per acked msg (us), median burst", { $0.ownCPUMicrosPerMessage }, 1),
            ("machine CPU per acked msg (us), median burst", { $0.cpuMicrosPerMessage }, 0),
            ("RSS idle (MiB), sockets up", { $0.idleRSS }, 1),
            ("  of it anonymous (MiB)", { $0.idleAnonymous }, 1),
            ("spool alone: stored msgs/s", { $0.spoolAlone }, 0),
            ("spool alone: machine CPU per msg (us)", { $0.spoolAloneCPU }, 0),
            ("spool alone: own CPU per msg (us)", { $0.spoolAloneOwnCPU }, 1),
        ]
        let header = ["metric"] + ours.map(\.0) + [peer == nil ? "peer (not run)" : peerName] + ours.map { "ratio \($0.0.replacingOccurrences(of: "dingstream ", with: ""))/peer" }
        var lines = [header]
        for (name, value, digits) in metrics {
            lines.append(
                [name] + ours.map { number(value($0.1), digits) } + [peer.map { number(value($0), digits) } ?? "-"]
                    + ours.map { ratio(value($0.1), peer.map(value)) })
        }
        sayColumns(lines)
        say("dingstream acks after the entry is durable (its round's SQLite transaction committed, WAL fsynced);")
        say("the peer acks from memory without storing anything: durable ack vs in-memory ack. fdatasync alone:")
        say("an 8 KiB overwrite and its fdatasync once a millisecond on the spool's filesystem, nothing else;")
        say("a durable ack cannot be faster.")
        say("own CPU: user + system time of the subject's process (/proc/PID/stat) during the burst; dingstream")
        say("runs 2 apps x 2 sockets, the peer 1 socket. machine CPU: busy time of all cores during the burst (simulator, load driver and writeback")
        say("included) per acked message; 2 cores at 20,000 msgs/s leave 100 us. The spool alone gets")
        say("records straight from a thread: no sockets, no simulator, no dispatcher; its own CPU is the bench")
        say("process's (its simulator idles meanwhile): what storing costs the daemon before any frame is read.")
        func rates(_ result: LoadResult) -> String {
            result.bursts.map { "\(number($0.throughput, 0)) (\(number($0.ownCPUMicrosPerMessage, 1)) us)" }.joined(separator: ", ")
        }
        for (name, result) in ours {
            say(
                "\(name): median burst \(result.acked) of \(result.offered) messages acked in \(number(result.elapsed, 2)) s; bursts at \(rates(result)) msgs/s (own CPU per msg); \(result.samples) latency samples; \(result.storedEntries ?? 0) entries in the spool")
        }
        if let peer {
            say("\(peerName): median burst \(peer.acked) of \(peer.offered) messages acked in \(number(peer.elapsed, 2)) s; bursts at \(rates(peer)) msgs/s (own CPU per msg); \(peer.samples) latency samples")
        }
    }
}

struct LoadResult: Sendable {
    var acked: Int
    var offered: Int
    var elapsed: Double
    var p50 = Double.nan
    var p99 = Double.nan
    var maximum = Double.nan
    var samples = 0
    var storedEntries: Int?
    var cpuMicrosPerMessage = Double.nan
    /// user + system time of the subject's own process.
    var ownCPUMicrosPerMessage = Double.nan
    var idleRSS = Double.nan
    var idleAnonymous = Double.nan
    var spoolAlone = Double.nan
    var spoolAloneCPU = Double.nan
    var spoolAloneOwnCPU = Double.nan
    /// Every burst, in the order run; this result is the median one's.
    var bursts: [LoadResult] = []
    /// What an fdatasync alone takes on the spool's filesystem.
    var syncFloor: SyncFloor.Result?

    var throughput: Double { elapsed > 0 ? Double(acked) / elapsed : .nan }
}

/// Rows of cells, each column padded to its widest cell.
func sayColumns(_ lines: [[String]]) {
    let widths = (0..<(lines.first?.count ?? 0)).map { column in lines.map { $0[column].count }.max() ?? 0 }
    for line in lines {
        say(line.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }.joined(separator: "  "))
    }
}

/// One line to stdout at once, unbuffered: progress shows up as it happens, also through a pipe.
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

extension Duration {
    var inSeconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}

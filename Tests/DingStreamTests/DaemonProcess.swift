import Foundation
import Simulator
import Spool
import Testing

/// The `dingstream` binary run as a child process with a TOML configuration pointing at a
/// simulator, so that a test can SIGKILL it (an in-process daemon cannot die without the test).
/// Its stderr from every start goes to `daemon.log`, which a failing test attaches to its issues.
final class DaemonProcess {
    let root: String
    let configPath: String
    let logPath: String
    private var process: Process?
    private let extraEnvironment: [String: String]
    /// Every pid this daemon ran as, in order.
    private(set) var pids: [String] = []

    /// The binary beside the test bundle (`swift build --build-tests` builds both into the same
    /// folder), else `.build/debug/dingstream` of this package.
    static let executable: String? = {
        var candidates: [String] = []
        if let bundle = Bundle.main.executableURL?.deletingLastPathComponent() {
            candidates.append(bundle.appendingPathComponent("dingstream").path)
        }
        let package = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        candidates.append(package.appendingPathComponent(".build/debug/dingstream").path)
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()

    /// Writes the configuration for every app of `simulator` into `harness.root`.
    /// `environment` is added to the child's minimal one; `logLevel` is the configuration's;
    /// `settings` are more top-level lines of it; `extra` is appended to the file (a `[cluster]`
    /// section, say).
    init(
        harness: DaemonHarness, simulator: DingTalkSimulator, workers: Int = 2, connections: Int = 2, logLevel: String = "info",
        environment: [String: String] = [:], settings: String = "", extra: String = ""
    ) throws {
        extraEnvironment = environment
        root = harness.root
        configPath = root + "/dingstream.toml"
        logPath = root + "/daemon.log"
        var toml = """
            spool_dir = "\(harness.spool)"
            runtime_dir = "\(root)/run"
            workers = \(workers)
            handler_timeout = "20s"
            ready_timeout = "5s"
            shutdown_grace = "2s"
            log_level = "\(logLevel)"
            \(settings)

            """
        for app in simulator.configuration.apps {
            toml += """

                [[app]]
                name = "\(app.name)"
                client_id = "\(app.clientId)"
                client_secret = "\(app.clientSecret)"
                connections = \(connections)
                allowed_users = ["*"]
                api_base = "\(simulator.baseURL)"

                """
        }
        toml += extra
        try Data(toml.utf8).write(to: URL(fileURLWithPath: configPath))
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
    }

    /// Starts `dingstream run` with a minimal environment (no NOTIFY_SOCKET, no JOURNAL_STREAM:
    /// it logs to stderr).
    func start() throws {
        guard let executable = Self.executable else {
            throw DaemonProcessError(message: "no dingstream binary beside the tests; run swift build --build-tests")
        }
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        defer { try? log.close() }
        try log.seekToEnd()
        log.write(Data("---- start \(Date())\n".utf8))
        let child = Process()
        child.executableURL = URL(fileURLWithPath: executable)
        child.arguments = ["run", "--config", configPath]
        child.environment = ["PATH": "/usr/bin:/bin", "HOME": root, "LANG": "C.UTF-8"].merging(extraEnvironment) { _, new in new }
        child.standardInput = FileHandle.nullDevice
        child.standardOutput = log
        child.standardError = log
        try child.run()
        process = child
        pids.append(String(child.processIdentifier))
    }

    var isRunning: Bool { process?.isRunning ?? false }

    /// Sends `signal` (SIGHUP to reload) without waiting for anything.
    func send(signal: Int32) {
        if let process { Foundation.kill(process.processIdentifier, signal) }
    }

    /// SIGKILL, then waits for the exit: nothing of the daemon runs any more (its handler
    /// children live on in their own process groups, as they would after a real crash).
    func kill() async throws {
        try await stop(signal: SIGKILL)
    }

    /// SIGSTOP: the daemon freezes wherever it is, its sockets stay open but nothing is acked.
    func freeze() {
        if let process { Foundation.kill(process.processIdentifier, SIGSTOP) }
    }

    /// SIGTERM and waits for the graceful stop; SIGKILL if it takes longer than 20 s.
    func terminate() async throws {
        try await stop(signal: SIGTERM)
    }

    /// Waits for an exit already asked for (a signal sent with `send`); SIGKILL after 20 s.
    func waitForExit() async throws {
        try await stop(signal: nil)
    }

    /// Exit status of the last process that ended, nil before any did.
    private(set) var lastExitStatus: Int32?

    private func stop(signal: Int32?) async throws {
        guard let child = process else { return }
        defer { if !child.isRunning { lastExitStatus = child.terminationStatus } }
        process = nil
        guard child.isRunning else { return }
        if let signal { Foundation.kill(child.processIdentifier, signal) }
        let clock = ContinuousClock()
        let end = clock.now + .seconds(20)
        while child.isRunning {
            if clock.now >= end {
                Foundation.kill(child.processIdentifier, SIGKILL)
                child.waitUntilExit()
                throw DaemonProcessError(message: "the daemon did not exit within 20 s of signal \(signal.map { "\($0)" } ?? "sent before")")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// The daemon's stderr, to attach to a failure.
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    deinit {
        if let process, process.isRunning {
            Foundation.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}

struct DaemonProcessError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// Polls `condition` every 50 ms: conditions that read the spool cost CPU the daemon needs on a
/// shared 2-core machine, so they are not checked as often as `waitUntil` does.
/// - Throws: `DaemonProcessError` naming `what` when it still fails after `timeout`.
func poll(timeout: Duration, _ what: String, _ condition: () -> Bool) async throws {
    let clock = ContinuousClock()
    let end = clock.now + timeout
    while !condition() {
        if clock.now >= end { throw DaemonProcessError(message: "after \(timeout) still waiting for \(what)") }
        try await Task.sleep(for: .milliseconds(50))
    }
}

/// What a spool holds, read the way an operator would with `dingstream spool ls`.
struct SpoolSnapshot {
    /// One row per entry: its state and the bot message's msgId.
    var entries: [(state: String, msgId: String?)] = []

    init(spool: String) {
        let listing = (try? SpoolInspector(directory: spool).list()) ?? []
        entries = listing.map { ($0.state.rawValue, $0.businessID) }
    }

    func count(in state: String) -> Int { entries.filter { $0.state == state }.count }
}

/// One run of `loggingHandler`: the message text, a token unique to the run, and the pid of the
/// daemon process that started it.
struct HandlerRun {
    var text: String
    var token: String
    var daemon: String
}

func handlerRuns(_ path: String) -> [HandlerRun] {
    let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    return text.split(separator: "\n").compactMap { line in
        let parts = line.split(separator: " ").map(String.init)
        return parts.count == 3 ? HandlerRun(text: parts[0], token: parts[1], daemon: parts[2]) : nil
    }
}

/// A handler that appends `<text> <run token> <daemon pid>` to `log` (O_APPEND, one short write,
/// so lines of concurrent runs never mix) before anything else, then replies
/// `reply <text> <run token>`. `$PPID` is fixed at the shell's start, so a run orphaned by a kill
/// still names the daemon that started it (unless the kill came before the shell started).
func loggingHandler(log: String) -> String {
    """
    #!/bin/sh
    token="$$.$(date +%s%N)"
    printf '%s %s %s\\n' "$DINGSTREAM_TEXT" "$token" "$PPID" >> '\(log)'
    printf 'reply %s %s' "$DINGSTREAM_TEXT" "$token"

    """
}

/// Replies the simulator accepted, in arrival order: webhook answers with errcode 0 and OpenAPI
/// sends (batchSend, groupMessages). `msgId` is known for webhook replies only.
func deliveredReplies(_ simulator: DingTalkSimulator, app: String) -> [(msgId: String?, content: String, time: Date)] {
    var result: [(msgId: String?, content: String, time: Date)] = []
    for reply in simulator.webhookReplies(app: app) where reply.errcode == 0 {
        let object = (try? JSONSerialization.jsonObject(with: Data(reply.body.utf8))) as? [String: Any]
        let content = (object?["text"] as? [String: Any])?["content"] as? String ?? reply.body
        result.append((reply.msgId, content, reply.time))
    }
    for send in simulator.openAPISends(app: app) where send.endpoint == .batchSend || send.endpoint == .groupMessages {
        let object = (try? JSONSerialization.jsonObject(with: Data(send.body.utf8))) as? [String: Any]
        let param = (object?["msgParam"] as? String).flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) } as? [String: Any]
        result.append((nil, param?["content"] as? String ?? send.body, send.time))
    }
    return result.sorted { $0.time < $1.time }
}

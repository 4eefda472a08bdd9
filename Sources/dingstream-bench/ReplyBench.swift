import Foundation
import Simulator

/// End to end, as a user sees it: a bot message pushed by the simulator until the reply to it
/// reaches the simulator's session webhook. Each message is its own conversation.
struct ReplyResult: Sendable {
    var replied = 0
    var offered = 0
    var elapsed = Double.nan
    var p50 = Double.nan
    var p99 = Double.nan
    var maximum = Double.nan
    var samples = 0
    var missing = 0

    var throughput: Double { elapsed > 0 ? Double(replied) / elapsed : .nan }
}

/// Pushes messages from a plain thread and reads the simulator's webhook records: the time of a
/// reply is the simulator's when it recorded it, the time of a message the driver's just before
/// the push (both wall clock, in the same process).
struct ReplyDriver: Sendable {
    let simulator: DingTalkSimulator
    let app: String

    /// Pushes `count` messages keeping about `window` without a reply, and waits for the replies
    /// (up to `timeout` s). Elapsed runs from the first push to the last reply.
    func burst(count: Int, window: Int, timeout: Double) throws -> ReplyResult {
        let chunk = max(1, min(50, window / 4))
        let baseline = simulator.webhookReplyCount
        var pushed: Set<String> = []
        let start = LoadDriver.seconds()
        var injected = 0
        var answered = 0
        while answered < count, LoadDriver.seconds() - start < timeout {
            answered = simulator.webhookReplyCount - baseline
            if injected < count && injected - answered + chunk <= window {
                let next = min(chunk, count - injected)
                pushed.formUnion(try simulator.injectTextMessages(count: next, app: app, text: "burst \(injected)"))
                injected += next
            } else {
                usleep(2000)
            }
        }
        let elapsed = LoadDriver.seconds() - start
        let replied = Set(simulator.webhookReplies(app: app).lazy.filter { $0.errcode == 0 }.compactMap(\.msgId)).intersection(pushed).count
        return ReplyResult(replied: replied, offered: count, elapsed: elapsed, missing: count - replied)
    }

    /// Pushes one message every 1/`rate` s for `seconds`, then waits for every reply (up to
    /// `timeout` s more); the message-to-reply times give the percentiles.
    func paced(rate: Int, seconds: Double, timeout: Double) throws -> ReplyResult {
        let total = Int(Double(rate) * seconds)
        let baseline = simulator.webhookReplyCount
        var pushedAt: [String: Date] = [:]
        let start = LoadDriver.seconds()
        var injected = 0
        while injected < total {
            let due = min(total, Int((LoadDriver.seconds() - start) * Double(rate)) + 1)
            if due > injected {
                let now = Date()
                for msgId in try simulator.injectTextMessages(count: due - injected, app: app, text: "paced \(injected)") {
                    pushedAt[msgId] = now
                }
                injected = due
            }
            let wait = start + Double(injected) / Double(rate) - LoadDriver.seconds()
            if wait > 0 { usleep(useconds_t(wait * 1e6)) }
        }
        let end = LoadDriver.seconds() + timeout
        while simulator.webhookReplyCount - baseline < total && LoadDriver.seconds() < end { usleep(2000) }
        var latencies: [Double] = []
        for reply in simulator.webhookReplies(app: app) where reply.errcode == 0 {
            guard let msgId = reply.msgId, let sent = pushedAt.removeValue(forKey: msgId) else { continue }
            latencies.append(reply.time.timeIntervalSince(sent))
        }
        latencies.sort()
        var result = ReplyResult(replied: latencies.count, offered: total, missing: total - latencies.count)
        result.p50 = Bench.percentile(latencies, 0.50)
        result.p99 = Bench.percentile(latencies, 0.99)
        result.maximum = latencies.last ?? .nan
        result.samples = latencies.count
        return result
    }
}

extension Bench {
    /// The three ways to answer a message, one after the other against the same simulator:
    /// the daemon with an HTTP handler, the daemon with a script handler, and the peer SDK
    /// replying from its own callback (when a peer command is given).
    static func measureReplies(_ simulator: DingTalkSimulator, _ options: BenchOptions) async throws -> [(String, ReplyResult)] {
        var results: [(String, ReplyResult)] = []
        var leftovers: [String] = []
        defer { for path in leftovers { try? FileManager.default.removeItem(atPath: path) } }
        do {
            results.append(("http handler", try await measureHTTPHandler(simulator, options, leftovers: &leftovers)))
        } catch {
            say("http handler: not measured: \(error)")
        }
        do {
            results.append(("script handler", try await measureScriptHandler(simulator, options, leftovers: &leftovers)))
        } catch {
            say("script handler: not measured: \(error)")
        }
        if let command = options.peerCommand {
            do {
                results.append((options.peerName, try await measurePeerReplies(simulator, command: command, options)))
            } catch {
                say("\(options.peerName) replying: not measured: \(error)")
            }
        }
        return results
    }

    /// The daemon POSTing each message to the example HTTP-mode server in `etc/` (Python's
    /// standard library, signature checked, kept-alive connections), whose answer is the reply.
    static func measureHTTPHandler(_ simulator: DingTalkSimulator, _ options: BenchOptions, leftovers: inout [String]) async throws -> ReplyResult {
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        server.arguments = ["python3", options.httpServerScript, "0"]
        var environment = ProcessInfo.processInfo.environment
        environment["DINGTALK_APP_SECRET"] = "secret-http"
        server.environment = environment
        let output = Pipe()
        server.standardOutput = output
        server.standardError = FileHandle.nullDevice
        try server.run()
        defer { killPeer(server) }
        let port = try await onOwnThread { try readPort(output.fileHandleForReading) }
        say("http handler: \(options.httpServerScript) listening on 127.0.0.1:\(port)")
        let root = NSTemporaryDirectory() + "dingstream-bench-http-\(UUID().uuidString.prefix(8))"
        leftovers.append(root)
        let daemon = try startDaemon(
            root: root, simulator: simulator, options, apps: ["http"], appSettings: "http_handler = \"http://127.0.0.1:\(port)/dingtalk\"\n")
        defer { stop(daemon) }
        return try await measureReplying(simulator, app: "http", options)
    }

    /// The daemon running a `#!/bin/sh` handler that prints the reply, a fork and exec per message.
    static func measureScriptHandler(_ simulator: DingTalkSimulator, _ options: BenchOptions, leftovers: inout [String]) async throws -> ReplyResult {
        let root = NSTemporaryDirectory() + "dingstream-bench-script-\(UUID().uuidString.prefix(8))"
        leftovers.append(root)
        try FileManager.default.createDirectory(atPath: root + "/spool/handlers", withIntermediateDirectories: true)
        let handler = root + "/spool/handlers/10-reply"
        try Data("#!/bin/sh\nprintf '%s said: %s\\n' \"$DINGSTREAM_SENDER_NICK\" \"$DINGSTREAM_TEXT\"\n".utf8)
            .write(to: URL(fileURLWithPath: handler))
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: handler)
        let daemon = try startDaemon(root: root, simulator: simulator, options, apps: ["script"])
        defer { stop(daemon) }
        return try await measureReplying(simulator, app: "script", options)
    }

    static func measurePeerReplies(_ simulator: DingTalkSimulator, command: String, _ options: BenchOptions) async throws -> ReplyResult {
        let process = try startPeer(simulator, command: command + " reply")
        defer { killPeer(process) }
        try await simulator.waitUntil(timeout: .seconds(30), "a live peer socket") { $0.liveSockets(app: "peer").count >= 1 }
        return try await measureReplying(simulator, app: "peer", options)
    }

    /// Warm-up, the paced run for the percentiles, then the burst for messages per second.
    static func measureReplying(_ simulator: DingTalkSimulator, app: String, _ options: BenchOptions) async throws -> ReplyResult {
        try await simulator.waitUntil(timeout: .seconds(30), "a live \(app) socket") { !$0.liveSockets(app: app).isEmpty }
        let driver = ReplyDriver(simulator: simulator, app: app)
        say("\(app): replies, warm-up")
        _ = try await onOwnThread { try driver.burst(count: options.replyWarmup, window: options.replyWindow, timeout: 60) }
        say("\(app): replies, \(options.replyRate) msgs/s for \(options.replySeconds) s")
        let paced = try await onOwnThread { try driver.paced(rate: options.replyRate, seconds: options.replySeconds, timeout: 60) }
        say("\(app): replies, burst of \(options.replyMessages) with \(options.replyWindow) waiting for a reply")
        var result = try await onOwnThread { try driver.burst(count: options.replyMessages, window: options.replyWindow, timeout: options.timeout) }
        result.p50 = paced.p50
        result.p99 = paced.p99
        result.maximum = paced.maximum
        result.samples = paced.samples
        result.missing += paced.missing
        return result
    }

    /// The first line a server prints: the port it listens on.
    static func readPort(_ handle: FileHandle) throws -> Int {
        var line = Data()
        while !line.contains(UInt8(ascii: "\n")) {
            let chunk = handle.availableData
            guard !chunk.isEmpty else { break }
            line.append(chunk)
        }
        let text = String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard let port = Int(text) else {
            throw BenchOptions.Invalid(description: "the HTTP server printed \"\(text)\" instead of its port; is python3 installed?")
        }
        return port
    }

    static func printReplyTable(_ results: [(String, ReplyResult)], _ options: BenchOptions) {
        func number(_ value: Double, _ digits: Int) -> String {
            value.isFinite ? String(format: "%.\(digits)f", value) : "-"
        }
        let metrics: [(String, (ReplyResult) -> Double, Int)] = [
            ("replied msgs/s, \(options.replyMessages) in a burst", { $0.throughput }, 0),
            ("message to reply p50 (ms), \(options.replyRate)/s", { $0.p50 * 1000 }, 2),
            ("message to reply p99 (ms), \(options.replyRate)/s", { $0.p99 * 1000 }, 2),
            ("message to reply max (ms), \(options.replyRate)/s", { $0.maximum * 1000 }, 2),
        ]
        let header = ["end to end: message in, reply delivered"] + results.map(\.0)
        var lines = [header]
        for (name, value, digits) in metrics {
            lines.append([name] + results.map { number(value($0.1), digits) })
        }
        sayColumns(lines)
        say("from the push of a bot message (each its own conversation) to the simulator recording the reply")
        say("at the session webhook. The daemon acks once the message is durable, runs the handler, and")
        say("delivers the reply from its outbox; the SDK replies inside its callback, then acks.")
        for (name, result) in results {
            say("\(name): \(result.replied) of \(result.offered) burst messages replied to in \(number(result.elapsed, 2)) s; \(result.samples) latency samples; \(result.missing) replies missing")
        }
        guard let http = results.first(where: { $0.0 == "http handler" })?.1,
            let peer = results.first(where: { $0.0 == options.peerName })?.1
        else { return }
        let throughputMet = http.throughput >= peer.throughput
        let latencyMet = http.p50 <= peer.p50
        say("target, http handler vs \(options.peerName): msgs/s at least the same \(throughputMet ? "met" : "missed"); p50 at most the same \(latencyMet ? "met" : "missed")")
    }
}

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
    /// Each round's result, in order, when this is their median.
    var rounds: [ReplyResult] = []

    /// Replies per second in the burst (for a median of rounds, the median round's).
    var throughput: Double { rounds.isEmpty ? (elapsed > 0 ? Double(replied) / elapsed : .nan) : Self.median(rounds.map(\.throughput)) }

    /// Per metric the median of the rounds (p50, p99, replies per second), the largest maximum,
    /// and the counts summed.
    static func median(of rounds: [ReplyResult]) -> ReplyResult {
        var result = ReplyResult()
        result.replied = rounds.map(\.replied).reduce(0, +)
        result.offered = rounds.map(\.offered).reduce(0, +)
        result.elapsed = rounds.map(\.elapsed).reduce(0, +)
        result.p50 = median(rounds.map(\.p50))
        result.p99 = median(rounds.map(\.p99))
        result.maximum = rounds.map(\.maximum).max() ?? .nan
        result.samples = rounds.map(\.samples).reduce(0, +)
        result.missing = rounds.map(\.missing).reduce(0, +)
        result.rounds = rounds
        return result
    }

    /// The middle value; of an even count, the mean of the two middle ones.
    static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return .nan }
        let middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    }
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
    /// `timeout` s more). Returns the message-to-reply times (s) and how many were pushed.
    func paced(rate: Int, seconds: Double, timeout: Double) throws -> (latencies: [Double], pushed: Int) {
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
        return (latencies, total)
    }
}

extension ReplyResult {
    /// The percentiles of message-to-reply times (s) pushed at a steady pace.
    init(paced latencies: [Double], pushed: Int) {
        let sorted = latencies.sorted()
        self.init(missing: pushed - sorted.count)
        p50 = Bench.percentile(sorted, 0.50)
        p99 = Bench.percentile(sorted, 0.99)
        maximum = sorted.last ?? .nan
        samples = sorted.count
    }
}

/// One way of answering messages, running for all rounds of the reply bench.
struct ReplySubject {
    let name: String
    let app: String
    let stop: () -> Void
}

extension Bench {
    /// The three ways to answer a message against the same simulator: the daemon with an HTTP
    /// handler, the daemon with a script handler, and the peer SDK replying from its own callback
    /// (when a peer command is given). All three run throughout. Each round takes their paced
    /// times in slices that alternate between them (`pacedInSlices`), then each one's burst, one
    /// after the other; each subject's result holds the median of its rounds (`ReplyResult.median`).
    static func measureReplies(_ simulator: DingTalkSimulator, _ options: BenchOptions) async throws -> [(String, ReplyResult)] {
        var subjects: [ReplySubject] = []
        var leftovers: [String] = []
        defer {
            for subject in subjects { subject.stop() }
            for path in leftovers { try? FileManager.default.removeItem(atPath: path) }
        }
        do {
            subjects.append(try await startHTTPHandler(simulator, options, leftovers: &leftovers))
        } catch {
            say("http handler: not measured: \(error)")
        }
        do {
            subjects.append(try startScriptHandler(simulator, options, leftovers: &leftovers))
        } catch {
            say("script handler: not measured: \(error)")
        }
        if let command = options.peerCommand {
            do {
                subjects.append(try startPeerReplies(simulator, command: command, options))
            } catch {
                say("\(options.peerName) replying: not measured: \(error)")
            }
        }
        var ready: [ReplySubject] = []
        for subject in subjects {
            do {
                let app = subject.app
                try await simulator.waitUntil(timeout: .seconds(30), "a live \(app) socket") { !$0.liveSockets(app: app).isEmpty }
                say("\(subject.app): replies, warm-up")
                let driver = ReplyDriver(simulator: simulator, app: subject.app)
                _ = try await onOwnThread { try driver.burst(count: options.replyWarmup, window: options.replyWindow, timeout: 60) }
                ready.append(subject)
            } catch {
                say("\(subject.name): not measured: \(error)")
            }
        }
        var rounds: [String: [ReplyResult]] = [:]
        for round in 1...options.replyRounds {
            let label = "round \(round) of \(options.replyRounds)"
            let paced: [String: ReplyResult]
            do {
                paced = try await pacedInSlices(simulator, ready, options, label: label)
            } catch {
                say("replies: \(label) not measured: \(error)")
                continue
            }
            for subject in ready {
                do {
                    say("\(subject.app): replies, \(label), burst of \(options.replyMessages) with \(options.replyWindow) waiting for a reply")
                    let driver = ReplyDriver(simulator: simulator, app: subject.app)
                    var result = try await onOwnThread { try driver.burst(count: options.replyMessages, window: options.replyWindow, timeout: options.timeout) }
                    if let times = paced[subject.name] {
                        result.p50 = times.p50
                        result.p99 = times.p99
                        result.maximum = times.maximum
                        result.samples = times.samples
                        result.missing += times.missing
                    }
                    rounds[subject.name, default: []].append(result)
                } catch {
                    say("\(subject.name): \(label) not measured: \(error)")
                }
            }
        }
        return ready.compactMap { subject in rounds[subject.name].map { (subject.name, ReplyResult.median(of: $0)) } }
    }

    /// The paced phase of a round: `replySeconds` per subject at `replyRate`, cut into
    /// `replySlices` slices that take turns between the subjects (who goes first rotates), so
    /// that the machine's slow seconds fall on all of them alike. The percentiles of each
    /// subject are over all its slices.
    static func pacedInSlices(
        _ simulator: DingTalkSimulator, _ subjects: [ReplySubject], _ options: BenchOptions, label: String
    ) async throws -> [String: ReplyResult] {
        let slices = options.replySlices
        let seconds = options.replySeconds / Double(slices)
        say("replies, \(label): \(options.replyRate) msgs/s for \(options.replySeconds) s each, in \(slices) alternating slices")
        var latencies: [String: [Double]] = [:]
        var pushed: [String: Int] = [:]
        for slice in 0..<slices {
            for index in subjects.indices {
                let subject = subjects[(index + slice) % subjects.count]
                let driver = ReplyDriver(simulator: simulator, app: subject.app)
                let times = try await onOwnThread { try driver.paced(rate: options.replyRate, seconds: seconds, timeout: 60) }
                latencies[subject.name, default: []] += times.latencies
                pushed[subject.name, default: 0] += times.pushed
            }
        }
        return Dictionary(uniqueKeysWithValues: latencies.map { name, times in (name, ReplyResult(paced: times, pushed: pushed[name] ?? 0)) })
    }

    /// The daemon POSTing each message to the example HTTP-mode server in `etc/` (Python's
    /// standard library, signature checked, kept-alive connections), whose answer is the reply.
    static func startHTTPHandler(_ simulator: DingTalkSimulator, _ options: BenchOptions, leftovers: inout [String]) async throws -> ReplySubject {
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
        do {
            let port = try await onOwnThread { try readPort(output.fileHandleForReading) }
            say("http handler: \(options.httpServerScript) listening on 127.0.0.1:\(port)")
            let root = NSTemporaryDirectory() + "dingstream-bench-http-\(UUID().uuidString.prefix(8))"
            leftovers.append(root)
            let daemon = try startDaemon(
                root: root, simulator: simulator, options, apps: ["http"], appSettings: "http_handler = \"http://127.0.0.1:\(port)/dingtalk\"\n")
            return ReplySubject(name: "http handler", app: "http") {
                stop(daemon)
                killPeer(server)
            }
        } catch {
            killPeer(server)
            throw error
        }
    }

    /// The daemon running a `#!/bin/sh` handler that prints the reply, a fork and exec per message.
    static func startScriptHandler(_ simulator: DingTalkSimulator, _ options: BenchOptions, leftovers: inout [String]) throws -> ReplySubject {
        let root = NSTemporaryDirectory() + "dingstream-bench-script-\(UUID().uuidString.prefix(8))"
        leftovers.append(root)
        try FileManager.default.createDirectory(atPath: root + "/spool/handlers", withIntermediateDirectories: true)
        let handler = root + "/spool/handlers/10-reply"
        try Data("#!/bin/sh\nprintf '%s said: %s\\n' \"$DINGSTREAM_SENDER_NICK\" \"$DINGSTREAM_TEXT\"\n".utf8)
            .write(to: URL(fileURLWithPath: handler))
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: handler)
        let daemon = try startDaemon(root: root, simulator: simulator, options, apps: ["script"])
        return ReplySubject(name: "script handler", app: "script") { stop(daemon) }
    }

    static func startPeerReplies(_ simulator: DingTalkSimulator, command: String, _ options: BenchOptions) throws -> ReplySubject {
        let process = try startPeer(simulator, command: command + " reply")
        return ReplySubject(name: options.peerName, app: "peer") { killPeer(process) }
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
        let rounds = options.replyRounds
        let of = rounds == 1 ? "" : ", median of \(rounds)"
        let metrics: [(String, (ReplyResult) -> Double, Int)] = [
            ("replied msgs/s, \(options.replyMessages) in a burst\(of)", { $0.throughput }, 0),
            ("message to reply p50 (ms), \(options.replyRate)/s\(of)", { $0.p50 * 1000 }, 2),
            ("message to reply p99 (ms), \(options.replyRate)/s\(of)", { $0.p99 * 1000 }, 2),
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
        say("Paced times are taken in \(options.replySlices) slices per round that take turns between the subjects,")
        say("so that a slow second of the machine falls on all of them alike.")
        if rounds > 1 {
            say("\(rounds) rounds, each with its paced slices and then every subject's burst: a median of the")
            say("rounds per metric, so that neither side is decided by one slow minute of the machine.")
        }
        for (name, result) in results {
            say("\(name): \(result.replied) of \(result.offered) burst messages replied to in \(number(result.elapsed, 2)) s; \(result.samples) latency samples; \(result.missing) replies missing")
            if rounds > 1 {
                let each = result.rounds.map { "\(number($0.p50 * 1000, 2)) / \(number($0.p99 * 1000, 2)) ms, \(number($0.throughput, 0))/s" }
                say("  rounds (p50 / p99, burst): \(each.joined(separator: "; "))")
            }
        }
        guard let http = results.first(where: { $0.0 == "http handler" })?.1,
            let peer = results.first(where: { $0.0 == options.peerName })?.1
        else { return }
        let throughputMet = http.throughput >= peer.throughput
        let latencyMet = http.p50 <= peer.p50
        say(
            "target, http handler vs \(options.peerName)\(of): msgs/s at least the same \(throughputMet ? "met" : "missed")"
                + " (\(String(format: "%.2f", http.throughput / peer.throughput))x); p50 at most the same \(latencyMet ? "met" : "missed")"
                + " (\(String(format: "%.2f", http.p50 / peer.p50))x)")
    }
}

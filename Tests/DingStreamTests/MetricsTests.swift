import AsyncHTTPClient
import DingStream
import Foundation
import NIOCore
import NIOHTTP1
import Simulator
import Synchronization
import Testing

@Suite("Prometheus metrics")
struct MetricsTests {
    /// A daemon against the simulator, scraped over loopback before and after traffic: each
    /// series must move by exactly what the traffic did.
    @Test(.timeLimit(.minutes(2)))
    func seriesFollowTheTraffic() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        try harness.addHandler(
            "10-echo", "#!/bin/sh\ncase \"$DINGSTREAM_TEXT\" in fail*) echo broken >&2; exit 3;; esac\nprintf 'echo: %s' \"$DINGSTREAM_TEXT\"\n")
        var simulatorConfiguration = SimulatorConfiguration.single("helpdesk")
        simulatorConfiguration.pingInterval = .milliseconds(200)
        let file = harness.root + "/dingstream.prom"
        try await DingTalkSimulator.withRunning(simulatorConfiguration) { simulator in
            var configuration = harness.configuration(for: simulator)
            configuration.apps[0].allowedUsers = ["0423297"]
            configuration.metricsListen = MetricsAddress(host: "127.0.0.1", port: 0)
            configuration.metricsFile = file
            let port = Mutex<Int?>(nil)
            try await harness.withDaemon(configuration, onMetricsListening: { bound in port.withLock { $0 = bound } }) {
                try await simulator.waitUntil(timeout: .seconds(10), "two live sockets") { $0.liveSockets(app: "helpdesk").count == 2 }
                try await harness.waitFor("the metrics listener", timeout: .seconds(10)) { port.withLock { $0 } != nil }
                let scraper = Scraper(port: try #require(port.withLock { $0 }))
                let before = try await scraper.scrape { $0[.socketsLive] == 2 }
                // A registry of this daemon's own: nothing counted by other daemons of this process.
                #expect(before[.received, kind: "bot"] == 0)
                #expect(before[.socketsWanted] == 2)
                #expect(before[.withoutSocket] == 0)

                // A reply throttled once on the webhook, then delivered there.
                try simulator.apply(.http(endpoint: .webhook, failure: .throttle, count: 1))
                let hello = try simulator.injectText("hello", app: "helpdesk")
                try await simulator.waitUntil(timeout: .seconds(20), "the throttled reply") { sim in
                    sim.webhookReplies(app: "helpdesk").contains { $0.body.contains("echo: hello") && $0.errcode == 0 }
                }
                // A redelivery, a failing handler, a sender not allowed, and a reply after the
                // webhook expired (through batchSend, with a token).
                _ = try simulator.redeliver(hello)
                _ = try simulator.injectText("fail now", app: "helpdesk")
                _ = try simulator.injectText("let me in", app: "helpdesk", sender: "intruder")
                let late = try simulator.injectText("late", app: "helpdesk")
                simulator.expireWebhook(late)
                try await simulator.waitUntil(timeout: .seconds(20), "the reply through batchSend") { sim in
                    sim.openAPISends(app: "helpdesk").contains { $0.endpoint == .batchSend && $0.body.contains("echo: late") }
                }
                let after = try await scraper.scrape { $0[.spoolEntries, state: "done"] == 3 && $0[.spoolEntries, state: "failed"] == 1 }
                func moved(_ name: Series, _ labels: [String: String] = [:]) -> Double? {
                    guard let now = after[name, labels], let then = before[name, labels] else { return nil }
                    return now - then
                }
                #expect(moved(.received, ["kind": "bot"]) == 5)
                #expect(moved(.stored, ["kind": "bot"]) == 4)
                #expect(moved(.duplicates, ["kind": "bot"]) == 1)
                #expect(moved(.refused, ["kind": "bot", "reason": "not_allowed"]) == 1)
                #expect(moved(.refused, ["kind": "bot", "reason": "store_failed"]) == 0)
                #expect(moved(.ackLatencyCount) == 5)
                #expect(moved(.handlerRuns, ["result": "ok"]) == 2)
                #expect(moved(.handlerRuns, ["result": "failed"]) == 1)
                #expect(moved(.handlerDurationCount) == 3)
                #expect(moved(.replies, ["path": "webhook", "result": "throttled"]) == 1)
                #expect(moved(.replies, ["path": "webhook", "result": "ok"]) == 1)
                #expect(moved(.replies, ["path": "webhook", "result": "refused"]) == 1)
                #expect(moved(.replies, ["path": "batchSend", "result": "ok"]) == 1)
                #expect(moved(.replies, ["path": "groupSend", "result": "ok"]) == 0)
                #expect(moved(.deadLetters, ["reason": "handler"]) == 1)
                #expect(moved(.deadLetters, ["reason": "reply"]) == 0)
                #expect(moved(.tokenRefreshes, ["result": "ok"]) == 1)
                #expect((moved(.commitCount) ?? 0) >= 1)

                // Every socket killed while registration fails: the outage shows, then ends.
                try simulator.apply(.http(endpoint: .registration, failure: .serverError(status: 503), count: 10_000))
                try simulator.disconnect(app: "helpdesk", mode: .abruptClose)
                // Scraped once a reconnect has failed: the first one waits up to a backoff of 1 s.
                let outage = try await scraper.scrape { $0[.socketsLive] == 0 && ($0[.connectFailures] ?? 0) >= 1 }
                #expect((outage[.withoutSocket] ?? 0) > 0)
                #expect(outage[.replacements, reason: "closed"].map { $0 - (before[.replacements, reason: "closed"] ?? 0) } == 2)
                try simulator.apply(.clearHTTPFaults(endpoint: .registration))
                let recovered = try await scraper.scrape(timeout: .seconds(60)) { $0[.socketsLive] == 2 }
                #expect(recovered[.withoutSocket] == 0)
                #expect(recovered[.replacements, reason: "deaf"] == 0)

                // Only GET /metrics is served.
                #expect(try await scraper.status(of: "/nothing") == 404)
                #expect(try await scraper.contentType() == "text/plain; version=0.0.4; charset=utf-8")
            }
        }
        // The textfile was written once more at the stop, whole, readable by node_exporter.
        let text = try String(contentsOfFile: file, encoding: .utf8)
        let final = Scrape(text)
        #expect(final[.stored, kind: "bot"] == 4)
        #expect(final[.spoolEntries, state: "done"] == 3)
        let mode = try FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? Int
        #expect(mode == 0o644)
        #expect(try FileManager.default.contentsOfDirectory(atPath: harness.root).filter { $0.hasSuffix(".tmp") }.isEmpty)
    }

    @Test(.timeLimit(.minutes(1)))
    func listenAddressRule() throws {
        func parse(_ text: String) -> MetricsAddress? { try? MetricsAddress.parse(text).get() }
        #expect(parse("127.0.0.1:9464") == MetricsAddress(host: "127.0.0.1", port: 9464))
        #expect(parse("9464") == MetricsAddress(host: "127.0.0.1", port: 9464))
        #expect(parse(":9464") == MetricsAddress(host: "127.0.0.1", port: 9464))
        #expect(parse("localhost:9464") == MetricsAddress(host: "127.0.0.1", port: 9464))
        #expect(parse("[::1]:9464")?.isLoopback == true)
        // Off loopback only when written as an address.
        #expect(parse("0.0.0.0:9464")?.isLoopback == false)
        #expect(parse("[::]:9464")?.isLoopback == false)
        #expect(parse("metrics.example.com:9464") == nil)
        #expect(parse("::1:9464") == nil)
        #expect(parse("127.0.0.1:99999") == nil)
        #expect(parse("127.0.0.1") == nil)

        let base = "spool_dir = \"/tmp/x\"\n[[app]]\nname = \"a\"\nclient_id = \"id\"\nclient_secret = \"s\"\n"
        func load(_ lines: String) throws -> Configuration {
            try Configuration.parse(lines + base, file: "test.toml", environment: [:])
        }
        #expect(try load("").metricsListen == nil)
        #expect(try load("metrics_listen = \"9464\"\n").metricsListen == MetricsAddress(host: "127.0.0.1", port: 9464))
        #expect(try load("metrics_file = \"/var/lib/node/dingstream.prom\"\n").metricsFile == "/var/lib/node/dingstream.prom")
        let refused = #expect(throws: ConfigurationError.self) { try load("metrics_listen = \"metrics.example.com:9464\"\n") }
        #expect(refused?.line == 1)
        #expect(refused?.message.contains("not an IP address") == true)
        #expect(throws: ConfigurationError.self) { try load("metrics_file = \"dingstream.txt\"\n") }
    }
}

/// The series the test reads, by name.
enum Series: String {
    case received = "dingstream_messages_received_total"
    case stored = "dingstream_messages_stored_total"
    case duplicates = "dingstream_messages_duplicates_total"
    case refused = "dingstream_messages_refused_total"
    case ackLatencyCount = "dingstream_ack_latency_seconds_count"
    case socketsLive = "dingstream_sockets_live"
    case socketsWanted = "dingstream_sockets_wanted"
    case withoutSocket = "dingstream_no_live_socket_seconds"
    case replacements = "dingstream_socket_replacements_total"
    case connectFailures = "dingstream_socket_connect_failures_total"
    case spoolEntries = "dingstream_spool_entries"
    case commitCount = "dingstream_store_commit_seconds_count"
    case handlerRuns = "dingstream_handler_runs_total"
    case handlerDurationCount = "dingstream_handler_duration_seconds_count"
    case replies = "dingstream_replies_total"
    case deadLetters = "dingstream_dead_letters_total"
    case tokenRefreshes = "dingstream_token_refreshes_total"
}

/// One exposition in the Prometheus text format, as values by name and label set. Series of
/// the test's app are read without naming it.
struct Scrape {
    var values: [String: Double] = [:]
    var text: String

    init(_ text: String) {
        self.text = text
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            let series = line[..<space]
            var labels: [String: String] = [:]
            var name = String(series)
            if let open = series.firstIndex(of: "{"), series.hasSuffix("}") {
                name = String(series[..<open])
                // Label values here never hold commas or quotes.
                for pair in series[series.index(after: open)..<series.index(before: series.endIndex)].split(separator: ",") {
                    let parts = pair.split(separator: "=", maxSplits: 1)
                    guard parts.count == 2 else { continue }
                    labels[String(parts[0])] = String(parts[1].dropFirst().dropLast())
                }
            }
            values[Self.key(name, labels)] = value
        }
    }

    static func key(_ name: String, _ labels: [String: String]) -> String {
        name + "{" + labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",") + "}"
    }

    subscript(_ series: Series, _ labels: [String: String]) -> Double? {
        var labels = labels
        if series != .spoolEntries, series != .commitCount { labels["app"] = "helpdesk" }
        return values[Self.key(series.rawValue, labels)]
    }

    subscript(_ series: Series) -> Double? { self[series, [:]] }
    subscript(_ series: Series, kind kind: String) -> Double? { self[series, ["kind": kind]] }
    subscript(_ series: Series, state state: String) -> Double? { self[series, ["state": state]] }
    subscript(_ series: Series, reason reason: String) -> Double? { self[series, ["reason": reason]] }
}

/// Scrapes the daemon's `/metrics` over loopback.
struct Scraper {
    let port: Int

    /// The answer and its whole body, read so that every request ends normally, not by cancellation.
    private func get(_ path: String) async throws -> (response: HTTPClientResponse, body: ByteBuffer) {
        let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: "http://127.0.0.1:\(port)\(path)"), timeout: .seconds(5))
        return (response, try await response.body.collect(upTo: 1 << 20))
    }

    /// Scrapes until `condition` holds (gauges follow state a moment later), then returns that scrape.
    func scrape(timeout: Duration = .seconds(20), until condition: (Scrape) -> Bool = { _ in true }) async throws -> Scrape {
        let deadline = ContinuousClock.now + timeout
        while true {
            let (response, body) = try await get("/metrics")
            let scrape = Scrape(String(buffer: body))
            if response.status == .ok, condition(scrape) { return scrape }
            if ContinuousClock.now > deadline {
                Issue.record("no scrape met the condition within \(timeout); the last one:\n\(scrape.text)")
                throw HarnessTimeout(what: "a scrape meeting the condition")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    func status(of path: String) async throws -> UInt {
        UInt(try await get(path).response.status.code)
    }

    func contentType() async throws -> String? {
        try await get("/metrics").response.headers.first(name: "Content-Type")
    }
}

import Foundation
import Simulator
import Spool
import StreamProtocol
import Synchronization
import Testing

@testable import DingStream

/// `http_handler` through the whole daemon: real sockets to the simulator, and a real HTTP server
/// (Python's standard library) that checks the signature as a DingTalk HTTP-mode bot does.
@Suite("HTTP handlers", .serialized)
struct HTTPHandlerTests {
    static let package = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// A bot server for these tests. It refuses a bad signature with 401, logs each request it
    /// accepts as a JSON line to $LOG, and answers by the message text: "flaky" 503 on its first
    /// try, "bad" 400, a card callback a card update, "order…" nothing after 50 ms (counting requests in flight at once),
    /// "huge" 2 MiB, "hang" nothing for 45 s, anything else a text reply "http: <text>".
    static let testServer = #"""
        import base64, hashlib, hmac, json, os, sys, threading, time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        SECRET = os.environ["SECRET"]
        LOG = os.environ["LOG"]
        lock = threading.Lock()
        state = {"flaky": 0, "inflight": 0, "max": 0}
        def record(entry):
            with lock, open(LOG, "a") as f:
                f.write(json.dumps(entry) + "\n")
        class Bot(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ts = self.headers.get("timestamp", "")
                want = base64.b64encode(hmac.new(SECRET.encode(), (ts + "\n" + SECRET).encode(), hashlib.sha256).digest()).decode()
                if not hmac.compare_digest(want, self.headers.get("sign", "")):
                    return self.answer(401, b"bad signature")
                message = json.loads(body)
                text = message.get("text", {}).get("content", "")
                with lock:
                    state["inflight"] += 1
                    state["max"] = max(state["max"], state["inflight"])
                record({"text": text, "conversation": message.get("conversationId"), "kind": self.headers.get("X-Dingstream-Kind"),
                        "type": self.headers.get("Content-Type"), "attempt": self.headers.get("X-Dingstream-Attempt"),
                        "port": self.client_address[1], "max": state["max"]})
                try:
                    if self.headers.get("X-Dingstream-Kind") == "card":
                        return self.answer(200, b'{"cardData":{"cardParamMap":{"status":"done"}}}')
                    if text == "flaky":
                        with lock:
                            state["flaky"] += 1
                            first = state["flaky"] == 1
                        return self.answer(503, b"warming up") if first else self.answer(200, b"worked after 503")
                    if text == "bad":
                        return self.answer(400, b"unknown command: bad")
                    if text == "huge":
                        return self.answer(200, b"x" * (2 << 20))
                    if text == "hang":
                        time.sleep(45)
                        return self.answer(200, b"")
                    if text.startswith("order"):
                        time.sleep(0.05)
                        return self.answer(200, b"")
                    self.answer(200, json.dumps({"msgtype": "text", "text": {"content": "http: " + text}}).encode())
                finally:
                    with lock:
                        state["inflight"] -= 1
            def answer(self, status, data):
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            def log_message(self, *args):
                pass
        server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Bot)
        print(server.server_address[1], flush=True)
        server.serve_forever()
        """#

    /// A Python server started from `script`, stopped by `stop()`. Unchecked: the process is
    /// started in `init` and only terminated afterwards.
    final class PythonServer: @unchecked Sendable {
        let process: Process
        let port: Int

        init(script: String, port: Int = 0, environment: [String: String]) throws {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["python3", script, String(port)]
            process.environment = environment.merging(["PATH": "/usr/local/bin:/usr/bin:/bin"]) { a, _ in a }
            let output = Pipe()
            process.standardOutput = output
            try process.run()
            // The first line is the port it listens on, printed once it does.
            var text = ""
            while !text.contains("\n") {
                let data = output.fileHandleForReading.availableData
                guard !data.isEmpty else { throw ServerDidNotStart(script: script) }
                text += String(decoding: data, as: UTF8.self)
            }
            self.process = process
            self.port = Int(text.split(separator: "\n")[0]) ?? 0
        }

        /// SIGKILL: the daemon under test ignores SIGTERM (it traps it), and so do the
        /// processes this one starts after it, which inherit that.
        func stop() {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    struct ServerDidNotStart: Error {
        var script: String
    }

    /// The test server's script and request log, in a folder of their own.
    struct BotServerFiles {
        let directory: String
        var script: String { directory + "/bot.py" }
        var log: String { directory + "/requests" }

        init() throws {
            directory = FileManager.default.temporaryDirectory.appendingPathComponent("dingstream-bot-\(UUID().uuidString.prefix(8))").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try HTTPHandlerTests.testServer.write(toFile: script, atomically: true, encoding: .utf8)
        }

        func start(secret: String = HTTPHandlerTests.secret, port: Int = 0) throws -> PythonServer {
            try PythonServer(script: script, port: port, environment: ["SECRET": secret, "LOG": log])
        }

        /// What the server logged, one object per request.
        func requests() -> [[String: Any]] {
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            return text.split(separator: "\n").compactMap { JSON.object(String($0)) }
        }

        func remove() {
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    static let secret = SimulatorConfiguration.single("helpdesk").apps[0].clientSecret

    static func replyTexts(_ simulator: DingTalkSimulator, to message: InjectedMessage) -> [String] {
        simulator.webhookReplies(app: message.app).filter { $0.msgId == message.msgId }.compactMap { record in
            guard let body = JSON.object(record.body) else { return nil }
            if let text = body["text"] as? [String: Any] { return text["content"] as? String }
            if let markdown = body["markdown"] as? [String: Any] { return markdown["text"] as? String }
            return nil
        }
    }

    /// App "helpdesk" with `url` as its http_handler and one script after it, which appends
    /// "script <text>" to the file `order` and replies "from script".
    static func withDaemon(
        handlerURL url: String, connections: Int = 2, configure: (inout Configuration) -> Void = { _ in },
        _ body: @Sendable (DaemonHarness, DingTalkSimulator, LogCapture) async throws -> Void
    ) async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        try harness.addHandler("10-script", "#!/bin/sh\ncat >/dev/null\necho \"script $DINGSTREAM_TEXT\" >> \(harness.root)/order\necho \"from script\"\n")
        try await DingTalkSimulator.withRunning(.single("helpdesk")) { simulator in
            var configuration = harness.configuration(for: simulator, connections: connections)
            configuration.apps[0].httpHandler = .init(url: url)
            configure(&configuration)
            let logs = LogCapture()
            try await harness.withDaemon(configuration, logs: logs) {
                try await simulator.waitUntil(timeout: .seconds(15), "live sockets") { $0.liveSockets(app: "helpdesk").count == connections }
                try await body(harness, simulator, logs)
            }
        }
    }

    /// `withDaemon` whose `http_handler` is a bot server of `BotServerFiles` started for the test.
    static func withBotServer(
        connections: Int = 2, configure: (inout Configuration) -> Void = { _ in },
        _ body: @Sendable (BotServerFiles, DaemonHarness, DingTalkSimulator, LogCapture) async throws -> Void
    ) async throws {
        let files = try BotServerFiles()
        defer { files.remove() }
        let server = try files.start()
        defer { server.stop() }
        try await withDaemon(handlerURL: "http://127.0.0.1:\(server.port)/dingtalk", connections: connections, configure: configure) {
            try await body(files, $0, $1, $2)
        }
    }

    /// The example in etc/ accepts the daemon's signature, its markdown answer reaches the user
    /// through the session webhook, and the script in handlers/ runs after it for the same message.
    @Test(.timeLimit(.minutes(1)))
    func exampleServerAcceptsTheSignatureAndItsReplyReachesTheUser() async throws {
        let server = try PythonServer(script: Self.package.path + "/etc/http-handler-example.py", environment: ["DINGTALK_APP_SECRET": Self.secret])
        defer { server.stop() }
        try await Self.withDaemon(handlerURL: "http://127.0.0.1:\(server.port)/dingtalk") { harness, simulator, _ in
            let message = try simulator.injectText("hello there", app: "helpdesk")
            try await harness.waitFor("the entry done") { harness.entries(in: "done").count == 1 }
            try await simulator.waitUntil(timeout: .seconds(10), "both replies") { _ in Self.replyTexts(simulator, to: message).count == 2 }
            // The HTTP handler's reply first, then the script's: their order of running.
            #expect(Self.replyTexts(simulator, to: message) == ["**Zhang San** said: hello there", "from script"])
            #expect(harness.lines(of: "order") == ["script hello there"])
        }
    }

    /// The same server with another secret refuses the signature (401), a dead letter that says so.
    @Test(.timeLimit(.minutes(1)))
    func wrongSecretIsRefusedAndDeadLettered() async throws {
        let server = try PythonServer(script: Self.package.path + "/etc/http-handler-example.py", environment: ["DINGTALK_APP_SECRET": "not-the-secret"])
        defer { server.stop() }
        try await Self.withDaemon(handlerURL: "http://127.0.0.1:\(server.port)/dingtalk") { harness, simulator, _ in
            let message = try simulator.injectText("hello", app: "helpdesk")
            try await harness.waitFor("a dead letter") { harness.entries(in: "failed").count == 1 }
            let failed = try #require(harness.entries(in: "failed").first)
            let reason = try #require(try SpoolInspector(directory: harness.spool).show(failed).reason)
            #expect(reason.contains("status: answered 401 Unauthorized"))
            #expect(reason.contains("bad signature"))
            #expect(Self.replyTexts(simulator, to: message).isEmpty)
            // The script does not run once the message has failed.
            #expect(harness.lines(of: "order").isEmpty)
        }
    }

    /// 503 comes back after retry_delay and succeeds once; 400 is a dead letter with its status
    /// and body; the server checked every signature, and the script ran only after the success.
    @Test(.timeLimit(.minutes(1)))
    func retriesOn503AndDeadLettersOn400() async throws {
        try await Self.withBotServer(
            configure: {
                $0.retryDelay = .milliseconds(200)
                $0.maxAttempts = 3
            }
        ) { files, harness, simulator, logs in
            let flaky = try simulator.injectText("flaky", app: "helpdesk")
            let bad = try simulator.injectText("bad", app: "helpdesk")
            try await harness.waitFor("one message done, one dead letter") {
                harness.entries(in: "done").count == 1 && harness.entries(in: "failed").count == 1
            }
            let requests = files.requests()
            #expect(requests.filter { $0["text"] as? String == "flaky" }.compactMap { $0["attempt"] as? String } == ["1", "2"])
            #expect(requests.filter { $0["text"] as? String == "bad" }.count == 1)
            #expect(requests.allSatisfy { $0["kind"] as? String == "bot" && $0["type"] as? String == "application/json" })
            try await simulator.waitUntil(timeout: .seconds(10), "the replies to flaky") { _ in Self.replyTexts(simulator, to: flaky).count == 2 }
            #expect(Self.replyTexts(simulator, to: flaky) == ["worked after 503", "from script"])
            #expect(Self.replyTexts(simulator, to: bad).isEmpty)
            #expect(harness.lines(of: "order") == ["script flaky"])
            let failed = try #require(harness.entries(in: "failed").first)
            let reason = try #require(try SpoolInspector(directory: harness.spool).show(failed).reason)
            #expect(reason.contains("status: answered 400 Bad Request"))
            #expect(reason.contains("unknown command: bad"))
            #expect(logs.lines(containing: "asked to retry later (answered 503 Service Unavailable)").count == 1)
        }
    }

    /// Nothing listening is "try again later": the message waits in the spool and goes through
    /// once the server is up on that port.
    @Test(.timeLimit(.minutes(1)))
    func refusedConnectionIsTriedAgainLater() async throws {
        let files = try BotServerFiles()
        defer { files.remove() }
        // A port just freed: nothing listens there until the test starts the server on it.
        let probe = try files.start()
        probe.stop()
        let port = probe.port
        let started = Mutex<PythonServer?>(nil)
        defer { started.withLock { $0?.stop() } }
        try await Self.withDaemon(handlerURL: "http://127.0.0.1:\(port)/dingtalk", configure: { $0.retryDelay = .milliseconds(300) }) {
            harness, simulator, logs in
            let message = try simulator.injectText("later", app: "helpdesk")
            try await harness.waitFor("a refused try") { !logs.lines(containing: "could not connect to http://127.0.0.1:\(port)/dingtalk").isEmpty }
            #expect(harness.entries(in: "failed").isEmpty)
            let server = try files.start(port: port)
            started.withLock { $0 = server }
            try await harness.waitFor("the entry done") { harness.entries(in: "done").count == 1 }
            try await simulator.waitUntil(timeout: .seconds(10), "the replies") { _ in Self.replyTexts(simulator, to: message).count == 2 }
            #expect(Self.replyTexts(simulator, to: message) == ["http: later", "from script"])
            #expect(files.requests().count == 1)
        }
    }

    /// Four group conversations of five messages each, four workers, at most two requests at
    /// once: each conversation reaches the server in the order it arrived (one socket, so that
    /// is the order sent; over two, DingTalk's order across sockets is not defined), two run side by side and never more,
    /// on connections that are kept and reused.
    @Test(.timeLimit(.minutes(1)))
    func eachConversationInOrderWithinTheConcurrencyLimit() async throws {
        try await Self.withBotServer(
            connections: 1, configure: {
                $0.workers = 4
                $0.apps[0].httpHandler?.concurrency = 2
            }
        ) { files, harness, simulator, _ in
            let conversations = (0..<4).map { "cid-order-\($0)" }
            for index in 0..<5 {
                for conversation in conversations {
                    try simulator.injectBotMessage(
                        BotMessageSpec(app: "helpdesk", content: .text("order \(index)"), conversation: .group(conversationId: conversation, title: conversation)))
                }
            }
            try await harness.waitFor("all twenty done") { harness.entries(in: "done").count == 20 }
            let requests = files.requests()
            #expect(requests.count == 20)
            for conversation in conversations {
                let texts = requests.filter { $0["conversation"] as? String == conversation }.compactMap { $0["text"] as? String }
                #expect(texts == (0..<5).map { "order \($0)" }, "conversation \(conversation)")
            }
            #expect(requests.compactMap { $0["max"] as? Int }.max() == 2)
            // Kept alive: twenty requests over no more connections than the limit.
            #expect(Set(requests.compactMap { $0["port"] as? Int }).count <= 2)
        }
    }

    /// An answer over the 1 MiB limit is not read to its end: the message is a dead letter
    /// that says why, and the script after the HTTP handler does not run.
    @Test(.timeLimit(.minutes(1)))
    func anAnswerOverTheLimitIsADeadLetterThatSaysSo() async throws {
        try await Self.withBotServer { _, harness, simulator, _ in
            let message = try simulator.injectText("huge", app: "helpdesk")
            try await harness.waitFor("a dead letter") { harness.entries(in: "failed").count == 1 }
            let failed = try #require(harness.entries(in: "failed").first)
            let reason = try #require(try SpoolInspector(directory: harness.spool).show(failed).reason)
            #expect(reason.contains("answered with a body over 1 MiB"), "\(reason)")
            #expect(harness.lines(of: "order").isEmpty)
            #expect(Self.replyTexts(simulator, to: message).isEmpty)
        }
    }

    /// Stopping the daemon while its HTTP handler has not answered does not wait for the answer:
    /// the call is abandoned at once and the message stays `running`, to run again at the next
    /// start.
    @Test(.timeLimit(.minutes(1)))
    func aStopDoesNotWaitForAHandlerThatDoesNotAnswer() async throws {
        let files = try BotServerFiles()
        defer { files.remove() }
        let server = try files.start()
        defer { server.stop() }
        let harness = try DaemonHarness()
        defer { harness.remove() }
        try await DingTalkSimulator.withRunning(.single("helpdesk")) { simulator in
            var configuration = harness.configuration(for: simulator)
            configuration.apps[0].httpHandler = .init(url: "http://127.0.0.1:\(server.port)/dingtalk")
            configuration.apps[0].httpHandler?.timeout = .seconds(50)
            let stopped = try await harness.withDaemon(configuration) {
                try await simulator.waitUntil(timeout: .seconds(15), "live sockets") { $0.liveSockets(app: "helpdesk").count == 2 }
                try simulator.injectText("hang", app: "helpdesk")
                try await harness.waitFor("the server has the request") { files.requests().count == 1 }
                return ContinuousClock.now
            }
            #expect(ContinuousClock.now - stopped < .seconds(10))
            #expect(harness.entries(in: "running").count == 1)
        }
    }

    /// Card callbacks and events go to the handler too, named by X-Dingstream-Kind, and its
    /// answer to a card is the card update; a message from outside allowed_users is not posted.
    @Test(.timeLimit(.minutes(1)))
    func cardsAndEventsGoThereWithTheirKindAndTheAllowlistHolds() async throws {
        try await Self.withBotServer(
            configure: {
                $0.apps[0].subscriptions = [.bot, .events, .cards]
                $0.apps[0].allowedUsers = ["boss1"]
                $0.cardTimeout = .seconds(30)
            }
        ) { files, harness, simulator, _ in
            let update = try await simulator.injectCardCallback(app: "helpdesk", outTrackId: "track-1", userId: "boss1", timeout: .seconds(40))
            #expect(update.flatMap { JSON.object($0) }.map { JSON.encode($0) } == JSON.object(#"{"cardData":{"cardParamMap":{"status":"done"}}}"#).map { JSON.encode($0) })
            try simulator.injectEvent(app: "helpdesk", eventType: "chat_update_title", data: #"{"title":"x"}"#)
            let refused = try simulator.injectText("let me in", app: "helpdesk", sender: "stranger7")
            try await harness.waitFor("all three done") { harness.entries(in: "done").count == 3 }
            #expect(files.requests().compactMap { $0["kind"] as? String }.sorted() == ["card", "event"])
            #expect(Self.replyTexts(simulator, to: refused).isEmpty)
        }
    }

    /// `dingstream doctor` says whether the URL answers: any status proves a server listens.
    @Test(.timeLimit(.minutes(1)))
    func doctorChecksThatTheURLAnswers() async throws {
        let files = try BotServerFiles()
        defer { files.remove() }
        let server = try files.start()
        var app = Configuration.App(name: "helpdesk", clientID: "id", clientSecret: Self.secret)
        app.httpHandler = .init(url: "http://127.0.0.1:\(server.port)/dingtalk")
        let answering = try #require(await Doctor.httpHandlerCheck(app))
        #expect(answering.outcome == .ok)
        #expect(answering.detail.contains("answers (GET: 501"), "\(answering.detail)")
        server.stop()
        let silent = try #require(await Doctor.httpHandlerCheck(app))
        #expect(silent.outcome == .failed)
        #expect(silent.detail.contains("does not answer"), "\(silent.detail)")
        // No request reached the bot: a GET is never taken for a message.
        #expect(files.requests().isEmpty)
    }

    /// The signature is DingTalk's: a value computed independently with Python's hmac module.
    @Test(.timeLimit(.minutes(1)))
    func signatureMatchesDingTalksHTTPMode() {
        // python3 -c 'import hmac,hashlib,base64; s="s3cret"; print(base64.b64encode(hmac.new(s.encode(), ("1700000000000\n"+s).encode(), hashlib.sha256).digest()).decode())'
        #expect(HTTPHandler.signature(timestamp: "1700000000000", secret: "s3cret") == "MT7bXSNfVTPzQMEuLWvmMNbmZSCUY1X6YKn9AxBnLsI=")
    }
}

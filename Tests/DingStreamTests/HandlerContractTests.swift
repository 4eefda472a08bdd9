import DingStream
import Foundation
import Simulator
import Spool
import StreamProtocol
import Testing

/// The handler contract through the whole daemon: real sockets to the simulator, real spool,
/// real handler processes. Handlers write what they saw into files under the harness root.
@Suite("Handler contract through the daemon", .serialized)
struct HandlerContractTests {
    static let cardUpdate = #"{"cardUpdateOptions":{"updateCardDataByKey":true},"cardData":{"cardParamMap":{"status":"done"}}}"#

    /// `script(harness)` as the one handler, app "helpdesk" on a fresh simulator, and `body` run
    /// once the daemon has both sockets live.
    static func withHelpdeskDaemon(
        handler script: (DaemonHarness) -> String, configure: (inout Configuration) -> Void = { _ in },
        _ body: @Sendable (DaemonHarness, DingTalkSimulator, LogCapture) async throws -> Void
    ) async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        try harness.addHandler("10-handler", script(harness))
        try await DingTalkSimulator.withRunning(.single("helpdesk")) { simulator in
            var configuration = harness.configuration(for: simulator)
            configure(&configuration)
            let logs = LogCapture()
            try await harness.withDaemon(configuration, logs: logs) {
                try await simulator.waitUntil(timeout: .seconds(15), "live sockets") { $0.liveSockets(app: "helpdesk").count == 2 }
                try await body(harness, simulator, logs)
            }
        }
    }

    /// The text of the webhook reply to `message`, if one came.
    static func reply(to message: InjectedMessage, in simulator: DingTalkSimulator) -> String? {
        guard let record = simulator.webhookReplies(app: message.app).first(where: { $0.msgId == message.msgId }),
            let body = JSON.object(record.body), let text = body["text"] as? [String: Any]
        else { return nil }
        return text["content"] as? String
    }

    static func hex(_ bytes: [UInt8]) -> String {
        bytes.map { String(format: "%02x", $0) }.joined()
    }

    @Test(.timeLimit(.minutes(1)))
    func attachmentsAreDownloadedForTheHandler() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        // Replies with one line per file in DINGSTREAM_ATTACHMENTS: its name and its bytes in hex
        // (or the note of a file that could not be downloaded).
        try harness.addHandler(
            "10-files",
            """
            #!/bin/sh
            cat >/dev/null
            [ -n "$DINGSTREAM_ATTACHMENTS" ] || { echo "no attachments"; exit 0; }
            echo "dir $DINGSTREAM_ATTACHMENTS"
            cd "$DINGSTREAM_ATTACHMENTS" || exit 1
            for f in *; do
              case "$f" in
                *.missing) printf '%s note %s\\n' "$f" "$(cat "$f")" ;;
                *) printf '%s %s\\n' "$f" "$(od -An -v -tx1 "$f" | tr -d ' \\n')" ;;
              esac
            done
            """)
        let report = Array("quarterly numbers\n".utf8)
        let picture = (0..<256).map { UInt8($0) }
        let first = Array("first picture".utf8)
        let second = Array("second picture".utf8)
        let passwd = Array("root:x:0:0:hostile\n".utf8)
        let big = [UInt8](repeating: 0x41, count: 64 * 1024)
        let voice = Array("voice bytes".utf8)
        try await DingTalkSimulator.withRunning(.single("helpdesk")) { simulator in
            var configuration = harness.configuration(for: simulator)
            configuration.maxAttachmentBytes = 16 * 1024
            let logs = LogCapture()
            try await harness.withDaemon(configuration, logs: logs) {
                try await simulator.waitUntil(timeout: .seconds(15), "live sockets") { $0.liveSockets(app: "helpdesk").count == 2 }
                func inject(_ content: BotMessageSpec.Content, from sender: String) throws -> InjectedMessage {
                    try simulator.injectBotMessage(BotMessageSpec(app: "helpdesk", content: content, senderStaffId: sender))
                }
                let file = try inject(.file(name: "report.txt", bytes: report), from: "u1")
                let pic = try inject(.picture(bytes: picture), from: "u2")
                let rich = try inject(.richText([.text("look"), .picture(bytes: first), .picture(bytes: second)]), from: "u3")
                let hostile = try inject(.file(name: "../../etc/passwd", bytes: passwd), from: "u4")
                let oversize = try inject(.file(name: "big.bin", bytes: big), from: "u5")
                let audio = try inject(.audio(recognition: "hello", bytes: voice), from: "u7")
                // A code that still resolves to a URL that has expired (404).
                try simulator.registerFile(app: "helpdesk", downloadCode: "dc-gone", bytes: report)
                simulator.expireFileURL(downloadCode: "dc-gone")
                let gone = try inject(.raw(msgtype: "file", contentKey: "content", json: #"{"downloadCode":"dc-gone","fileName":"gone.txt"}"#), from: "u6")
                let all = [file, pic, rich, hostile, oversize, gone, audio]
                try await harness.waitFor("a reply to each message") {
                    all.allSatisfy { Self.reply(to: $0, in: simulator) != nil }
                }
                let text = { (message: InjectedMessage) in Self.reply(to: message, in: simulator) ?? "" }
                func files(_ message: InjectedMessage) -> [String] { text(message).split(separator: "\n").dropFirst().map(String.init) }

                // The folder is the message's own, under the spool.
                let dir = try #require(text(file).split(separator: "\n").first)
                #expect(dir.hasPrefix("dir \(harness.spool)/attachments/"))
                #expect(files(file) == ["report.txt \(Self.hex(report))"])
                #expect(files(pic) == ["picture \(Self.hex(picture))"])
                #expect(files(rich) == ["picture-1 \(Self.hex(first))", "picture-2 \(Self.hex(second))"])
                #expect(files(audio) == ["audio \(Self.hex(voice))"])
                // A hostile name keeps only its last component, inside the folder.
                #expect(files(hostile) == ["passwd \(Self.hex(passwd))"])
                #expect(!FileManager.default.fileExists(atPath: harness.spool + "/etc/passwd"))
                #expect(!FileManager.default.fileExists(atPath: harness.root + "/etc/passwd"))
                // Over max_attachment_bytes: not downloaded, the handler ran with a note.
                let bigLines = files(oversize)
                #expect(bigLines.count == 1)
                #expect(bigLines.first?.hasPrefix("big.bin.missing note ") == true)
                #expect(bigLines.first?.contains("max_attachment_bytes") == true)
                #expect(!logs.lines(containing: "big.bin", "max_attachment_bytes").isEmpty)
                // An expired URL (404) is permanent: a note and a log line, the handler still ran.
                #expect(files(gone).first?.hasPrefix("gone.txt.missing note ") == true)
                #expect(files(gone).first?.contains("HTTP 404") == true)
                #expect(!logs.lines(containing: "gone.txt", "HTTP 404").isEmpty)
                // The downloads went through messageFiles/download, and the folders are cleared
                // once the handlers are through.
                try await harness.waitFor("every entry done") { harness.entries(in: "done").count == all.count }
                // The folder goes right after the entry reaches done/: wait for that moment too.
                try await harness.waitFor("attachment folders cleared") {
                    ((try? FileManager.default.contentsOfDirectory(atPath: harness.spool + "/attachments")) ?? []).isEmpty
                }
            }
        }
    }

    /// A download that fails for now (the file API answers 503) puts the whole message back for
    /// `retry_delay`; the handler runs once, with the file, when the download works.
    @Test(.timeLimit(.minutes(1)))
    func attachmentOutageDelaysTheHandlerUntilTheFileIsThere() async throws {
        try await Self.withHelpdeskDaemon(
            handler: { harness in
                """
                #!/bin/sh
                cat >/dev/null
                echo run >> \(harness.root)/runs
                cat "$DINGSTREAM_ATTACHMENTS/report.txt" || echo "no file"
                """
            },
            configure: { $0.retryDelay = .milliseconds(200) }
        ) { harness, simulator, logs in
            try simulator.apply(.http(endpoint: .messageFiles, failure: .serverError(status: 503), count: 2))
            let message = try simulator.injectBotMessage(
                BotMessageSpec(app: "helpdesk", content: .file(name: "report.txt", bytes: Array("numbers".utf8))))
            try await harness.waitFor("the reply") { Self.reply(to: message, in: simulator) != nil }
            #expect(Self.reply(to: message, in: simulator) == "numbers")
            #expect(harness.lines(of: "runs") == ["run"])
            #expect(simulator.faultedCalls(.messageFiles) == 2)
            #expect(logs.lines(containing: "attachments not downloaded").count == 2)
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func cardCallbackAnswersInTheAckAndEventsReachHandlers() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        try harness.addHandler(
            "10-card",
            """
            #!/bin/sh
            cat >/dev/null
            echo "$DINGSTREAM_KIND $DINGSTREAM_TOPIC" >> \(harness.root)/kinds
            [ "$DINGSTREAM_KIND" = card ] && printf '%s\\n' '\(Self.cardUpdate)'
            # Output of an event handler has nowhere to go: ignored, not a failure.
            [ "$DINGSTREAM_KIND" = event ] && echo "event noted"
            exit 0
            """)
        try await DingTalkSimulator.withRunning(.single("helpdesk")) { simulator in
            var configuration = harness.configuration(for: simulator)
            configuration.apps[0].subscriptions = [.bot, .events, .cards]
            // Generous: this test is about the answer arriving in the ack, not about speed.
            configuration.cardTimeout = .seconds(30)
            try await harness.withDaemon(configuration, logs: LogCapture()) {
                try await simulator.waitUntil(timeout: .seconds(15), "live sockets") { $0.liveSockets(app: "helpdesk").count == 2 }
                let response = try await simulator.injectCardCallback(
                    app: "helpdesk", outTrackId: "track-1", actionIds: ["agree"], timeout: .seconds(40))
                let object = try #require(response.flatMap { JSON.object($0) })
                #expect(JSON.encode(object) == JSON.encode(try #require(JSON.object(Self.cardUpdate))))
                // The recorded ack carries the same response.
                let push = try #require(simulator.pushes(app: "helpdesk").first { $0.topic == "/v1.0/card/instances/callback" })
                let ack = try #require(simulator.acks(app: "helpdesk").first { $0.messageId == push.messageId })
                #expect(ack.code == 200)
                #expect(ack.data?.contains("cardParamMap") == true)

                try simulator.injectEvent(app: "helpdesk", eventType: "chat_update_title", data: #"{"title":"x"}"#)
                try await harness.waitFor("the event handled") { harness.lines(of: "kinds").count == 2 }
                #expect(harness.lines(of: "kinds") == ["card /v1.0/card/instances/callback", "event *"])
                // A card's JSON is its answer, an event's output is ignored: nothing in the outbox
                // or failed/.
                try await harness.waitFor("both entries done") { harness.entries(in: "done").count == 2 }
                #expect(harness.entries(in: "failed").isEmpty)
                #expect(simulator.webhookReplies(app: "helpdesk").isEmpty)
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func slowCardHandlerGetsNullAckAndRunsOnce() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        // Waits for the test's go-ahead, which comes only after the ack was seen: past the deadline.
        try harness.addHandler(
            "10-slow-card",
            """
            #!/bin/sh
            cat >/dev/null
            echo started >> \(harness.root)/runs
            while [ ! -e \(harness.root)/release ]; do sleep 0.05; done
            echo finished >> \(harness.root)/runs
            printf '%s\\n' '\(Self.cardUpdate)'
            """)
        try await DingTalkSimulator.withRunning(.single("helpdesk")) { simulator in
            var configuration = harness.configuration(for: simulator)
            configuration.apps[0].subscriptions = [.bot, .cards]
            configuration.cardTimeout = .seconds(1)
            let logs = LogCapture()
            try await harness.withDaemon(configuration, logs: logs) {
                try await simulator.waitUntil(timeout: .seconds(15), "live sockets") { $0.liveSockets(app: "helpdesk").count == 2 }
                let response = try await simulator.injectCardCallback(app: "helpdesk", outTrackId: "track-slow", timeout: .seconds(40))
                #expect(response == nil)
                let push = try #require(simulator.pushes(app: "helpdesk").first { $0.topic == "/v1.0/card/instances/callback" })
                let ack = try #require(simulator.acks(app: "helpdesk").first { $0.messageId == push.messageId })
                #expect(ack.data == #"{"response":null}"#)
                #expect(!logs.lines(containing: "card_timeout").isEmpty)
                // The handler goes on, finishes, and the message is done, having run once.
                FileManager.default.createFile(atPath: harness.root + "/release", contents: nil)
                try await harness.waitFor("the handler finished and the entry is done") {
                    harness.lines(of: "runs").contains("finished") && harness.entries(in: "done").count == 1
                }
                #expect(harness.lines(of: "runs") == ["started", "finished"])
                #expect(harness.entries(in: "new").isEmpty && harness.entries(in: "running").isEmpty)
                #expect(simulator.acks(app: "helpdesk").filter { $0.messageId == push.messageId }.count == 1)
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func allowedUsersBothWays() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        try harness.addHandler(
            "10-hello",
            """
            #!/bin/sh
            cat >/dev/null
            echo "$DINGSTREAM_APP $DINGSTREAM_SENDER" >> \(harness.root)/runs
            printf 'hello %s' "$DINGSTREAM_SENDER"
            """)
        let apps = ["listed", "nobody", "everyone"].map { SimulatedApp(name: $0, clientId: "ding\($0)", clientSecret: "secret-\($0)") }
        try await DingTalkSimulator.withRunning(SimulatorConfiguration(apps: apps)) { simulator in
            var configuration = harness.configuration(for: simulator, connections: 1)
            configuration.apps[0].allowedUsers = ["boss1"]
            configuration.apps[1].allowedUsers = []
            configuration.apps[2].allowedUsers = ["*"]
            let logs = LogCapture()
            try await harness.withDaemon(configuration, logs: logs) {
                try await simulator.waitUntil(timeout: .seconds(15), "live sockets") { sim in
                    apps.allSatisfy { !sim.liveSockets(app: $0.name).isEmpty }
                }
                let allowed = try simulator.injectText("hi", app: "listed", sender: "boss1")
                let stranger = try simulator.injectText("hi", app: "listed", sender: "stranger7")
                let denied = try simulator.injectText("hi", app: "nobody", sender: "boss1")
                let anyone = try simulator.injectText("hi", app: "everyone", sender: "anyone9")
                try await harness.waitFor("all four messages done") { harness.entries(in: "done").count == 4 }
                #expect(Set(harness.lines(of: "runs")) == ["listed boss1", "everyone anyone9"])
                #expect(Self.reply(to: allowed, in: simulator) == "hello boss1")
                #expect(Self.reply(to: anyone, in: simulator) == "hello anyone9")
                #expect(Self.reply(to: stranger, in: simulator) == nil)
                #expect(Self.reply(to: denied, in: simulator) == nil)
                #expect(simulator.webhookReplies().count == 2)
                #expect(simulator.openAPISends().isEmpty)
                // The admin learns which id to add, and where.
                #expect(logs.lines(containing: "stranger7", "allowed_users", "listed").count == 1)
                #expect(logs.lines(containing: "boss1", "allowed_users", "nobody").count == 1)
                #expect(logs.lines(containing: "anyone9", "allowed_users").isEmpty)
            }
        }
    }

    /// `allowed_users` covers who clicks a card as it covers who writes to the bot; events have no
    /// user and still reach handlers.
    @Test(.timeLimit(.minutes(1)))
    func cardClicksFollowTheAllowlistAndEventsPass() async throws {
        try await Self.withHelpdeskDaemon(
            handler: { harness in
                """
                #!/bin/sh
                cat >/dev/null
                echo "$DINGSTREAM_KIND" >> \(harness.root)/kinds
                [ "$DINGSTREAM_KIND" = card ] && printf '%s\\n' '\(Self.cardUpdate)'
                exit 0
                """
            },
            configure: {
                $0.apps[0].subscriptions = [.bot, .events, .cards]
                $0.apps[0].allowedUsers = ["boss1"]
                $0.cardTimeout = .seconds(30)
            }
        ) { harness, simulator, logs in
            let refused = try await simulator.injectCardCallback(
                app: "helpdesk", outTrackId: "track-stranger", userId: "stranger7", timeout: .seconds(40))
            #expect(refused == nil)
            let allowed = try await simulator.injectCardCallback(
                app: "helpdesk", outTrackId: "track-boss", userId: "boss1", timeout: .seconds(40))
            #expect(allowed.flatMap { JSON.object($0) }.map { JSON.encode($0) } == JSON.object(Self.cardUpdate).map { JSON.encode($0) })
            try simulator.injectEvent(app: "helpdesk", eventType: "chat_update_title", data: #"{"title":"x"}"#)
            try await harness.waitFor("all three entries done") { harness.entries(in: "done").count == 3 }
            #expect(harness.lines(of: "kinds").sorted() == ["card", "event"])
            #expect(logs.lines(containing: "card action from stranger7", "allowed_users", "helpdesk").count == 1)
            #expect(logs.lines(containing: "boss1", "allowed_users").isEmpty)
        }
    }

    /// Exit 75 brings the message back after `retry_delay` (doubling); a later success replies once,
    /// and `max_attempts` ends a message that never succeeds in failed/ with the reason.
    @Test(.timeLimit(.minutes(1)))
    func exit75RetriesUntilSuccessOrMaxAttempts() async throws {
        try await Self.withHelpdeskDaemon(
            handler: { harness in
                """
                #!/bin/sh
                cat >/dev/null
                echo "$DINGSTREAM_TEXT" >> \(harness.root)/runs
                tries=$(grep -c "^$DINGSTREAM_TEXT$" \(harness.root)/runs)
                if [ "$DINGSTREAM_TEXT" = never ] || [ "$tries" -lt 3 ]; then echo "backend down" >&2; exit 75; fi
                printf 'worked on try %s' "$tries"
                """
            },
            configure: {
                $0.retryDelay = .milliseconds(200)
                $0.maxAttempts = 3
            }
        ) { harness, simulator, logs in
            let flaky = try simulator.injectText("flaky", app: "helpdesk")
            let never = try simulator.injectText("never", app: "helpdesk")
            try await harness.waitFor("one message done, one dead-lettered") {
                harness.entries(in: "done").count == 1 && harness.entries(in: "failed").count == 1
            }
            let runs = harness.lines(of: "runs")
            #expect(runs.filter { $0 == "flaky" }.count == 3)
            #expect(runs.filter { $0 == "never" }.count == 3)
            #expect(Self.reply(to: flaky, in: simulator) == "worked on try 3")
            #expect(Self.reply(to: never, in: simulator) == nil)
            #expect(simulator.webhookReplies().count == 1)
            let failed = try #require(harness.entries(in: "failed").first)
            let reason = try #require(try SpoolInspector(directory: harness.spool).show(failed).reason)
            #expect(reason.contains("backend down"))
            #expect(reason.contains("attempts: 3 of max_attempts 3"))
            // Two retries each before the third try.
            #expect(logs.lines(containing: "asked to retry later").count == 4)
        }
    }

    /// Without a handler a message is stored as done at once; a handler dropped into handlers/
    /// while the daemon runs runs for the next message, with no restart or reload.
    @Test(.timeLimit(.minutes(1)))
    func aHandlerDroppedInRunsForTheNextMessage() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        try await DingTalkSimulator.withRunning(.single("helpdesk")) { simulator in
            let logs = LogCapture()
            try await harness.withDaemon(harness.configuration(for: simulator), logs: logs) {
                try await simulator.waitUntil(timeout: .seconds(15), "live sockets") { $0.liveSockets(app: "helpdesk").count == 2 }
                let first = try simulator.injectText("before", app: "helpdesk")
                try await harness.waitFor("the first message done") { harness.entries(in: "done").count == 1 }
                // The ack leaves after the commit that made it done, so it may still be on its way.
                try await harness.waitFor("the first message acked") {
                    simulator.acks(app: "helpdesk").contains { $0.messageId == first.messageId && $0.code == 200 }
                }
                #expect(logs.lines(containing: "no runnable handler").count == 1)
                try harness.addHandler("10-late", "#!/bin/sh\ncat >/dev/null\necho \"$DINGSTREAM_TEXT\" >> \(harness.root)/late\n")
                try simulator.injectText("after", app: "helpdesk")
                try await harness.waitFor("the handler run for the second message") { harness.lines(of: "late") == ["after"] }
                try await harness.waitFor("both messages done") { harness.entries(in: "done").count == 2 }
                #expect(harness.lines(of: "late") == ["after"])
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func worldWritableHandlerIsRefused() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        try harness.addHandler("10-unsafe", "#!/bin/sh\ncat >/dev/null\necho ran >> \(harness.root)/unsafe\n")
        try harness.addHandler("20-safe", "#!/bin/sh\ncat >/dev/null\necho ran >> \(harness.root)/safe\n")
        try await DingTalkSimulator.withRunning(.single("helpdesk")) { simulator in
            let logs = LogCapture()
            try await harness.withDaemon(harness.configuration(for: simulator), logs: logs) {
                try await simulator.waitUntil(timeout: .seconds(15), "live sockets") { $0.liveSockets(app: "helpdesk").count == 2 }
                // Made unsafe while the daemon runs: the next message must notice it.
                try FileManager.default.setAttributes([.posixPermissions: 0o777], ofItemAtPath: harness.handlers + "/10-unsafe")
                try simulator.injectText("first", app: "helpdesk")
                try await harness.waitFor("the message done") { harness.entries(in: "done").count == 1 }
                #expect(harness.lines(of: "safe") == ["ran"])
                #expect(harness.lines(of: "unsafe").isEmpty)
                let refusals = logs.lines(containing: "10-unsafe", "chmod go-w")
                #expect(refusals.count == 1)
                #expect(refusals.first?.hasPrefix("error") == true)
                // Logged once, not once per message.
                try simulator.injectText("second", app: "helpdesk")
                try await harness.waitFor("the second message done") { harness.entries(in: "done").count == 2 }
                #expect(logs.lines(containing: "10-unsafe", "chmod go-w").count == 1)
                #expect(harness.lines(of: "unsafe").isEmpty)
            }
        }
    }

    /// With one worker busy, what arrives meanwhile waits as `new` (only what runs is
    /// `running`, also for messages taken for handling in the round that stores them), and
    /// runs afterwards, each conversation in arrival order.
    @Test(.timeLimit(.minutes(1)))
    func whatWaitsForAWorkerStaysNewAndRunsInOrder() async throws {
        try await Self.withHelpdeskDaemon(
            handler: { harness in
                """
                #!/bin/sh
                cat >/dev/null
                echo "start $DINGSTREAM_TEXT" >> \(harness.root)/runs
                while [ ! -e \(harness.root)/release ]; do sleep 0.05; done
                echo "end $DINGSTREAM_TEXT" >> \(harness.root)/runs
                """
            }, configure: { $0.workers = 1 }
        ) { harness, simulator, _ in
            func inject(_ text: String, in conversation: String) throws {
                try simulator.injectBotMessage(
                    BotMessageSpec(app: "helpdesk", content: .text(text), conversation: .group(conversationId: conversation, title: conversation)))
            }
            try inject("a1", in: "cid-a")
            try await harness.waitFor("a1 running") { harness.lines(of: "runs") == ["start a1"] }
            try inject("b1", in: "cid-b")
            try inject("a2", in: "cid-a")
            try await harness.waitFor("b1 and a2 stored") { harness.entries(in: "new").count == 2 }
            #expect(harness.entries(in: "running").count == 1)
            FileManager.default.createFile(atPath: harness.root + "/release", contents: nil)
            try await harness.waitFor("all three done") { harness.entries(in: "done").count == 3 }
            let runs = harness.lines(of: "runs")
            #expect(runs.count == 6)
            // One at a time: each run ends before the next starts.
            #expect(stride(from: 0, to: runs.count, by: 2).allSatisfy { runs[$0].dropFirst(6) == runs[$0 + 1].dropFirst(4) })
            let order = stride(from: 0, to: runs.count, by: 2).map { String(runs[$0].dropFirst(6)) }
            #expect(order.first == "a1")
            #expect(order.firstIndex(of: "a1")! < order.firstIndex(of: "a2")!)
        }
    }
}

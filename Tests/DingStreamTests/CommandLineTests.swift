import Foundation
import Simulator
import Testing

/// The `dingstream` binary as operators run it: exit statuses, arguments, what it prints.
@Suite("Command line of the built binary", .serialized)
struct CommandLineTests {
    static let app = "\n[[app]]\nname = \"a\"\nclient_id = \"b\"\nclient_secret = \"c\"\n"

    /// Issue 15, bug 2: a huge duration trapped (exit 132, systemd restart loop) instead of 78.
    @Test(.timeLimit(.minutes(1)), arguments: [#""999999999999d""#, #""inf""#])
    func hugeDurationIsAConfigurationErrorWithExit78(value: String) async throws {
        let folder = try TemporaryFolder()
        defer { folder.remove() }
        let config = try folder.write("bad.toml", "spool_dir = \"\(folder.path)/spool\"\nhandler_timeout = \(value)\n" + Self.app)
        for arguments in [["run", "--config", config], ["handlers", "check", "--config", config]] {
            let result = try await CommandRun.run(arguments)
            #expect(result.status == 78, "\(arguments): \(result.status) \(result.stderr)")
            #expect(result.stderr.contains("bad.toml:2:"), "\(result.stderr)")
            #expect(result.stderr.contains("handler_timeout"), "\(result.stderr)")
        }
    }

    /// `handlers check` lists an app's http_handler, and with one no script is needed.
    @Test(.timeLimit(.minutes(1)))
    func handlersCheckListsTheHTTPHandler() async throws {
        let folder = try TemporaryFolder()
        defer { folder.remove() }
        let withHandler = try folder.write(
            "h.toml", "spool_dir = \"\(folder.path)/spool\"\n" + Self.app + "http_handler = \"http://127.0.0.1:8080/dingtalk\"\nhttp_handler_concurrency = 3\n")
        let listed = try await CommandRun.run(["handlers", "check", "--config", withHandler])
        #expect(listed.status == 0, "\(listed.stdout) \(listed.stderr)")
        #expect(listed.stdout.contains("app a: POST http://127.0.0.1:8080/dingtalk (timeout 30s, at most 3 at once)"), "\(listed.stdout)")
        let without = try folder.write("n.toml", "spool_dir = \"\(folder.path)/spool\"\n" + Self.app)
        let nothing = try await CommandRun.run(["handlers", "check", "--config", without])
        #expect(nothing.status == 1)
        #expect(!nothing.stdout.contains("http handlers"))
    }

    /// Issue 15, bug 16: a spool_dir that is a file was answered with "check the filesystem
    /// (dmesg)", a missing parent with "list entries with `spool ls`". Each says what is wrong.
    @Test(.timeLimit(.minutes(1)))
    func spoolOpenErrorsSayWhatIsWrong() async throws {
        let folder = try TemporaryFolder()
        defer { folder.remove() }
        let file = try folder.write("not-a-directory", "x")
        for (spool, expected) in [(file, "is not a directory"), (folder.path + "/missing/spool", "the directory above it does not exist")] {
            let config = try folder.write("c.toml", "spool_dir = \"\(spool)\"\n" + Self.app)
            let result = try await CommandRun.run(["run", "--config", config], timeout: .seconds(20))
            #expect(result.status == 73, "\(spool): \(result.status) \(result.stderr)")
            #expect(result.stderr.contains(expected), "\(result.stderr)")
            #expect(!result.stderr.contains("dmesg") && !result.stderr.contains("spool ls"), "\(result.stderr)")
        }
    }

    /// Issue 15, bug 2: `spool purge` with an age beyond any clock trapped (exit 132); it is a
    /// usage error that says what to write, and a sane age purges as before.
    @Test(.timeLimit(.minutes(1)))
    func hugePurgeAgeIsAUsageError() async throws {
        let folder = try TemporaryFolder()
        defer { folder.remove() }
        let config = try folder.write("ok.toml", "spool_dir = \"\(folder.path)/spool\"\n" + Self.app)
        let huge = try await CommandRun.run(["spool", "purge", "--done-older-than", "99999999999999999d", "--config", config])
        #expect(huge.status == 64, "\(huge.status) \(huge.stderr)")
        #expect(huge.stderr.contains("--done-older-than"), "\(huge.stderr)")
        // Without a database yet, a valid age reaches the spool and says there is none.
        let valid = try await CommandRun.run(["spool", "purge", "--done-older-than", "2w", "--config", config])
        #expect(valid.status != 64 && valid.status != 132, "\(valid.status) \(valid.stderr)")
    }

    /// Issue 15, bug 2: a SIGHUP reload of a file with a huge duration killed the daemon; a
    /// rejected reload keeps the running configuration.
    @Test(.timeLimit(.minutes(1)))
    func reloadWithAHugeDurationIsRejectedAndTheDaemonRunsOn() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        try await DingTalkSimulator.withRunning(.single("helpdesk")) { simulator in
            let daemon = try DaemonProcess(harness: harness, simulator: simulator)
            do {
                try daemon.start()
                try await simulator.waitUntil(timeout: .seconds(30), "a live socket") { !$0.liveSockets(app: "helpdesk").isEmpty }
                let good = try String(contentsOfFile: daemon.configPath, encoding: .utf8)
                let bad = good.replacingOccurrences(of: #"handler_timeout = "20s""#, with: #"handler_timeout = "999999999999d""#)
                try #require(bad != good)
                try Data(bad.utf8).write(to: URL(fileURLWithPath: daemon.configPath))
                daemon.send(signal: SIGHUP)
                try await poll(timeout: .seconds(20), "the reload to be rejected") { daemon.log.contains("reload rejected") }
                #expect(daemon.log.contains("handler_timeout"))
                // Still running and still reloading: the good file back, the next SIGHUP applies it.
                try Data(good.utf8).write(to: URL(fileURLWithPath: daemon.configPath))
                daemon.send(signal: SIGHUP)
                try await poll(timeout: .seconds(20), "the good file reloaded") { daemon.log.contains("configuration reloaded") }
                #expect(daemon.isRunning)
                try await daemon.terminate()
                #expect(daemon.lastExitStatus == 0)
            } catch {
                Issue.record("daemon log:\n\(daemon.log)")
                throw error
            }
        }
    }
    /// Issue 15, bug 8: a reload said "reloaded" and ignored log_level, workers, retention and
    /// more. Now log_level and workers apply at once, and what needs a restart is named.
    @Test(.timeLimit(.minutes(1)))
    func reloadAppliesTheLogLevelAndNamesWhatNeedsARestart() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        try harness.addHandler("10-echo", "#!/bin/sh\nprintf 'echo %s' \"$DINGSTREAM_TEXT\"\n")
        try await DingTalkSimulator.withRunning(.single("helpdesk")) { simulator in
            let daemon = try DaemonProcess(harness: harness, simulator: simulator, workers: 2, logLevel: "info")
            do {
                try daemon.start()
                try await simulator.waitUntil(timeout: .seconds(30), "a live socket") { !$0.liveSockets(app: "helpdesk").isEmpty }
                _ = try simulator.injectText("before", app: "helpdesk")
                try await poll(timeout: .seconds(20), "the first reply") {
                    deliveredReplies(simulator, app: "helpdesk").contains { $0.content == "echo before" }
                }
                #expect(!daemon.log.contains(" debug dingstream: "), "no debug line at log_level info")
                // Issue 15 (polish): the ready line said its phase twice ("ready: ready: …").
                try await poll(timeout: .seconds(20), "the ready line") { daemon.log.contains("notice dingstream: ready: helpdesk ") }
                #expect(!daemon.log.contains("ready: ready:"))
                let good = try String(contentsOfFile: daemon.configPath, encoding: .utf8)
                let changed = good
                    .replacingOccurrences(of: #"log_level = "info""#, with: "log_level = \"debug\"\nretention = \"3d\"")
                    .replacingOccurrences(of: "workers = 2", with: "workers = 3")
                try #require(changed != good)
                try Data(changed.utf8).write(to: URL(fileURLWithPath: daemon.configPath))
                daemon.send(signal: SIGHUP)
                try await poll(timeout: .seconds(20), "the reload") { daemon.log.contains("configuration reloaded") }
                #expect(daemon.log.contains("applied log_level info → debug; workers 2 → 3"))
                #expect(daemon.log.contains("need a restart (systemctl restart dingstream): retention 7d → 3d"))
                _ = try simulator.injectText("after", app: "helpdesk")
                try await poll(timeout: .seconds(20), "a debug line after the reload") { daemon.log.contains(" debug dingstream: ") }
                try await daemon.terminate()
            } catch {
                Issue.record("daemon log:\n\(daemon.log)")
                throw error
            }
        }
    }

    /// Issue 15 (polish): without arguments dingstream printed its help and exited 0, so a
    /// script calling it wrongly passed for a success.
    @Test(.timeLimit(.minutes(1)))
    func noArgumentsPrintsTheUsageAndExits64() async throws {
        let result = try await CommandRun.run([])
        #expect(result.status == 64, "\(result.status)")
        #expect(result.stderr.contains("SUBCOMMANDS") && result.stderr.contains("run"), "\(result.stderr)")
        #expect(result.stdout.isEmpty)
    }

    /// Issue 15 (polish): `version` showed the version only; it also says how the binary was built.
    @Test(.timeLimit(.minutes(1)))
    func versionShowsTheBuild() async throws {
        let result = try await CommandRun.run(["version"])
        #expect(result.status == 0)
        // The tests run the debug build of the binary.
        #expect(result.stdout.hasPrefix("dingstream 0.1.0 (debug build, Swift 6."), "\(result.stdout)")
        #expect(result.stdout.contains("binary of 20"), "\(result.stdout)")
    }

    /// Issue 15 (confusing): a usage error found after the options were read printed the root
    /// command's usage line; it prints the subcommand's.
    @Test(.timeLimit(.minutes(1)))
    func aUsageErrorShowsTheSubcommandsUsage() async throws {
        let folder = try TemporaryFolder()
        defer { folder.remove() }
        let config = try folder.write("ok.toml", "spool_dir = \"\(folder.path)/spool\"\n" + Self.app)
        let retry = try await CommandRun.run(["spool", "retry", "--config", config])
        #expect(retry.status == 64, "\(retry.status) \(retry.stderr)")
        #expect(retry.stderr.contains("name an entry or pass --all-failed"), "\(retry.stderr)")
        #expect(retry.stderr.contains("Usage: dingstream spool retry"), "\(retry.stderr)")
        let send = try await CommandRun.run(["send", "--config", config, "hello"])
        #expect(send.status == 64, "\(send.status) \(send.stderr)")
        #expect(send.stderr.contains("Usage: dingstream send"), "\(send.stderr)")
    }

    /// Issue 15 (confusing): `status --config missing.toml` silently read /run/dingstream.
    @Test(.timeLimit(.minutes(1)))
    func statusWithAMissingConfigurationIsAnError() async throws {
        let result = try await CommandRun.run(["status", "--config", "/nonexistent/missing.toml"])
        #expect(result.status == 78, "\(result.status) \(result.stdout) \(result.stderr)")
        #expect(result.stderr.contains("/nonexistent/missing.toml"), "\(result.stderr)")
        #expect(!result.stdout.contains("/run/dingstream"), "\(result.stdout)")
    }

    /// Issue 15 (confusing): an unknown msgtype was forwarded without a word, and the stderr of
    /// a handler that succeeded was dropped. The daemon warns, and logs stderr at info.
    @Test(.timeLimit(.minutes(1)))
    func handlerOutputProblemsAndStderrAreLogged() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        try harness.addHandler("10-odd", "#!/bin/sh\necho 'note from the handler' >&2\nprintf '{\"msgtype\":\"bogus\"}'\n")
        try await DingTalkSimulator.withRunning(.single("helpdesk")) { simulator in
            let daemon = try DaemonProcess(harness: harness, simulator: simulator)
            do {
                try daemon.start()
                try await simulator.waitUntil(timeout: .seconds(30), "a live socket") { !$0.liveSockets(app: "helpdesk").isEmpty }
                _ = try simulator.injectText("odd", app: "helpdesk")
                try await poll(timeout: .seconds(20), "the warning") { daemon.log.contains(#"msgtype "bogus" is not one DingTalk takes"#) }
                #expect(daemon.log.contains("info dingstream: handler wrote to stderr: note from the handler"), "\(daemon.log)")
                try await daemon.terminate()
            } catch {
                Issue.record("daemon log:\n\(daemon.log)")
                throw error
            }
        }
    }

    /// Issue 15 (polish): `spool purge` had no dry run.
    @Test(.timeLimit(.minutes(1)))
    func purgeDryRunCountsAndRemovesNothing() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        try harness.addHandler("10-echo", "#!/bin/sh\nprintf 'echo %s' \"$DINGSTREAM_TEXT\"\n")
        try await DingTalkSimulator.withRunning(.single("helpdesk")) { simulator in
            let daemon = try DaemonProcess(harness: harness, simulator: simulator)
            try daemon.start()
            try await simulator.waitUntil(timeout: .seconds(30), "a live socket") { !$0.liveSockets(app: "helpdesk").isEmpty }
            _ = try simulator.injectText("keep me", app: "helpdesk")
            try await poll(timeout: .seconds(20), "the entry done") { SpoolSnapshot(spool: harness.spool).count(in: "done") == 1 }
            try await daemon.terminate()
            let dry = try await CommandRun.run(["spool", "purge", "--done-older-than", "0s", "--dry-run", "--config", daemon.configPath])
            #expect(dry.status == 0, "\(dry.stderr)")
            #expect(dry.stdout == "1 done entry would be purged (dry run: nothing removed)\n", "\(dry.stdout)")
            #expect(SpoolSnapshot(spool: harness.spool).count(in: "done") == 1, "nothing removed")
            let real = try await CommandRun.run(["spool", "purge", "--done-older-than", "0s", "--config", daemon.configPath])
            #expect(real.stdout == "1 done entry purged\n", "\(real.stdout) \(real.stderr)")
        }
    }

    /// A SIGHUP during start-up, before the reloader listens, used to end the daemon (the
    /// signal's default action).
    @Test(.timeLimit(.minutes(1)))
    func aReloadDuringStartUpDoesNotKillTheDaemon() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        try await DingTalkSimulator.withRunning(.single("helpdesk")) { simulator in
            let daemon = try DaemonProcess(harness: harness, simulator: simulator)
            try daemon.start()
            // Its first log line comes just before the service group starts the reloader: looked
            // for every millisecond, so that the signal lands in between.
            let clock = ContinuousClock()
            let end = clock.now + .seconds(20)
            while !daemon.log.contains(" starting: "), clock.now < end { try await Task.sleep(for: .milliseconds(1)) }
            daemon.send(signal: SIGHUP)
            try await simulator.waitUntil(timeout: .seconds(30), "a live socket") { !$0.liveSockets(app: "helpdesk").isEmpty }
            #expect(daemon.isRunning, "\(daemon.log)")
            try await daemon.terminate()
        }
    }

    /// A configuration with one app that talks to `simulator`.
    static func configuration(for simulator: DingTalkSimulator, in folder: TemporaryFolder) throws -> String {
        let app = simulator.configuration.apps[0]
        return try folder.write(
            "dingstream.toml",
            """
            spool_dir = "\(folder.path)/spool"
            [[app]]
            name = "\(app.name)"
            client_id = "\(app.clientId)"
            client_secret = "\(app.clientSecret)"
            api_base = "\(simulator.baseURL)"

            """)
    }

    /// The receivers and the text of every proactive private send the simulator took.
    static func privateSends(_ simulator: DingTalkSimulator) -> [(users: [String], text: String)] {
        simulator.openAPISends(app: "helpdesk").filter { $0.endpoint == .batchSend }.map { send in
            let object = (try? JSONSerialization.jsonObject(with: Data(send.body.utf8))) as? [String: Any] ?? [:]
            let param = (object["msgParam"] as? String).flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) } as? [String: Any]
            return (object["userIds"] as? [String] ?? [], param?["content"] as? String ?? "")
        }
    }

    /// Issue 15, bug 3: the README's `send --user ID "text"` took the text for a second user id;
    /// from cron (stdin /dev/null) it said "the message is empty", with piped stdin it sent that.
    @Test(.timeLimit(.minutes(1)))
    func sendTakesTheTextAfterTheUserAndReadsStdinOnlyWithoutText() async throws {
        let folder = try TemporaryFolder()
        defer { folder.remove() }
        try await DingTalkSimulator.withRunning(.single("helpdesk")) { simulator in
            let config = try Self.configuration(for: simulator, in: folder)
            let cron = try await CommandRun.run(["send", "--config", config, "--user", "u1", "disk almost full"])
            #expect(cron.status == 0, "\(cron.stdout) \(cron.stderr)")
            let piped = try await CommandRun.run(["send", "--config", config, "--user", "u2", "from the argument"], stdin: Data("piped".utf8))
            #expect(piped.status == 0, "\(piped.stdout) \(piped.stderr)")
            let two = try await CommandRun.run(["send", "--config", config, "--user", "u3", "--user", "u4", "to both"])
            #expect(two.status == 0, "\(two.stdout) \(two.stderr)")
            let fromStdin = try await CommandRun.run(["send", "--config", config, "--user", "u5"], stdin: Data("from stdin\n".utf8))
            #expect(fromStdin.status == 0, "\(fromStdin.stdout) \(fromStdin.stderr)")
            let sends = Self.privateSends(simulator)
            #expect(sends.map(\.users) == [["u1"], ["u2"], ["u3", "u4"], ["u5"]], "\(sends)")
            #expect(sends.map(\.text) == ["disk almost full", "from the argument", "to both", "from stdin"], "\(sends)")
            // Too long for a chat: five messages, and a warning on stderr.
            let long = String(repeating: "a line of a long report\n", count: 2000)
            let cut = try await CommandRun.run(["send", "--config", config, "--user", "u7"], stdin: Data(long.utf8))
            #expect(cut.status == 0 && cut.stderr.contains("bytes are cut"), "\(cut.stderr)")
            #expect(Self.privateSends(simulator).filter { $0.users == ["u7"] }.count == 5)
            // Nothing to send: an error saying how to give the text, not a wait.
            let empty = try await CommandRun.run(["send", "--config", config, "--user", "u6"], timeout: .seconds(10))
            #expect(!empty.timedOut)
            #expect(empty.status == 64, "\(empty.stderr)")
        }
    }
    /// Issue 15, bug 5: `sandbox say --port 70000` trapped, `simulator --port 70000` listened on 4464.
    @Test(.timeLimit(.minutes(1)), arguments: [["sandbox", "say", "--port", "70000", "hi"], ["simulator", "--port", "70000"], ["simulator", "--port", "-1"], ["sandbox", "--port", "65536"]])
    func outOfRangePortsAreUsageErrors(arguments: [String]) async throws {
        let result = try await CommandRun.run(arguments, timeout: .seconds(10))
        #expect(!result.timedOut)
        #expect(result.status == 64, "\(arguments): \(result.status) \(result.stderr)")
        #expect(result.stderr.contains("port"), "\(result.stderr)")
    }
    /// The sandbox page binds only where `--listen` says; a host name is refused with the rule.
    @Test(.timeLimit(.minutes(1)), arguments: [["sandbox", "--listen", "example.com:8931"], ["sandbox", "--listen", "127.0.0.1:70000"]])
    func badPageAddressesAreUsageErrors(arguments: [String]) async throws {
        let result = try await CommandRun.run(arguments, timeout: .seconds(10))
        #expect(!result.timedOut)
        #expect(result.status == 64, "\(arguments): \(result.status) \(result.stderr)")
        #expect(result.stderr.contains("--listen"), "\(result.stderr)")
    }
    /// Issue 15, bug 13: with stdout a pipe, "listening on" stayed in the buffer.
    @Test(.timeLimit(.minutes(1)))
    func simulatorSaysWhereItListensThroughAPipe() async throws {
        guard let executable = DaemonProcess.executable else { throw DaemonProcessError(message: "no dingstream binary") }
        let child = Process()
        child.executableURL = URL(fileURLWithPath: executable)
        child.arguments = ["simulator", "--port", "0"]
        child.environment = ["PATH": "/usr/bin:/bin"]
        let out = Pipe()
        child.standardOutput = out
        child.standardError = FileHandle.nullDevice
        child.standardInput = FileHandle.nullDevice
        try child.run()
        defer {
            kill(child.processIdentifier, SIGKILL)
            child.waitUntilExit()
        }
        let seen = LineBuffer()
        out.fileHandleForReading.readabilityHandler = { seen.append($0.availableData) }
        defer { out.fileHandleForReading.readabilityHandler = nil }
        try await poll(timeout: .seconds(15), "\"listening on\" on stdout") { seen.text.contains("listening on http://127.0.0.1:") }
        kill(child.processIdentifier, SIGTERM)
        try await poll(timeout: .seconds(10), "the simulator to stop on SIGTERM") { !child.isRunning }
    }
    /// Issue 15, bug 9: at log_level debug the service group printed every service with its
    /// environment dictionary: proxy passwords and tokens in the journal.
    @Test(.timeLimit(.minutes(1)))
    func debugLoggingNeverShowsTheEnvironment() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        let sentinel = "pw-\(UUID().uuidString)"
        try await DingTalkSimulator.withRunning(.single("helpdesk")) { simulator in
            let daemon = try DaemonProcess(
                harness: harness, simulator: simulator, logLevel: "debug",
                environment: ["HTTPS_PROXY_PASSWORD": sentinel, "NO_PROXY": "127.0.0.1,localhost"])
            do {
                try daemon.start()
                try await simulator.waitUntil(timeout: .seconds(30), "a live socket") { !$0.liveSockets(app: "helpdesk").isEmpty }
                try await daemon.terminate()
                // The log was written at debug level: the check below looks at real debug output.
                #expect(daemon.log.contains("debug"), "\(daemon.log.prefix(2000))")
                #expect(!daemon.log.contains(sentinel))
                #expect(!daemon.log.contains("HTTPS_PROXY_PASSWORD"))
            } catch {
                Issue.record("daemon log:\n\(daemon.log)")
                throw error
            }
        }
    }

    /// Issue 15, bug 4: a handler printing 1 MB made 210 chat messages in 14 s. Now the reply is
    /// a few messages, the last one saying what was cut, and the log warns.
    @Test(.timeLimit(.minutes(1)))
    func aHandlerPrintingAMegabyteMakesAFewMessagesAndAWarning() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        try harness.addHandler("10-flood", "#!/bin/sh\nyes 'a line of far too much output' | head -c 1000000\n")
        try await DingTalkSimulator.withRunning(.single("helpdesk")) { simulator in
            let daemon = try DaemonProcess(harness: harness, simulator: simulator)
            do {
                try daemon.start()
                try await simulator.waitUntil(timeout: .seconds(30), "a live socket") { !$0.liveSockets(app: "helpdesk").isEmpty }
                _ = try simulator.injectBotMessage(BotMessageSpec(app: "helpdesk", content: .text("flood me")))
                try await poll(timeout: .seconds(30), "the entry in done/") { SpoolSnapshot(spool: harness.spool).count(in: "done") == 1 }
                try await daemon.terminate()
                let replies = deliveredReplies(simulator, app: "helpdesk")
                #expect(replies.count == 5)
                #expect(replies.last?.content.contains("more bytes cut") == true, "\(replies.last?.content.suffix(200) ?? "")")
                #expect(daemon.log.contains("reply cut to 5 messages"))
                // No log line carries the reply itself.
                let longest = daemon.log.split(separator: "\n").map(\.count).max() ?? 0
                #expect(longest < 1000, "a log line of \(longest) characters")
            } catch {
                Issue.record("daemon log:\n\(daemon.log.suffix(4000))")
                throw error
            }
        }
    }

    /// Issue 15, bug 6: after kill -9, `status` said "ready, 2/2 sockets up" and exited 0, and
    /// socket ages stood still while the daemon ran.
    @Test(.timeLimit(.minutes(1)))
    func statusSeesAgesMoveAndADeadDaemonAsDead() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        try await DingTalkSimulator.withRunning(.single("helpdesk")) { simulator in
            let daemon = try DaemonProcess(harness: harness, simulator: simulator, connections: 1)
            do {
                try daemon.start()
                try await poll(timeout: .seconds(30), "status.json") { FileManager.default.fileExists(atPath: harness.root + "/run/status.json") }
                try await poll(timeout: .seconds(30), "a ready status") {
                    (try? String(contentsOfFile: harness.root + "/run/status.json", encoding: .utf8))?.contains("\"ready\"") == true
                }
                func age() async throws -> Int? {
                    let status = try await CommandRun.run(["status", "--config", daemon.configPath])
                    #expect(status.status == 0, "\(status.stdout) \(status.stderr)")
                    guard let range = status.stdout.range(of: #"age (\d+)s"#, options: .regularExpression) else { return nil }
                    return Int(status.stdout[range].dropFirst(4).dropLast())
                }
                let first = try #require(try await age())
                try await Task.sleep(for: .seconds(3))
                let second = try #require(try await age())
                #expect(second >= first + 2, "ages \(first) then \(second)")

                try await daemon.kill()
                let dead = try await CommandRun.run(["status", "--config", daemon.configPath])
                #expect(dead.status == 3, "\(dead.stdout)")
                #expect(dead.stdout.contains("not running"), "\(dead.stdout)")
            } catch {
                Issue.record("daemon log:\n\(daemon.log)")
                throw error
            }
        }
    }
}

extension CommandLineTests {
    /// Issue 15, bug 7: "failed" counted failures since the start, not dead letters: "0 failed"
    /// after a restart with a dead letter, still "1 failed" after `spool retry`. It is the count
    /// of dead letters in the spool.
    @Test(.timeLimit(.minutes(1)))
    func failedCountsTheDeadLettersInTheSpool() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        let gate = harness.root + "/heal"
        try harness.addHandler("10-flaky", "#!/bin/sh\n[ -e '\(gate)' ] || exit 3\necho healed\n")
        try await DingTalkSimulator.withRunning(.single("helpdesk")) { simulator in
            let daemon = try DaemonProcess(harness: harness, simulator: simulator, connections: 1, settings: "retry_delay = \"1s\"")
            func failedInStatusFile() -> Int? {
                let data = FileManager.default.contents(atPath: harness.root + "/run/status.json") ?? Data()
                return ((try? JSONSerialization.jsonObject(with: data)) as? [String: Any])?["failed"] as? Int
            }
            func failed() async throws -> String? {
                let status = try await CommandRun.run(["status", "--config", daemon.configPath])
                guard let range = status.stdout.range(of: #"\d+ failed"#, options: .regularExpression) else { return nil }
                return String(status.stdout[range])
            }
            do {
                try daemon.start()
                try await simulator.waitUntil(timeout: .seconds(30), "a live socket") { !$0.liveSockets(app: "helpdesk").isEmpty }
                _ = try simulator.injectText("doomed", app: "helpdesk")
                try await poll(timeout: .seconds(20), "the dead letter") { SpoolSnapshot(spool: harness.spool).count(in: "failed") == 1 }
                try await daemon.terminate()
                try daemon.start()
                try await poll(timeout: .seconds(20), "1 failed after the restart") { failedInStatusFile() == 1 }
                #expect(try await failed() == "1 failed")

                FileManager.default.createFile(atPath: gate, contents: nil)
                let retry = try await CommandRun.run(["spool", "retry", "--all-failed", "--config", daemon.configPath])
                #expect(retry.status == 0, "\(retry.stdout) \(retry.stderr)")
                try await poll(timeout: .seconds(20), "the retried message done") { SpoolSnapshot(spool: harness.spool).count(in: "done") == 1 }
                try await poll(timeout: .seconds(20), "0 failed after the retry") { failedInStatusFile() == 0 }
                try await daemon.terminate()
            } catch {
                Issue.record("daemon log:\n\(daemon.log)")
                throw error
            }
        }
    }
}

final class LineBuffer: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    func append(_ more: Data) { lock.withLock { data.append(more) } }
    var text: String { lock.withLock { String(decoding: data, as: UTF8.self) } }
}

import Foundation
import Glibc
import StreamProtocol
import Testing

@testable import Handlers

@Suite struct HandlerRunnerTests {
    func run(
        _ dir: TempDir, _ script: String, stdin: String = "{}", timeout: Duration = .seconds(30),
        outputLimit: Int = 1 << 20, stderrTail: Int = 4096, environment: [String: String] = ["PATH": "/usr/bin:/bin"]
    ) async throws -> HandlerResult {
        let executable = try dir.write("handler", "#!/bin/sh\n" + script)
        let input = try dir.write("message.json", stdin, mode: 0o644)
        return await HandlerRunner.run(
            executable: executable, stdinPath: input, environment: environment, workingDirectory: dir.path,
            timeout: timeout, outputLimit: outputLimit, stderrTailBytes: stderrTail, killGrace: .milliseconds(500))
    }

    /// The daemon ignores SIGTERM/SIGHUP/SIGPIPE to handle them itself, and ignored signals
    /// survive exec: a handler must start with every signal at its default and none blocked, or
    /// `kill` and `timeout` in user scripts silently stop working.
    @Test(.timeLimit(.minutes(1)))
    func startsWithDefaultSignalsWhateverTheDaemonIgnores() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let previous = [SIGTERM, SIGHUP, SIGPIPE].map { ($0, signal($0, SIG_IGN)) }
        defer { for (number, handler) in previous { signal(number, handler) } }
        // Builtins only: the shell reads its own status, with no fork in between to race.
        let result = try await run(
            dir, "while IFS= read -r line; do case $line in SigBlk:*|SigIgn:*) echo \"$line\";; esac; done < /proc/self/status\n")
        #expect(result.outcome == .done)
        var masks: [String: UInt64] = [:]
        for line in String(decoding: result.stdout, as: UTF8.self).split(separator: "\n") {
            let fields = line.split(separator: ":").map { $0.trimmingCharacters(in: .whitespaces) }
            if fields.count == 2 { masks[fields[0]] = UInt64(fields[1], radix: 16) }
        }
        #expect(masks["SigBlk"] == 0)
        // Bit n-1 stands for signal n. (glibc's internal signals 32 and 33 are not ours to reset.)
        let ignored = try #require(masks["SigIgn"])
        for number in [SIGTERM, SIGHUP, SIGPIPE, SIGINT] {
            #expect(ignored & (1 << UInt64(number - 1)) == 0, "signal \(number) is ignored in the handler")
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func seesExactlyTheContractEnvironmentAndStdin() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let message = try #require(BotMessage(data: [
            "msgId": "m1", "msgtype": "text", "conversationId": "cid42", "conversationType": "2",
            "senderStaffId": "staff7", "senderNick": "Ada", "text": ["content": " hello there "],
        ]))
        let daemon = [
            "PATH": "/usr/bin:/bin", "HOME": "/var/lib/dingstream", "NOTIFY_SOCKET": "/run/systemd/notify",
            "CREDENTIALS_DIRECTORY": "/run/credentials/dingstream.service", "DINGTALK_CLIENT_SECRET": "s3cret",
            "LISTEN_FDS": "3",
        ]
        let environment = HandlerEnvironment.make(
            app: "helpdesk", kind: .bot, topic: Topic.botMessage, message: message,
            messageFile: dir.file("message.json"), attachments: dir.file("att"), base: daemon)
        let stdin = #"{"app":"helpdesk","data":{"msgId":"m1"}}"#
        // /proc/$$/environ is what execve handed over, before the shell adds anything.
        let result = try await run(
            dir, "tr '\\0' '\\n' < /proc/$$/environ > env.txt\ncat > stdin.txt\n", stdin: stdin,
            environment: environment)
        #expect(result.status == .exited(0))
        #expect(result.outcome == .done)
        #expect(try dir.read("stdin.txt") == stdin)
        let lines = try dir.read("env.txt").split(separator: "\n").map(String.init)
        let seen = Dictionary(uniqueKeysWithValues: lines.map { line in
            let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
            return (parts[0], parts.count > 1 ? parts[1] : "")
        })
        #expect(Set(seen.keys) == [
            "DINGSTREAM_APP", "DINGSTREAM_KIND", "DINGSTREAM_TOPIC", "DINGSTREAM_MSGTYPE",
            "DINGSTREAM_CONVERSATION", "DINGSTREAM_CONVERSATION_ID", "DINGSTREAM_SENDER",
            "DINGSTREAM_SENDER_NICK", "DINGSTREAM_TEXT", "DINGSTREAM_MESSAGE_FILE", "DINGSTREAM_ATTACHMENTS",
            "PATH", "HOME", "LANG",
        ])
        #expect(seen["DINGSTREAM_APP"] == "helpdesk")
        #expect(seen["DINGSTREAM_KIND"] == "bot")
        #expect(seen["DINGSTREAM_TOPIC"] == Topic.botMessage)
        #expect(seen["DINGSTREAM_CONVERSATION"] == "group")
        #expect(seen["DINGSTREAM_CONVERSATION_ID"] == "cid42")
        #expect(seen["DINGSTREAM_SENDER"] == "staff7")
        #expect(seen["DINGSTREAM_SENDER_NICK"] == "Ada")
        #expect(seen["DINGSTREAM_TEXT"] == "hello there")
        #expect(seen["DINGSTREAM_MESSAGE_FILE"] == dir.file("message.json"))
        #expect(seen["HOME"] == "/var/lib/dingstream")
        #expect(seen["LANG"] == HandlerEnvironment.defaultLang)
        #expect(!lines.contains { $0.contains("s3cret") || $0.contains("NOTIFY_SOCKET") })
    }

    @Test(.timeLimit(.minutes(1))) func environmentWithoutMessageOrAttachments() {
        let environment = HandlerEnvironment.make(
            app: "a", kind: .event, topic: "t", message: nil, messageFile: "/f", attachments: nil, base: [:])
        #expect(environment["DINGSTREAM_ATTACHMENTS"] == nil)
        #expect(environment["DINGSTREAM_SENDER"] == "")
        #expect(environment["PATH"] == HandlerEnvironment.defaultPath)
        #expect(environment.count == 13)
    }

    @Test(.timeLimit(.minutes(1)))
    func stdoutIsTheReply() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let result = try await run(dir, "echo \"pong: $(cat)\"\n", stdin: "ping")
        #expect(result.outcome == .done)
        #expect(HandlerReply.parse(stdout: result.stdout) == .text("pong: ping"))
        #expect(!result.stdoutTruncated)
    }

    @Test(.timeLimit(.minutes(1)))
    func exitCodesMapToOutcomes() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let retry = try await run(dir, "exit 75\n")
        #expect(retry.status == .exited(75))
        #expect(retry.outcome == .retryLater)

        let failed = try await run(dir, "echo 'database unreachable' >&2\nexit 3\n")
        #expect(failed.status == .exited(3))
        guard case .failed(let reason) = failed.outcome else {
            Issue.record("exit 3 must fail, got \(failed.outcome)")
            return
        }
        #expect(reason.contains("status 3"))
        #expect(failed.stderrTail == "database unreachable\n")
        #expect(failed.reasonText.contains("status: exited with status 3"))
        #expect(failed.reasonText.contains("duration: "))
        #expect(failed.reasonText.contains("database unreachable"))

        let killed = try await run(dir, "kill -KILL $$\n")
        #expect(killed.status == .signaled(SIGKILL))
        #expect(killed.reasonText.contains("killed by signal 9"))
    }

    @Test(.timeLimit(.minutes(1)))
    func cannotStartIsAFailureWithAReason() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let input = try dir.write("message.json", "{}", mode: 0o644)
        let noShebang = try dir.write("garbage", "\u{7F}ELF not really", mode: 0o755)
        let result = await HandlerRunner.run(
            executable: noShebang, stdinPath: input, environment: [:], workingDirectory: dir.path,
            timeout: .seconds(5), outputLimit: 100, stderrTailBytes: 100)
        guard case .couldNotStart(let error) = result.status else {
            Issue.record("expected couldNotStart, got \(result.status)")
            return
        }
        #expect(error.code == .spawnFailed)
        #expect(error.description.contains(noShebang))
        let missingStdin = await HandlerRunner.run(
            executable: "/bin/true", stdinPath: dir.file("nope.json"), environment: [:], workingDirectory: dir.path,
            timeout: .seconds(5), outputLimit: 100, stderrTailBytes: 100)
        #expect(missingStdin.status == .couldNotStart(HandlerError(.stdinUnreadable, path: dir.file("nope.json"), errno: ENOENT)))
    }

    @Test(.timeLimit(.minutes(1)))
    func timeoutKillsTheWholeGroup() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let result = try await run(
            dir, "echo $$ > pgid.txt\nsleep 1000 &\necho $! > grandchild.txt\nwait\n", timeout: .milliseconds(300))
        #expect(result.status == .timedOut)
        guard case .failed(let reason) = result.outcome else {
            Issue.record("a timeout must fail")
            return
        }
        #expect(reason.contains("timed out"))
        try await expectGroupGone(dir)
    }

    @Test(.timeLimit(.minutes(1)))
    func backgroundJobsDoNotOutliveAHandlerThatExited() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let result = try await run(dir, "echo $$ > pgid.txt\nsleep 1000 &\necho $! > grandchild.txt\necho started\n")
        #expect(result.status == .exited(0))
        #expect(HandlerReply.parse(stdout: result.stdout) == .text("started"))
        try await expectGroupGone(dir)
    }

    /// The handler's process group (pgid.txt) has no living member left, its background job
    /// (grandchild.txt) included. The orphaned grandchild is reparented to init, which reaps it;
    /// until then it is a zombie, dead as far as this test goes.
    func expectGroupGone(_ dir: TempDir) async throws {
        let pgid = try #require(pid_t(try dir.read("pgid.txt").trimmingCharacters(in: .whitespacesAndNewlines)))
        let grandchild = try #require(
            pid_t(try dir.read("grandchild.txt").trimmingCharacters(in: .whitespacesAndNewlines)))
        // SIGKILL is sent when run returns; a loaded machine may take a moment to carry it out.
        var survivors = Processes.livingMembers(ofGroup: pgid)
        let end = ContinuousClock.now + .seconds(5)
        while !survivors.isEmpty && ContinuousClock.now < end {
            try await Task.sleep(for: .milliseconds(10))
            survivors = Processes.livingMembers(ofGroup: pgid)
        }
        if !survivors.isEmpty { kill(-pgid, SIGKILL) }  // clean up, then fail
        #expect(survivors.isEmpty, "processes of group \(pgid) survived: \(survivors)")
        #expect(Processes.isAlive(grandchild) == false, "the background job \(grandchild) survived")
    }

    @Test(.timeLimit(.minutes(1)))
    func outputIsBounded() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let result = try await run(
            dir, "head -c 100000000 /dev/zero\nhead -c 5000000 /dev/zero | tr '\\0' x >&2\necho END >&2\n",
            outputLimit: 1 << 20, stderrTail: 1000)
        #expect(result.status == .exited(0))
        #expect(result.stdoutTruncated)
        #expect(result.stdout.count == 1 << 20)
        #expect(result.stderrTail.utf8.count == 1000)
        #expect(result.stderrTail.hasSuffix("xxxEND\n"))
    }

    @Test(.timeLimit(.minutes(1)))
    func cancellationStopsTheHandler() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let task = Task { try await run(dir, "echo $$ > pgid.txt\nexec sleep 1000\n") }
        // Wait until it is really running, then cancel.
        while (try? dir.read("pgid.txt")) == nil { try await Task.sleep(for: .milliseconds(10)) }
        task.cancel()
        let result = try await task.value
        #expect(result.status == .cancelled)
        #expect(result.outcome == .interrupted)
    }
}

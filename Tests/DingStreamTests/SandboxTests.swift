import Foundation
import PostgresTestServer
import Testing

/// `dingstream sandbox` as a new user runs it: the binary in a process of its own.
@Suite("The sandbox command", .serialized)
struct SandboxTests {
    /// Issue 15 (confusing): `sandbox say` to a closed port waited 5 s and printed a garbled
    /// error on stdout, advising `make run`. It says so at once, on stderr.
    @Test(.timeLimit(.minutes(1)))
    func sayToAClosedPortIsRefusedAtOnceOnStderr() async throws {
        let port = try unusedLoopbackPort()
        let clock = ContinuousClock()
        let start = clock.now
        let result = try await CommandRun.run(["sandbox", "say", "--port", "\(port)", "hello"])
        #expect(clock.now - start < .seconds(3), "took \(clock.now - start)")
        #expect(result.status == 69)
        #expect(result.stdout.isEmpty, "\(result.stdout)")
        #expect(result.stderr.contains("no sandbox on 127.0.0.1:\(port) (connection refused)"), "\(result.stderr)")
        #expect(result.stderr.contains("dingstream sandbox --port \(port)") && !result.stderr.contains("make run"), "\(result.stderr)")
    }

    /// Issue 15 (confusing): `send` to a sandbox or simulator that is not running waited for the
    /// HTTP client's timeout; a refused local port is said at once, on stderr.
    @Test(.timeLimit(.minutes(1)))
    func sendToALocalPortNobodyListensOnIsRefusedAtOnce() async throws {
        let folder = try TemporaryFolder()
        defer { folder.remove() }
        let port = try unusedLoopbackPort()
        let config = try folder.write(
            "c.toml",
            "spool_dir = \"\(folder.path)/spool\"\n[[app]]\nname = \"sandbox\"\nclient_id = \"id\"\nclient_secret = \"s\"\napi_base = \"http://127.0.0.1:\(port)\"\n")
        let clock = ContinuousClock()
        let start = clock.now
        let result = try await CommandRun.run(["send", "--config", config, "--user", "u1", "hello"])
        #expect(clock.now - start < .seconds(3), "took \(clock.now - start)")
        #expect(result.status == 69, "\(result.status) \(result.stderr)")
        #expect(result.stdout.isEmpty)
        #expect(result.stderr.contains("cannot reach api_base http://127.0.0.1:\(port) of app sandbox: connection refused"), "\(result.stderr)")
    }

    /// Issue 15 (confusing): the sandbox wrote no configuration file, so status, spool and doctor
    /// could not look at it; its `say` hint left out a custom port; Ctrl-C left its folder behind.
    @Test(.timeLimit(.minutes(1)))
    func theSandboxWritesAConfigurationHintsItsPortAndCleansUpOnCtrlC() async throws {
        let folder = try TemporaryFolder()
        defer { folder.remove() }
        guard let executable = DaemonProcess.executable else { throw DaemonProcessError(message: "no dingstream binary") }
        let port = try unusedLoopbackPort()
        let output = folder.path + "/sandbox.out"
        FileManager.default.createFile(atPath: output, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        defer { try? log.close() }
        let sandbox = Process()
        sandbox.executableURL = URL(fileURLWithPath: executable)
        // The chat page on a free port: its default, 8931, is taken while `make run` runs.
        sandbox.arguments = ["sandbox", "--port", "\(port)", "--listen", "127.0.0.1:0"]
        sandbox.environment = ["PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": folder.path, "TMPDIR": folder.path + "/"]
        sandbox.standardInput = FileHandle.nullDevice
        sandbox.standardOutput = log
        sandbox.standardError = log
        try sandbox.run()
        defer { if sandbox.isRunning { kill(sandbox.processIdentifier, SIGKILL) } }
        var printed: String { (try? String(contentsOfFile: output, encoding: .utf8)) ?? "" }
        do {
            try await poll(timeout: .seconds(30), "the sandbox banner") { printed.contains("Replies appear below") }
            let root = folder.path + "/dingstream-sandbox-\(sandbox.processIdentifier)"
            let config = root + "/dingstream.toml"
            #expect(printed.contains("config:   \(config)"), "\(printed)")
            #expect(printed.contains("dingstream sandbox say --port \(port) \"hello\""), "\(printed)")
            #expect(FileManager.default.fileExists(atPath: config))

            let said = try await CommandRun.run(["sandbox", "say", "--port", "\(port)", "hello"])
            #expect(said.status == 0, "\(said.stdout) \(said.stderr)")
            try await poll(timeout: .seconds(20), "the reply") { printed.contains("◀ reply via session webhook: echo from") }
            // The daemon writes its status every few seconds: asked until it shows the app.
            var status = try await CommandRun.run(["status", "--config", config])
            let clock = ContinuousClock()
            let deadline = clock.now + .seconds(20)
            while !(status.status == 0 && status.stdout.contains("sandbox: ")), clock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))
                status = try await CommandRun.run(["status", "--config", config])
            }
            #expect(status.status == 0, "\(status.stdout) \(status.stderr)")
            #expect(status.stdout.contains("sandbox: ") && status.stdout.contains("sockets up"), "\(status.stdout)")
            let listing = try await CommandRun.run(["spool", "ls", "--config", config])
            #expect(listing.status == 0 && listing.stdout.contains("done (1)"), "\(listing.stdout) \(listing.stderr)")

            kill(sandbox.processIdentifier, SIGINT)
            let end = clock.now + .seconds(20)
            while sandbox.isRunning, clock.now < end { try await Task.sleep(for: .milliseconds(20)) }
            #expect(!sandbox.isRunning)
            #expect(sandbox.terminationStatus == 0)
            #expect(!FileManager.default.fileExists(atPath: root), "the temporary folder is removed")
        } catch {
            Issue.record("sandbox output:\n\(printed)")
            throw error
        }
    }
}

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
                try await Task.sleep(for: .milliseconds(300))
                #expect(daemon.isRunning)
                #expect(daemon.log.contains("handler_timeout"))
                try await daemon.terminate()
            } catch {
                Issue.record("daemon log:\n\(daemon.log)")
                throw error
            }
        }
    }
}

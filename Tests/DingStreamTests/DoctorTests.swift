import Foundation
import Handlers
import Simulator
import StreamProtocol
import Synchronization
import Testing

@testable import DingStream

@Suite struct DoctorTests {
    /// Writes a config for `apps` (name, client_id, secret) against `simulator`'s API.
    private func writeConfig(_ harness: DaemonHarness, apiBase: String, apps: [(String, String, String)]) throws -> String {
        var text = "spool_dir = \"\(harness.spool)\"\n"
        for (name, id, secret) in apps {
            text += "[[app]]\nname = \"\(name)\"\nclient_id = \"\(id)\"\nclient_secret = \"\(secret)\"\napi_base = \"\(apiBase)\"\nallowed_users = [\"*\"]\n"
        }
        let path = harness.root + "/dingstream.toml"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test(.timeLimit(.minutes(1))) func healthySetupPassesAndAWrongSecretIsNamedWithoutPrintingIt() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        try harness.addHandler("10-echo", "#!/bin/sh\necho hi\n")
        let simulated = [
            SimulatedApp(name: "helpdesk", clientId: "dinghelpdesk", clientSecret: "helpdesk-secret-1"),
            SimulatedApp(name: "ops", clientId: "dingops", clientSecret: "ops-secret-right"),
        ]
        try await DingTalkSimulator.withRunning(SimulatorConfiguration(apps: simulated)) { simulator in
            let path = try writeConfig(
                harness, apiBase: simulator.baseURL,
                apps: [("helpdesk", "dinghelpdesk", "helpdesk-secret-1"), ("ops", "dingops", "ops-secret-wrong")])
            let checks = await Doctor(configurationPath: path, environment: [:]).run()

            let healthy = checks.filter { $0.subject == "app helpdesk" }
            #expect(healthy.count == 5)  // DNS, HTTP, clock, credentials, registration
            #expect(healthy.allSatisfy { $0.outcome == .ok })
            #expect(healthy.contains { $0.detail.hasPrefix("clock:") })
            #expect(checks.first { $0.subject == "spool" }?.outcome == .ok)
            #expect(checks.first { $0.subject == "handlers" }?.detail.contains("10-echo") == true)

            var broken: [String] = []
            for check in checks where check.subject == "app ops" && check.outcome == .failed { broken.append(check.detail) }
            let namesCredentials = broken.contains { $0.hasPrefix("credentials:") && $0.contains("client_id/client_secret") }
            let namesConsole = broken.contains { $0.hasPrefix("Stream registration:") && $0.contains("developer console") }
            #expect(namesCredentials, "\(broken)")
            #expect(namesConsole, "\(broken)")
            #expect(simulator.registrations(app: "ops").isEmpty)
            #expect(simulator.registrations(app: "helpdesk").count == 1)

            let everything = checks.map(\.line).joined(separator: "\n")
            #expect(!everything.contains("helpdesk-secret-1"))
            #expect(!everything.contains("ops-secret"))
        }
    }

    @Test(.timeLimit(.minutes(1))) func unsafeSpoolAndHandlersAreFailuresWithTheirFix() throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        try harness.addHandler("10-open", "#!/bin/sh\necho hi\n")
        chmod(harness.handlers + "/10-open", 0o777)
        chmod(harness.spool, 0o777)
        let spool = Doctor.spoolChecks(harness.spool)
        #expect(spool.contains { $0.outcome == .failed && $0.detail.contains("chmod 0750") })
        #expect(Doctor.spoolChecks(harness.root + "/missing").first?.outcome == .failed)
    }

    @Test(.timeLimit(.minutes(1))) func unresolvableHostIsADNSFailure() async throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        let path = try writeConfig(harness, apiBase: "https://dingstream-test.invalid", apps: [("lost", "dinglost", "x")])
        // The resolver's answer for a name that does not exist, without asking a DNS server.
        let asked = Mutex<[String]>([])
        var doctor = Doctor(configurationPath: path, environment: [:])
        doctor.resolveHost = { host in
            asked.withLock { $0.append(host) }
            return String(cString: gai_strerror(EAI_NONAME))
        }
        let checks = await doctor.run()
        #expect(asked.withLock { $0 } == ["dingstream-test.invalid"])
        let dns = try #require(checks.first { $0.subject == "app lost" })
        #expect(dns.outcome == .failed)
        #expect(dns.detail == "DNS: dingstream-test.invalid does not resolve (Name or service not known); check /etc/resolv.conf")
        #expect(checks.filter { $0.subject == "app lost" }.count == 1, "nothing past a failed DNS check")
    }

    /// Issue 15 (confusing): with the default allowed_users = [] the bot answers nobody, and doctor
    /// said "all checks passed".
    @Test(.timeLimit(.minutes(1))) func anEmptyAllowlistIsAWarningThatSaysHowToOpenIt() throws {
        var configuration = Configuration()
        var closed = Configuration.App(name: "helpdesk", clientID: "id", clientSecret: "s")
        closed.allowedUsers = []
        var open = Configuration.App(name: "ops", clientID: "id2", clientSecret: "s")
        open.allowedUsers = ["*"]
        var events = Configuration.App(name: "events", clientID: "id3", clientSecret: "s")
        events.subscriptions = [.events]
        configuration.apps = [closed, open, events]
        let checks = Doctor.accessChecks(configuration)
        #expect(checks.count == 1, "only the closed bot: \(checks)")
        #expect(checks.first?.subject == "app helpdesk" && checks.first?.outcome == .warning)
        #expect(checks.first?.detail.contains("nobody can talk to the bot") == true)
        #expect(checks.first?.detail.contains(#"allowed_users = ["*"]"#) == true)
    }

    /// Issue 15 (confusing): an inline secret in a configuration every user can read, or a 0666
    /// secret file, passed doctor.
    @Test(.timeLimit(.minutes(1))) func secretsReadableByOthersAreWarnings() throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        let secretFile = harness.root + "/ops.secret"
        try "ops-secret\n".write(toFile: secretFile, atomically: true, encoding: .utf8)
        let path = harness.root + "/dingstream.toml"
        try """
            spool_dir = "\(harness.spool)"
            [[app]]
            name = "helpdesk"
            client_id = "id"
            client_secret = "inline-secret"
            [[app]]
            name = "ops"
            client_id = "id2"
            client_secret_file = "\(secretFile)"

            """.write(toFile: path, atomically: true, encoding: .utf8)
        let configuration = try Configuration.load(path: path, environment: [:])
        chmod(path, 0o640)
        chmod(secretFile, 0o640)
        #expect(Doctor.secretChecks(configuration, path: path).isEmpty, "0640 files are fine")
        chmod(path, 0o644)
        chmod(secretFile, 0o666)
        let checks = Doctor.secretChecks(configuration, path: path)
        #expect(checks.count == 2, "\(checks)")
        #expect(checks.allSatisfy { $0.outcome == .warning })
        #expect(checks.contains { $0.detail.contains("client_secret of helpdesk") && $0.detail.contains("chmod 0640 \(path)") })
        #expect(checks.contains { $0.detail.contains("\(secretFile) of app ops has mode 0666") })
        #expect(!checks.map(\.detail).joined().contains("secret\n") && !checks.map(\.detail).joined().contains("inline-secret"))
    }

    /// Issue 15 (confusing): the handler line said "2 will run" while 9 were skipped.
    @Test(.timeLimit(.minutes(1))) func theHandlerLineCountsTheSkippedOnes() throws {
        let harness = try DaemonHarness()
        defer { harness.remove() }
        try harness.addHandler("10-echo", "#!/bin/sh\necho hi\n")
        try harness.addHandler("20-notes.txt", "not a handler name\n")
        FileManager.default.createFile(atPath: harness.handlers + "/30-off", contents: Data("#!/bin/sh\n".utf8), attributes: [.posixPermissions: 0o644])
        let scan = HandlerDirectory.scan(path: harness.handlers, allowedOwners: HandlerDirectory.allowedOwners())
        let line = try #require(Doctor.handlerChecks(scan).first)
        #expect(line.outcome == .ok)
        #expect(line.detail == "1 will run: 10-echo; 2 skipped (`dingstream handlers check` says why)", "\(line.detail)")
    }
}

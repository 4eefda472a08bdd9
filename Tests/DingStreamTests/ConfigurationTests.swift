import DingStream
import Foundation
import StreamProtocol
import Testing

@Suite("Configuration")
struct ConfigurationTests {
    func parse(_ text: String, environment: [String: String] = [:]) throws(ConfigurationError) -> Configuration {
        try Configuration.parse(text, file: "test.toml", environment: environment)
    }

    @Test func readsAFullConfiguration() throws {
        let configuration = try parse(
            """
            spool_dir = "/tmp/spool"   # comment
            workers = 8
            handler_timeout = "90s"
            retry_delay = "2m"

            [[app]]
            name = "helpdesk"
            client_id = "dingabc"
            client_secret = "s3cret"
            connections = 3
            subscriptions = ["bot", "events",
                             "cards"]
            allowed_users = ["manager1234"]
            api_base = "http://127.0.0.1:8080"

            [[app]]
            name = "ops"
            client_id = "dingops"
            client_secret = 'literal'
            allowed_users = ["*"]
            """)
        #expect(configuration.spoolDirectory == "/tmp/spool")
        #expect(configuration.workers == 8)
        #expect(configuration.handlerTimeout == .seconds(90))
        #expect(configuration.retryDelay == .seconds(120))
        #expect(configuration.apps.map(\.name) == ["helpdesk", "ops"])
        #expect(configuration.apps[0].connections == 3)
        #expect(configuration.apps[0].subscriptions == [.bot, .events, .cards])
        #expect(configuration.apps[0].allows(staffID: "manager1234"))
        #expect(!configuration.apps[0].allows(staffID: "someoneelse"))
        #expect(configuration.apps[1].allows(staffID: "anyone"))
        #expect(configuration.apps[1].apiBase == "https://api.dingtalk.com")
    }

    @Test func missingClientIDNamesTheKeyAndLine() {
        let error = #expect(throws: ConfigurationError.self) {
            try parse("workers = 2\n\n[[app]]\nname = \"helpdesk\"\nclient_secret = \"x\"\n")
        }
        #expect(error?.line == 3)
        #expect(error?.description.contains("client_id") == true)
        #expect(ConfigurationError.exitStatus == 78)
    }

    @Test func unknownKeyIsNamedWithItsLine() {
        let error = #expect(throws: ConfigurationError.self) {
            try parse("[[app]]\nname = \"a\"\nclient_id = \"b\"\nclient_secret = \"c\"\nconections = 2\n")
        }
        #expect(error?.line == 5)
        #expect(error?.description.contains("unknown key \"conections\"") == true)
        #expect(error?.description.contains("did you mean \"connections\"") == true)
    }

    @Test func malformedFileNamesTheLine() {
        let error = #expect(throws: ConfigurationError.self) {
            try parse("workers = 2\nspool_dir = \"/unterminated\n")
        }
        #expect(error?.line == 2)
        #expect(error?.description.hasPrefix("test.toml:2:") == true)
    }

    @Test func badValuesAreRefused() {
        let duration = #expect(throws: ConfigurationError.self) { try parse("handler_timeout = \"soon\"\n") }
        #expect(duration?.description.contains("handler_timeout") == true)
        let range = #expect(throws: ConfigurationError.self) {
            try parse("[[app]]\nname = \"a\"\nclient_id = \"b\"\nclient_secret = \"c\"\nconnections = 51\n")
        }
        #expect(range?.line == 5)
    }

    @Test(.timeLimit(.minutes(1)))
    func socketLimitsHaveDefaultsAndBounds() throws {
        let app = "[[app]]\nname = \"a\"\nclient_id = \"b\"\nclient_secret = \"c\"\n"
        let defaults = try parse(app).apps[0]
        #expect(defaults.silenceTimeout == .seconds(6))
        #expect(defaults.maxFrameSize == 16 * 1024 * 1024)
        let set = try parse(app + "silence_timeout = \"3s\"\nmax_frame_size = 1048576\n").apps[0]
        #expect(set.silenceTimeout == .seconds(3))
        #expect(set.maxFrameSize == 1 << 20)
        // Below a second a busy machine would look like a dead network.
        let short = #expect(throws: ConfigurationError.self) { try parse(app + "silence_timeout = \"500ms\"\n") }
        #expect(short?.line == 5)
        #expect(short?.description.contains("silence_timeout") == true)
        let small = #expect(throws: ConfigurationError.self) { try parse(app + "max_frame_size = 1000\n") }
        #expect(small?.line == 5)
        #expect(small?.description.contains("max_frame_size") == true)
    }

    @Test func secretComesFromTheSystemdCredential() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("cred-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try "from-credential\n".write(to: directory.appendingPathComponent("helpdesk"), atomically: true, encoding: .utf8)
        let configuration = try parse(
            "[[app]]\nname = \"helpdesk\"\nclient_id = \"x\"\n", environment: ["CREDENTIALS_DIRECTORY": directory.path])
        #expect(configuration.apps[0].clientSecret == "from-credential")
    }

    @Test func compatibilitySectionIsAccepted() throws {
        let configuration = try parse(
            "[channels_config.dingtalk]\nclient_id = \"id\"\nclient_secret = \"s\"\nallowed_users = [\"u1\"]\n")
        #expect(configuration.apps.count == 1)
        #expect(configuration.apps[0].clientID == "id")
        #expect(configuration.apps[0].allowedUsers == ["u1"])
    }
}

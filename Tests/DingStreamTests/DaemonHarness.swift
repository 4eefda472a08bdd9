import DingStream
import Foundation
import Logging
import Simulator
import StreamClient

/// A real daemon against a real simulator on loopback, with a spool in a temporary folder and
/// handler scripts written by the test.
struct DaemonHarness {
    let root: String
    var spool: String { root + "/spool" }
    var handlers: String { spool + "/handlers" }

    init() throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("dingstream-test-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: root + "/spool/handlers", withIntermediateDirectories: true)
        for path in [root, spool, handlers] {
            try FileManager.default.setAttributes([.posixPermissions: 0o750], ofItemAtPath: path)
        }
    }

    func addHandler(_ name: String, _ script: String) throws {
        let path = handlers + "/" + name
        FileManager.default.createFile(atPath: path, contents: Data(script.utf8), attributes: [.posixPermissions: 0o755])
    }

    func configuration(for simulator: DingTalkSimulator, connections: Int = 2) -> Configuration {
        var configuration = Configuration()
        configuration.spoolDirectory = spool
        configuration.runtimeDirectory = root + "/run"
        configuration.shutdownGrace = .seconds(2)
        configuration.readyTimeout = .seconds(5)
        configuration.apps = simulator.configuration.apps.map { simulated in
            var app = Configuration.App(name: simulated.name, clientID: simulated.clientId, clientSecret: simulated.clientSecret)
            app.apiBase = simulator.baseURL
            app.allowedUsers = ["*"]
            app.connections = connections
            return app
        }
        return configuration
    }

    /// Runs the daemon while `body` runs, then stops it.
    func withDaemon<R: Sendable>(
        _ configuration: Configuration, keepalive: KeepaliveSettings? = nil,
        onMetricsListening: (@Sendable (Int) -> Void)? = nil,
        _ body: @Sendable () async throws -> R
    ) async throws -> R {
        var configuredLogger = Logger(label: "test.daemon")
        configuredLogger.logLevel = .warning
        let logger = configuredLogger
        let configuration = configuration
        let daemon = Daemon(
            configurationPath: "(test)", environment: ["PATH": "/usr/bin:/bin", "HOME": root], keepalive: keepalive,
            onMetricsListening: onMetricsListening)
        return try await withThrowingTaskGroup(of: R?.self) { group in
            group.addTask {
                _ = await daemon.run(configuration: configuration, logger: logger)
                return nil
            }
            let result = try await body()
            group.cancelAll()
            while let _ = try await group.next() {}
            return result
        }
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: root)
    }
}

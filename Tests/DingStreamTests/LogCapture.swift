import DingStream
import Foundation
import Spool
import Logging
import StreamClient
import Synchronization

/// Keeps every log line of a daemon run, so tests can check what an admin would read.
final class LogCapture: Sendable {
    private let lines = Mutex<[String]>([])

    var all: [String] { lines.withLock { $0 } }

    func append(_ line: String) { lines.withLock { $0.append(line) } }

    /// Lines that contain every one of `parts`.
    func lines(containing parts: String...) -> [String] {
        all.filter { line in parts.allSatisfy { line.contains($0) } }
    }

    var logger: Logger {
        Logger(label: "test.daemon") { _ in CapturingLogHandler(capture: self) }
    }
}

/// `level message key=value…`, one string per event.
struct CapturingLogHandler: LogHandler {
    let capture: LogCapture
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?
    var logLevel: Logger.Level = .info

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = metadata
        if let own = event.metadata { merged.merge(own, uniquingKeysWith: { $1 }) }
        let fields = merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        capture.append("\(event.level) \(event.message) \(fields)")
    }
}

extension DaemonHarness {
    /// `withDaemon` with every log line kept in `logs`.
    func withDaemon<R: Sendable>(
        _ configuration: Configuration, logs: LogCapture, _ body: @Sendable () async throws -> R
    ) async throws -> R {
        let daemon = Daemon(configurationPath: "(test)", environment: ["PATH": "/usr/bin:/bin", "HOME": root])
        let logger = logs.logger
        return try await withThrowingTaskGroup(of: R?.self) { group in
            group.addTask {
                _ = await daemon.run(configuration: configuration, logger: logger)
                return nil
            }
            let result: R
            do {
                result = try await body()
            } catch {
                // What the daemon said is the best clue to why a wait ran out.
                print("daemon log:\n" + logs.all.joined(separator: "\n"))
                throw error
            }
            group.cancelAll()
            while let _ = try await group.next() {}
            return result
        }
    }

    /// Waits until `condition` holds, checking every 50 ms, at most `timeout`.
    func waitFor(
        _ what: String, timeout: Duration = .seconds(30), _ condition: () throws -> Bool
    ) async throws {
        let deadline = ContinuousClock.now + timeout
        while try !condition() {
            if ContinuousClock.now > deadline { throw HarnessTimeout(what: what) }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// JSON files in a spool folder.
    /// Names of the spool's entries in `state` (`new`, `running`, `outbox`, `done`, `failed`),
    /// read as `dingstream spool ls` does.
    func entries(in state: String) -> [String] {
        guard let state = EntryState(rawValue: state) else { return [] }
        return ((try? SpoolInspector(directory: spool).list(states: [state])) ?? []).map(\.name.value)
    }

    /// Lines of a file the handlers append to; empty when it does not exist yet.
    func lines(of file: String) -> [String] {
        guard let text = try? String(contentsOfFile: root + "/" + file, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").map(String.init)
    }
}

struct HarnessTimeout: Error, CustomStringConvertible {
    var what: String
    var description: String { "timed out waiting for \(what)" }
}

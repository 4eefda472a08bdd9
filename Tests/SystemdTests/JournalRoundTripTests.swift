import Logging
import Testing
@testable import Systemd

#if canImport(Glibc)
import Glibc
#endif

/// Runs only where a journald listens (e.g. inside the namespaced systemd of the system test,
/// which runs this test there): sends an entry through `JournalLogHandler` and reads it back.
@Suite(.enabled(if: access("/run/systemd/journal/socket", F_OK) == 0 && access("/usr/bin/journalctl", X_OK) == 0))
struct JournalRoundTripTests {
    @Test(.timeLimit(.minutes(1))) func entryArrivesWithStructuredFields() async throws {
        let marker = "t\(getpid())x\(UInt64.random(in: 0...UInt64.max))"
        let logger = Logger(label: "dingstream.test") { JournalLogHandler(label: $0, level: .debug) }
        logger.warning("round trip \(marker)", metadata: MessageID.messageCommitted.metadata.merging(
            ["test.marker": .string(marker), "msg.key": "systest/abc", "conn.id": "7"], uniquingKeysWith: { $1 }))

        var found = ""
        for _ in 0..<50 where found.isEmpty {
            found = try run(["/usr/bin/journalctl", "-o", "json", "--no-pager", "TEST_MARKER=\(marker)"])
            if found.isEmpty { try await Task.sleep(for: .milliseconds(100)) }
        }
        for field in [
            "\"MESSAGE\":\"round trip \(marker)\"", "\"PRIORITY\":\"4\"", "\"SYSLOG_IDENTIFIER\":\"dingstream\"",
            "\"MESSAGE_ID\":\"\(MessageID.messageCommitted.rawValue)\"", "\"MSG_KEY\":\"systest/abc\"",
            "\"CONN_ID\":\"7\"", "\"CODE_FILE\":\"SystemdTests/JournalRoundTripTests.swift\"", "\"_TRANSPORT\":\"journal\"",
        ] {
            #expect(found.contains(field), "missing \(field) in \(found)")
        }
    }

    /// Runs `argv` and returns its stdout.
    private func run(_ argv: [String]) throws -> String {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw TestFailure("pipe: errno \(errno)") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        posix_spawn_file_actions_addclose(&actions, fds[0])
        var pid: pid_t = 0
        let cArgs = argv.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        let rc = posix_spawn(&pid, argv[0], &actions, nil, cArgs, nil)
        close(fds[1])
        defer { close(fds[0]) }
        guard rc == 0 else { throw TestFailure("posix_spawn \(argv[0]): \(rc)") }
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fds[0], &buffer, buffer.count)
            if n <= 0 { break }
            output += buffer.prefix(n)
        }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        return String(decoding: output, as: UTF8.self)
    }
}

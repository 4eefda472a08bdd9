import Logging
import Testing
@testable import Systemd

#if canImport(Glibc)
import Glibc
#endif

/// The native journal protocol against a real datagram socket standing in for journald's.
@Suite struct JournalSocketTests {
    @Test(.timeLimit(.minutes(1))) func plainFieldsAreLinesAndMultilineValuesAreLengthPrefixed() async throws {
        let listener = try DatagramListener()
        let journal = JournalSocket(path: listener.notifySocket)
        try journal.send(["MESSAGE=first\nsecond", "PRIORITY=6", "EMPTY=", "EQUALS=a=b"])
        let datagram = try #require(await listener.receiveBytes(timeout: .seconds(5)))

        let value = Array("first\nsecond".utf8)
        var expected = Array("MESSAGE\n".utf8)
        expected += [UInt8(value.count), 0, 0, 0, 0, 0, 0, 0]  // 64-bit little endian
        expected += value + Array("\nPRIORITY=6\nEMPTY=\nEQUALS=a=b\n".utf8)
        #expect(datagram == expected)
    }

    @Test(.timeLimit(.minutes(1))) func handlerSendsTheEntryWithItsFields() async throws {
        let listener = try DatagramListener()
        let journal = JournalSocket(path: listener.notifySocket)
        let logger = Logger(label: "dingstream.test") { JournalLogHandler(label: $0, level: .info, socket: journal) }
        logger.debug("below the level")
        logger.error("socket down", metadata: ["app": "helpdesk"])
        // Datagrams arrive in order: the first is the error's, the debug line was never sent.
        let datagram = try #require(await listener.receive(timeout: .seconds(5)))
        let lines = datagram.split(separator: "\n").map(String.init)
        for field in ["MESSAGE=socket down", "PRIORITY=3", "SYSLOG_IDENTIFIER=dingstream", "LOGGER=dingstream.test", "APP=helpdesk"] {
            #expect(lines.contains(field), "missing \(field) in \(lines)")
        }
    }

    @Test(.timeLimit(.minutes(1))) func noListenerIsAJournalFailure() throws {
        let directory = try makeTemporaryDirectory()
        defer { rmdir(directory) }
        let journal = JournalSocket(path: directory + "/socket")
        let error = #expect(throws: SystemdError.self) { try journal.send(["MESSAGE=lost"]) }
        #expect(error?.code == .journalFailed)
        #expect(error?.osError == ENOENT)
        #expect(error?.description.contains(directory + "/socket") == true)
    }

    @Test(.timeLimit(.minutes(1))) func tooLongAPathIsRefusedWithoutASocket() {
        let journal = JournalSocket(path: "/" + String(repeating: "x", count: 120))
        let error = #expect(throws: SystemdError.self) { try journal.send(["MESSAGE=lost"]) }
        #expect(error?.code == .journalFailed)
        #expect(error?.description.contains("longer than 107 bytes") == true)
    }
}

import Logging
import Testing
@testable import Systemd

#if canImport(Glibc)
import Glibc
#endif

@Suite struct JournalFieldsTests {
    @Test(.timeLimit(.minutes(1))) func metadataKeysBecomeUppercaseFields() {
        #expect(JournalFields.fieldName(forMetadataKey: "conn.id") == "CONN_ID")
        #expect(JournalFields.fieldName(forMetadataKey: "msg.key") == "MSG_KEY")
        #expect(JournalFields.fieldName(forMetadataKey: "app") == "APP")
        #expect(JournalFields.fieldName(forMetadataKey: "handler.name") == "HANDLER_NAME")
        #expect(JournalFields.fieldName(forMetadataKey: "message.id") == "MESSAGE_ID")
        #expect(JournalFields.fieldName(forMetadataKey: "http-status") == "HTTP_STATUS")
        // journald drops fields starting with "_" or a digit, and ours must not be overridden.
        #expect(JournalFields.fieldName(forMetadataKey: "_pid") == "PID")
        #expect(JournalFields.fieldName(forMetadataKey: "2fa") == "F_2FA")
        #expect(JournalFields.fieldName(forMetadataKey: "ünï") == "N_")
        #expect(JournalFields.fieldName(forMetadataKey: "message") == "META_MESSAGE")
        #expect(JournalFields.fieldName(forMetadataKey: "priority") == "META_PRIORITY")
        #expect(JournalFields.fieldName(forMetadataKey: String(repeating: "k", count: 100)).count == 64)
    }

    @Test(.timeLimit(.minutes(1))) func prioritiesFollowSyslog() {
        #expect(JournalFields.priority(.trace) == 7)
        #expect(JournalFields.priority(.debug) == 7)
        #expect(JournalFields.priority(.info) == 6)
        #expect(JournalFields.priority(.notice) == 5)
        #expect(JournalFields.priority(.warning) == 4)
        #expect(JournalFields.priority(.error) == 3)
        #expect(JournalFields.priority(.critical) == 2)
    }

    @Test(.timeLimit(.minutes(1))) func entryCarriesStandardAndMetadataFields() {
        var metadata = MessageID.socketUp.metadata
        metadata["app"] = "helpdesk"
        metadata["conn.id"] = .stringConvertible(3)
        metadata["msg.key"] = "helpdesk/msgA"
        metadata["message"] = "shadow"
        let fields = JournalFields.fields(
            level: .warning, message: "socket up\nsecond", metadata: metadata, label: "dingstream.stream",
            identifier: "dingstream", file: "StreamClient/Connection.swift", function: "run()", line: 42)
        #expect(fields.first == "MESSAGE=socket up\nsecond")
        for expected in [
            "PRIORITY=4", "SYSLOG_IDENTIFIER=dingstream", "LOGGER=dingstream.stream",
            "CODE_FILE=StreamClient/Connection.swift", "CODE_LINE=42", "CODE_FUNC=run()",
            "APP=helpdesk", "CONN_ID=3", "MSG_KEY=helpdesk/msgA", "META_MESSAGE=shadow",
            "MESSAGE_ID=d6a71f500b234bf4a1c42d4cee205577",
        ] {
            #expect(fields.contains(expected), "missing \(expected) in \(fields)")
        }
        #expect(fields.filter { $0.hasPrefix("MESSAGE=") }.count == 1)
    }

    @Test(.timeLimit(.minutes(1))) func symbolicMessageIDsResolveToHex() {
        #expect(MessageID(name: "socketUp") == .socketUp)
        #expect(MessageID(name: "configReloaded") == .reloaded)
        #expect(MessageID(name: "A3C4D6D338884E3AB7364123180B6B4A") == .handlerFailed)
        #expect(MessageID(name: "noSuchEvent") == nil)
        let fields = JournalFields.fields(
            level: .info, message: "m", metadata: ["message.id": "replyDeadLettered"], label: "l", identifier: "d",
            file: "f", function: "g", line: 1)
        #expect(fields.contains("MESSAGE_ID=3024d04054d84cee92a3d9eb056b4f65"))
        let unknown = JournalFields.fields(
            level: .info, message: "m", metadata: ["message.id": "custom"], label: "l", identifier: "d",
            file: "f", function: "g", line: 1)
        #expect(unknown.contains("MESSAGE_ID=custom"))
    }

    @Test(.timeLimit(.minutes(1))) func errorBecomesField() {
        let fields = JournalFields.fields(
            level: .error, message: "m", metadata: [:], label: "l", identifier: "dingstream", file: "f", function: "g",
            line: 1, error: SystemdError(.sendFailed, context: "/run/x"))
        #expect(fields.contains { $0.hasPrefix("ERROR=systemd: cannot notify systemd at /run/x") })
    }

    @Test(.timeLimit(.minutes(1))) func messageIDsAreDistinct128BitHex() {
        let ids = MessageID.allCases.map(\.rawValue)
        #expect(Set(ids).count == ids.count)
        for id in ids {
            #expect(id.count == 32 && id.allSatisfy { $0.isHexDigit && !$0.isUppercase }, "\(id)")
        }
    }
}

@Suite struct StderrLogHandlerTests {
    @Test(.timeLimit(.minutes(1))) func formatIsOneReadableLine() {
        let line = StderrLogHandler.format(
            timestamp: "2025-01-31T12:00:00.123Z", level: .info, label: "dingstream", message: "socket up\nnext",
            metadata: ["conn.id": "2", "app": "helpdesk", "reason": "server said \"bye\"", "empty": ""])
        #expect(line == #"2025-01-31T12:00:00.123Z info dingstream: socket up\nnext app=helpdesk conn.id=2 empty="" reason="server said \"bye\"""#)
        #expect(StderrLogHandler.format(timestamp: nil, level: .error, label: "x", message: "m", metadata: [:]) == "error x: m")
    }

    @Test(.timeLimit(.minutes(1))) func writesLinesToTheFileDescriptor() throws {
        let directory = try makeTemporaryDirectory()
        let path = directory + "/log"
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        #expect(fd >= 0)
        defer { close(fd); unlink(path); rmdir(directory) }
        var logger = Logger(label: "dingstream") { StderrLogHandler(label: $0, level: .info, fileDescriptor: fd) }
        logger[metadataKey: "app"] = "helpdesk"
        logger.debug("hidden")
        logger.warning("handler failed", metadata: ["handler.name": "10-echo"])

        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = pread(fd, &buffer, buffer.count, 0)
        let text = String(decoding: buffer.prefix(max(n, 0)), as: UTF8.self)
        let lines = text.split(separator: "\n")
        #expect(lines.count == 1)
        // "<timestamp> warning dingstream: handler failed app=helpdesk handler.name=10-echo"
        let words = lines.first?.split(separator: " ", maxSplits: 1)
        #expect(words?.first?.hasSuffix("Z") == true && words?.first?.count == 24)
        #expect(words?.last == "warning dingstream: handler failed app=helpdesk handler.name=10-echo")
    }
}

@Suite struct LoggingSetupTests {
    @Test(.timeLimit(.minutes(1))) func journalOnlyWhenJournalStreamMatchesTheDescriptor() throws {
        let directory = try makeTemporaryDirectory()
        let path = directory + "/stream"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        #expect(fd >= 0)
        defer { close(fd); unlink(path); rmdir(directory) }
        var info = stat()
        #expect(fstat(fd, &info) == 0)
        let matching = "\(info.st_dev):\(info.st_ino)"
        #expect(LoggingSetup.destination(environment: ["JOURNAL_STREAM": matching], fileDescriptor: fd) == .journal)
        #expect(LoggingSetup.destination(environment: ["JOURNAL_STREAM": "\(info.st_dev):\(info.st_ino + 1)"],
                                         fileDescriptor: fd) == .stderr)
        #expect(LoggingSetup.destination(environment: ["JOURNAL_STREAM": "garbage"], fileDescriptor: fd) == .stderr)
        #expect(LoggingSetup.destination(environment: [:], fileDescriptor: fd) == .stderr)
        #expect(LoggingSetup.destination(environment: ["JOURNAL_STREAM": matching], fileDescriptor: -1) == .stderr)
        #expect(LoggingSetup.makeHandler(label: "x", destination: .journal, level: .info) is JournalLogHandler)
        #expect(LoggingSetup.makeHandler(label: "x", destination: .stderr, level: .info) is StderrLogHandler)
    }
}

@Suite struct StatusLineTests {
    @Test(.timeLimit(.minutes(1))) func readableLine() {
        let status = StatusLine(
            phase: "degraded",
            apps: [.init(name: "helpdesk", up: 2, wanted: 2), .init(name: "ops", up: 0, wanted: 2)],
            queued: 3, failed: 1)
        #expect(status.text == "degraded: helpdesk 2/2 up, ops 0/2 up; 3 queued, 1 failed")
    }
}

@Suite struct ColourTests {
    /// Issue 15 (polish): no colour on a terminal. Now the level is coloured there, and only there.
    @Test(.timeLimit(.minutes(1))) func levelsAreColouredOnATerminalOnly() throws {
        // A real pseudo-terminal, as a person's shell has. Glibc's module leaves out the pty
        // calls (they need _XOPEN_SOURCE), so they are looked up in the C library.
        typealias IntCall = @convention(c) (Int32) -> Int32
        typealias NameCall = @convention(c) (Int32) -> UnsafeMutablePointer<CChar>?
        let library = dlopen(nil, RTLD_NOW)
        let openpt = unsafeBitCast(try #require(dlsym(library, "posix_openpt")), to: IntCall.self)
        let grant = unsafeBitCast(try #require(dlsym(library, "grantpt")), to: IntCall.self)
        let unlock = unsafeBitCast(try #require(dlsym(library, "unlockpt")), to: IntCall.self)
        let name = unsafeBitCast(try #require(dlsym(library, "ptsname")), to: NameCall.self)
        let master = openpt(O_RDWR | O_NOCTTY)
        try #require(master >= 0)
        defer { close(master) }
        try #require(grant(master) == 0 && unlock(master) == 0)
        let terminal = open(String(cString: try #require(name(master))), O_RDWR | O_NOCTTY)
        try #require(terminal >= 0)
        defer { close(terminal) }
        #expect(StderrLogHandler.wantsColour(environment: ["TERM": "xterm"], fileDescriptor: terminal))
        #expect(!StderrLogHandler.wantsColour(environment: ["TERM": "xterm", "NO_COLOR": "1"], fileDescriptor: terminal))
        #expect(!StderrLogHandler.wantsColour(environment: ["TERM": "dumb"], fileDescriptor: terminal))
        var pipeEnds: [Int32] = [0, 0]
        try #require(pipe(&pipeEnds) == 0)
        defer { close(pipeEnds[0]); close(pipeEnds[1]) }
        #expect(!StderrLogHandler.wantsColour(environment: ["TERM": "xterm"], fileDescriptor: pipeEnds[1]), "never into a pipe")

        let coloured = StderrLogHandler.format(timestamp: nil, level: .error, label: "dingstream", message: "boom", metadata: [:], colour: true)
        #expect(coloured == "\u{1B}[31merror\u{1B}[0m dingstream: boom")
        let plain = StderrLogHandler.format(timestamp: nil, level: .error, label: "dingstream", message: "boom", metadata: [:])
        #expect(plain == "error dingstream: boom")
    }
}

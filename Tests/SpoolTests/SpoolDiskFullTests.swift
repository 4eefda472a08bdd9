import Foundation
import Logging
import Testing

@testable import Spool

/// Runs a program and returns its exit status.
@discardableResult
func run(_ program: String, _ arguments: [String]) throws -> Int32 {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: program)
    process.arguments = arguments
    try process.run()
    process.waitUntilExit()
    return process.terminationStatus
}

/// Runs `body` with a tmpfs of `size` mounted on a temporary directory (root only), and
/// unmounts it after: a filesystem of the test's own to fill.
func withSmallFilesystem(size: String, _ body: (String) async throws -> Void) async throws {
    try await withTemporaryDirectory { root in
        guard try run("/bin/mount", ["-t", "tmpfs", "-o", "size=\(size),mode=0750", "tmpfs", root]) == 0 else {
            Issue.record("mount -t tmpfs failed")
            return
        }
        defer { _ = try? run("/bin/umount", [root]) }
        try await body(root)
    }
}

@Suite struct SpoolDiskFullTests {
    @Test(
        .timeLimit(.minutes(1)),
        .enabled(if: getuid() == 0, "needs root to mount a small tmpfs; run the tests as root to cover disk-full handling"))
    func fullFilesystemLeavesFramesUnackedAndIntakeResumes() async throws {
        try await withSmallFilesystem(size: "512k") { root in
            let sink = LogSink()
            let spool = Spool(directory: root + "/spool", logger: sink.logger)
            try spool.open()
            defer { spool.close() }

            try await withRunning(spool) {
                guard case .stored = await spool.store(botRecord(msgID: "before")) else {
                    Issue.record("the first frame must be stored")
                    return
                }
                // Fill the filesystem to the last block.
                let filler = root + "/filler"
                let fd = open(filler, O_WRONLY | O_CREAT, 0o600)
                let block = [UInt8](repeating: 0x61, count: 4096)
                while write(fd, block, block.count) > 0 {}
                var byte: UInt8 = 0x61
                while write(fd, &byte, 1) > 0 {}
                close(fd)

                for index in 0..<3 {
                    let outcome = await spool.store(botRecord(msgID: "during", text: String(repeating: "x", count: 2000), millis: 1_700_000_000_000 + Int64(index)))
                    guard case .failed(let error) = outcome else {
                        Issue.record("expected failure while full, got \(outcome)")
                        return
                    }
                    #expect(error.code == .diskFull)
                    #expect(error.description.contains("free space"))
                }
                // Nothing half-written, nothing visible to the dispatcher.
                #expect(try spool.names(in: .new).count == 1)
                #expect(sink.count(.error, containing: "disk full") == 1)

                try FileManager.default.removeItem(atPath: filler)
                let after = await spool.store(botRecord(msgID: "during", millis: 1_700_000_000_100))
                guard case .stored(let name) = after else {
                    Issue.record("intake must resume once space is free, got \(after)")
                    return
                }
                #expect(try spool.row(name).entry.key == "during")
                #expect(try spool.names(in: .new).count == 2)
                #expect(sink.count(.notice, containing: "recovered") == 1)
            }
        }
    }
}

import Foundation

/// One run of the `dingstream` binary to its end, the way a shell or cron runs it: stdin from
/// /dev/null (or given bytes), stdout and stderr captured, a minimal environment.
struct CommandRun {
    var status: Int32
    var stdout: String
    var stderr: String
    /// The process did not end within the timeout and was killed.
    var timedOut: Bool

    /// - Throws: when the binary is missing or cannot start.
    static func run(
        _ arguments: [String], stdin: Data? = nil, environment: [String: String] = [:], timeout: Duration = .seconds(20)
    ) async throws -> CommandRun {
        guard let executable = DaemonProcess.executable else {
            throw DaemonProcessError(message: "no dingstream binary beside the tests; run swift build --build-tests")
        }
        let child = Process()
        child.executableURL = URL(fileURLWithPath: executable)
        child.arguments = arguments
        child.environment = ["PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"].merging(environment) { _, new in new }
        let out = Pipe(), err = Pipe()
        child.standardOutput = out
        child.standardError = err
        let input = stdin.map { _ in Pipe() }
        child.standardInput = input ?? FileHandle.nullDevice
        // Pipes are drained while the child runs, so a chatty child cannot block on a full pipe.
        let collected = Collected()
        out.fileHandleForReading.readabilityHandler = { collected.append(out: $0.availableData) }
        err.fileHandleForReading.readabilityHandler = { collected.append(err: $0.availableData) }
        try child.run()
        if let input, let stdin {
            input.fileHandleForWriting.write(stdin)
            try? input.fileHandleForWriting.close()
        }
        let clock = ContinuousClock()
        let end = clock.now + timeout
        var timedOut = false
        while child.isRunning {
            if clock.now >= end {
                timedOut = true
                kill(child.processIdentifier, SIGKILL)
                break
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        child.waitUntilExit()
        out.fileHandleForReading.readabilityHandler = nil
        err.fileHandleForReading.readabilityHandler = nil
        collected.append(out: out.fileHandleForReading.readDataToEndOfFile())
        collected.append(err: err.fileHandleForReading.readDataToEndOfFile())
        let (stdout, stderr) = collected.texts
        return CommandRun(status: child.terminationStatus, stdout: stdout, stderr: stderr, timedOut: timedOut)
    }

    private final class Collected: @unchecked Sendable {
        private let lock = NSLock()
        private var out = Data()
        private var err = Data()
        func append(out data: Data) { lock.withLock { out.append(data) } }
        func append(err data: Data) { lock.withLock { err.append(data) } }
        var texts: (String, String) { lock.withLock { (String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self)) } }
    }
}

/// A file in a fresh temporary folder, removed with the folder by `remove()`.
struct TemporaryFolder {
    let path: String
    init() throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("dingstream-cli-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    func write(_ name: String, _ text: String) throws -> String {
        let file = path + "/" + name
        try Data(text.utf8).write(to: URL(fileURLWithPath: file))
        return file
    }
    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

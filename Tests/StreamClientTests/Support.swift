import Foundation
import InMemoryLogging
import Logging
import Simulator
import StreamClient
import StreamProtocol
import Synchronization

/// Acks every frame at once, on the socket it came in on, and remembers which business ids it saw.
final class AckingSink: FrameSink {
    let msgIDs = Mutex<[String]>([])

    func receive(_ frame: StreamFrame, context: ConnectionContext) {
        if let msgID = frame.dataObject()?["msgId"] as? String {
            msgIDs.withLock { $0.append(msgID) }
        }
        context.ack(frame.kind == .event ? .event(frame) : .callback(frame))
    }
}

/// A clock for the connection slots: `sleep` records what was asked, moves the virtual time
/// forward by it and returns at once, so hours of backoff pass in milliseconds. Sleeps at or
/// above `blockAtOrAbove` (age limits, or backoff a test wants to hold) really wait until the
/// slot is cancelled, without moving the clock.
final class VirtualTime: Sendable {
    private struct State {
        var offset: Duration = .zero
        var sleeps: [Duration] = []
        var held: [Duration] = []
        var blockAtOrAbove: Duration
        var fixedRandom: Double?
        var rng: UInt64
        /// Added to the clock on every reading (a stalled process, a slow network).
        var stepPerReading: Duration = .zero
    }

    private let start = ContinuousClock.now
    private let state: Mutex<State>

    init(blockAtOrAbove: Duration = .seconds(3600), seed: UInt64 = 7) {
        state = Mutex(State(blockAtOrAbove: blockAtOrAbove, rng: seed))
    }

    /// Sleeps that returned at once, in order.
    var sleeps: [Duration] { state.withLock { $0.sleeps } }
    /// Sleeps that were held until cancellation.
    var held: [Duration] { state.withLock { $0.held } }
    func advance(by amount: Duration) { state.withLock { $0.offset += amount } }
    func setBlock(atOrAbove limit: Duration) { state.withLock { $0.blockAtOrAbove = limit } }
    /// nil draws from the seeded generator again.
    func setRandom(_ value: Double?) { state.withLock { $0.fixedRandom = value } }
    func setStepPerReading(_ step: Duration) { state.withLock { $0.stepPerReading = step } }

    var environment: SlotEnvironment {
        SlotEnvironment(
            sleep: { [self] duration in
                let blocks = state.withLock { s -> Bool in
                    if duration >= s.blockAtOrAbove {
                        s.held.append(duration)
                        return true
                    }
                    s.sleeps.append(duration)
                    s.offset += duration
                    return false
                }
                if blocks {
                    try await Task.sleep(for: .seconds(86_400))
                } else {
                    // A real pause keeps a failing loop from starving the event loops of a 2-core box.
                    try await Task.sleep(for: .microseconds(200))
                }
            },
            random: { [self] in
                state.withLock { s in
                    if let fixed = s.fixedRandom { return fixed }
                    // SplitMix64: deterministic jitter for a seeded test.
                    s.rng &+= 0x9E37_79B9_7F4A_7C15
                    var z = s.rng
                    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
                    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
                    z ^= z >> 31
                    return Double(z >> 11) / Double(1 << 53)
                }
            },
            now: { [self] in
                let offset = state.withLock { s in
                    s.offset += s.stepPerReading
                    return s.offset
                }
                return start + offset
            })
    }
}

/// Log lines kept in memory, so tests read what an operator would see in the journal.
struct CapturedLog {
    let handler = InMemoryLogHandler()

    var logger: Logger {
        let handler = self.handler
        var logger = Logger(label: "test.streamclient", factory: { _ in handler })
        logger.logLevel = .info
        return logger
    }

    var lines: [String] { handler.entries.map { "\($0.message)" } }

    func lines(containing needle: String) -> [String] {
        lines.filter { $0.contains(needle) }
    }

    func entries(messageID: String) -> [InMemoryLogHandler.Entry] {
        handler.entries.filter { $0.metadata["message.id"] == .string(messageID) }
    }
}

/// Connection settings for one simulated app.
func settings(
    for sim: DingTalkSimulator, app name: String = "helpdesk", connections: Int = 1, secret: String? = nil,
    network: NetworkSettings = NetworkSettings(connectTimeout: .seconds(5), requestTimeout: .seconds(10))
) -> AppConnectionSettings {
    let app = sim.configuration.apps.first { $0.name == name }!
    let registration = GatewayRegistration(
        app: name, clientID: app.clientId, clientSecret: secret ?? app.clientSecret, apiBase: sim.baseURL,
        subscriptions: [.bot, .events], userAgent: "dingstream-test/0", deadline: .seconds(10))
    var settings = AppConnectionSettings(
        registration: registration, network: network,
        keepalive: KeepaliveSettings(idleTimeout: .seconds(60)),
        connections: connections, maxConnectionAge: .seconds(100 * 3600))
    settings.drainTime = .seconds(2)
    return settings
}

/// Runs an app supervisor while `body` runs, then cancels it and waits until its sockets are closed.
func withSupervisor<R: Sendable>(
    _ settings: AppConnectionSettings, sink: any FrameSink = AckingSink(), board: ConnectionBoard = ConnectionBoard(),
    environment: SlotEnvironment = .live, logger: Logger,
    _ body: @Sendable () async throws -> R
) async throws -> R {
    let supervisor = AppSupervisor(settings: settings, sink: sink, board: board, environment: environment, logger: logger)
    return try await withThrowingTaskGroup(of: R?.self) { group in
        group.addTask {
            await supervisor.run()
            return nil
        }
        do {
            let result = try await body()
            group.cancelAll()
            while try await group.next() != nil {}
            return result
        } catch {
            group.cancelAll()
            throw error
        }
    }
}

/// Polls `condition` until it holds; generous limits, since CI shares two noisy cores.
/// `state` describes what the test saw instead, for the failure message.
func eventually(
    _ what: String, timeout: Duration = .seconds(20), state: (() -> String)? = nil, _ condition: @Sendable () -> Bool
) async throws {
    let end = ContinuousClock.now + timeout
    while !condition() {
        if ContinuousClock.now >= end {
            throw TestFailure("timed out after \(timeout) waiting for \(what)" + (state.map { "; instead: " + $0() } ?? ""))
        }
        try await Task.sleep(for: .milliseconds(10))
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}

/// Runs openssl; throws with its stderr when it fails.
func openssl(_ arguments: [String]) throws {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
    process.arguments = arguments
    let errors = Pipe()
    process.standardError = errors
    process.standardOutput = FileHandle.nullDevice
    try process.run()
    let output = errors.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
        throw TestFailure("openssl \(arguments.first ?? ""): \(String(decoding: output, as: UTF8.self))")
    }
}

/// A throwaway CA and a server certificate it signed for 127.0.0.1 and localhost.
struct TestPKI {
    let directory: String
    var caCertificate: String { directory + "/ca.pem" }
    var serverCertificate: String { directory + "/server.pem" }
    var serverKey: String { directory + "/server.key" }

    /// A simulator of `app` serving HTTPS and WSS with this PKI's server certificate.
    func simulator(app: String) -> SimulatorConfiguration {
        var configuration = SimulatorConfiguration.single(app)
        configuration.tlsCertificatePath = serverCertificate
        configuration.tlsPrivateKeyPath = serverKey
        return configuration
    }

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("dingstream-pki-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        try openssl(["req", "-x509"] + ec + [
            "-keyout", directory + "/ca.key", "-out", caCertificate, "-days", "2", "-subj", "/CN=dingstream test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ])
        try openssl(["req"] + ec + ["-keyout", serverKey, "-out", directory + "/server.csr", "-subj", "/CN=127.0.0.1"])
        let extensions = directory + "/server.ext"
        try "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
            .write(toFile: extensions, atomically: true, encoding: .utf8)
        try openssl([
            "x509", "-req", "-in", directory + "/server.csr", "-CA", caCertificate, "-CAkey", directory + "/ca.key",
            "-CAcreateserial", "-out", serverCertificate, "-days", "2", "-extfile", extensions,
        ])
    }

    func remove() { try? FileManager.default.removeItem(atPath: directory) }
}

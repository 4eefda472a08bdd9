import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket
import Synchronization

/// A local DingTalk: gateway registration, Stream sockets, session webhooks and the robot OpenAPI,
/// plus a JSON control API under `/_sim/`, all on one loopback port.
///
/// Use `withRunning(_:_:)` in tests; `start(_:)` + `shutdown()` for long-lived use (sandbox).
public final class DingTalkSimulator: Sendable {
    public let configuration: SimulatorConfiguration
    let appsByName: [String: SimulatedApp]
    let appsByClientId: [String: SimulatedApp]
    let group: any EventLoopGroup
    let sslContext: NIOSSLContext?
    let core: Mutex<SimulatorCore>
    let runtime: Mutex<Runtime>
    let redeliveryAmount: TimeAmount
    let logger: Logger

    struct Runtime: Sendable {
        var serverChannel: (any Channel)?
        var sweeper: RepeatedTask?
    }

    init(configuration: SimulatorConfiguration, group: any EventLoopGroup, sslContext: NIOSSLContext?) {
        self.configuration = configuration
        self.appsByName = Dictionary(configuration.apps.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        self.appsByClientId = Dictionary(configuration.apps.map { ($0.clientId, $0) }, uniquingKeysWith: { a, _ in a })
        self.group = group
        self.sslContext = sslContext
        var seedSource = SystemRandomNumberGenerator()
        var core = SimulatorCore(seed: configuration.randomSeed ?? seedSource.next(), apps: configuration.apps)
        core.rotationAge = configuration.rotationAge
        core.scheme = sslContext == nil ? "http" : "https"
        self.core = Mutex(core)
        self.runtime = Mutex(Runtime())
        self.redeliveryAmount = configuration.redeliveryTimeout.timeAmount
        self.logger = configuration.logger
    }

    /// Starts a simulator, runs `body`, then shuts it down (also when `body` throws).
    /// - Throws: `SimulatorError` (`.bindFailed`, `.tlsSetup`) when it cannot start; whatever `body` throws.
    public static func withRunning<R: Sendable>(
        _ configuration: SimulatorConfiguration,
        _ body: (DingTalkSimulator) async throws -> R
    ) async throws -> R {
        let sim = try await start(configuration)
        do {
            let result = try await body(sim)
            await sim.shutdown()
            return result
        } catch {
            await sim.shutdown()
            throw error
        }
    }

    /// Binds the port and starts serving. Call `shutdown()` when done.
    /// - Throws: `SimulatorError.bindFailed` or `.tlsSetup`.
    public static func start(
        _ configuration: SimulatorConfiguration,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> DingTalkSimulator {
        let ssl = try makeSSLContext(configuration)
        let sim = DingTalkSimulator(configuration: configuration, group: group, sslContext: ssl)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.backlog, value: 256)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try sim.configureChild(channel) }
            }
        let server: any Channel
        do {
            server = try await bootstrap.bind(host: configuration.host, port: configuration.port).get()
        } catch {
            throw SimulatorError(.bindFailed, "\(configuration.host):\(configuration.port): \(error)")
        }
        let port = server.localAddress?.port ?? configuration.port
        sim.core.withLock { $0.port = port }
        let interval = max(TimeAmount.milliseconds(5), min(TimeAmount.milliseconds(250), .nanoseconds(sim.redeliveryAmount.nanoseconds / 10)))
        let sweeper = group.next().scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in sim.sweep() }
        sim.runtime.withLock { $0.serverChannel = server; $0.sweeper = sweeper }
        sim.logger.debug("simulator listening", metadata: ["sim.url": "\(sim.baseURL)"])
        return sim
    }

    static func makeSSLContext(_ configuration: SimulatorConfiguration) throws -> NIOSSLContext? {
        guard let certPath = configuration.tlsCertificatePath, let keyPath = configuration.tlsPrivateKeyPath else { return nil }
        do {
            let chain = try NIOSSLCertificate.fromPEMFile(certPath)
            let key = try NIOSSLPrivateKey(file: keyPath, format: .pem)
            let tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
            return try NIOSSLContext(configuration: tls)
        } catch {
            throw SimulatorError(.tlsSetup, "\(certPath), \(keyPath): \(error)")
        }
    }

    /// Stops listening, closes every socket, fails pending card waits. Safe to call twice.
    public func shutdown() async {
        let (server, sweeper) = runtime.withLock { rt -> ((any Channel)?, RepeatedTask?) in
            defer { rt.serverChannel = nil; rt.sweeper = nil }
            return (rt.serverChannel, rt.sweeper)
        }
        if let sweeper {
            let promise = group.next().makePromise(of: Void.self)
            sweeper.cancel(promise: promise)
            try? await promise.futureResult.get()
        }
        try? await server?.close()
        let (channels, waiters) = core.withLock { c -> ([any Channel], [CheckedContinuation<String?, any Error>]) in
            c.shutDown = true
            let channels = Array(c.connections.values)
            let waiters = c.cardWaiters.values.map(\.continuation)
            c.cardWaiters = [:]
            return (channels, waiters)
        }
        for waiter in waiters { waiter.resume(throwing: SimulatorError(.shutDown, "card callback still waiting for its ack")) }
        for channel in channels { try? await channel.close() }
    }

    // MARK: addresses

    public var port: Int { core.withLock { $0.port } }
    /// `http://127.0.0.1:PORT` (https with TLS): use as the OpenAPI and registration base.
    public var baseURL: String { core.withLock { "\($0.scheme)://\(configuration.host):\($0.port)" } }
    var webSocketBase: String { core.withLock { "\($0.scheme == "https" ? "wss" : "ws")://\(configuration.host):\($0.port)" } }

    func app(named name: String) throws -> SimulatedApp {
        guard let app = appsByName[name] else { throw SimulatorError(.unknownApp, name) }
        return app
    }

    func perform(_ writes: [PendingWrite]) {
        for w in writes { perform(w) }
    }

    func perform(_ write: PendingWrite) {
        let buffer = write.channel.allocator.buffer(string: write.text)
        write.channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .text, data: buffer), promise: nil)
    }

    func sweep() {
        let now = configuration.now()
        let deadline = NIODeadline.now()
        let (writes, expired, rotate) = core.withLock { c -> ([PendingWrite], [CheckedContinuation<String?, any Error>], [Int]) in
            let (w, e) = c.sweep(now: now, nowDeadline: deadline, recordDetails: configuration.recordDetails, redeliveryTimeout: redeliveryAmount)
            var rotate: [Int] = []
            if let age = c.rotationAge {
                let amount = age.timeAmount
                for s in c.sockets.values where (s.state == .live || s.state == .deaf) && s.openedDeadline + amount <= deadline {
                    rotate.append(s.id)
                }
            }
            return (w, e, rotate)
        }
        perform(writes)
        for waiter in expired { waiter.resume(throwing: SimulatorError(.timeout, "waiting for the ack of a card callback")) }
        for id in rotate { try? disconnect(socket: id, mode: .disconnectFrame) }
    }
}

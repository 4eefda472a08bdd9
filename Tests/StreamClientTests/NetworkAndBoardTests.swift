import AsyncHTTPClient
import Foundation
import InMemoryLogging
import Logging
import Simulator
@testable import StreamClient
import StreamProtocol
import Testing

/// Company networks (a private CA, a CONNECT proxy) and what operators see about sockets.
@Suite("TLS, proxy, socket census", .serialized)
struct NetworkAndBoardTests {
    static let app = "helpdesk"

    @Test(.timeLimit(.minutes(1)))
    func tlsWithATestCAKeepsVerificationOn() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        try await DingTalkSimulator.withRunning(pki.simulator(app: Self.app)) { sim in
            #expect(sim.baseURL.hasPrefix("https://"))
            // Without the CA the server is not trusted: registration fails, and says where to look,
            // at once: the wait below (5 s) ends well before the registration's deadline (10 s)
            // and the connect timeout (60 s), which a retried handshake would run into.
            let untrusted = CapturedLog()
            let patient = NetworkSettings(connectTimeout: .seconds(60), requestTimeout: .seconds(60))
            try await withSupervisor(settings(for: sim, network: patient), logger: untrusted.logger) {
                try await eventually("the TLS failure", timeout: .seconds(5)) {
                    !untrusted.lines(containing: "registration at https://").isEmpty
                }
            }
            let failure = try #require(untrusted.lines(containing: "registration at https://").first)
            #expect(failure.contains("certificate"), "\(failure)")
            #expect(failure.contains("ca_file"), "\(failure)")
            #expect(sim.registrations().isEmpty && sim.sockets(app: Self.app).isEmpty)

            // With ca_file: registration over https, the socket over wss, frames acked.
            let log = CapturedLog()
            let board = ConnectionBoard()
            let network = NetworkSettings(caFile: pki.caCertificate, connectTimeout: .seconds(5), requestTimeout: .seconds(10))
            try await withSupervisor(settings(for: sim, network: network), board: board, logger: log.logger) {
                try await eventually("a wss socket") { board.census(app: Self.app).up == 1 }
                let message = try sim.injectText("over tls", app: Self.app)
                try await eventually("the ack") { sim.isAcked(app: Self.app, businessId: message.msgId) }
            }
            #expect(sim.registrations(app: Self.app).count == 1)
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func registrationAndSocketGoThroughAConnectProxy() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        try await DingTalkSimulator.withRunning(pki.simulator(app: Self.app)) { sim in
            try await ConnectProxy.withRunning { proxy in
                // The proxy comes from the environment given to the daemon, as `https_proxy`.
                var network = NetworkSettings.resolve(
                    proxy: nil, caFile: pki.caCertificate, environment: ["https_proxy": "http://127.0.0.1:\(proxy.port)"])
                network.connectTimeout = .seconds(5)
                network.requestTimeout = .seconds(10)
                let log = CapturedLog()
                let board = ConnectionBoard()
                try await withSupervisor(settings(for: sim, network: network), board: board, logger: log.logger) {
                    try await eventually("a socket through the proxy") { board.census(app: Self.app).up == 1 }
                    let message = try sim.injectText("via proxy", app: Self.app)
                    try await eventually("the ack") { sim.isAcked(app: Self.app, businessId: message.msgId) }
                }
                let target = "127.0.0.1:\(sim.port)"
                // One CONNECT for the registration's HTTPS call, one for the socket.
                #expect(proxy.connectTargets.filter { $0 == target }.count >= 2, "\(proxy.connectTargets)")
                #expect(proxy.connectTargets.allSatisfy { $0 == target })
            }
        }
    }

    /// A proxy that will not tunnel to the stream endpoint is named with its answer and the way out.
    @Test(.timeLimit(.minutes(1)))
    func aProxyRefusingTheSocketIsNamedWithItsAnswer() async throws {
        try await DingTalkSimulator.withRunning(.single(Self.app)) { sim in
            try await ConnectProxy.withRunning(allowedHosts: ["localhost"]) { proxy in
                let direct = settings(for: sim)
                let http = try direct.network.makeHTTPClient(for: sim.baseURL)
                let ticket = try await direct.registration.register(using: http)
                try await http.shutdown()
                let proxied = NetworkSettings(proxy: "http://127.0.0.1:\(proxy.port)", connectTimeout: .seconds(5), requestTimeout: .seconds(10))
                do {
                    _ = try await StreamSocket.connect(
                        ticket: ticket, app: Self.app, settings: proxied, keepalive: KeepaliveSettings(idleTimeout: .seconds(60)),
                        sink: AckingSink(), logger: Logger(label: "test"))
                    Issue.record("a socket came up although the proxy refuses 127.0.0.1")
                } catch let error as StreamClientError {
                    guard case .transport = error.code else {
                        Issue.record("expected a transport error, got \(error)")
                        return
                    }
                    #expect("\(error)".contains("refused CONNECT 127.0.0.1:\(sim.port) with HTTP 403"), "\(error)")
                    #expect("\(error)".contains("no_proxy"), "\(error)")
                }
                #expect(proxy.connectTargets == ["127.0.0.1:\(sim.port)"])
                #expect(sim.sockets(app: Self.app).isEmpty)
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func socketCountsAndAgesAreLoggedAndOnTheBoard() async throws {
        var configuration = SimulatorConfiguration.single(Self.app)
        configuration.disconnectGrace = .milliseconds(500)
        try await DingTalkSimulator.withRunning(configuration) { sim in
            let log = CapturedLog()
            let board = ConnectionBoard()
            try await withSupervisor(settings(for: sim, connections: 2), board: board, logger: log.logger) {
                try await eventually("two sockets") { board.census(app: Self.app).up == 2 }
                let census = board.census(app: Self.app)
                #expect(census.wanted == 2 && census.ageList.count == 2)
                #expect(log.lines.contains { $0.contains("socket up (2/2 for this app; ages ") })
                let up = log.entries(messageID: "socketUp")
                #expect(up.count == 2)
                #expect(up.last?.metadata["app.sockets"] == "2")
                #expect(up.allSatisfy { $0.metadata["app.sockets.ages"] != nil })

                // A rotation logs the replaced socket's age; the board counts it and shows the
                // old socket as draining (not up) until it is gone.
                let first = try #require(sim.liveSockets(app: Self.app).first)
                try sim.disconnect(socket: first.id, mode: .disconnectFrame)
                try await eventually("the rotation") { board.snapshot()[Self.app]?.rotations == 1 }
                let replaced = try #require(log.entries(messageID: "socketReplaced").first)
                #expect("\(replaced.message)".contains("server rotates socket after "))
                #expect(replaced.metadata["conn.age.seconds"] != nil)
                #expect(board.census(app: Self.app).up == 2)
                try await eventually("the drained socket gone from the board") {
                    let sockets = board.snapshot()[Self.app]?.sockets ?? []
                    return sockets.count == 2 && sockets.allSatisfy { !$0.draining }
                }
                #expect(log.lines.contains { $0.contains("socket up (2/2 for this app; ages ") })
            }
            #expect(board.snapshot()[Self.app] == nil, "a stopped app leaves the board")
        }
    }

    /// Issue 15 (confusing): a socket the server dropped was logged with the make-before-break
    /// MESSAGE_ID (socketReplaced), so `journalctl MESSAGE_ID=…` mixed losses with rotations.
    @Test(.timeLimit(.minutes(1)))
    func aLostSocketIsLoggedWithItsOwnMessageID() async throws {
        try await DingTalkSimulator.withRunning(.single(Self.app)) { sim in
            let log = CapturedLog()
            let board = ConnectionBoard()
            try await withSupervisor(settings(for: sim, connections: 1), board: board, logger: log.logger) {
                try await eventually("a socket") { board.census(app: Self.app).up == 1 }
                let socket = try #require(sim.liveSockets(app: Self.app).first)
                try sim.disconnect(socket: socket.id, mode: .abruptClose)
                try await eventually("the loss logged") { !log.entries(messageID: "socketLost").isEmpty }
                let lost = try #require(log.entries(messageID: "socketLost").first)
                #expect("\(lost.message)".contains("socket closed after "), "\(lost.message)")
                #expect(log.entries(messageID: "socketReplaced").isEmpty, "a loss is not a replacement")
            }
        }
    }
}

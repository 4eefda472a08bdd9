import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Testing
@testable import Simulator

/// Collects raw bytes from a plain TCP connection.
final class ByteCollector: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let box: NIOLockedValueBox<String>
    init(box: NIOLockedValueBox<String>) { self.box = box }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let text = String(buffer: unwrapInboundIn(data))
        box.withLockedValue { $0 += text }
    }
}

@Suite("ConnectProxy and TLS")
struct ProxyAndTLSTests {
    func waitFor(_ box: NIOLockedValueBox<String>, _ needle: String) async throws {
        let end = ContinuousClock.now + .seconds(10)
        while !box.withLockedValue({ $0.contains(needle) }) {
            if ContinuousClock.now > end { throw SimulatorError(.timeout, "waiting for \(needle)") }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func proxyTunnelsToTheSimulatorAndRecordsTargets() async throws {
        try await DingTalkSimulator.test { sim in
            try await ConnectProxy.withRunning { proxy in
                let box = NIOLockedValueBox("")
                let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                    .channelInitializer { ch in ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(ByteCollector(box: box)) } }
                    .connect(host: "127.0.0.1", port: proxy.port).get()
                try await channel.writeAndFlush(channel.allocator.buffer(string: "CONNECT 127.0.0.1:\(sim.port) HTTP/1.1\r\nHost: 127.0.0.1:\(sim.port)\r\n\r\n"))
                try await waitFor(box, "200 Connection Established\r\n\r\n")
                let body = #"{"appKey":"dinghelpdesk","appSecret":"secret-helpdesk"}"#
                try await channel.writeAndFlush(channel.allocator.buffer(string: "POST /v1.0/oauth2/accessToken HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"))
                try await waitFor(box, "accessToken")
                #expect(box.withLockedValue { $0 }.contains("\"expireIn\":7200"))
                try await channel.close()

                let refused = NIOLockedValueBox("")
                let other = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                    .channelInitializer { ch in ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(ByteCollector(box: refused)) } }
                    .connect(host: "127.0.0.1", port: proxy.port).get()
                try await other.writeAndFlush(other.allocator.buffer(string: "CONNECT api.dingtalk.com:443 HTTP/1.1\r\n\r\n"))
                try await waitFor(refused, "403")
                try? await other.close()
                #expect(proxy.connectTargets == ["127.0.0.1:\(sim.port)", "api.dingtalk.com:443"])
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func tlsModeServesHTTPSAndAdvertisesWss() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("simtls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let cert = dir.appendingPathComponent("cert.pem").path
        let key = dir.appendingPathComponent("key.pem").path
        let openssl = Process()
        openssl.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        openssl.arguments = ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                             "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                             "-addext", "subjectAltName=IP:127.0.0.1"]
        openssl.standardError = FileHandle.nullDevice
        openssl.standardOutput = FileHandle.nullDevice
        try openssl.run()
        openssl.waitUntilExit()
        try #require(openssl.terminationStatus == 0)

        try await DingTalkSimulator.test({ $0.tlsCertificatePath = cert; $0.tlsPrivateKeyPath = key }) { sim in
            #expect(sim.baseURL.hasPrefix("https://"))
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(cert))
            let context = try NIOSSLContext(configuration: tls)
            let box = NIOLockedValueBox("")
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelInitializer { ch in
                    ch.eventLoop.makeCompletedFuture {
                        try ch.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: context, serverHostname: nil))
                        try ch.pipeline.syncOperations.addHandler(ByteCollector(box: box))
                    }
                }
                .connect(host: "127.0.0.1", port: sim.port).get()
            let body = #"{"clientId":"dinghelpdesk","clientSecret":"secret-helpdesk"}"#
            try await channel.writeAndFlush(channel.allocator.buffer(string: "POST /v1.0/gateway/connections/open HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"))
            try await waitFor(box, "ticket")
            #expect(box.withLockedValue { $0 }.contains("wss://127.0.0.1:\(sim.port)/connect"))
            try? await channel.close()
            #expect(sim.registrations().count == 1)
        }
    }
}

import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Simulator
import Testing

@testable import DingStream

/// The HTTP handler's own client against real servers on loopback: a Python server that closes
/// connections the way servers do, and the simulator over TLS.
@Suite("HTTP handler client", .serialized)
struct HTTPHandlerClientTests {
    /// Answers `/answer` on any connection. `/once` is answered as the first request of a
    /// connection; as a later one the server reads it and closes without answering, as a server
    /// whose keep-alive timeout ran out as the request arrived. `/drop` is never answered, the
    /// connection closed; `/slow` is never answered, the connection kept. Every request read is
    /// logged as `<connection> <path>`.
    static let serverScript = #"""
        import os, socket, sys, threading
        log = open(os.environ["LOG"], "a", buffering=1)
        server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", int(sys.argv[1]))); server.listen(16)
        print(server.getsockname()[1], flush=True)
        count = [0]
        def serve(conn, number):
            data = b""; served = 0
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk: return conn.close()
                    data += chunk
                head, _, data = data.partition(b"\r\n\r\n")
                lines = head.decode().split("\r\n"); path = lines[0].split()[1]
                length = next((int(l.split(":")[1]) for l in lines if l.lower().startswith("content-length:")), 0)
                while len(data) < length: data += conn.recv(65536)
                body, data = data[:length], data[length:]
                log.write(f"{number} {path}\n")
                if path == "/drop" or (path == "/once" and served > 0): return conn.close()
                if path == "/slow": continue
                answer = f"connection {number} got {body.decode()}".encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer)); served += 1
        while True:
            conn, _ = server.accept(); count[0] += 1
            threading.Thread(target=serve, args=(conn, count[0]), daemon=True).start()
        """#

    /// The server above, started by the HTTP handler tests' launcher (which stops it with SIGKILL).
    final class Server: @unchecked Sendable {
        let directory: String
        let python: HTTPHandlerTests.PythonServer

        init() throws {
            directory = FileManager.default.temporaryDirectory.appendingPathComponent("handler-client-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try HTTPHandlerClientTests.serverScript.write(toFile: directory + "/server.py", atomically: true, encoding: .utf8)
            python = try HTTPHandlerTests.PythonServer(script: directory + "/server.py", environment: ["LOG": directory + "/requests.log"])
        }

        var url: String { "http://127.0.0.1:\(python.port)" }

        /// `<connection> <path>` of every request read, in order.
        func requests() -> [String] {
            ((try? String(contentsOfFile: directory + "/requests.log", encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
        }

        func stop() {
            python.stop()
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    static func client(_ url: String, concurrency: Int = 1, tls: TLSConfiguration = .makeClientConfiguration()) throws -> HTTPHandlerClient {
        try HTTPHandlerClient(
            url: url, tls: tls, concurrency: concurrency, connectTimeout: .seconds(5), loop: MultiThreadedEventLoopGroup.singleton.next())
    }

    static func post(_ client: HTTPHandlerClient, _ body: String, within seconds: Int64 = 10) async throws -> String {
        let response = try await client.execute(
            method: .POST, headers: HTTPHeaders([("Content-Type", "text/plain")]), body: Array(body.utf8),
            deadline: .now() + .seconds(seconds), bodyLimit: 1 << 20)
        return "\(response.status.code) " + String(decoding: response.body, as: UTF8.self)
    }

    /// A kept-alive connection the server closes as a request arrives, unanswered: the request
    /// goes out once more on a new connection. On a new connection, the same close is a failure,
    /// and nothing is sent twice.
    @Test(.timeLimit(.minutes(1)))
    func aKeptConnectionClosedUnderARequestSendsItOnceMoreOnANewOne() async throws {
        let server = try Server()
        defer { server.stop() }
        let kept = try Self.client(server.url + "/once")
        #expect(try await Self.post(kept, "first") == "200 connection 1 got first")
        #expect(try await Self.post(kept, "second") == "200 connection 2 got second")
        #expect(server.requests() == ["1 /once", "1 /once", "2 /once"])
        await kept.shutdown()

        let fresh = try Self.client(server.url + "/drop")
        await #expect(throws: HTTPHandlerClient.Failure.self) { try await Self.post(fresh, "dropped") }
        #expect(server.requests().filter { $0.hasSuffix("/drop") }.count == 1, "sent once: \(server.requests())")
        await fresh.shutdown()
    }

    /// No answer by the deadline is a timeout; the connection it held is closed, so the one
    /// allowed connection is free for the next request at once.
    @Test(.timeLimit(.minutes(1)))
    func noAnswerByTheDeadlineIsATimeoutThatFreesTheConnection() async throws {
        let server = try Server()
        defer { server.stop() }
        let slow = try Self.client(server.url + "/slow")
        let started = ContinuousClock.now
        do {
            _ = try await slow.execute(method: .POST, headers: [:], body: Array("wait".utf8), deadline: .now() + .milliseconds(300), bodyLimit: 1024)
            Issue.record("answered")
        } catch let failure as HTTPHandlerClient.Failure {
            #expect(failure == .timedOut)
        }
        #expect(ContinuousClock.now - started < .seconds(5))
        await slow.shutdown()

        // One connection allowed: a second request waits for the first and then gets its own.
        let answering = try Self.client(server.url + "/answer")
        async let first = Self.post(answering, "a")
        async let second = Self.post(answering, "b")
        let answers = try await [first, second].sorted()
        // Connection 1 was the one that timed out, closed by the client.
        #expect(answers == ["200 connection 2 got a", "200 connection 2 got b"])
        await answering.shutdown()
    }

    /// https: the server's certificate verifies against the configured CA, and fails without it.
    @Test(.timeLimit(.minutes(1)))
    func httpsVerifiesTheServerAgainstTheCAFile() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("handler-tls-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let certificate = directory + "/cert.pem"
        let key = directory + "/key.pem"
        let openssl = Process()
        openssl.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        openssl.arguments = [
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", certificate,
            "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ]
        openssl.standardError = FileHandle.nullDevice
        openssl.standardOutput = FileHandle.nullDevice
        try openssl.run()
        openssl.waitUntilExit()
        try #require(openssl.terminationStatus == 0)

        var configuration = SimulatorConfiguration.single("helpdesk")
        configuration.tlsCertificatePath = certificate
        configuration.tlsPrivateKeyPath = key
        try await DingTalkSimulator.withRunning(configuration) { simulator in
            let url = "https://127.0.0.1:\(simulator.port)/v1.0/gateway/connections/open"
            let body = #"{"clientId":"dinghelpdesk","clientSecret":"secret-helpdesk"}"#
            var trusting = TLSConfiguration.makeClientConfiguration()
            trusting.additionalTrustRoots = [.certificates(try NIOSSLCertificate.fromPEMFile(certificate))]
            let verified = try Self.client(url, tls: trusting)
            let answer = try await Self.post(verified, body)
            #expect(answer.hasPrefix("200 ") && answer.contains("wss://127.0.0.1:\(simulator.port)/connect"), "\(answer)")
            await verified.shutdown()

            let untrusting = try Self.client(url)
            await #expect(throws: HTTPHandlerClient.Failure.self) { try await Self.post(untrusting, body) }
            await untrusting.shutdown()
        }
    }
}

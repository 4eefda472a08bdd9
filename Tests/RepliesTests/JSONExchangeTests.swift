import AsyncHTTPClient
import Foundation
import Testing

@testable import Replies

/// A loopback server that answers each connection's first request with `response` (raw bytes)
/// and then keeps the connection open without a word more.
final class RawHTTPServer: @unchecked Sendable {
    let port: Int
    private let listener: Int32
    private let thread: Thread

    init(response: [UInt8]) throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) } }
        guard bound == 0, listen(listener, 8) == 0 else { throw POSIXError(.EADDRINUSE) }
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) } }
        self.listener = listener
        port = Int(UInt16(bigEndian: address.sin_port))
        thread = Thread {
            var open: [Int32] = []
            while true {
                let connection = accept(listener, nil, nil)
                guard connection >= 0 else { break }
                open.append(connection)
                var buffer = [UInt8](repeating: 0, count: 65536)
                _ = read(connection, &buffer, buffer.count)
                var sent = 0
                while sent < response.count {
                    let count = response[sent...].withUnsafeBytes { write(connection, $0.baseAddress, $0.count) }
                    guard count > 0 else { break }
                    sent += count
                }
            }
            open.forEach { close($0) }
        }
        thread.start()
    }

    func stop() {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }
}

@Suite struct JSONExchangeTests {
    /// What one POST to `server` to `server` through a client of its own.
    static func postError(to server: RawHTTPServer, timeout: Duration, cap: Int) async throws -> ReplyError? {
        let exchange = JSONExchange(httpClient: HTTPClient.onOneEventLoop(), timeout: timeout, bodyCap: cap)
        let error = await #expect(throws: ReplyError.self) {
            _ = try await exchange.post(url: "http://127.0.0.1:\(server.port)/robot/send", endpoint: "session webhook", body: Data("{}".utf8), logger: quietLogger)
        }
        try await exchange.httpClient.shutdown()
        return error
    }

    /// The deadline covers the body too: a server that sends its head and then stalls is a
    /// timeout after the request timeout, not a wait for ever.
    @Test(.timeLimit(.minutes(1))) func aBodyThatNeverComesIsATimeout() async throws {
        let server = try RawHTTPServer(response: Array("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"errcode\"".utf8))
        defer { server.stop() }
        let started = ContinuousClock.now
        let error = try await Self.postError(to: server, timeout: .milliseconds(500), cap: 1024)
        #expect(error?.code == .timeout)
        #expect(ContinuousClock.now - started < .seconds(5))
    }

    /// An answer over the size cap is refused as a bad response, whatever its status.
    @Test(.timeLimit(.minutes(1))) func anAnswerOverTheCapIsABadResponse() async throws {
        let body = "{\"errcode\":0,\"padding\":\"" + String(repeating: "x", count: 4096) + "\"}"
        let server = try RawHTTPServer(response: Array("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)".utf8))
        defer { server.stop() }
        let error = try await Self.postError(to: server, timeout: .seconds(5), cap: 1024)
        #expect(error?.code == .badResponse)
    }
}

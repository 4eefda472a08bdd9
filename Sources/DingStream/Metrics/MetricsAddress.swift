import Foundation
import NIOCore

/// Where `GET /metrics` is served (`metrics_listen`).
///
/// The rule: metrics leave the host only when the administrator wrote a non-loopback address.
/// - `"127.0.0.1:9464"`, `"[::1]:9464"`, `"localhost:9464"`: loopback.
/// - `"9464"` or `":9464"`: 127.0.0.1, never every interface.
/// - `"0.0.0.0:9464"`, `"[::]:9464"` or a host's own address: accepted because written out as an
///   IP literal, and logged as a warning at start.
/// - Any other host name is refused: it would bind wherever DNS points it, today or later.
public struct MetricsAddress: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `text`; a failure says why it is not an address by the rule above.
    public static func parse(_ text: String) -> Result<MetricsAddress, ParseFailure> {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        var host: Substring
        var portText: Substring
        if trimmed.hasPrefix("[") {
            guard let close = trimmed.firstIndex(of: "]"), trimmed[trimmed.index(after: close)...].hasPrefix(":") else {
                return .failure(ParseFailure("write an IPv6 address as \"[::1]:9464\""))
            }
            host = trimmed[trimmed.index(after: trimmed.startIndex)..<close]
            portText = trimmed[trimmed.index(close, offsetBy: 2)...]
        } else if let colon = trimmed.lastIndex(of: ":") {
            host = trimmed[..<colon]
            portText = trimmed[trimmed.index(after: colon)...]
            if host.contains(":") { return .failure(ParseFailure("write an IPv6 address in brackets, as \"[::1]:9464\"")) }
        } else {
            host = ""
            portText = Substring(trimmed)
        }
        guard let port = Int(portText), (0...65535).contains(port) else {
            return .failure(ParseFailure("the port must be a number from 0 to 65535, as in \"127.0.0.1:9464\""))
        }
        if host.isEmpty { host = "127.0.0.1" }
        if host == "localhost" { return .success(MetricsAddress(host: "127.0.0.1", port: port)) }
        guard (try? SocketAddress(ipAddress: String(host), port: port)) != nil else {
            return .failure(ParseFailure("\"\(host)\" is not an IP address; write 127.0.0.1 (or another address of this host, which makes the metrics reachable from the network)"))
        }
        return .success(MetricsAddress(host: String(host), port: port))
    }

    public struct ParseFailure: Error, Equatable {
        public var message: String
        init(_ message: String) { self.message = message }
    }

    public var isLoopback: Bool {
        host.hasPrefix("127.") || host == "::1"
    }

    var hostForURL: String { host.contains(":") ? "[\(host)]" : host }

    public var description: String { "\(hostForURL):\(port)" }
}

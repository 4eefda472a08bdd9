import NIOSSL

/// Failures of registration and sockets. Every one of them is retried with backoff by the
/// connection slot; the description tells an operator what to check.
public struct StreamClientError: Error, Sendable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// 401 `authFailed`: the client id or secret is wrong.
        case authFailed
        /// Any other non-200 answer to registration.
        case registrationRejected(status: Int, code: String?)
        case badResponse
        case timeout
        case transport
        /// The TLS handshake failed, most often because the server's certificate is not trusted.
        case tls
        /// The gateway handed out an endpoint we refuse (plain ws:// to a non-loopback host).
        case insecureEndpoint
        case upgradeRefused
        case ticketExpired
    }

    public var code: Code
    public var app: String
    public var detail: String

    public init(_ code: Code, app: String, detail: String = "") {
        self.code = code
        self.app = app
        self.detail = detail
    }

    /// `.tls` when `error` comes from the TLS layer (untrusted certificate, wrong host name), else `fallback`.
    static func classify(_ error: any Error, app: String, fallback: Code, detail: String) -> StreamClientError {
        let isTLS = error is NIOSSLError || error is NIOSSLExtraError || error is BoringSSLError
        return StreamClientError(isTLS ? .tls : fallback, app: app, detail: detail)
    }

    public var description: String {
        let suffix = detail.isEmpty ? "" : " (\(detail))"
        switch code {
        case .authFailed:
            return "app \(app): registration refused with 401 authFailed; check client_id and client_secret of this app in the DingTalk developer console\(suffix)"
        case .registrationRejected(let status, let code):
            return "app \(app): registration answered HTTP \(status)\(code.map { " \($0)" } ?? "")\(suffix); retrying with backoff"
        case .badResponse:
            return "app \(app): registration answer is not the expected JSON\(suffix)"
        case .timeout:
            return "app \(app): timed out\(suffix); check network, proxy and firewall towards DingTalk"
        case .transport:
            return "app \(app): network error\(suffix); check DNS, proxy, CA file and firewall towards DingTalk"
        case .tls:
            return "app \(app): TLS handshake failed\(suffix); the server certificate is not trusted by the system store or ca_file: if a company proxy or private CA signs it, set ca_file to that CA's PEM file"
        case .insecureEndpoint:
            return "app \(app): the gateway offered an unencrypted endpoint to a non-loopback host\(suffix); refusing it"
        case .upgradeRefused:
            return "app \(app): the stream endpoint refused the WebSocket upgrade\(suffix); the ticket may have expired"
        case .ticketExpired:
            return "app \(app): the ticket is older than 90 s and was not used; fetching a fresh one"
        }
    }
}

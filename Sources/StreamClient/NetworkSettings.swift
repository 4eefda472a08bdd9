import AsyncHTTPClient
import Foundation
import NIOCore
import NIOPosix
import NIOSSL

/// How an app reaches DingTalk: TLS trust, proxy and deadlines. Shared by registration, the
/// OpenAPI client and the sockets so all three take the same path through a company network.
public struct NetworkSettings: Sendable {
    public var caFile: String?
    /// `http://host:port` of an HTTP CONNECT proxy; nil means direct.
    public var proxy: String?
    /// Hosts (suffixes) that bypass the proxy, from `no_proxy`.
    public var noProxy: [String]
    public var connectTimeout: Duration
    public var requestTimeout: Duration

    public init(
        caFile: String? = nil, proxy: String? = nil, noProxy: [String] = [],
        connectTimeout: Duration = .seconds(10), requestTimeout: Duration = .seconds(15)
    ) {
        self.caFile = caFile
        self.proxy = proxy
        self.noProxy = noProxy
        self.connectTimeout = connectTimeout
        self.requestTimeout = requestTimeout
    }

    /// Settings from the configuration, falling back to `https_proxy`/`no_proxy` in `environment`.
    public static func resolve(proxy: String?, caFile: String?, environment: [String: String]) -> NetworkSettings {
        let fromEnvironment = environment["https_proxy"] ?? environment["HTTPS_PROXY"]
        let noProxy = (environment["no_proxy"] ?? environment["NO_PROXY"] ?? "")
            .split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        return NetworkSettings(caFile: caFile, proxy: proxy ?? fromEnvironment.flatMap { $0.isEmpty ? nil : $0 }, noProxy: noProxy)
    }

    /// The proxy to use for `host`, honouring `no_proxy` (exact host, `.suffix`, or `*`).
    public func proxyEndpoint(for host: String) -> (host: String, port: Int)? {
        guard let proxy, let url = URL(string: proxy.contains("://") ? proxy : "http://" + proxy), let proxyHost = url.host else {
            return nil
        }
        let lowered = host.lowercased()
        for entry in noProxy {
            let pattern = entry.lowercased()
            if pattern == "*" || lowered == pattern || lowered.hasSuffix(pattern.hasPrefix(".") ? pattern : "." + pattern) {
                return nil
            }
        }
        return (proxyHost, url.port ?? 3128)
    }

    /// Client TLS with the system trust store, plus `caFile` when given. Verification stays on.
    public func tlsConfiguration() throws -> TLSConfiguration {
        var tls = TLSConfiguration.makeClientConfiguration()
        if let caFile {
            tls.additionalTrustRoots = [.certificates(try NIOSSLCertificate.fromPEMFile(caFile))]
        }
        return tls
    }

    /// An HTTP client for calls to `baseURL`; the caller shuts it down.
    public func makeHTTPClient(for baseURL: String) throws -> HTTPClient {
        var configuration = HTTPClient.Configuration(
            tlsConfiguration: try tlsConfiguration(),
            timeout: .init(connect: .init(connectTimeout), read: .init(requestTimeout)))
        if let host = URL(string: baseURL)?.host, let endpoint = proxyEndpoint(for: host) {
            configuration.proxy = .server(host: endpoint.host, port: endpoint.port)
        }
        configuration.redirectConfiguration = .disallow
        // Every caller retries with its own backoff and logs each failure. The client's own
        // retries would hide a lasting failure (an untrusted certificate, a refused port) until
        // the connect timeout, and then report it as a timeout.
        configuration.connectionPool.retryConnectionEstablishment = false
        // One event loop for requests and connections alike: see `HTTPClient.onOneEventLoop` in Replies.
        return HTTPClient(eventLoopGroupProvider: .shared(MultiThreadedEventLoopGroup.singleton.next()), configuration: configuration)
    }
}

/// True for addresses that never leave the machine; plain ws:// and http:// are allowed only there.
public func isLoopbackHost(_ host: String) -> Bool {
    host == "localhost" || host.hasPrefix("127.") || host == "::1" || host == "[::1]"
}

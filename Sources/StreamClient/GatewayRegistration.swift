import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
import StreamProtocol

/// What the gateway hands out: where to connect, and a single-use ticket good for 90 s.
public struct StreamTicket: Sendable {
    public var endpoint: String
    public var ticket: String
    public var issuedAt: ContinuousClock.Instant

    /// The protocol's ticket lifetime, with a margin for the handshake itself.
    public static let usableFor: Duration = .seconds(80)
}

/// `POST /v1.0/gateway/connections/open`.
public struct GatewayRegistration: Sendable {
    public var app: String
    public var clientID: String
    public var clientSecret: String
    public var apiBase: String
    public var subscriptions: [Subscription]
    public var userAgent: String
    public var deadline: Duration

    public init(
        app: String, clientID: String, clientSecret: String, apiBase: String, subscriptions: [Subscription],
        userAgent: String, deadline: Duration = .seconds(15)
    ) {
        self.app = app
        self.clientID = clientID
        self.clientSecret = clientSecret
        self.apiBase = apiBase
        self.subscriptions = subscriptions
        self.userAgent = userAgent
        self.deadline = deadline
    }

    /// The JSON body; the secret is in it, so it is never logged.
    func body(localIP: String) -> String {
        JSON.encode([
            "clientId": clientID,
            "clientSecret": clientSecret,
            "subscriptions": subscriptions.map { ["type": $0.wire.type, "topic": $0.wire.topic] },
            "ua": userAgent,
            "localIp": localIP,
        ])
    }

    /// Registers and returns a fresh ticket.
    /// - Throws: `StreamClientError` (`.authFailed` for 401, `.timeout`, `.transport`, …).
    public func register(using client: HTTPClient, localIP: String = "127.0.0.1") async throws(StreamClientError) -> StreamTicket {
        var request = HTTPClientRequest(url: apiBase + "/v1.0/gateway/connections/open")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "Accept", value: "application/json")
        request.headers.add(name: "User-Agent", value: userAgent)
        request.body = .bytes(ByteBuffer(string: body(localIP: localIP)))
        let status: UInt
        let bytes: ByteBuffer
        do {
            let response = try await client.execute(request, timeout: TimeAmount(deadline))
            status = response.status.code
            bytes = try await response.body.collect(upTo: 64 * 1024)
        } catch let error as HTTPClientError where error == .deadlineExceeded || error == .readTimeout || error == .connectTimeout {
            throw StreamClientError(.timeout, app: app, detail: "registration at \(apiBase)")
        } catch {
            throw StreamClientError.classify(error, app: app, fallback: .transport, detail: "registration at \(apiBase): \(error)")
        }
        let object = JSON.object(Data(bytes.readableBytesView))
        guard status == 200 else {
            let code = object?["code"] as? String
            if status == 401 || code == "authFailed" { throw StreamClientError(.authFailed, app: app) }
            throw StreamClientError(.registrationRejected(status: Int(status), code: code), app: app, detail: object?["message"] as? String ?? "")
        }
        guard let endpoint = object?["endpoint"] as? String, let ticket = object?["ticket"] as? String, !ticket.isEmpty else {
            throw StreamClientError(.badResponse, app: app, detail: "missing endpoint or ticket")
        }
        return StreamTicket(endpoint: endpoint, ticket: ticket, issuedAt: .now)
    }
}

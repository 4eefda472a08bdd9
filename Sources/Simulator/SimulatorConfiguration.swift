import Foundation
import Logging

/// One DingTalk app (robot) the simulator knows. `clientId` doubles as the robotCode.
public struct SimulatedApp: Sendable, Hashable {
    public var name: String
    public var clientId: String
    public var clientSecret: String

    public init(name: String, clientId: String, clientSecret: String) {
        self.name = name
        self.clientId = clientId
        self.clientSecret = clientSecret
    }
}

/// Everything the simulator can be told up front. Durations are real time (NIO timers);
/// `now` only stamps records and payloads and decides webhook/token expiry, so tests can jump it.
public struct SimulatorConfiguration: Sendable {
    public var apps: [SimulatedApp]
    public var host: String = "127.0.0.1"
    /// 0 picks a free port; read it back from `DingTalkSimulator.port`.
    public var port: Int = 0
    public var ticketLifetime: Duration = .seconds(90)
    public var pingInterval: Duration = .seconds(30)
    public var redeliveryTimeout: Duration = .seconds(60)
    public var webhookLifetime: Duration = .seconds(90 * 60)
    /// `expireIn` of access tokens, in seconds.
    public var tokenLifetimeSeconds: Int = 7200
    /// Time between a SYSTEM `disconnect` frame and the TCP close.
    public var disconnectGrace: Duration = .seconds(10)
    /// When set, every socket gets a `disconnect` frame once it is this old.
    public var rotationAge: Duration? = nil
    /// Staff ids that OpenAPI sends report in `invalidStaffIdList`.
    public var invalidStaffIds: Set<String> = []
    /// Acks that arrive on another socket than the push are recorded but do not settle it.
    public var acceptAcksFromOtherSockets: Bool = false
    /// Benchmarks turn this off: counters stay exact, per-push/per-ack records are not kept.
    public var recordDetails: Bool = true
    /// Benchmarks turn this on: every accepted ack's push-to-ack time is kept (`takeAckLatencies`).
    public var recordAckLatencies: Bool = false
    /// Certificate chain and private key (PEM); when both are set everything is HTTPS and wss.
    public var tlsCertificatePath: String? = nil
    public var tlsPrivateKeyPath: String? = nil
    /// Seeds socket choice and generated ids; nil picks a random seed.
    public var randomSeed: UInt64? = nil
    public var now: @Sendable () -> Date = { Date() }
    public var logger: Logger = Logger(label: "dingstream.simulator")

    public init(apps: [SimulatedApp]) {
        self.apps = apps
    }

    /// One app named `name` with made-up credentials `ding<name>` / `secret-<name>`.
    public static func single(_ name: String = "helpdesk") -> SimulatorConfiguration {
        SimulatorConfiguration(apps: [SimulatedApp(name: name, clientId: "ding\(name)", clientSecret: "secret-\(name)")])
    }
}

extension Duration {
    var timeAmount: TimeAmount {
        let (seconds, attoseconds) = components
        return .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
    var seconds: Double {
        let (s, a) = components
        return Double(s) + Double(a) / 1e18
    }
}

import NIOCore

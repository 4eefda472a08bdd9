import Synchronization
import Foundation
import NIOCore

/// Read-outs, fault switches and waiting helpers for tests.
extension DingTalkSimulator {
    public func registrations(app: String? = nil) -> [RegistrationRecord] {
        core.withLock { c in c.registrations.filter { app == nil || $0.app == app } }
    }

    public func pushes(app: String? = nil) -> [PushRecord] {
        core.withLock { c in app == nil ? c.pushes : c.pushes.filter { $0.app == app } }
    }

    public func acks(app: String? = nil) -> [AckRecord] {
        core.withLock { c in app == nil ? c.acks : c.acks.filter { $0.app == app } }
    }

    public func pingEchoes(app: String? = nil) -> [PingEchoRecord] {
        core.withLock { c in app == nil ? c.pingEchoes : c.pingEchoes.filter { $0.app == app } }
    }

    public func webhookReplies(app: String? = nil) -> [WebhookReplyRecord] {
        core.withLock { c in app == nil ? c.webhookReplies : c.webhookReplies.filter { $0.app == app } }
    }

    /// Session webhook calls so far, all apps, any answer: cheap enough to poll while waiting.
    public var webhookReplyCount: Int {
        core.withLock { $0.webhookReplies.count }
    }

    public func openAPISends(app: String? = nil) -> [OpenAPISendRecord] {
        core.withLock { c in app == nil ? c.openAPISends : c.openAPISends.filter { $0.app == app } }
    }

    /// Every socket ever opened for the app (closed ones too), oldest first.
    public func sockets(app: String) -> [SocketInfo] {
        core.withLock { c in
            c.sockets.values.filter { $0.app == app }.sorted { $0.id < $1.id }
                .map { SocketInfo(id: $0.id, app: $0.app, state: $0.state, openedAt: $0.openedAt, blackHoled: $0.blackHoled, closedAt: $0.closedAt) }
        }
    }

    /// Sockets that currently get pushes.
    public func liveSockets(app: String) -> [SocketInfo] {
        sockets(app: app).filter { $0.state == .live }
    }

    /// Intervals without a live socket after the app's first live socket; an ongoing one has `end` nil.
    public func gaps(app: String) -> [GapRecord] {
        core.withLock { c in
            var list = c.gaps[app] ?? []
            if let start = c.openGap[app] { list.append(GapRecord(app: app, start: start, end: nil)) }
            return list
        }
    }

    public func stats(app: String) -> AppStats {
        let now = configuration.now()
        return core.withLock { c in
            var s = c.stats[app] ?? AppStats()
            if let start = c.openGap[app] {
                s.gaps += 1
                s.gapSeconds += now.timeIntervalSince(start)
            }
            return s
        }
    }

    /// Whether the message with this business id (msgId, eventId) got an accepted ack.
    public func isAcked(app: String, businessId: String) -> Bool {
        core.withLock { c in
            guard let id = c.deliveryByBusinessKey[SimulatorCore.businessKey(app: app, id: businessId)] else { return false }
            return c.deliveries[id]?.settled ?? false
        }
    }

    /// How many calls to `endpoint` got a fault's answer instead of the normal one (delays not
    /// counted): proof that a client tried while an outage stood.
    public func faultedCalls(_ endpoint: OpenAPIEndpoint) -> Int {
        core.withLock { $0.faultedCalls[endpoint, default: 0] }
    }

    /// Frames from clients that were not JSON with `headers.messageId`.
    public var malformedFrames: Int { core.withLock { $0.malformedFrames } }

    /// Registers bytes that `messageFiles/download` then serves for `downloadCode`.
    public func registerFile(app: String, downloadCode: String, bytes: [UInt8]) throws {
        _ = try self.app(named: app)
        core.withLock { c in
            let token = c.rng.hex(24)
            c.files[downloadCode] = FileEntry(app: app, bytes: bytes, urlToken: token)
            c.fileByURLToken[token] = downloadCode
        }
    }

    /// The bytes behind a download code (to compare with what a client downloaded).
    public func fileBytes(downloadCode: String) -> [UInt8]? {
        core.withLock { $0.files[downloadCode]?.bytes }
    }

    // MARK: faults

    /// Applies one fault switch.
    /// - Throws: `SimulatorError.unknownApp` / `.noSuchSocket` for disconnects of unknown targets.
    public func apply(_ fault: SimulatorFault) throws {
        switch fault {
        case .disconnect(let app, let socket, let mode):
            try disconnect(app: app, socket: socket, mode: mode)
        case .registration(let app, let failure, let count):
            if let app { _ = try self.app(named: app) }
            core.withLock { $0.registrationFaults.append(CountedRegistrationFault(app: app, failure: failure, remaining: count)) }
        case .http(let endpoint, let failure, let count):
            core.withLock { $0.httpFaults[endpoint, default: []].append(CountedHTTPFault(failure: failure, remaining: count)) }
        case .clearHTTPFaults(let endpoint):
            core.withLock { c in
                if let endpoint { c.httpFaults[endpoint] = nil } else { c.httpFaults = [:] }
            }
        case .expireTokens(let app):
            _ = try self.app(named: app)
            let past = Date(timeIntervalSince1970: 0)
            core.withLock { c in
                for (token, entry) in c.tokens where entry.app == app { c.tokens[token]?.expiresAt = past }
            }
        case .expireWebhooks(let app):
            core.withLock { c in
                for (session, entry) in c.sessions where app == nil || entry.app == app { c.sessions[session]?.expiredByCommand = true }
            }
        case .throttleWebhooks(let on):
            core.withLock { $0.webhookThrottle = on }
        case .rotation(let age):
            core.withLock { $0.rotationAge = age }
        case .oversizedFrame(let app, let socket, let bytes):
            try pushOversizedFrame(app: app, socket: socket, bytes: bytes)
        }
    }

    public func expireTokens(app: String) throws { try apply(.expireTokens(app: app)) }

    /// Makes the session webhook of one injected message answer 300001 from now on.
    public func expireWebhook(_ message: InjectedMessage) {
        let (_, query) = splitURI(message.sessionWebhook)
        guard let session = query["session"] else { return }
        core.withLock { $0.sessions[session]?.expiredByCommand = true }
    }

    // MARK: waiting

    /// Polls `condition` every few milliseconds until it holds.
    /// - Throws: `SimulatorError.timeout` naming `what` when it still fails after `timeout`.
    public func waitUntil(
        timeout: Duration = .seconds(10), _ what: String = "condition",
        _ condition: @Sendable (DingTalkSimulator) -> Bool
    ) async throws {
        let clock = ContinuousClock()
        let end = clock.now + timeout
        while !condition(self) {
            if clock.now >= end { throw SimulatorError(.timeout, "after \(timeout) waiting for \(what)") }
            try await Task.sleep(for: .milliseconds(5))
        }
    }
}

import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import StreamProtocol

/// Time and randomness of the connection loops, injectable so tests run hours of reconnect
/// cycles in milliseconds.
public struct SlotEnvironment: Sendable {
    /// Backoff waits and age limits; throws when cancelled.
    public var sleep: @Sendable (Duration) async throws -> Void
    /// Uniform in `0 ..< 1`.
    public var random: @Sendable () -> Double
    /// The clock that ages tickets and decides when a socket has proven healthy; a test moves it
    /// together with its `sleep`.
    public var now: @Sendable () -> ContinuousClock.Instant

    public init(
        sleep: @escaping @Sendable (Duration) async throws -> Void, random: @escaping @Sendable () -> Double,
        now: @escaping @Sendable () -> ContinuousClock.Instant = { .now }
    ) {
        self.sleep = sleep
        self.random = random
        self.now = now
    }

    public static let live = SlotEnvironment(
        sleep: { try await Task.sleep(for: $0) },
        random: { Double.random(in: 0..<1) })
}

/// Everything one app's sockets need.
public struct AppConnectionSettings: Sendable {
    public var registration: GatewayRegistration
    public var network: NetworkSettings
    public var keepalive: KeepaliveSettings
    public var connections: Int
    public var maxConnectionAge: Duration
    /// Frames with more payload than this are left out, and the socket that carried one is
    /// replaced (`max_frame_size`).
    public var maxFrameSize = StreamFrame.maximumSize
    /// How long a replaced socket may still deliver frames already on their way before we close it.
    public var drainTime: Duration = .seconds(15)
    /// A socket that stayed up this long has proven healthy and resets the backoff.
    public var healthyAfter: Duration = .seconds(30)
    /// Between failed connects. Full jitter under a 20 s cap: once DingTalk is back after an
    /// outage, every socket is up again within 20 s (a 60 s cap left sockets down for 48 s).
    public var backoff = Backoff(base: .seconds(1), cap: .seconds(20))

    public init(registration: GatewayRegistration, network: NetworkSettings, keepalive: KeepaliveSettings, connections: Int, maxConnectionAge: Duration) {
        self.registration = registration
        self.network = network
        self.keepalive = keepalive
        self.connections = connections
        self.maxConnectionAge = maxConnectionAge
    }

    public var app: String { registration.app }
}

/// One of an app's sockets, kept alive forever: register → connect → serve → replace.
///
/// Replacement is make-before-break: on SYSTEM `disconnect`, a deaf socket or the age limit the
/// next socket is registered and connected first; the old one keeps delivering (and acking) what
/// is already on its way and is closed after `drainTime`. Only an abrupt close leaves the slot
/// empty until the reconnect, and the app's other slots cover that time.
struct ConnectionSlot: Sendable {
    let index: Int
    let settings: AppConnectionSettings
    let httpClient: HTTPClient
    let sink: any FrameSink
    let board: ConnectionBoard
    let environment: SlotEnvironment
    let logger: Logger

    private enum Wake: Sendable {
        case event(SocketEvent)
        case ageLimit
    }

    /// Runs until cancelled; closes its sockets on the way out.
    func run() async {
        var failures = 0
        var firstSocket = true
        await withDiscardingTaskGroup { group in
            var current: StreamSocket?
            // A silent or deaf socket has nothing left to deliver: it goes as soon as its
            // replacement is up, and without waiting for a close handshake it would never answer.
            var currentIsDead = false
            while !Task.isCancelled {
                let socket: StreamSocket
                do {
                    socket = try await establish()
                } catch {
                    board.failed(app: settings.app, error: "\(error)")
                    let delay = settings.backoff.delay(afterFailures: failures, unit: environment.random())
                    failures += 1
                    logger.error(
                        "\(error); next attempt in \(delay.formattedSeconds)",
                        metadata: ["app": "\(settings.app)", "conn.slot": "\(index)", "attempt": "\(failures)"])
                    do { try await environment.sleep(delay) } catch { break }
                    continue
                }
                let upSince = environment.now()
                board.socketUp(app: settings.app, slot: index, connectionID: socket.id, openedAt: upSince, wallClock: Date().timeIntervalSince1970)
                // However the socket ends, it leaves the board with it, also while we back off.
                board.channelOpened()
                socket.channel.closeFuture.whenComplete { [board, app = settings.app, id = socket.id] _ in
                    board.socketDown(app: app, connectionID: id)
                    board.channelClosed()
                }
                if let old = current {
                    // The replacement is live: only now let the old socket go.
                    board.rotated(app: settings.app)
                    board.socketDraining(app: settings.app, connectionID: old.id)
                    let dead = currentIsDead
                    group.addTask { await drain(old, closeAfter: dead ? .zero : settings.drainTime) }
                }
                current = socket
                currentIsDead = false
                let census = board.census(app: settings.app, now: upSince)
                logger.notice(
                    "socket up (\(census.up)/\(census.wanted) for this app; ages \(census.ages))",
                    metadata: [
                        "app": "\(settings.app)", "conn.id": "\(socket.id)", "conn.slot": "\(index)", "message.id": "socketUp",
                        "app.sockets": "\(census.up)", "app.sockets.wanted": "\(census.wanted)", "app.sockets.ages": "\(census.ages)",
                    ])

                let ageLimit = ageLimit(first: firstSocket)
                firstSocket = false
                let wake = await waitForReplacementReason(socket, ageLimit: ageLimit)
                let age = environment.now() - upSince
                if age >= settings.healthyAfter { failures = 0 }
                switch wake {
                case .none:
                    break  // cancelled
                case .event(.closed(let reason))?:
                    board.replaced(app: settings.app, reason: .closed)
                    board.socketDown(app: settings.app, connectionID: socket.id)
                    current = nil
                    logger.warning(
                        "socket closed after \(age.formattedAge): \(reason); reconnecting; \(board.census(app: settings.app, now: environment.now()).summary)",
                        // Not make-before-break: nothing was connected first.
                        metadata: replacedMetadata(socket, age: age).merging(["message.id": "socketLost"]) { $1 })
                    if age < settings.healthyAfter {
                        let delay = settings.backoff.delay(afterFailures: failures, unit: environment.random())
                        failures += 1
                        do { try await environment.sleep(delay) } catch { break }
                    }
                case .event(.disconnectRequested(let reason))?:
                    // The server rotates only a socket that works: however young, it proved the
                    // link, so a close of its replacement starts the backoff from the beginning.
                    failures = 0
                    board.replaced(app: settings.app, reason: .disconnect)
                    logger.notice(
                        "server rotates socket after \(age.formattedAge) (\(reason)); opening its replacement first",
                        metadata: replacedMetadata(socket, age: age))
                case .event(.deaf(let reason))?:
                    board.replaced(app: settings.app, reason: .deaf)
                    currentIsDead = true
                    logger.warning(
                        "socket is deaf after \(age.formattedAge) (\(reason)); opening its replacement first",
                        metadata: replacedMetadata(socket, age: age))
                case .event(.oversizedFrame(let bytes))?:
                    board.replaced(app: settings.app, reason: .oversizedFrame)
                    logger.warning(
                        "a frame of \(bytes) bytes exceeds max_frame_size (\(settings.maxFrameSize) bytes) and was left out unacked; replacing this socket, opening its replacement first",
                        metadata: replacedMetadata(socket, age: age).merging(["frame.bytes": "\(bytes)"]) { $1 })
                case .ageLimit?:
                    board.replaced(app: settings.app, reason: .ageLimit)
                    logger.info(
                        "socket reached its age limit at \(age.formattedAge); opening its replacement first",
                        metadata: replacedMetadata(socket, age: age))
                }
            }
            if let current {
                board.socketDown(app: settings.app, connectionID: current.id)
                await current.close()
            }
        }
    }

    private func replacedMetadata(_ socket: StreamSocket, age: Duration) -> Logger.Metadata {
        [
            "app": "\(settings.app)", "conn.id": "\(socket.id)", "conn.slot": "\(index)", "message.id": "socketReplaced",
            "conn.age.seconds": "\(age.components.seconds)",
        ]
    }

    /// Registers and connects. A ticket that went stale before use (older than
    /// `StreamTicket.usableFor` by our clock, or refused by the server at the upgrade, which is
    /// how an expired or used ticket is answered) is thrown away and a fresh one fetched at once,
    /// one time; a second failure goes to the caller's backoff.
    private func establish() async throws(StreamClientError) -> StreamSocket {
        var lastError: StreamClientError?
        for attempt in 0..<2 {
            // The ticket's 90 s may start as soon as the gateway gets the request: count from there.
            let requested = environment.now()
            var ticket = try await settings.registration.register(using: httpClient, localIP: localIPAddress())
            ticket.issuedAt = requested
            do throws(StreamClientError) {
                guard environment.now() - ticket.issuedAt < StreamTicket.usableFor else {
                    throw StreamClientError(.ticketExpired, app: settings.app)
                }
                return try await StreamSocket.connect(
                    ticket: ticket, app: settings.app, settings: settings.network, keepalive: settings.keepalive,
                    maxFrameSize: settings.maxFrameSize, sink: sink, logger: logger)
            } catch where error.code == .ticketExpired || error.code == .upgradeRefused {
                lastError = error
                if attempt == 0 {
                    logger.warning("\(error); registering again", metadata: ["app": "\(settings.app)", "conn.slot": "\(index)"])
                }
            }
        }
        throw lastError ?? StreamClientError(.ticketExpired, app: settings.app)
    }

    /// Staggers sockets: the first age of slot i of n ends at (i+1)/n of the limit, later ones
    /// at 85–100 % of it, so an app's sockets never reach their limits together.
    private func ageLimit(first: Bool) -> Duration {
        let jitter = 0.85 + 0.15 * environment.random()
        let share = first ? Double(index + 1) / Double(max(settings.connections, 1)) : 1
        return settings.maxConnectionAge * (share * jitter)
    }

    private func waitForReplacementReason(_ socket: StreamSocket, ageLimit: Duration) async -> Wake? {
        await withTaskGroup(of: Wake?.self) { group in
            group.addTask {
                for await event in socket.events { return .event(event) }
                // The stream also ends when we are cancelled; that is a shutdown, not a close.
                return Task.isCancelled ? nil : .event(.closed(reason: "connection closed"))
            }
            group.addTask {
                do { try await environment.sleep(ageLimit) } catch { return nil }
                return .ageLimit
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
    }

    /// Lets a replaced socket deliver what is already on its way, then closes it: when the server
    /// closes it, after `closeAfter`, or when the slot stops, whichever comes first. (Waiting for
    /// the server alone would keep a deaf socket open for ever.) `closeAfter` zero: a dead socket,
    /// dropped at once without a close handshake nobody would answer.
    private func drain(_ socket: StreamSocket, closeAfter: Duration) async {
        if closeAfter == .zero {
            try? await socket.channel.close().get()
        } else {
            let closed = socket.channel.closeFuture
            await withTaskGroup(of: Void.self) { group in
                group.addTask { try? await closed.get() }
                group.addTask { try? await Task.sleep(for: closeAfter) }
                await group.next()
                // Closing completes `closed`, so the group can end; a closed channel makes this a no-op.
                if socket.channel.isActive { await socket.close() } else { try? await socket.channel.close().get() }
                group.cancelAll()
            }
        }
        board.socketDown(app: settings.app, connectionID: socket.id)
        logger.info("replaced socket closed", metadata: ["app": "\(settings.app)", "conn.id": "\(socket.id)"])
    }
}

/// The address DingTalk's registration asks for; informational only.
func localIPAddress() -> String {
    "127.0.0.1"
}

extension Duration {
    /// `41s`, `12m05s`, `3h12m`: ages of sockets in log lines.
    public var formattedAge: String {
        let total = max(components.seconds, 0)
        if total < 60 { return "\(total)s" }
        if total < 3600 { return String(format: "%dm%02ds", total / 60, total % 60) }
        return String(format: "%dh%02dm", total / 3600, (total % 3600) / 60)
    }
}

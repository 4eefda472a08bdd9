import Synchronization

/// Why a socket was replaced (metrics label values).
public enum SocketReplacementReason: String, Sendable, CaseIterable {
    /// Closed without warning (TCP reset, close frame, network); reconnected after a backoff.
    case closed
    /// SYSTEM `disconnect`: the server rotates it.
    case disconnect
    /// Silent or deaf: nothing useful arrived for too long.
    case deaf
    /// A frame over `max_frame_size` was left out.
    case oversizedFrame = "oversized_frame"
    /// The client-side age limit (`max_connection_age`).
    case ageLimit = "age_limit"
}

/// What every app's sockets are doing right now: for logs, `STATUS=`, `dingstream status`, and
/// readiness. Written by the connection slots, read by anyone.
public final class ConnectionBoard: Sendable {
    /// Told about socket events that counters need and a snapshot cannot show; called on the
    /// slot's task, so it must be quick.
    public struct Observer: Sendable {
        public var replaced: @Sendable (_ app: String, _ reason: SocketReplacementReason) -> Void
        /// A registration or connect attempt failed.
        public var connectFailed: @Sendable (_ app: String) -> Void

        public init(
            replaced: @escaping @Sendable (String, SocketReplacementReason) -> Void = { _, _ in },
            connectFailed: @escaping @Sendable (String) -> Void = { _ in }
        ) {
            self.replaced = replaced
            self.connectFailed = connectFailed
        }
    }

    public struct Socket: Sendable, Equatable {
        public var slot: Int
        public var connectionID: String
        public var openedAt: ContinuousClock.Instant
        public var openedAtWallClock: Double
        /// Replaced and finishing what is on its way; no longer counted as up.
        public var draining = false
    }

    public struct AppState: Sendable, Equatable {
        public var wanted: Int
        public var sockets: [Socket] = []
        public var rotations = 0
        public var lastError: String?
        /// Since when the app has had no live socket (by the real monotonic clock); nil while one is up.
        public var withoutSocketSince: ContinuousClock.Instant? = .now
        public var up: Int { sockets.count { !$0.draining } }

        /// Notes the moment the last live socket went.
        mutating func noteLoss() {
            if up == 0, withoutSocketSince == nil { withoutSocketSince = .now }
        }
    }

    /// How many sockets an app has and how old they are, for log lines.
    public struct Census: Sendable, Equatable {
        public var up: Int
        public var wanted: Int
        /// Ages of the sockets that are up, oldest first.
        public var ageList: [Duration]
        public var ages: String { ageList.isEmpty ? "none" : ageList.map(\.formattedAge).joined(separator: ", ") }
        public var summary: String { "\(up)/\(wanted) up for this app; ages \(ages)" }
    }

    private let state = Mutex<[String: AppState]>([:])
    private let channels = Atomic<Int>(0)
    let observer: Observer

    public init(observer: Observer = Observer()) {
        self.observer = observer
    }

    public func setWanted(app: String, count: Int) {
        state.withLock { $0[app, default: AppState(wanted: count)].wanted = count }
    }

    public func remove(app: String) {
        _ = state.withLock { $0.removeValue(forKey: app) }
    }

    func socketUp(app: String, slot: Int, connectionID: String, openedAt: ContinuousClock.Instant, wallClock: Double) {
        state.withLock {
            $0[app, default: AppState(wanted: 0)].sockets.append(
                Socket(slot: slot, connectionID: connectionID, openedAt: openedAt, openedAtWallClock: wallClock))
            $0[app]?.lastError = nil
            $0[app]?.withoutSocketSince = nil
        }
    }

    func socketDown(app: String, connectionID: String) {
        state.withLock {
            $0[app]?.sockets.removeAll { $0.connectionID == connectionID }
            $0[app]?.noteLoss()
        }
    }

    func socketDraining(app: String, connectionID: String) {
        state.withLock { apps in
            guard let index = apps[app]?.sockets.firstIndex(where: { $0.connectionID == connectionID }) else { return }
            apps[app]?.sockets[index].draining = true
            apps[app]?.noteLoss()
        }
    }

    /// The app's live sockets and their ages at `now`.
    public func census(app: String, now: ContinuousClock.Instant = .now) -> Census {
        state.withLock { apps in
            let state = apps[app]
            let live = state?.sockets.filter { !$0.draining } ?? []
            return Census(up: live.count, wanted: state?.wanted ?? 0, ageList: live.map { now - $0.openedAt }.sorted(by: >))
        }
    }

    func rotated(app: String) {
        state.withLock { $0[app]?.rotations += 1 }
    }

    func replaced(app: String, reason: SocketReplacementReason) {
        observer.replaced(app, reason)
    }

    func failed(app: String, error: String) {
        state.withLock { $0[app]?.lastError = error }
        observer.connectFailed(app)
    }

    /// Sockets whose channel is not closed yet, draining ones included: counted from the
    /// channel itself, so a socket the slots forgot to close would show here (the soak watches it).
    public var openChannels: Int { channels.load(ordering: .relaxed) }

    func channelOpened() {
        channels.add(1, ordering: .relaxed)
    }

    func channelClosed() {
        channels.subtract(1, ordering: .relaxed)
    }

    public func snapshot() -> [String: AppState] {
        state.withLock { $0 }
    }

    /// True when every known app has at least one live socket.
    public func everyAppHasASocket() -> Bool {
        state.withLock { apps in !apps.isEmpty && apps.values.allSatisfy { $0.up > 0 } }
    }
}

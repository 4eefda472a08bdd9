import Synchronization

/// What every app's sockets are doing right now: for logs, `STATUS=`, `dingstream status`, and
/// readiness. Written by the connection slots, read by anyone.
public final class ConnectionBoard: Sendable {
    public struct Socket: Sendable, Equatable {
        public var slot: Int
        public var connectionID: String
        public var openedAt: ContinuousClock.Instant
        public var openedAtWallClock: Double
    }

    public struct AppState: Sendable, Equatable {
        public var wanted: Int
        public var sockets: [Socket] = []
        public var rotations = 0
        public var lastError: String?
        public var up: Int { sockets.count }
    }

    private let state = Mutex<[String: AppState]>([:])

    public init() {}

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
        }
    }

    func socketDown(app: String, connectionID: String) {
        state.withLock { $0[app]?.sockets.removeAll { $0.connectionID == connectionID } }
    }

    func rotated(app: String) {
        state.withLock { $0[app]?.rotations += 1 }
    }

    func failed(app: String, error: String) {
        state.withLock { $0[app]?.lastError = error }
    }

    public func snapshot() -> [String: AppState] {
        state.withLock { $0 }
    }

    /// True when every known app has at least one live socket.
    public func everyAppHasASocket() -> Bool {
        state.withLock { apps in !apps.isEmpty && apps.values.allSatisfy { $0.up > 0 } }
    }
}

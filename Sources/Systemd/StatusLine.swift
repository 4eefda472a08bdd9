/// The one-line `STATUS=` text systemd shows in `systemctl status`, e.g.
/// `ready: helpdesk 2/2 up, ops 1/2 up; 3 queued, 0 failed`.
public struct StatusLine: Sendable, Equatable {
    /// Sockets of one app: how many are live out of how many are configured.
    public struct App: Sendable, Equatable {
        public var name: String
        public var up: Int
        public var wanted: Int
        public init(name: String, up: Int, wanted: Int) {
            self.name = name
            self.up = up
            self.wanted = wanted
        }
    }

    /// A short word for the phase: "starting", "ready", "degraded", "reloading", "stopping".
    public var phase: String
    public var apps: [App]
    /// Messages committed but not yet handled (new/ + cur/).
    public var queued: Int
    /// Dead letters in the spool.
    public var failed: Int

    public init(phase: String, apps: [App], queued: Int, failed: Int) {
        self.phase = phase
        self.apps = apps
        self.queued = queued
        self.failed = failed
    }

    public var text: String {
        let sockets = apps.isEmpty ? "no apps" : apps.map { "\($0.name) \($0.up)/\($0.wanted) up" }.joined(separator: ", ")
        return "\(phase): \(sockets); \(queued) queued, \(failed) failed"
    }
}

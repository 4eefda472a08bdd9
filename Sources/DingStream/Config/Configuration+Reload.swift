/// What a reload (SIGHUP) changes in the running daemon, key by key.
extension Configuration {
    /// A setting's name as written in the file, with its value in the running and the new configuration.
    public struct Change: Sendable, Equatable, CustomStringConvertible {
        public var key: String
        public var old: String
        public var new: String
        /// `workers 4 → 8`; a value not printed (the cluster's database) is only said to have changed.
        public var description: String { old == new ? "\(key) changed" : "\(key) \(old) → \(new)" }
    }

    /// Keys a reload applies at once (apps are compared apart: a changed app reconnects).
    public static func liveChanges(from running: Configuration, to new: Configuration) -> [Change] {
        let compare = Comparison(running: running, new: new)
        return [
            compare("log_level", \.logLevel) { $0 },
            compare("workers", \.workers) { "\($0)" },
            compare("handler_timeout", \.handlerTimeout, DurationText.format),
            compare("max_attempts", \.maxAttempts) { "\($0)" },
            compare("retry_delay", \.retryDelay, DurationText.format),
            compare("max_attachment_bytes", \.maxAttachmentBytes) { "\($0)" },
            compare("card_timeout", \.cardTimeout, DurationText.format),
            compare("reply_deadline", \.replyDeadline, DurationText.format),
            compare("webhook_margin", \.webhookMargin, DurationText.format),
            compare("shutdown_grace", \.shutdownGrace, DurationText.format),
        ].compactMap { $0 }
    }

    /// Keys whose new value the running daemon cannot take: the spool, its pruning and the
    /// metrics endpoints are set up once at start, and `ready_timeout` only concerns a start.
    /// They keep their running value until `systemctl restart dingstream`.
    public static func restartChanges(from running: Configuration, to new: Configuration) -> [Change] {
        let compare = Comparison(running: running, new: new)
        return [
            compare("spool_dir", \.spoolDirectory) { $0 },
            compare("runtime_dir", \.runtimeDirectory) { $0 },
            compare("dedup_window", \.dedupWindow, DurationText.format),
            compare("retention", \.retention, DurationText.format),
            compare("ready_timeout", \.readyTimeout, DurationText.format),
            compare("metrics_listen", \.metricsListen) { $0.map { "\($0)" } ?? "(unset)" },
            compare("metrics_file", \.metricsFile) { $0 ?? "(unset)" },
            // The database URL may hold a user name: the section is named, not printed.
            compare("[cluster]", \.cluster) { $0 == nil ? "none" : "set" },
        ].compactMap { $0 }
    }

    private struct Comparison {
        let running: Configuration
        let new: Configuration

        func callAsFunction<Value: Equatable>(_ key: String, _ path: KeyPath<Configuration, Value>, _ text: (Value) -> String) -> Change? {
            let (old, current) = (running[keyPath: path], new[keyPath: path])
            return old == current ? nil : Change(key: key, old: text(old), new: text(current))
        }
    }

    /// Names of the apps added, removed or changed; their sockets are replaced.
    public static func appChanges(from running: Configuration, to new: Configuration) -> [String] {
        let old = Dictionary(running.apps.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        let current = Dictionary(new.apps.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        return Set(old.keys).union(current.keys).sorted().filter { old[$0] != current[$0] }
    }

    /// The line a reload logs: what it applied and which keys wait for a restart.
    public static func reloadSummary(path: String, from running: Configuration, started: Configuration, to new: Configuration) -> String {
        let live = liveChanges(from: running, to: new)
        let apps = appChanges(from: running, to: new)
        let pending = restartChanges(from: started, to: new)
        var applied = live.map(\.description)
        if !apps.isEmpty { applied.append("app\(apps.count == 1 ? "" : "s") \(apps.joined(separator: ", ")) reconnected") }
        var line = "configuration reloaded from \(path): "
        line += applied.isEmpty ? "nothing changed that applies at once" : "applied \(applied.joined(separator: "; "))"
        if !pending.isEmpty {
            line += "; not applied, these need a restart (systemctl restart dingstream): \(pending.map(\.description).joined(separator: "; "))"
        }
        return line
    }
}

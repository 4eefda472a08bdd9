import Foundation
import Spool
import StreamProtocol

/// Turns a parsed TOML tree into a `Configuration`, rejecting unknown keys and bad values with
/// the line they are on.
struct ConfigurationReader {
    let file: String
    let environment: [String: String]

    private func fail(_ line: Int?, _ message: String) -> ConfigurationError {
        ConfigurationError(file: file, line: line, message: message)
    }

    mutating func read(_ root: TOMLDocument.Table) throws(ConfigurationError) -> Configuration {
        var configuration = Configuration()
        let topLevel: Set<String> = [
            "spool_dir", "runtime_dir", "workers", "handler_timeout", "max_attempts", "retry_delay", "dedup_window",
            "retention", "max_attachment_bytes", "card_timeout", "reply_deadline", "webhook_margin",
            "ready_timeout", "shutdown_grace", "log_level", "metrics_listen", "metrics_file", "app", "channels_config", "cluster",
        ]
        try rejectUnknown(root, allowed: topLevel, place: "at the top level")
        if let value = try string(root, "spool_dir") { configuration.spoolDirectory = value }
        if let value = try string(root, "runtime_dir") { configuration.runtimeDirectory = value }
        if let value = try integer(root, "workers", in: 1...256) { configuration.workers = value }
        if let value = try duration(root, "handler_timeout", in: .seconds(1)...(.seconds(24 * 3600))) { configuration.handlerTimeout = value }
        if let value = try integer(root, "max_attempts", in: 1...1000) { configuration.maxAttempts = value }
        if let value = try duration(root, "retry_delay", in: .seconds(1)...(.seconds(24 * 3600))) { configuration.retryDelay = value }
        if let value = try duration(root, "dedup_window", in: .seconds(60)...(.seconds(365 * 86_400))) { configuration.dedupWindow = value }
        if let value = try duration(root, "retention", in: .seconds(60)...(.seconds(10 * 365 * 86_400))) { configuration.retention = value }
        if let value = try integer(root, "max_attachment_bytes", in: 0...(1 << 40)) { configuration.maxAttachmentBytes = value }
        if let value = try duration(root, "card_timeout", in: .milliseconds(100)...(.seconds(60))) { configuration.cardTimeout = value }
        if let value = try duration(root, "reply_deadline", in: .seconds(60)...(.seconds(7 * 86_400))) { configuration.replyDeadline = value }
        if let value = try duration(root, "webhook_margin", in: .zero...(.seconds(3600))) { configuration.webhookMargin = value }
        if let value = try duration(root, "ready_timeout", in: .seconds(1)...(.seconds(3600))) { configuration.readyTimeout = value }
        if let value = try duration(root, "shutdown_grace", in: .seconds(1)...(.seconds(3600))) { configuration.shutdownGrace = value }
        if let value = try string(root, "log_level") {
            let levels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
            guard levels.contains(value) else {
                throw fail(root["log_level"]?.line, "log_level \"\(value)\" is not one of \(levels.joined(separator: ", "))")
            }
            configuration.logLevel = value
        }
        if let value = try string(root, "metrics_listen") {
            switch MetricsAddress.parse(value) {
            case .success(let address): configuration.metricsListen = address
            case .failure(let failure): throw fail(root["metrics_listen"]?.line, "metrics_listen \"\(value)\": \(failure.message)")
            }
        }
        if let value = try string(root, "metrics_file") {
            // The textfile collector reads only *.prom files, and a relative path depends on the working directory.
            guard value.hasPrefix("/"), value.hasSuffix(".prom") else {
                throw fail(root["metrics_file"]?.line, "metrics_file \"\(value)\" must be an absolute path ending in .prom, e.g. /var/lib/prometheus/node-exporter/dingstream.prom")
            }
            configuration.metricsFile = value
        }

        if let entry = root["app"] {
            guard case .tableArray(let tables) = entry.value else {
                throw fail(entry.line, "\"app\" must be written as [[app]] sections, one per bot")
            }
            for table in tables { configuration.apps.append(try app(table)) }
        }
        if let entry = root["channels_config"] {
            guard case .table(let channels) = entry.value else {
                throw fail(entry.line, "\"channels_config\" must be a table")
            }
            try rejectUnknown(channels, allowed: ["dingtalk"], place: "in [channels_config]")
            if let dingtalk = channels["dingtalk"] {
                guard case .table(let table) = dingtalk.value else {
                    throw fail(dingtalk.line, "\"channels_config.dingtalk\" must be a table")
                }
                configuration.apps.append(try compatibilityApp(table))
            }
        }
        if let entry = root["cluster"] {
            guard case .table(let table) = entry.value else {
                throw fail(entry.line, "\"cluster\" must be a [cluster] section")
            }
            configuration.cluster = try cluster(table)
        }
        guard !configuration.apps.isEmpty else {
            throw fail(nil, "no bot is configured; add an [[app]] section with name, client_id and client_secret_file")
        }
        var seen: [String: Int] = [:]
        for (index, app) in configuration.apps.enumerated() {
            if let earlier = seen[app.name] {
                throw fail(nil, "two apps are named \"\(app.name)\" (app \(earlier + 1) and \(index + 1)); give each [[app]] a unique name")
            }
            seen[app.name] = index
        }
        return configuration
    }

    private func app(_ table: TOMLDocument.Table) throws(ConfigurationError) -> Configuration.App {
        let place = "in [[app]] (line \(table.line))"
        try rejectUnknown(
            table,
            allowed: [
                "name", "client_id", "client_secret", "client_secret_file", "connections", "subscriptions",
                "allowed_users", "api_base", "proxy", "ca_file", "max_connection_age", "idle_timeout",
                "silence_timeout", "max_frame_size", "http_handler", "http_handler_ca_file", "http_handler_timeout",
                "http_handler_concurrency",
            ],
            place: place)
        guard let name = try string(table, "name") else {
            throw fail(table.line, "[[app]] has no \"name\"; add name = \"helpdesk\" (used in logs, spool names and credentials)")
        }
        guard Self.isPlainName(name, also: "_-") else {
            throw fail(table["name"]?.line, "app name \"\(name)\" may only use letters, digits, \"_\" and \"-\" (it becomes part of file names)")
        }
        guard let clientID = try string(table, "client_id"), !clientID.isEmpty else {
            throw fail(table.line, "[[app]] \"\(name)\" has no \"client_id\"; copy the AppKey/Client ID from the DingTalk developer console")
        }
        let (secret, source) = try secret(table, app: name)
        var app = Configuration.App(name: name, clientID: clientID, clientSecret: secret)
        app.secretSource = source
        if let value = try integer(table, "connections", in: 1...50) { app.connections = value }
        if let entry = table["subscriptions"] {
            let names = try strings(table, "subscriptions") ?? []
            var subscriptions: [Subscription] = []
            for value in names {
                guard let subscription = Subscription(rawValue: value) else {
                    throw fail(entry.line, "subscription \"\(value)\" is unknown; use \"bot\", \"events\" or \"cards\"")
                }
                if !subscriptions.contains(subscription) { subscriptions.append(subscription) }
            }
            guard !subscriptions.isEmpty else { throw fail(entry.line, "subscriptions is empty; list at least \"bot\"") }
            app.subscriptions = subscriptions
        }
        if let users = try strings(table, "allowed_users") { app.allowedUsers = users }
        if let value = try string(table, "api_base") {
            guard let url = URL(string: value), let scheme = url.scheme, ["http", "https"].contains(scheme), url.host != nil else {
                throw fail(table["api_base"]?.line, "api_base \"\(value)\" is not an http(s) URL")
            }
            if scheme == "http", !Self.isLoopback(url.host ?? "") {
                throw fail(table["api_base"]?.line, "api_base \"\(value)\" uses plain http to a non-loopback host; use https")
            }
            app.apiBase = value.hasSuffix("/") ? String(value.dropLast()) : value
        }
        if let value = try string(table, "proxy") {
            guard let url = URL(string: value), url.scheme == "http", url.host != nil else {
                throw fail(table["proxy"]?.line, "proxy \"\(value)\" must look like http://host:port (an HTTP CONNECT proxy)")
            }
            app.proxy = value
        }
        if let value = try string(table, "ca_file") {
            guard FileManager.default.isReadableFile(atPath: value) else {
                throw fail(table["ca_file"]?.line, "ca_file \"\(value)\" cannot be read")
            }
            app.caFile = value
        }
        if let value = try duration(table, "max_connection_age", in: .seconds(60)...(.seconds(7 * 86_400))) { app.maxConnectionAge = value }
        if let value = try duration(table, "idle_timeout", in: .seconds(10)...(.seconds(3600))) { app.idleTimeout = value }
        // Below a second, a briefly busy machine would look like a dead network.
        if let value = try duration(table, "silence_timeout", in: .seconds(1)...(.seconds(3600))) { app.silenceTimeout = value }
        // The WebSocket decoder takes at most 4 GiB; 1 GiB is already far beyond any real frame.
        if let value = try integer(table, "max_frame_size", in: 65_536...(1 << 30)) { app.maxFrameSize = value }
        app.httpHandler = try httpHandler(table, app: name)
        return app
    }

    /// `http_handler` and its companions; these without it are an error, not silently unused.
    private func httpHandler(_ table: TOMLDocument.Table, app: String) throws(ConfigurationError) -> Configuration.HTTPHandlerSettings? {
        guard let text = try string(table, "http_handler") else {
            for key in ["http_handler_ca_file", "http_handler_timeout", "http_handler_concurrency"] where table[key] != nil {
                throw fail(table[key]?.line, "\(key) is set but app \"\(app)\" has no http_handler; add http_handler = \"http://127.0.0.1:8080/dingtalk\" or remove \(key)")
            }
            return nil
        }
        guard let url = URL(string: text), let scheme = url.scheme?.lowercased(), ["http", "https"].contains(scheme),
            let host = url.host, !host.isEmpty
        else {
            throw fail(table["http_handler"]?.line, "http_handler \"\(text)\" of app \"\(app)\" is not an http(s) URL; write e.g. \"http://127.0.0.1:8080/dingtalk\"")
        }
        var settings = Configuration.HTTPHandlerSettings(url: text)
        if let path = try string(table, "http_handler_ca_file") {
            guard scheme == "https" else {
                throw fail(table["http_handler_ca_file"]?.line, "http_handler_ca_file is set but http_handler \"\(text)\" is plain http; use an https URL or remove it")
            }
            guard FileManager.default.isReadableFile(atPath: path) else {
                throw fail(table["http_handler_ca_file"]?.line, "http_handler_ca_file \"\(path)\" cannot be read; give the PEM file of the CA that signed the handler's certificate")
            }
            settings.caFile = path
        }
        if let value = try duration(table, "http_handler_timeout", in: .milliseconds(100)...(.seconds(3600))) { settings.timeout = value }
        if let value = try integer(table, "http_handler_concurrency", in: 1...256) { settings.concurrency = value }
        return settings
    }

    private func cluster(_ table: TOMLDocument.Table) throws(ConfigurationError) -> ClusterSettings {
        try rejectUnknown(table, allowed: ["database", "password_file", "ca_file", "node", "lease"], place: "in [cluster]")
        guard let text = try string(table, "database") else {
            throw fail(table.line, "[cluster] has no \"database\"; add database = \"postgresql://dingstream@db.example.com:5432/dingstream?sslmode=verify-full\"")
        }
        let url: DatabaseURL
        do {
            url = try DatabaseURL(parsing: text)
        } catch {
            throw fail(table["database"]?.line, "[cluster] database: \(error)")
        }
        var settings = ClusterSettings(database: url, node: ClusterSettings.defaultNode())
        if let path = try string(table, "password_file") {
            settings.password = try readClusterPassword(path, line: table["password_file"]?.line)
        } else if let directory = environment["CREDENTIALS_DIRECTORY"], FileManager.default.fileExists(atPath: directory + "/cluster") {
            settings.password = try readClusterPassword(directory + "/cluster", line: table.line)
        }
        if let path = try string(table, "ca_file") {
            guard FileManager.default.isReadableFile(atPath: path) else {
                throw fail(table["ca_file"]?.line, "[cluster] ca_file \"\(path)\" cannot be read; give the PEM file of the CA that signed the database server's certificate")
            }
            guard url.tls == .verifyCA || url.tls == .verifyFull else {
                throw fail(table["ca_file"]?.line, "[cluster] ca_file is set but sslmode=\(url.tls.rawValue) does not check certificates; add ?sslmode=verify-full to database")
            }
            settings.caFile = path
        }
        if let node = try string(table, "node") {
            guard Self.isPlainName(node, also: "._-") else {
                throw fail(table["node"]?.line, "[cluster] node \"\(node)\" may only use letters, digits, \".\", \"_\" and \"-\" (1 to 64); it names this host in the shared store")
            }
            settings.node = node
        }
        // Read over a wide range, so that the message below says what a lease is for.
        if let lease = try duration(table, "lease", in: .milliseconds(1)...(.seconds(365 * 86_400))) {
            guard lease >= .seconds(1), lease <= .seconds(3600) else {
                throw fail(table["lease"]?.line, "[cluster] lease \(lease) is out of range 1s…1h; a dead host's messages wait this long before another host runs them (default 30s)")
            }
            settings.lease = lease
        }
        return settings
    }

    private func readClusterPassword(_ path: String, line: Int?) throws(ConfigurationError) -> String {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw fail(line, "cannot read the cluster database password from \(path); check the path and that the service user may read it")
        }
        let password = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .newlines)
        guard !password.isEmpty else { throw fail(line, "the cluster password file \(path) is empty") }
        return password
    }

    private func compatibilityApp(_ table: TOMLDocument.Table) throws(ConfigurationError) -> Configuration.App {
        try rejectUnknown(table, allowed: ["client_id", "client_secret", "allowed_users"], place: "in [channels_config.dingtalk]")
        guard let clientID = try string(table, "client_id"), !clientID.isEmpty else {
            throw fail(table.line, "[channels_config.dingtalk] has no \"client_id\"; copy it from the DingTalk developer console")
        }
        guard let secret = try string(table, "client_secret"), !secret.isEmpty else {
            throw fail(table.line, "[channels_config.dingtalk] has no \"client_secret\"")
        }
        var app = Configuration.App(name: "dingtalk", clientID: clientID, clientSecret: secret)
        if let users = try strings(table, "allowed_users") { app.allowedUsers = users }
        return app
    }

    /// `client_secret`, else `client_secret_file`, else the systemd credential named after the app.
    private func secret(_ table: TOMLDocument.Table, app: String) throws(ConfigurationError) -> (String, Configuration.SecretSource) {
        if table["client_secret"] != nil, table["client_secret_file"] != nil {
            throw fail(table["client_secret_file"]?.line, "app \"\(app)\" sets both client_secret and client_secret_file; keep one")
        }
        if let secret = try string(table, "client_secret") {
            guard !secret.isEmpty else { throw fail(table["client_secret"]?.line, "client_secret of app \"\(app)\" is empty") }
            return (secret, .inline)
        }
        if let path = try string(table, "client_secret_file") {
            return (try readSecret(path, line: table["client_secret_file"]?.line, app: app), .file(path))
        }
        if let directory = environment["CREDENTIALS_DIRECTORY"] {
            let path = directory + "/" + app
            if FileManager.default.fileExists(atPath: path) { return (try readSecret(path, line: table.line, app: app), .file(path)) }
        }
        throw fail(table.line, "app \"\(app)\" has no secret; set client_secret_file = \"/etc/dingstream/\(app).secret\" or LoadCredential=\(app):… in the unit")
    }

    private func readSecret(_ path: String, line: Int?, app: String) throws(ConfigurationError) -> String {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw fail(line, "cannot read the secret of app \"\(app)\" from \(path); check the path and that the service user may read it")
        }
        let secret = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard !secret.isEmpty else { throw fail(line, "the secret file \(path) of app \"\(app)\" is empty") }
        return secret
    }

    /// 1 to 64 ASCII letters, digits and characters of `also`. Checked by hand: a regular
    /// expression would bring ICU's regex compiler and Unicode property tables into every start.
    static func isPlainName(_ text: String, also: String) -> Bool {
        let extra = Set(also.utf8)
        return (1...64).contains(text.utf8.count)
            && text.utf8.allSatisfy { byte in
                switch byte {
                case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"): true
                default: extra.contains(byte)
                }
            }
    }

    static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host.hasPrefix("127.") || host == "::1" || host == "[::1]"
    }

    // MARK: Typed access

    private func rejectUnknown(_ table: TOMLDocument.Table, allowed: Set<String>, place: String) throws(ConfigurationError) {
        for key in table.keys where !allowed.contains(key) {
            let suggestion = allowed.min { Self.distance($0, key) < Self.distance($1, key) }
            var message = "unknown key \"\(key)\" \(place)"
            if let suggestion, Self.distance(suggestion, key) <= 3 { message += "; did you mean \"\(suggestion)\"?" } else { message += "; remove it" }
            throw fail(table[key]?.line, message)
        }
    }

    private func string(_ table: TOMLDocument.Table, _ key: String) throws(ConfigurationError) -> String? {
        guard let entry = table[key] else { return nil }
        guard case .string(let value) = entry.value else {
            throw fail(entry.line, "\"\(key)\" must be a string in quotes, not \(entry.value.typeName)")
        }
        return value
    }

    private func strings(_ table: TOMLDocument.Table, _ key: String) throws(ConfigurationError) -> [String]? {
        guard let entry = table[key] else { return nil }
        guard case .array(let items) = entry.value else {
            throw fail(entry.line, "\"\(key)\" must be an array of strings like [\"a\", \"b\"]")
        }
        var values: [String] = []
        for item in items {
            guard case .string(let value) = item else {
                throw fail(entry.line, "\"\(key)\" must hold only strings, found \(item.typeName)")
            }
            values.append(value)
        }
        return values
    }

    private func integer(_ table: TOMLDocument.Table, _ key: String, in range: ClosedRange<Int>) throws(ConfigurationError) -> Int? {
        guard let entry = table[key] else { return nil }
        guard case .integer(let value) = entry.value else {
            throw fail(entry.line, "\"\(key)\" must be a whole number, not \(entry.value.typeName)")
        }
        guard let int = Int(exactly: value), range.contains(int) else {
            throw fail(entry.line, "\"\(key)\" = \(value) is out of range \(range.lowerBound)…\(range.upperBound)")
        }
        return int
    }

    /// A duration within `range`. Every configurable duration has bounds: too short makes no
    /// sense (a zero `handler_timeout` fails every message), too long is a typo, and both are
    /// errors at load (exit 78) rather than surprises, or traps, later.
    private func duration(_ table: TOMLDocument.Table, _ key: String, in range: ClosedRange<Duration>) throws(ConfigurationError) -> Duration? {
        guard let entry = table[key] else { return nil }
        let duration: Duration
        switch entry.value {
        case .string(let text):
            switch DurationText.read(text) {
            case .duration(let parsed): duration = parsed
            case .tooLong:
                throw fail(entry.line, "\"\(key)\" = \"\(text)\" is longer than the maximum \(DurationText.format(range.upperBound)); use a value in \(DurationText.format(range.lowerBound))…\(DurationText.format(range.upperBound))")
            case .malformed:
                throw fail(entry.line, "\"\(key)\" = \"\(text)\" is not a duration; write e.g. \"500ms\", \"90s\", \"5m\", \"6h\" or \"7d\"")
            }
        case .integer(let seconds):
            // A bare number is seconds; checked as written, before it becomes a Duration.
            guard seconds >= 0, seconds <= range.upperBound.components.seconds else {
                throw fail(entry.line, "\"\(key)\" = \(seconds) is out of range \(DurationText.format(range.lowerBound))…\(DurationText.format(range.upperBound))")
            }
            duration = .seconds(seconds)
        default:
            throw fail(entry.line, "\"\(key)\" must be a duration such as \"90s\", not \(entry.value.typeName)")
        }
        guard range.contains(duration) else {
            let written = DurationText.format(duration)
            let bound = duration < range.lowerBound ? "shorter than the minimum \(DurationText.format(range.lowerBound))" : "longer than the maximum \(DurationText.format(range.upperBound))"
            throw fail(entry.line, "\"\(key)\" = \(written) is \(bound); use a value in \(DurationText.format(range.lowerBound))…\(DurationText.format(range.upperBound))")
        }
        return duration
    }

    private static func distance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        var previous = Array(0...b.count)
        for i in 1...max(a.count, 1) where !a.isEmpty {
            var current = [i] + Array(repeating: 0, count: b.count)
            for j in 1...max(b.count, 1) where !b.isEmpty {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            previous = current
        }
        return previous[b.count]
    }
}

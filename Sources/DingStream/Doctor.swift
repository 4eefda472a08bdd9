import AsyncHTTPClient
import Foundation
import Handlers
import Logging
import NIOCore
import NIOHTTP1
import Replies
import Spool
import StreamClient
import StreamProtocol

/// `dingstream doctor`: every check an admin would otherwise do by hand when a bot stays silent,
/// each with its remedy. Secrets are used, never printed.
public struct Doctor: Sendable {
    public struct Check: Sendable, Equatable {
        public enum Outcome: String, Sendable {
            case ok, warning, failed
        }
        public var subject: String
        public var outcome: Outcome
        public var detail: String

        public var line: String {
            let mark = switch outcome {
            case .ok: "ok  "
            case .warning: "warn"
            case .failed: "FAIL"
            }
            return "\(mark)  \(subject): \(detail)"
        }
    }

    public var configurationPath: String
    public var environment: [String: String]
    /// Only this app's network checks; all apps when nil.
    public var app: String?
    /// Owners accepted for handler files besides root and the caller.
    public var serviceUID: uid_t?
    public var clockSkewLimit: Duration = .seconds(60)
    /// nil when a host name resolves, else why not; the system resolver unless a test needs a
    /// DNS failure without a network to ask.
    var resolveHost: @Sendable (String) -> String? = Doctor.resolve

    public init(configurationPath: String, environment: [String: String], app: String? = nil, serviceUID: uid_t? = nil) {
        self.configurationPath = configurationPath
        self.environment = environment
        self.app = app
        self.serviceUID = serviceUID
    }

    /// Runs the checks in order, handing each to `report` as soon as it is known.
    @discardableResult
    public func run(report: @Sendable (Check) -> Void = { _ in }) async -> [Check] {
        var checks: [Check] = []
        func record(_ subject: String, _ outcome: Check.Outcome, _ detail: String) {
            let check = Check(subject: subject, outcome: outcome, detail: detail)
            checks.append(check)
            report(check)
        }

        let configuration: Configuration
        do {
            configuration = try Configuration.load(path: configurationPath, environment: environment)
            record("config", .ok, "\(configurationPath) is valid, \(configuration.apps.count) app(s)")
        } catch {
            record("config", .failed, "\(error)")
            return checks
        }
        for check in Self.accessChecks(configuration) + Self.secretChecks(configuration, path: configurationPath) {
            record(check.subject, check.outcome, check.detail)
        }
        for check in Self.spoolChecks(configuration.spoolDirectory) { record(check.subject, check.outcome, check.detail) }
        if let cluster = configuration.cluster {
            let check = clusterCheck(SpoolInspector(directory: configuration.spoolDirectory, cluster: cluster))
            record(check.subject, check.outcome, check.detail)
        }

        let scan = HandlerDirectory.scan(
            path: configuration.spoolDirectory + "/handlers", allowedOwners: HandlerDirectory.allowedOwners(serviceUID: serviceUID))
        for check in Self.handlerChecks(scan, httpHandlerApps: configuration.apps.filter { $0.httpHandler != nil }.map(\.name)) { record(check.subject, check.outcome, check.detail) }

        let apps = configuration.apps.filter { app == nil || $0.name == app }
        if let app, apps.isEmpty {
            record("app \(app)", .failed, "no [[app]] named \(app) in \(configurationPath)")
        }
        for app in apps {
            if let check = await Self.httpHandlerCheck(app) { record(check.subject, check.outcome, check.detail) }
            for check in await appChecks(app) { record(check.subject, check.outcome, check.detail) }
        }
        return checks
    }

    /// What the handler scan found: how many run, how many are skipped, and each unsafe file.
    static func handlerChecks(_ scan: HandlerScan, httpHandlerApps: [String] = []) -> [Check] {
        var checks: [Check] = []
        let skipped = scan.entries.count - scan.runnable.count
        let skippedText = skipped == 0 ? "" : "; \(skipped) skipped (`dingstream handlers check` says why)"
        if let problem = scan.directoryProblem {
            checks.append(Check(subject: "handlers", outcome: .failed, detail: problem.explanation(path: scan.directory)))
        } else if scan.runnable.isEmpty, !httpHandlerApps.isEmpty {
            checks.append(Check(
                subject: "handlers", outcome: .ok,
                detail: "no script in \(scan.directory)\(skippedText); the http_handler of \(httpHandlerApps.joined(separator: ", ")) will run"))
        } else if scan.runnable.isEmpty {
            checks.append(Check(
                subject: "handlers", outcome: .warning,
                detail: "nothing in \(scan.directory) would run\(skippedText); copy an example from /usr/share/doc/dingstream/handlers or see `dingstream handlers check`"))
        } else {
            checks.append(Check(subject: "handlers", outcome: .ok, detail: "\(scan.runnable.count) will run: \(scan.runnable.map(\.name).joined(separator: ", "))\(skippedText)"))
        }
        for entry in scan.entries {
            if case .skipped(let reason) = entry.status, reason.isSafetyRefusal {
                checks.append(Check(subject: "handler \(entry.name)", outcome: .failed, detail: reason.explanation(path: entry.path)))
            }
        }
        return checks
    }

    /// An app that takes messages or card clicks from nobody: `allowed_users = []` (the default)
    /// refuses every sender, so a freshly filled-in bot looks dead.
    static func accessChecks(_ configuration: Configuration) -> [Check] {
        configuration.apps.filter { $0.allowedUsers.isEmpty && ($0.subscriptions.contains(.bot) || $0.subscriptions.contains(.cards)) }.map { app in
            Check(
                subject: "app \(app.name)", outcome: .warning,
                detail: "allowed_users is empty, so nobody can talk to the bot (every message is refused); list staff ids, allowed_users = [\"manager1234\"], or allow everyone with allowed_users = [\"*\"]")
        }
    }

    /// Who else can read a secret: an inline `client_secret` in a configuration file readable by
    /// every user, or a secret file that group or others may write, or others may read.
    static func secretChecks(_ configuration: Configuration, path: String) -> [Check] {
        var checks: [Check] = []
        let inline = configuration.apps.filter { $0.secretSource == .inline }.map(\.name)
        if !inline.isEmpty, let mode = permissions(path), mode & 0o004 != 0 {
            checks.append(Check(
                subject: "secrets", outcome: .warning,
                detail: "\(path) holds the client_secret of \(inline.joined(separator: ", ")) and every user may read it (mode \(octal(mode))); chmod 0640 \(path) and chgrp dingstream \(path), or move the secret to client_secret_file"))
        }
        for app in configuration.apps {
            guard case .file(let file) = app.secretSource, let mode = permissions(file), mode & 0o027 != 0 else { continue }
            checks.append(Check(
                subject: "secrets", outcome: .warning,
                detail: "the secret file \(file) of app \(app.name) has mode \(octal(mode)): others may read it or group or others may change it; chmod 0640 \(file) (owner root, group dingstream), or 0600 owned by the service user"))
        }
        return checks
    }

    private static func permissions(_ path: String) -> mode_t? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return info.st_mode & 0o7777
    }

    private static func octal(_ mode: mode_t) -> String {
        let digits = String(mode, radix: 8)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }

    /// Connection (with TLS as configured), login, schema version and clock skew against the
    /// database (leases use the database's clock, but names and ages use this host's).
    func clusterCheck(_ inspector: SpoolInspector) -> Check {
        let report: ClusterReport?
        do {
            report = try inspector.clusterReport()
        } catch {
            return Check(subject: "cluster", outcome: .failed, detail: "\(error)")
        }
        guard let report else { return Check(subject: "cluster", outcome: .failed, detail: "no [cluster] section") }
        let skewMillis = abs(Int64(report.clockSkew.components.seconds) * 1000 + report.clockSkew.components.attoseconds / 1_000_000_000_000_000)
        let alive = report.nodes.filter(\.alive).map(\.name)
        let detail = "\(report.database) answers, schema version \(report.schemaVersion), clock skew \(skewMillis) ms, nodes alive: \(alive.isEmpty ? "none" : alive.joined(separator: ", "))"
        if report.clockSkew > clockSkewLimit || report.clockSkew < .zero - clockSkewLimit {
            return Check(subject: "cluster", outcome: .warning, detail: detail + "; the clocks differ by more than \(clockSkewLimit): run NTP (chrony or systemd-timesyncd) on this host and the database server")
        }
        return Check(subject: "cluster", outcome: .ok, detail: detail)
    }

    static func spoolChecks(_ directory: String) -> [Check] {
        let subject = "spool"
        var info = stat()
        guard stat(directory, &info) == 0 else {
            return [Check(subject: subject, outcome: .failed, detail: "\(directory): \(String(cString: strerror(errno))); create it (systemd-tmpfiles --create dingstream.conf does)")]
        }
        guard info.st_mode & S_IFMT == S_IFDIR else {
            return [Check(subject: subject, outcome: .failed, detail: "\(directory) is not a directory")]
        }
        var checks: [Check] = []
        if info.st_mode & 0o002 != 0 {
            checks.append(Check(subject: subject, outcome: .failed, detail: "\(directory) is writable by everyone; chmod 0750 \(directory)"))
        }
        // The daemon writes and syncs here; prove the same works for this user.
        let failure = probeWriteAndSync(in: directory)
        switch failure {
        case 0:
            break
        case EACCES, EPERM, EROFS:
            checks.append(Check(subject: subject, outcome: .failed, detail: "cannot write in \(directory): \(String(cString: strerror(failure))); run doctor as the service user (sudo -u dingstream dingstream doctor) or fix the owner: chown -R dingstream: \(directory)"))
        default:
            checks.append(Check(subject: subject, outcome: .failed, detail: "cannot write and sync a file in \(directory): \(String(cString: strerror(failure)))"))
        }
        var space = statvfs()
        if statvfs(directory, &space) == 0 {
            let free = Int64(space.f_bavail) * Int64(space.f_frsize)
            if free < 64 << 20 {
                checks.append(Check(subject: subject, outcome: .warning, detail: "only \(free >> 20) MiB free under \(directory); messages stay unacked when it is full"))
            } else if checks.isEmpty {
                checks.append(Check(subject: subject, outcome: .ok, detail: "\(directory) is writable, \(free >> 20) MiB free"))
            }
        }
        return checks
    }

    func appChecks(_ app: Configuration.App) async -> [Check] {
        let subject = "app \(app.name)"
        var checks: [Check] = []
        guard !app.clientSecret.isEmpty else {
            return [Check(subject: subject, outcome: .failed, detail: "no client secret; set client_secret_file, or LoadCredential=\(app.name):… in the unit")]
        }
        guard let base = URL(string: app.apiBase), let host = base.host else {
            return [Check(subject: subject, outcome: .failed, detail: "api_base \(app.apiBase) is not a URL")]
        }
        let network = NetworkSettings.resolve(proxy: app.proxy, caFile: app.caFile, environment: environment)
        let proxied = network.proxyEndpoint(for: host)
        let resolveHost = proxied?.host ?? host
        if let failure = self.resolveHost(resolveHost) {
            checks.append(Check(subject: subject, outcome: .failed, detail: "DNS: \(resolveHost) does not resolve (\(failure)); check /etc/resolv.conf\(proxied == nil ? "" : " and the proxy setting")"))
            return checks
        }
        checks.append(Check(subject: subject, outcome: .ok, detail: "DNS: \(resolveHost) resolves\(proxied.map { " (proxy \($0.host):\($0.port))" } ?? "")"))

        let client: HTTPClient
        do {
            client = try network.makeHTTPClient(for: app.apiBase)
        } catch {
            checks.append(Check(subject: subject, outcome: .failed, detail: "TLS setup: \(error); check ca_file"))
            return checks
        }
        defer { _ = client.shutdown(queue: .global()) { _ in } }

        // One plain request proves TLS and gives the server's clock.
        var request = HTTPClientRequest(url: app.apiBase)
        request.method = .GET
        do {
            let response = try await client.execute(request, deadline: .now() + .seconds(10))
            let how = base.scheme == "https" ? "HTTPS: \(app.apiBase) answers, certificate verified" : "HTTP: \(app.apiBase) answers (plain HTTP: only for local tests)"
            checks.append(Check(subject: subject, outcome: .ok, detail: how))
            if let date = response.headers.first(name: "Date"), let serverSeconds = HTTPDate.parse(date) {
                let skew = Date().timeIntervalSince1970 - Double(serverSeconds)
                let limit = Double(clockSkewLimit.components.seconds)
                if abs(skew) > limit {
                    checks.append(Check(subject: subject, outcome: .warning, detail: "clock: \(Int(skew)) s off the server's; run an NTP client (systemd-timesyncd or chrony)"))
                } else {
                    checks.append(Check(subject: subject, outcome: .ok, detail: "clock: within \(Int(limit)) s of the server's"))
                }
            }
        } catch {
            checks.append(Check(subject: subject, outcome: .failed, detail: "HTTPS to \(app.apiBase): \(error); check the firewall, proxy and ca_file"))
            return checks
        }

        let credentials = AppCredentials(name: app.name, clientID: app.clientID, clientSecret: app.clientSecret, apiBase: app.apiBase)
        let quiet = Logger(label: "doctor", factory: { _ in SwiftLogNoOpLogHandler() })
        do {
            _ = try await AccessTokenProvider(credentials: credentials, httpClient: client, logger: quiet).token()
            checks.append(Check(subject: subject, outcome: .ok, detail: "credentials: an access token was issued"))
        } catch {
            checks.append(Check(subject: subject, outcome: .failed, detail: "credentials: \(error)"))
        }

        let registration = GatewayRegistration(
            app: app.name, clientID: app.clientID, clientSecret: app.clientSecret, apiBase: app.apiBase,
            subscriptions: app.subscriptions, userAgent: Daemon.userAgent, deadline: .seconds(10))
        do {
            let ticket = try await registration.register(using: client)
            checks.append(Check(subject: subject, outcome: .ok, detail: "Stream registration: endpoint \(ticket.endpoint)"))
        } catch {
            checks.append(Check(subject: subject, outcome: .failed, detail: "Stream registration: \(error)"))
        }
        return checks
    }

    /// Whether the app's `http_handler` answers; nil when it has none.
    static func httpHandlerCheck(_ app: Configuration.App) async -> Check? {
        guard let settings = app.httpHandler else { return nil }
        let subject = "app \(app.name)"
        let handler: HTTPHandler
        do {
            handler = try HTTPHandler(app: app.name, secret: app.clientSecret, settings: settings)
        } catch {
            return Check(subject: subject, outcome: .failed, detail: "http_handler \(settings.url): TLS setup: \(error); check http_handler_ca_file")
        }
        let result = await handler.probe()
        await handler.shutdown()
        switch result {
        case .success(let status):
            let tls = settings.url.lowercased().hasPrefix("https:") ? ", certificate verified" : ""
            return Check(subject: subject, outcome: .ok, detail: "http_handler \(settings.url) answers (GET: \(status.code) \(status.reasonPhrase)\(tls)); messages are POSTed to it")
        case .failure(let error):
            return Check(
                subject: subject, outcome: .failed,
                detail: "http_handler \(settings.url) does not answer: \(error); start the bot's server, or correct the URL (messages wait in the spool and are tried again meanwhile)")
        }
    }

    /// nil when `host` resolves, else the resolver's message.
    static func resolve(_ host: String) -> String? {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, nil, &hints, &result)
        if let result { freeaddrinfo(result) }
        return status == 0 ? nil : String(cString: gai_strerror(status))
    }
}

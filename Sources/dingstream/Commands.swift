import ArgumentParser
import AsyncHTTPClient
import DingStream
import Foundation
import Handlers
import Logging
import Replies
import Simulator
import Spool
import StreamClient
import UnixSignals

struct SimulatorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "simulator",
        abstract: "Run only the local DingTalk simulator (for system tests and experiments).")
    @Option(help: "Port to listen on (127.0.0.1); 0 picks a free one.") var port: Int = DingStream.Sandbox.defaultPort
    @Option(help: "An app as NAME:CLIENT_ID:SECRET; repeat for several.") var app: [String] = ["sandbox:dingsandbox:sandbox-secret"]
    @Option(help: "Seconds between the server's SYSTEM pings.") var pingInterval: Int = 30
    @Option(help: "Seconds before an unacked push is pushed again.") var redeliveryTimeout: Int = 60

    func validate() throws {
        try checkPort(port, allowAny: true)
        guard (1...3600).contains(pingInterval) else {
            throw ValidationError("--ping-interval \(pingInterval) is out of range; use 1 to 3600 seconds")
        }
        guard (1...3600).contains(redeliveryTimeout) else {
            throw ValidationError("--redelivery-timeout \(redeliveryTimeout) is out of range; use 1 to 3600 seconds")
        }
    }

    func run() async throws {
        let logger = DingStream.bootstrapLogging(environment: environment())
        var apps: [SimulatedApp] = []
        for spec in app {
            let parts = spec.split(separator: ":", maxSplits: 2).map(String.init)
            guard parts.count == 3 else { throw usageError("--app \(spec): write NAME:CLIENT_ID:SECRET", Self.self) }
            apps.append(SimulatedApp(name: parts[0], clientId: parts[1], clientSecret: parts[2]))
        }
        var configuration = SimulatorConfiguration(apps: apps)
        configuration.port = port
        configuration.pingInterval = .seconds(pingInterval)
        configuration.redeliveryTimeout = .seconds(redeliveryTimeout)
        configuration.logger = logger
        let simulator = try await DingTalkSimulator.start(configuration)
        // Written to the descriptor at once: print() is block-buffered into a pipe or file, and
        // whoever starts the simulator waits for this line.
        FileHandle.standardOutput.write(Data("simulator listening on \(simulator.baseURL)\n".utf8))
        for await _ in await UnixSignalsSequence(trapping: .sigterm, .sigint) { break }
        await simulator.shutdown()
    }
}

struct SpoolCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spool", abstract: "Look into the spool: list, show, retry, purge.",
        subcommands: [List.self, Show.self, Retry.self, Purge.self], defaultSubcommand: List.self)

    static func inspector(_ options: ConfigOption) throws -> SpoolInspector {
        let configuration = try loadConfiguration(options)
        return SpoolInspector(directory: configuration.spoolDirectory, cluster: configuration.cluster)
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "A table per state, newest first.")
        @OptionGroup var options: ConfigOption
        @Flag(help: "JSON instead of a table.") var json = false
        @Option(help: "At most this many entries per state.") var limit: Int?

        func run() throws {
            let inspector = try SpoolCommand.inspector(options)
            do {
                let listings = try inspector.list(limit: limit)
                let totals = limit == nil ? nil : try inspector.counts()
                print(json ? SpoolInspector.json(listings) : SpoolInspector.table(listings, totals: totals), terminator: "")
            } catch {
                throw CleanExit.message("\(error)")
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "One entry, with its reason if it failed.")
        @OptionGroup var options: ConfigOption
        @Argument(help: "Entry name, a unique prefix of it, or the msgId.") var key: String

        func run() throws {
            let inspector = try SpoolCommand.inspector(options)
            try reportingSpoolErrors {
                let shown = try inspector.show(key)
                print("\(shown.name)  \(shown.state.rawValue), \(shown.attempts) attempt\(shown.attempts == 1 ? "" : "s")")
                print(shown.contents, terminator: shown.contents.hasSuffix("\n") ? "" : "\n")
                if !shown.replies.isEmpty {
                    // The last part's delivery is recorded by the move to done, not in the count.
                    let delivered = shown.state == .done ? shown.replies.count : shown.delivered
                    print("--- replies (\(delivered) of \(shown.replies.count) delivered) ---")
                    for reply in shown.replies { print(reply) }
                }
                if let reason = shown.reason { print("--- reason ---\n\(reason)", terminator: reason.hasSuffix("\n") ? "" : "\n") }
            }
        }
    }

    struct Retry: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Put dead letters back: to new so handlers run again, or to outbox when only their reply failed.")
        @OptionGroup var options: ConfigOption
        @Argument(help: "Entry to retry.") var key: String?
        @Flag(help: "Retry every dead letter.") var allFailed = false

        func run() throws {
            let inspector = try SpoolCommand.inspector(options)
            try reportingSpoolErrors {
                if allFailed {
                    let names = try inspector.retryAllFailed()
                    print("\(names.count) entr\(names.count == 1 ? "y" : "ies") put back")
                } else if let key {
                    print("\(try inspector.retry(key)) put back")
                } else {
                    throw usageError("name an entry or pass --all-failed", Self.self)
                }
            }
        }
    }

    struct Purge: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete done or failed entries received longer ago than an age.",
            discussion: "Their keys stay duplicates for dedup_window, so a late redelivery is still recognised.")
        @OptionGroup var options: ConfigOption
        @Option(help: "Age such as 7d, 12h.") var doneOlderThan: String?
        @Option(help: "Age such as 30d; dead letters with their reasons and attachments.") var failedOlderThan: String?
        @Flag(help: "Only say how many entries would be purged.") var dryRun = false

        func validate() throws {
            if doneOlderThan == nil && failedOlderThan == nil {
                throw ValidationError("say what to purge: --done-older-than 7d and/or --failed-older-than 30d")
            }
        }

        func run() throws {
            let configuration = try loadConfiguration(options)
            let inspector = SpoolInspector(directory: configuration.spoolDirectory, cluster: configuration.cluster)
            for (state, text, flag) in [(EntryState.done, doneOlderThan, "--done-older-than"), (.failed, failedOlderThan, "--failed-older-than")] {
                guard let text else { continue }
                guard let age = DurationText.parse(text) else {
                    throw usageError("\(flag) \(text): write an age such as 12h, 7d or 2w (at most 100 years)", Self.self)
                }
                try reportingSpoolErrors {
                    if dryRun {
                        let count = try inspector.purgeable(state, olderThan: age)
                        print("\(count) \(state.rawValue) entr\(count == 1 ? "y" : "ies") would be purged (dry run: nothing removed)")
                    } else {
                        let count = try inspector.purge(state, olderThan: age, dedupWindow: configuration.dedupWindow)
                        print("\(count) \(state.rawValue) entr\(count == 1 ? "y" : "ies") purged")
                    }
                }
            }
        }
    }
}

struct HandlersCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "handlers", abstract: "Inspect the handlers directory.", subcommands: [Check.self])

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List what would run for each message, and why anything would not.")
        @OptionGroup var options: ConfigOption
        @Option(help: "Also accept handlers owned by this uid (the service user).") var serviceUid: UInt32?

        func run() throws {
            let configuration = try loadConfiguration(options)
            let scan = HandlerDirectory.scan(
                path: configuration.spoolDirectory + "/handlers", allowedOwners: HandlerDirectory.allowedOwners(serviceUID: serviceUid))
            let httpHandlers = configuration.apps.compactMap { app in app.httpHandler.map { (app.name, $0) } }
            if !httpHandlers.isEmpty {
                print("http handlers (called first, then the scripts below):")
                for (app, settings) in httpHandlers {
                    print("  app \(app): POST \(settings.url) (timeout \(DurationText.format(settings.timeout)), at most \(settings.concurrency) at once\(settings.caFile.map { ", ca_file \($0)" } ?? ""))")
                }
            }
            print(scan.report())
            if scan.runnable.isEmpty, httpHandlers.isEmpty { throw ExitCode(1) }
        }
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "What the running daemon is doing.",
        discussion: "Exits 3 when no daemon runs (no status file, or its pid is gone).")
    @OptionGroup var options: ConfigOption
    @Flag(help: "Print the raw JSON.") var json = false

    func run() throws {
        // The default file is 0640 root:dingstream: a user who cannot read it still sees the
        // status under /run. A file named with --config must be there and valid.
        let defaultUnreadable = options.config == DingStream.Configuration.defaultPath && !FileManager.default.isReadableFile(atPath: options.config)
        let configuration = defaultUnreadable ? nil : try loadConfiguration(options)
        if !json, let configuration, configuration.cluster != nil { printCluster(configuration) }
        let file = (configuration?.runtimeDirectory ?? "/run/dingstream") + "/status.json"
        guard let data = FileManager.default.contents(atPath: file),
            let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
        else {
            print("dingstream is not running (no \(file)); try: systemctl status dingstream")
            throw ExitCode(3)
        }
        // After kill -9 the file stays behind: only a live dingstream process makes it true.
        let pid = (object["pid"] as? NSNumber)?.int32Value ?? 0
        guard Self.isDingstream(pid: pid) else {
            print("dingstream is not running: pid \(pid) of \(file) is gone (the daemon was killed or crashed); try: systemctl status dingstream")
            throw ExitCode(3)
        }
        if json {
            print(String(decoding: data, as: UTF8.self))
            return
        }
        let now = Date().timeIntervalSince1970
        let updated = (object["updatedAt"] as? NSNumber)?.doubleValue ?? now
        let staleness = max(0, Int(now - updated))
        // The daemon rewrites the file every 5 s: much older figures mean it is stuck.
        let freshness = staleness > 30 ? "as of \(staleness)s ago, not updated since: the daemon may be stuck" : "as of \(staleness)s ago"
        print("dingstream pid \(pid): \(object["phase"] ?? "?"), \(object["queued"] ?? 0) queued, \(object["failed"] ?? 0) failed (\(freshness))")
        let apps = object["apps"] as? [String: [String: Any]] ?? [:]
        for name in apps.keys.sorted() {
            let app = apps[name] ?? [:]
            print("  \(name): \(app["up"] ?? 0)/\(app["wanted"] ?? 0) sockets up, \(app["rotations"] ?? 0) rotations")
            for socket in app["sockets"] as? [[String: Any]] ?? [] {
                let age = (socket["openedAt"] as? NSNumber).map { max(0, Int(now - $0.doubleValue)) } ?? (socket["ageSeconds"] as? Int ?? 0)
                print("    slot \(socket["slot"] ?? "?") socket \(socket["id"] ?? "?") age \(age)s")
            }
            if let error = app["lastError"] as? String { print("    last error: \(error)") }
        }
        if let fault = object["storeFault"] as? String { print("  not acking: \(fault)") }
    }

    /// Every node of the cluster: its last heartbeat and what it holds.
    private func printCluster(_ configuration: DingStream.Configuration) {
        let inspector = SpoolInspector(directory: configuration.spoolDirectory, cluster: configuration.cluster)
        do {
            guard let report = try inspector.clusterReport() else { return }
            print("cluster \(report.database), schema \(report.schemaVersion)")
            for node in report.nodes {
                let seconds = Double(node.sinceHeartbeat.components.seconds) + Double(node.sinceHeartbeat.components.attoseconds) / 1e18
                print(
                    "  node \(node.name) pid \(node.pid): heartbeat \(String(format: "%.1f", seconds))s ago\(node.alive ? "" : " (lease run out: dead or cut off)"), running \(node.running), outbox \(node.outbox)")
            }
        } catch {
            print("cluster: \(error)")
        }
    }

    /// A process `pid` exists and is dingstream (a pid can be reused by another program).
    static func isDingstream(pid: Int32) -> Bool {
        guard pid > 0, kill(pid, 0) == 0 || errno == EPERM else { return false }
        guard let comm = try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8) else { return true }
        return comm.hasPrefix("dingstream")
    }
}

struct Send: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send a message proactively (cron jobs, alerts) to users or a group.",
        discussion: """
            The text is the arguments after the options. Without text (or with "-") it is read from stdin, \
            unless stdin is a terminal. Several receivers: --user ID --user ID, or --user ID,ID.
            """)
    @OptionGroup var options: ConfigOption
    @Option(help: "The app (bot) that sends.") var app: String?
    // One value per --user: with `.upToNextOption` the text after it was taken for a second id.
    @Option(name: .customLong("user"), help: "Staff id of a receiver (repeat, or separate with commas).") var userOptions: [String] = []
    @Option(help: "openConversationId of the group.") var group: String?
    @Option(help: "Send as markdown with this title.") var markdown: String?
    @Argument(help: "The text, or - for stdin.") var text: [String] = []

    func run() async throws {
        let logger = DingStream.bootstrapLogging(environment: environment(), level: .warning)
        let configuration = try loadConfiguration(options)
        guard let appConfiguration = app.map({ name in configuration.apps.first { $0.name == name } }) ?? (configuration.apps.count == 1 ? configuration.apps.first : nil) else {
            throw usageError("name the app with --app (\(configuration.apps.map(\.name).joined(separator: ", ")))", Self.self)
        }
        let users = userOptions.flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard users.isEmpty != (group == nil) else { throw usageError("give either --user ID (repeatable) or --group CID", Self.self) }
        var body = text.joined(separator: " ")
        if body.isEmpty || body == "-" {
            // A terminal on stdin means nobody is piping anything: waiting would look like a hang.
            guard isatty(STDIN_FILENO) == 0 else {
                throw usageError("no text to send; give it after the options (send --user ID \"text\") or pipe it on stdin", Self.self)
            }
            body = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
        }
        body = body.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !body.isEmpty else {
            throw usageError("the message is empty; give the text after the options (send --user ID \"text\") or pipe it on stdin", Self.self)
        }
        let message: ReplyMessage = markdown.map { .markdown(title: $0, text: body) } ?? .text(body)
        if let cut = message.split().last?.cutBytes {
            FileHandle.standardError.write(Data(
                "warning: the text is longer than \(ReplyMessage.defaultMaxParts) messages of \(ReplyMessage.defaultPartBytes) bytes; the last \(cut) bytes are cut\n".utf8))
        }
        // A local simulator or sandbox that is not running refuses at once; the HTTP client
        // would try again until its timeout before saying so.
        if appConfiguration.proxy == nil, let url = URL(string: appConfiguration.apiBase), let host = url.host,
            host == "localhost" || host.hasPrefix("127."),
            let failure = DingStream.Sandbox.connectFailure(host: host == "localhost" ? "127.0.0.1" : host, port: url.port ?? (url.scheme == "https" ? 443 : 80))
        {
            FileHandle.standardError.write(Data("cannot reach api_base \(appConfiguration.apiBase) of app \(appConfiguration.name): \(failure); is the simulator or sandbox running?\n".utf8))
            throw ExitCode(69)
        }
        let network = NetworkSettings.resolve(proxy: appConfiguration.proxy, caFile: appConfiguration.caFile, environment: environment())
        let client = try network.makeHTTPClient(for: appConfiguration.apiBase)
        let credentials = AppCredentials(
            name: appConfiguration.name, clientID: appConfiguration.clientID, clientSecret: appConfiguration.clientSecret,
            apiBase: appConfiguration.apiBase)
        let tokens = AccessTokenProvider(credentials: credentials, httpClient: client, logger: logger)
        let api = OpenAPIClient(credentials: credentials, httpClient: client, tokens: tokens, logger: logger)
        let sender = ProactiveSender(client: api)
        let summary = if let group { await sender.send(message: message, group: group) } else { await sender.send(message: message, users: users) }
        try? await client.shutdown()
        // A failure (whole or partial) is an error: stderr, where cron mails and scripts look.
        let report = Data((summary.lines.joined(separator: "\n") + "\n").utf8)
        if summary.exitStatus == 0 { FileHandle.standardOutput.write(report) } else { FileHandle.standardError.write(report) }
        throw ExitCode(summary.exitStatus)
    }
}

/// A port from the command line, checked before it reaches a conversion that would trap or wrap
/// (70000 became 4464). `allowAny`: 0 asks the system for a free port.
func checkPort(_ port: Int, allowAny: Bool = false) throws {
    let range = (allowAny ? 0 : 1)...65535
    guard range.contains(port) else {
        throw ValidationError("--port \(port) is not a TCP port; use \(range.lowerBound) to 65535")
    }
}

/// A usage error found in `run()`. ArgumentParser prints the root command's usage for an error
/// thrown there; this prints the subcommand's own, then the command exits 64 (EX_USAGE).
func usageError(_ message: String, _ command: any ParsableCommand.Type) -> ExitCode {
    FileHandle.standardError.write(Data("Error: \(message)\nUsage: \(Dingstream.usageString(for: command))\n  See --help for more.\n".utf8))
    return ExitCode.validationFailure
}

/// The configuration of a command; on error it is printed and the command exits 78 (EX_CONFIG).
func loadConfiguration(_ options: ConfigOption) throws -> DingStream.Configuration {
    do {
        return try DingStream.Configuration.load(path: options.config, environment: environment())
    } catch {
        FileHandle.standardError.write(Data("\(error)\n".utf8))
        throw ExitCode(ConfigurationError.exitStatus)
    }
}

/// Spool errors already say what to do: print them and exit 1; other errors pass through.
func reportingSpoolErrors(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let error as SpoolError {
        FileHandle.standardError.write(Data("\(error)\n".utf8))
        throw ExitCode(1)
    }
}

struct DoctorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check configuration, secrets, spool, handlers, DNS, TLS, clock, credentials and registration.",
        discussion: "Run it as the service user to see what the daemon sees: sudo -u dingstream dingstream doctor")
    @OptionGroup var options: ConfigOption
    @Argument(help: "Only this app's network checks.") var app: String?
    @Option(help: "Also accept handlers owned by this uid (the service user).") var serviceUid: UInt32?

    func run() async throws {
        _ = DingStream.bootstrapLogging(environment: environment(), level: .critical)
        let doctor = Doctor(configurationPath: options.config, environment: environment(), app: app, serviceUID: serviceUid)
        let checks = await doctor.run { print($0.line) }
        let failed = checks.filter { $0.outcome == .failed }.count
        let warned = checks.filter { $0.outcome == .warning }.count
        print(failed == 0 ? "all \(checks.count) checks passed\(warned > 0 ? " (\(warned) warning\(warned == 1 ? "" : "s"))" : "")" : "\(failed) of \(checks.count) checks failed")
        if failed > 0 { throw ExitCode(1) }
    }
}

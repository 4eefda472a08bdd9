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
    @Option(help: "Port to listen on (127.0.0.1).") var port: Int = DingStream.Sandbox.defaultPort
    @Option(help: "An app as NAME:CLIENT_ID:SECRET; repeat for several.") var app: [String] = ["sandbox:dingsandbox:sandbox-secret"]
    @Option(help: "Seconds between the server's SYSTEM pings.") var pingInterval: Int = 30

    func run() async throws {
        let logger = DingStream.bootstrapLogging(environment: environment())
        var apps: [SimulatedApp] = []
        for spec in app {
            let parts = spec.split(separator: ":", maxSplits: 2).map(String.init)
            guard parts.count == 3 else { throw ValidationError("--app \(spec): write NAME:CLIENT_ID:SECRET") }
            apps.append(SimulatedApp(name: parts[0], clientId: parts[1], clientSecret: parts[2]))
        }
        var configuration = SimulatorConfiguration(apps: apps)
        configuration.port = port
        configuration.pingInterval = .seconds(pingInterval)
        configuration.logger = logger
        let simulator = try await DingTalkSimulator.start(configuration)
        print("simulator listening on \(simulator.baseURL)")
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
                print(json ? SpoolInspector.json(listings) : SpoolInspector.table(listings))
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
                    print("--- replies (\(shown.delivered) of \(shown.replies.count) delivered) ---")
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
                    throw ValidationError("name an entry or pass --all-failed")
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
                guard let age = SpoolInspector.parseDuration(text) else { throw ValidationError("\(flag) \(text): write e.g. 7d or 12h") }
                try reportingSpoolErrors {
                    let count = try inspector.purge(state, olderThan: age, dedupWindow: configuration.dedupWindow)
                    print("\(count) \(state.rawValue) entr\(count == 1 ? "y" : "ies") purged")
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
            print(scan.report())
            if scan.runnable.isEmpty { throw ExitCode(1) }
        }
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "What the running daemon is doing.")
    @OptionGroup var options: ConfigOption
    @Flag(help: "Print the raw JSON.") var json = false

    func run() throws {
        let configuration = try? DingStream.Configuration.load(path: options.config, environment: environment())
        if !json, let configuration, configuration.cluster != nil { printCluster(configuration) }
        let runtime = configuration?.runtimeDirectory ?? "/run/dingstream"
        guard let data = FileManager.default.contents(atPath: runtime + "/status.json"),
            let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
        else {
            print("dingstream is not running (no \(runtime)/status.json); try: systemctl status dingstream")
            throw ExitCode(3)
        }
        if json {
            print(String(decoding: data, as: UTF8.self))
            return
        }
        print("dingstream pid \(object["pid"] ?? "?"): \(object["phase"] ?? "?"), \(object["queued"] ?? 0) queued, \(object["failed"] ?? 0) failed")
        let apps = object["apps"] as? [String: [String: Any]] ?? [:]
        for name in apps.keys.sorted() {
            let app = apps[name] ?? [:]
            print("  \(name): \(app["up"] ?? 0)/\(app["wanted"] ?? 0) sockets up, \(app["rotations"] ?? 0) rotations")
            for socket in app["sockets"] as? [[String: Any]] ?? [] {
                print("    slot \(socket["slot"] ?? "?") socket \(socket["id"] ?? "?") age \(socket["ageSeconds"] ?? 0)s")
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
}

struct Send: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send a message proactively (cron jobs, alerts) to users or a group.",
        discussion: "Reads the text from the arguments, or from stdin when it is \"-\" or absent.")
    @OptionGroup var options: ConfigOption
    @Option(help: "The app (bot) that sends.") var app: String?
    @Option(name: .customLong("user"), parsing: .upToNextOption, help: "Staff ids of the receivers.") var users: [String] = []
    @Option(help: "openConversationId of the group.") var group: String?
    @Option(help: "Send as markdown with this title.") var markdown: String?
    @Argument(help: "The text, or - for stdin.") var text: [String] = []

    func run() async throws {
        let logger = DingStream.bootstrapLogging(environment: environment(), level: .warning)
        let configuration = try loadConfiguration(options)
        guard let appConfiguration = app.map({ name in configuration.apps.first { $0.name == name } }) ?? (configuration.apps.count == 1 ? configuration.apps.first : nil) else {
            throw ValidationError("name the app with --app (\(configuration.apps.map(\.name).joined(separator: ", ")))")
        }
        guard users.isEmpty != (group == nil) else { throw ValidationError("give either --user ID… or --group CID") }
        var body = text.joined(separator: " ")
        if body.isEmpty || body == "-" {
            body = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
        }
        body = body.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !body.isEmpty else { throw ValidationError("the message is empty") }
        let message: ReplyMessage = markdown.map { .markdown(title: $0, text: body) } ?? .text(body)
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
        print(summary.lines.joined(separator: "\n"))
        throw ExitCode(summary.exitStatus)
    }
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

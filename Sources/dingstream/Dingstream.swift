import ArgumentParser
import DingStream
import Foundation
import Logging

@main
struct Dingstream: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dingstream",
        abstract: "Connects DingTalk bots to this server through Stream Mode; runs handler scripts for every message.",
        version: Daemon.version,
        subcommands: [
            Run.self, DoctorCommand.self, Sandbox.self, SimulatorCommand.self, SpoolCommand.self, HandlersCommand.self, Send.self,
            Status.self, Version.self,
        ])

    /// No subcommand: the usage on stderr and exit 64 (EX_USAGE), so that a script calling
    /// `dingstream` without arguments does not pass for a success.
    func run() async throws {
        FileHandle.standardError.write(Data((Self.helpMessage() + "\n").utf8))
        throw ExitCode.validationFailure
    }
}

struct ConfigOption: ParsableArguments {
    @Option(name: .shortAndLong, help: "Configuration file.")
    var config: String = DingStream.Configuration.defaultPath
}

func environment() -> [String: String] { ProcessInfo.processInfo.environment }

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the daemon (what systemd starts).")
    @OptionGroup var options: ConfigOption

    func run() async throws {
        // SIGHUP's default action ends the process: one arriving before the reloader listens
        // (a reload during start-up) must not kill the daemon.
        signal(SIGHUP, SIG_IGN)
        let logger = DingStream.bootstrapLogging(environment: environment())
        let status = await Daemon(configurationPath: options.config, environment: environment()).run(logger: logger)
        throw ExitCode(status)
    }
}

struct Sandbox: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Try dingstream without a DingTalk account: a local simulator and the daemon together.",
        subcommands: [Start.self, Say.self], defaultSubcommand: Start.self)

    struct Start: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run the simulator and the daemon with an echo handler (the default).")
        @Option(help: "Port of the simulator; 0 picks a free one.") var port: Int = DingStream.Sandbox.defaultPort
        @Option(help: "Keep the sandbox spool here instead of a temporary folder.") var directory: String?
        @Option(help: "Where the chat page listens: PORT or HOST:PORT (127.0.0.1 unless another address is written out; port 0 picks a free one).")
        var listen = DingStream.Sandbox.defaultPageAddress.description

        func validate() throws {
            try checkPort(port, allowAny: true)
            if case .failure(let failure) = MetricsAddress.parse(listen) {
                throw ValidationError("--listen \(listen): \(failure.message)")
            }
        }

        func run() async throws {
            let logger = DingStream.bootstrapLogging(environment: environment())
            guard case .success(let page) = MetricsAddress.parse(listen) else { throw ExitCode(64) }
            let status = await DingStream.Sandbox(port: port, directory: directory, pageAddress: page).run(logger: logger, environment: environment())
            throw ExitCode(status)
        }
    }

    struct Say: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Send a message to the running sandbox as a DingTalk user would.")
        @Argument(help: "The text of the message.") var text: [String]
        @Option(help: "Port of the sandbox simulator.") var port: Int = DingStream.Sandbox.defaultPort
        @Flag(help: "Send it in a group chat instead of a private chat.") var group = false
        @Option(help: "Staff id of the sender.") var sender = "0423297"

        func validate() throws { try checkPort(port) }

        func run() async throws {
            throw ExitCode(await DingStream.Sandbox.say(text.joined(separator: " "), port: port, group: group, sender: sender))
        }
    }
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the version and how this binary was built.")
    func run() { print(BuildInfo.line) }
}

import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import ServiceLifecycle
import Simulator
import StreamProtocol

/// The simulator and the daemon in one process, with a throwaway spool and an echo handler, so
/// a new user sees a message go in and the reply come back without a DingTalk account.
public struct Sandbox: Sendable {
    public static let defaultPort = 8930
    public var port: Int
    public var directory: String?

    public init(port: Int = Sandbox.defaultPort, directory: String? = nil) {
        self.port = port
        self.directory = directory
    }

    static let app = SimulatedApp(name: "sandbox", clientId: "dingsandbox", clientSecret: "sandbox-secret")

    static let echoHandler = """
        #!/bin/sh
        # Example handler: the message JSON is on stdin, the text in $DINGSTREAM_TEXT.
        # Whatever it prints becomes the reply.
        printf 'echo from %s: %s\\n' "$(hostname)" "$DINGSTREAM_TEXT"

        """

    public func run(logger: Logger, environment: [String: String]) async -> Int32 {
        let root = directory ?? NSTemporaryDirectory() + "dingstream-sandbox-\(getpid())"
        // A folder of our own making goes with the sandbox (Ctrl-C included); one named with
        // --directory is the user's and stays.
        defer { if directory == nil { try? FileManager.default.removeItem(atPath: root) } }
        let spool = root + "/spool"
        let handlers = spool + "/handlers"
        do {
            try FileManager.default.createDirectory(atPath: handlers, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o750])
            try FileManager.default.setAttributes([.posixPermissions: 0o750], ofItemAtPath: root)
            try FileManager.default.setAttributes([.posixPermissions: 0o750], ofItemAtPath: spool)
            let handler = handlers + "/50-echo"
            if !FileManager.default.fileExists(atPath: handler) {
                FileManager.default.createFile(atPath: handler, contents: Data(Self.echoHandler.utf8), attributes: [.posixPermissions: 0o755])
            }
        } catch {
            logger.critical("sandbox: cannot create \(root): \(error)")
            return 73
        }
        var simulatorConfiguration = SimulatorConfiguration(apps: [Self.app])
        simulatorConfiguration.port = port
        simulatorConfiguration.pingInterval = .seconds(15)
        var simulatorLogger = logger
        simulatorLogger.logLevel = .warning
        simulatorConfiguration.logger = simulatorLogger
        let simulator: DingTalkSimulator
        do {
            simulator = try await DingTalkSimulator.start(simulatorConfiguration)
        } catch {
            logger.critical("sandbox: cannot start the simulator on port \(port): \(error); pick another with --port")
            return 69
        }
        // A real configuration file, so that status, spool, doctor and send can be pointed at it.
        let configurationPath = root + "/dingstream.toml"
        let configuration: Configuration
        do {
            let text = Self.configurationText(spool: spool, runtime: root + "/run", apiBase: simulator.baseURL)
            guard FileManager.default.createFile(atPath: configurationPath, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600]) else {
                throw CocoaError(.fileWriteUnknown)
            }
            configuration = try Configuration.load(path: configurationPath, environment: environment)
        } catch {
            logger.critical("sandbox: cannot write \(configurationPath): \(error)")
            await simulator.shutdown()
            return 73
        }
        let portOption = port == Self.defaultPort ? "" : " --port \(port)"
        emit(
            """

            dingstream sandbox: a local DingTalk simulator on \(simulator.baseURL) and the daemon beside it.
              spool:    \(spool)
              handlers: \(handlers)   (edit 50-echo or drop in your own)
              config:   \(configurationPath)

            From a second terminal, send a message:
              dingstream sandbox say\(portOption) "hello"
              curl -s -XPOST \(simulator.baseURL)/_sim/messages -d '{"app":"sandbox","text":"hello"}'
            Look inside:
              dingstream status --config \(configurationPath)
              dingstream spool ls --config \(configurationPath)
              dingstream doctor --config \(configurationPath)
            Replies appear below. Ctrl-C stops both\(directory == nil ? " and removes \(root)" : "").

            """)
        let printer = ReplyPrinter(simulator: simulator)
        let status = await Daemon(configurationPath: configurationPath, environment: environment).run(
            configuration: configuration, logger: logger, extraServices: [printer])
        await simulator.shutdown()
        return status
    }

    /// The sandbox's configuration: everyone may talk to its one app, short waits.
    static func configurationText(spool: String, runtime: String, apiBase: String) -> String {
        """
        # Written by `dingstream sandbox`; removed with its folder when the sandbox stops.
        spool_dir = "\(spool)"
        runtime_dir = "\(runtime)"
        ready_timeout = "10s"
        shutdown_grace = "5s"

        [[app]]
        name = "\(app.name)"
        client_id = "\(app.clientId)"
        client_secret = "\(app.clientSecret)"
        api_base = "\(apiBase)"
        allowed_users = ["*"]

        """
    }

    /// `dingstream sandbox say`: injects a message through the control API and waits for its reply.
    /// Errors go to stderr; a port nobody listens on is said at once (the HTTP client would try
    /// again until its timeout).
    public static func say(_ text: String, port: Int, group: Bool, sender: String) async -> Int32 {
        let base = "http://127.0.0.1:\(port)"
        let start = "start one with: dingstream sandbox\(port == defaultPort ? "" : " --port \(port)")"
        if let failure = connectFailure(port: port) {
            printError("no sandbox on 127.0.0.1:\(port) (\(failure)); \(start)")
            return 69
        }
        var body: [String: Any] = ["app": app.name, "text": text, "sender": sender]
        if group { body["conversation"] = "group" }
        do {
            var request = HTTPClientRequest(url: base + "/_sim/messages")
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: JSON.encode(body)))
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(5))
            let bytes = try await response.body.collect(upTo: 1 << 20)
            guard response.status == .ok else {
                printError("the sandbox answered \(response.status.code): \(String(buffer: bytes))")
                return 1
            }
            let answer = JSON.object(Data(bytes.readableBytesView)) ?? [:]
            print("sent \"\(text)\" (msgId \(answer["msgId"] as? String ?? "?")); the reply shows in the sandbox terminal")
            return 0
        } catch {
            printError("no answer from a sandbox on \(base): \(error); \(start)")
            return 69
        }
    }

    /// nil when something accepts a TCP connection on `host` (an IPv4 address on this machine)
    /// port `port`, else why not ("connection refused"). Loopback answers at once either way.
    public static func connectFailure(host: String = "127.0.0.1", port: Int) -> String? {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { return String(cString: strerror(errno)).lowercased() }
        defer { close(descriptor) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr(host)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        return result == 0 ? nil : String(cString: strerror(errno)).lowercased()
    }
}

/// Prints every reply the simulator receives, as a user in DingTalk would see it.
struct ReplyPrinter: Service {
    let simulator: DingTalkSimulator

    func run() async throws {
        var seenWebhook = 0
        var seenAPI = 0
        do {
            while !Task.isCancelled && !Task.isShuttingDownGracefully {
                let webhook = simulator.webhookReplies()
                for reply in webhook.dropFirst(seenWebhook) {
                    emit("◀ reply via session webhook: \(Self.summary(reply.body))")
                }
                seenWebhook = webhook.count
                let api = simulator.openAPISends().filter { $0.endpoint == .batchSend || $0.endpoint == .groupMessages }
                for send in api.dropFirst(seenAPI) {
                    emit("◀ reply via OpenAPI \(send.endpoint.rawValue): \(Self.summary(send.body))")
                }
                seenAPI = api.count
                        try? await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    static func summary(_ body: String) -> String {
        guard let object = JSON.object(body) else { return body }
        if let text = object["text"] as? [String: Any], let content = text["content"] as? String { return content }
        if let param = object["msgParam"] as? String, let inner = JSON.object(param) {
            return inner["content"] as? String ?? inner["text"] as? String ?? param
        }
        return body
    }
}

/// One line on stderr.
func printError(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}

/// Unbuffered, so the sandbox's lines show at once even through a pipe.
func emit(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

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
    /// Where the chat page is served unless `--listen` says otherwise.
    public static let defaultPageAddress = MetricsAddress(host: "127.0.0.1", port: 8931)
    public var port: Int
    public var directory: String?
    public var pageAddress: MetricsAddress

    public init(port: Int = Sandbox.defaultPort, directory: String? = nil, pageAddress: MetricsAddress = Sandbox.defaultPageAddress) {
        self.port = port
        self.directory = directory
        self.pageAddress = pageAddress
    }

    static let app = SimulatedApp(name: "sandbox", clientId: "dingsandbox", clientSecret: "sandbox-secret")

    /// The handler the sandbox starts with: it echoes text and answers a few words with the
    /// message types DingTalk renders, so the page shows each of them.
    static let echoHandler = #"""
        #!/bin/sh
        # Example handler: the message JSON is on stdin, the text in $DINGSTREAM_TEXT.
        # Whatever it prints becomes the reply: plain text, or a JSON object with "msgtype".
        # Try: any text; markdown (# heading, **bold**, - list, > quote, [link](https://…));
        # "card" (an actionCard whose buttons answer), "link", "feed"; a picture or a file.
        # What it writes to stderr shows in the sandbox page's list of handler runs.
        host=$(hostname)

        # A JSON string's contents: backslashes, quotes, tabs and line breaks escaped.
        quote() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\t/\\t/g' | awk 'NR > 1 { printf "\\n" } { printf "%s", $0 }'; }

        case "$DINGSTREAM_KIND" in
        card)
            # A button click: the first JSON object printed updates the card at once.
            action=$(sed -n 's/.*actionIds\\":\[\\"\([^\\"]*\)\\".*/\1/p' | head -n 1)
            echo "50-echo: card button \"$action\" clicked" >&2
            printf '{"cardData":{"cardParamMap":{"status":"%s: done on %s"}}}\n' "$(quote "$action")" "$(quote "$host")"
            exit 0 ;;
        event)
            echo "50-echo: event $(head -c 300)" >&2
            exit 0 ;;
        esac

        if [ -n "$DINGSTREAM_ATTACHMENTS" ]; then
            for file in "$DINGSTREAM_ATTACHMENTS"/*; do
                echo "50-echo: attachment $(basename "$file")" >&2
                printf 'echo from %s: got %s (%s bytes)\n' "$host" "$(basename "$file")" "$(wc -c < "$file")"
            done
            exit 0
        fi
        text=$DINGSTREAM_TEXT
        case "$text" in
        card)
            echo "50-echo: answering with an actionCard" >&2
            h=$(quote "$host")
            cat <<JSON
        {"msgtype":"actionCard","actionCard":{"title":"Deploy to $h?","text":"### Deploy to $h\n\nRelease **1.4.2** is ready:\n\n- 3 commits\n- tests green","btnOrientation":"1","btns":[{"title":"Approve","actionURL":"https://example.com/approve"},{"title":"Reject","actionURL":"https://example.com/reject"}]},"msgKey":"sampleActionCard2","msgParam":{"title":"Deploy to $h?","text":"Release **1.4.2** is ready.","actionTitle1":"Approve","actionURL1":"https://example.com/approve","actionTitle2":"Reject","actionURL2":"https://example.com/reject"}}
        JSON
            ;;
        link)
            echo "50-echo: answering with a link" >&2
            printf '{"msgtype":"link","link":{"title":"dingstream on %s","text":"Stream Mode bots with handlers as scripts.","messageUrl":"https://example.com/dingstream","picUrl":""}}\n' "$(quote "$host")"
            ;;
        feed)
            echo "50-echo: answering with a feedCard" >&2
            echo '{"msgtype":"feedCard","feedCard":{"links":[{"title":"Release notes","messageURL":"https://example.com/notes","picURL":""},{"title":"Runbook","messageURL":"https://example.com/runbook","picURL":""}]},"msgKey":"sampleLink","msgParam":{"title":"Release notes","text":"Release notes","messageUrl":"https://example.com/notes","picUrl":""}}'
            ;;
        '#'*|*'**'*|*']('*|'> '*|'- '*|*'
        '[-\>#]*)
            echo "50-echo: answering in markdown" >&2
            printf '{"msgtype":"markdown","markdown":{"title":"echo","text":"%s"}}\n' "$(quote "$text")"
            ;;
        *)
            printf 'echo from %s: %s\n' "$host" "$text"
            ;;
        esac

        """#

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
        let page: SandboxPage
        do {
            page = try await SandboxPage(address: pageAddress, simulator: simulator, app: Self.app.name, spoolDirectory: spool, logger: logger)
        } catch {
            await simulator.shutdown()
            logger.critical("sandbox: cannot serve the chat page on \(pageAddress): \(error); pick another address with --listen")
            return 69
        }
        if !pageAddress.isLoopback {
            logger.warning("sandbox: the chat page listens on \(pageAddress), not a loopback address: anyone who reaches it can chat as the sandbox's users")
        }
        let simulatorPort = URL(string: simulator.baseURL)?.port ?? port
        let portOption = simulatorPort == Self.defaultPort ? "" : " --port \(simulatorPort)"
        emit(
            """

            dingstream sandbox: a local DingTalk simulator on \(simulator.baseURL) and the daemon beside it.
              spool:    \(spool)
              handlers: \(handlers)   (edit 50-echo or drop in your own)
              config:   \(configurationPath)

            Chat with the bot in a browser: http://\(pageAddress.hostForURL):\(page.port)/

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
        var daemon = Daemon(configurationPath: configurationPath, environment: environment)
        daemon.onHandlerRun = { page.record($0) }
        let status = await daemon.run(configuration: configuration, logger: logger, extraServices: [printer, page])
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

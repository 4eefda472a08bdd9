import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import Simulator
import Spool
import StreamProtocol
import Synchronization

/// The sandbox's chat page: a DingTalk-like conversation in the browser, served from this
/// process (the page is plain HTML, CSS and JavaScript compiled into the binary), and the small
/// JSON API it polls. It speaks to the simulator in-process and reads the spool read-only.
final class SandboxPage: Service {
    private typealias Connection = HTTPListener.Connection

    let chat: SandboxChat
    let simulator: DingTalkSimulator
    let app: String
    let spoolDirectory: String
    let port: Int
    private let server: HTTPListener.Server
    private let runs = Mutex<[String]>([])
    private let logger: Logger

    static let keptRuns = 50
    static let maxBody = 12 << 20
    static let requestTimeout: Duration = .seconds(20)

    /// Binds `address` at once, so that a port in use is reported before the daemon starts.
    init(address: MetricsAddress, simulator: DingTalkSimulator, app: String, spoolDirectory: String, logger: Logger) async throws {
        self.simulator = simulator
        self.app = app
        self.spoolDirectory = spoolDirectory
        self.logger = logger
        chat = SandboxChat(simulator: simulator, app: app)
        server = try await HTTPListener.bind(address, backlog: 64)
        port = server.channel.localAddress?.port ?? address.port
    }

    /// Keeps the last runs for the activity panel.
    func record(_ run: HandlerRunReport) {
        let object: [String: Any] = [
            "entry": run.entry.value, "kind": run.kind.rawValue, "handler": run.handler,
            "exitCode": run.exitCode.map { Int($0) } ?? NSNull(), "status": run.status,
            "ms": Int(run.duration.components.seconds * 1000 + run.duration.components.attoseconds / 1_000_000_000_000_000),
            "stderr": run.stderrTail, "ended": run.ended.timeIntervalSince1970,
        ]
        let json = JSON.encode(object)
        runs.withLock { runs in
            runs.append(json)
            if runs.count > Self.keptRuns { runs.removeFirst(runs.count - Self.keptRuns) }
        }
    }

    func run() async throws {
        await cancelWhenGracefulShutdown { [self] in
            do {
                try await HTTPListener.serve(server, timeout: Self.requestTimeout) { try await self.exchange($0) }
            } catch {
                if !Task.isCancelled { logger.warning("sandbox page: listener failed: \(error)") }
            }
        }
        try? await server.channel.close()
    }

    private func exchange(_ connection: Connection) async throws {
        try await connection.executeThenClose { [self] inbound, outbound in
            var head: HTTPRequestHead?
            var body = ByteBuffer()
            var tooLarge = false
            for try await part in inbound {
                switch part {
                case .head(let h):
                    head = h
                case .body(var chunk):
                    if body.readableBytes + chunk.readableBytes > Self.maxBody { tooLarge = true } else { body.writeBuffer(&chunk) }
                case .end:
                    guard let head else { return }
                    let reply = tooLarge
                        ? Reply(.payloadTooLarge, json: #"{"error":"request over 12 MiB; attach a smaller file"}"#)
                        : await respond(head, body: Data(body.readableBytesView))
                    var headers = HTTPHeaders()
                    headers.add(name: "Content-Type", value: reply.contentType)
                    headers.add(name: "Content-Length", value: "\(reply.body.count)")
                    headers.add(name: "Cache-Control", value: "no-store")
                    headers.add(name: "Connection", value: "close")
                    try await outbound.write(.head(HTTPResponseHead(version: head.version, status: reply.status, headers: headers)))
                    try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: reply.body))))
                    try await outbound.write(.end(nil))
                    return
                }
            }
        }
    }

    struct Reply {
        var status: HTTPResponseStatus
        var contentType: String
        var body: [UInt8]

        init(_ status: HTTPResponseStatus, contentType: String, body: [UInt8]) {
            self.status = status
            self.contentType = contentType
            self.body = body
        }

        init(_ status: HTTPResponseStatus = .ok, json: String) {
            self.init(status, contentType: "application/json", body: Array(json.utf8))
        }

        static func error(_ message: String) -> Reply {
            Reply(.badRequest, json: JSON.encode(["error": message]))
        }
    }

    private func respond(_ head: HTTPRequestHead, body: Data) async -> Reply {
        let parts = head.uri.split(separator: "?", maxSplits: 1).map(String.init)
        let path = parts.first ?? "/"
        let query = parts.count > 1 ? parts[1] : ""
        switch (head.method, path) {
        case (.GET, "/"):
            return Reply(.ok, contentType: "text/html; charset=utf-8", body: Array(SandboxPageAssets.html.utf8))
        case (.GET, "/sandbox.css"):
            return Reply(.ok, contentType: "text/css; charset=utf-8", body: Array(SandboxPageAssets.css.utf8))
        case (.GET, "/sandbox.js"):
            return Reply(.ok, contentType: "text/javascript; charset=utf-8", body: Array(SandboxPageAssets.script.utf8))
        case (.GET, "/api/chat"):
            return Reply(json: chat.items(since: Self.number("since", in: query) ?? 0))
        case (.GET, "/api/activity"):
            return await activity()
        case (.GET, _) where path.hasPrefix("/api/files/"):
            guard let id = Int(path.dropFirst("/api/files/".count)), let file = chat.file(id) else {
                return Reply(.notFound, json: #"{"error":"no such file"}"#)
            }
            return Reply(.ok, contentType: file.contentType, body: file.bytes)
        case (.POST, "/api/send"):
            guard let request = JSON.object(body) else { return .error("the body is not a JSON object") }
            do {
                return Reply(json: try chat.send(request))
            } catch {
                return .error("\(error)")
            }
        case (.POST, "/api/card"):
            guard let request = JSON.object(body) else { return .error("the body is not a JSON object") }
            return await click(request)
        case (.POST, "/api/control"):
            guard let request = JSON.object(body) else { return .error("the body is not a JSON object") }
            return control(request)
        case (_, "/"), (_, "/api/chat"), (_, "/api/activity"), (_, "/api/send"), (_, "/api/card"), (_, "/api/control"):
            return Reply(.methodNotAllowed, json: JSON.encode(["error": "\(head.method) is not allowed on \(path)"]))
        default:
            return Reply(.notFound, json: JSON.encode(["error": "no such page: \(path); the sandbox page is at /"]))
        }
    }

    static func number(_ name: String, in query: String) -> Int? {
        for pair in query.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            if kv.count == 2, kv[0] == name { return Int(kv[1]) }
        }
        return nil
    }

    /// A button of the card `reply` was clicked: the card callback goes to the daemon, and its
    /// ack's response (the handler's card update) comes back.
    private func click(_ request: [String: Any]) async -> Reply {
        guard let reply = request["reply"] as? Int, let action = request["action"] as? String, !action.isEmpty else {
            return .error("need reply (the card's item id) and action (the button)")
        }
        let user = request["sender"] as? String ?? SandboxChat.people[0].staffId
        do {
            let response = try await simulator.injectCardCallback(
                app: app, outTrackId: "sandbox-card-\(reply)", userId: user, actionIds: [action],
                params: ["title": request["title"] as? String ?? ""])
            chat.cardUpdated(reply: reply, action: action, response: response)
            return Reply(json: JSON.encode(["response": SandboxChat.objectOrNull(response)]))
        } catch {
            return Reply(.gatewayTimeout, json: JSON.encode(["error": "the card callback was not acknowledged: \(error)"]))
        }
    }

    /// The control buttons: `{"action":"expireWebhooks"|"restoreWebhooks"|"throttleOpenAPI"|"dropSocket"|"event", "eventType", "data"}`.
    private func control(_ request: [String: Any]) -> Reply {
        do {
            switch request["action"] as? String {
            case "expireWebhooks":
                try simulator.apply(.expireWebhooks(app: app))
                chat.webhooksExpired = true
                chat.notice("the session webhooks have expired: replies go through the OpenAPI (batchSend, groupSend) until they are restored")
            case "restoreWebhooks":
                chat.webhooksExpired = false
                chat.notice("new messages come with a working session webhook again")
            case "throttleOpenAPI":
                let count = request["count"] as? Int ?? 3
                for endpoint in [OpenAPIEndpoint.batchSend, .groupMessages] {
                    try simulator.apply(.http(endpoint: endpoint, failure: .throttle, count: count))
                }
                chat.notice("the OpenAPI answers the next \(count) sends with 403 QpsLimit")
            case "dropSocket":
                guard !simulator.liveSockets(app: app).isEmpty else { return .error("no socket is connected right now") }
                try simulator.apply(.disconnect(app: app, socket: nil, mode: .abruptClose))
                chat.notice("the bot's socket was dropped; dingstream connects again")
            case "event":
                guard let type = request["eventType"] as? String, !type.isEmpty else { return .error("an event needs an event type") }
                let data = request["data"] as? String ?? "{}"
                guard JSON.object(data) != nil else { return .error("the event body must be a JSON object, like {\"key\":\"value\"}") }
                let event = try simulator.injectEvent(app: app, eventType: type, data: data)
                chat.notice("event \(type) sent (eventId \(event.eventId))")
            case let other:
                return .error("unknown action \(other ?? "(none)"); use expireWebhooks, restoreWebhooks, throttleOpenAPI, dropSocket or event")
            }
            return Reply(json: #"{"ok":true}"#)
        } catch {
            return .error("\(error)")
        }
    }

    /// The spool's latest entries, the last handler runs, and the bot's sockets.
    private func activity() async -> Reply {
        let directory = spoolDirectory
        var spool: [[String: Any]] = []
        var problem: String?
        do {
            let listings = try await NIOThreadPool.singleton.runIfActive { try SpoolInspector(directory: directory).list(limit: 20) }
            for listing in listings.sorted(by: { $0.name > $1.name }).prefix(20) {
                spool.append([
                    "state": listing.state.rawValue, "name": listing.name.value, "id": listing.businessID,
                    "sender": listing.sender, "text": listing.excerpt, "attempts": listing.attempts,
                ])
            }
        } catch {
            problem = "\(error)"
        }
        let runs = self.runs.withLock { $0.reversed().joined(separator: ",") }
        let sockets = simulator.liveSockets(app: app).count
        let head = JSON.encode([
            "spool": spool, "sockets": sockets, "spoolProblem": problem ?? NSNull(), "webhooksExpired": chat.webhooksExpired,
        ] as [String: Any])
        return Reply(json: String(head.dropLast()) + #","runs":[\#(runs)]}"#)
    }
}

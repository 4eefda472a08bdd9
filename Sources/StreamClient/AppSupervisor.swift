import AsyncHTTPClient
import Logging
import StreamProtocol

/// Keeps `connections` sockets of one app alive until cancelled.
public struct AppSupervisor: Sendable {
    public let settings: AppConnectionSettings
    let sink: any FrameSink
    let board: ConnectionBoard
    let environment: SlotEnvironment
    let logger: Logger

    public init(settings: AppConnectionSettings, sink: any FrameSink, board: ConnectionBoard, environment: SlotEnvironment = .live, logger: Logger) {
        self.settings = settings
        self.sink = sink
        self.board = board
        self.environment = environment
        self.logger = logger
    }

    /// Runs the app's slots until the task is cancelled; the HTTP client for registration lives
    /// exactly as long.
    public func run() async {
        board.setWanted(app: settings.app, count: settings.connections)
        defer { board.remove(app: settings.app) }
        let client: HTTPClient
        do {
            client = try settings.network.makeHTTPClient(for: settings.registration.apiBase)
        } catch {
            logger.error("app \(settings.app): cannot set up TLS: \(error); check ca_file", metadata: ["app": "\(settings.app)"])
            return
        }
        await withDiscardingTaskGroup { group in
            for index in 0..<settings.connections {
                let slot = ConnectionSlot(
                    index: index, settings: settings, httpClient: client, sink: sink, board: board,
                    environment: environment, logger: logger)
                group.addTask { await slot.run() }
            }
        }
        try? await client.shutdown()
    }
}

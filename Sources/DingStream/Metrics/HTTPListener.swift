import NIOCore
import NIOHTTP1
import NIOPosix

/// The small HTTP servers of the daemon (`GET /metrics`) and the sandbox (its chat page): one
/// request per connection, each answered within a time limit or dropped.
enum HTTPListener {
    typealias Connection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>
    typealias Server = NIOAsyncChannel<Connection, Never>

    static func bind(_ address: MetricsAddress, backlog: Int32) async throws -> Server {
        try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: backlog)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: address.host, port: address.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    return try Connection(wrappingChannelSynchronously: channel)
                }
            }
    }

    /// Hands every connection of `server` to `exchange` until the listener closes or the task
    /// is cancelled; a connection still open after `timeout` is closed.
    static func serve(
        _ server: Server, timeout: Duration, _ exchange: @escaping @Sendable (Connection) async throws -> Void
    ) async throws {
        try await server.executeThenClose { inbound in
            try await withThrowingDiscardingTaskGroup { group in
                for try await connection in inbound {
                    group.addTask {
                        await withTaskGroup(of: Void.self) { race in
                            race.addTask { try? await exchange(connection) }
                            race.addTask { try? await Task.sleep(for: timeout) }
                            await race.next()
                            race.cancelAll()
                            connection.channel.close(promise: nil)
                        }
                    }
                }
            }
        }
    }
}

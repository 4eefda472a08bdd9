/// The one error type of the Simulator module: a code plus the context a person needs to act.
public struct SimulatorError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Code: String, Sendable {
        case bindFailed
        case tlsSetup
        case unknownApp
        case noSuchSocket
        case timeout
        case invalidRequest
        case shutDown
        case proxyFailed
    }

    public var code: Code
    public var context: String

    public init(_ code: Code, _ context: String) {
        self.code = code
        self.context = context
    }

    public var description: String {
        switch code {
        case .bindFailed: return "simulator: cannot listen (\(context)); choose another port or use port 0"
        case .tlsSetup: return "simulator: TLS setup failed (\(context)); check the certificate and key PEM paths"
        case .unknownApp: return "simulator: unknown app \(context); add it to SimulatorConfiguration.apps"
        case .noSuchSocket: return "simulator: no such socket \(context); list liveSockets(app:) first"
        case .timeout: return "simulator: timed out \(context); the client did not do what the test waited for"
        case .invalidRequest: return "simulator: invalid request (\(context)); see PROTOCOL.md"
        case .shutDown: return "simulator: already shut down (\(context))"
        case .proxyFailed: return "connect proxy: \(context)"
        }
    }
}

/// What one DingTalk app needs to call the OpenAPI. Tokens are per app: never share one between apps.
public struct AppCredentials: Sendable, Equatable {
    /// The app's name in the configuration (`[[app]] name`), used in logs and errors.
    public var name: String
    public var clientID: String
    public var clientSecret: String
    /// `https://api.dingtalk.com` unless overridden (overseas region, proxy, simulator).
    public var apiBase: String

    public init(name: String, clientID: String, clientSecret: String, apiBase: String = "https://api.dingtalk.com") {
        self.name = name
        self.clientID = clientID
        self.clientSecret = clientSecret
        // A trailing slash would double up with the paths appended to it.
        var base = apiBase
        while base.hasSuffix("/") { base.removeLast() }
        self.apiBase = base
    }
}

extension AppCredentials: CustomStringConvertible {
    /// Never shows the secret.
    public var description: String { "AppCredentials(\(name), clientID: \(clientID), apiBase: \(apiBase))" }
}

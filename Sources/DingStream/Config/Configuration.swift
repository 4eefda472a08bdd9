import Foundation
import StreamClient
import Spool
import StreamProtocol

/// The daemon's configuration, read from a TOML file (DESIGN.md, "Configuration").
public struct Configuration: Sendable, Equatable {
    public var spoolDirectory = "/var/spool/dingstream"
    public var runtimeDirectory = "/run/dingstream"
    public var workers = 4
    public var handlerTimeout: Duration = .seconds(60)
    public var maxAttempts = 5
    /// Wait before a message whose handler exited 75 (or whose attachments could not be fetched
    /// yet) runs again; doubled per attempt, up to an hour.
    public var retryDelay: Duration = .seconds(30)
    public var dedupWindow: Duration = .seconds(24 * 3600)
    public var retention: Duration = .seconds(7 * 24 * 3600)
    public var maxAttachmentBytes = 20 * 1024 * 1024
    public var cardTimeout: Duration = .seconds(3)
    public var replyDeadline: Duration = .seconds(3600)
    public var webhookMargin: Duration = .seconds(10)
    public var readyTimeout: Duration = .seconds(30)
    public var shutdownGrace: Duration = .seconds(20)
    public var logLevel = "info"
    /// Where `GET /metrics` is served; nil: not served.
    public var metricsListen: MetricsAddress?
    /// A `.prom` file for node_exporter's textfile collector, rewritten every 15 s; nil: none.
    public var metricsFile: String?
    public var apps: [App] = []
    /// `[cluster]`: the spool lives in a shared PostgreSQL; nil keeps the local SQLite spool.
    public var cluster: ClusterSettings?

    public struct App: Sendable, Equatable {
        public var name: String
        public var clientID: String
        public var clientSecret: String
        public var connections = 2
        public var subscriptions: [Subscription] = [.bot]
        /// Staff ids; empty denies everyone, `"*"` allows everyone.
        public var allowedUsers: [String] = []
        /// Where the secret was read from (doctor checks who else can read it).
        public var secretSource: SecretSource = .inline
        public var apiBase = "https://api.dingtalk.com"
        public var proxy: String?
        public var caFile: String?
        public var maxConnectionAge: Duration = .seconds(6 * 3600)
        /// No frame at all for this long means a deaf socket. The server pings every few tens
        /// of seconds in observed traffic, so 90 s is three missed pings, not one slow one.
        public var idleTimeout: Duration = .seconds(90)
        /// Nothing at all received for this long means a dead path (a TCP black hole); we ping a
        /// quiet socket every third of it, so a live one always has something to answer.
        public var silenceTimeout: Duration = KeepaliveSettings.defaultSilenceTimeout
        /// Frames with more payload bytes are left out and cost only the socket that carried them.
        public var maxFrameSize = StreamFrame.maximumSize
        /// `http_handler`: each message is POSTed there first, as DingTalk's HTTP mode would; nil: none.
        public var httpHandler: HTTPHandlerSettings?

        public init(name: String, clientID: String, clientSecret: String) {
            self.name = name
            self.clientID = clientID
            self.clientSecret = clientSecret
        }

        public func allows(staffID: String?) -> Bool {
            if allowedUsers.contains("*") { return true }
            guard let staffID, !staffID.isEmpty else { return false }
            return allowedUsers.contains(staffID)
        }
    }

    /// Where an app's client secret comes from.
    public enum SecretSource: Sendable, Equatable {
        /// `client_secret` in the configuration file.
        case inline
        /// `client_secret_file`, or the systemd credential file named after the app.
        case file(String)
    }

    /// Where and how an app's HTTP handler is called (`http_handler` and the keys beside it).
    public struct HTTPHandlerSettings: Sendable, Equatable, Hashable {
        public var url: String
        /// Extra PEM CA bundle for an https handler signed by a company CA.
        public var caFile: String?
        /// One request, connecting included; past it the message is a dead letter, as a script's timeout is.
        public var timeout: Duration = .seconds(30)
        /// Requests in flight at once for this app; the others wait for a free slot.
        public var concurrency = 8

        public init(url: String) {
            self.url = url
        }
    }

    public init() {}

    public static let defaultPath = "/etc/dingstream/dingstream.toml"
}

/// A configuration that cannot be used. The daemon exits with 78 (EX_CONFIG) on it at start,
/// and keeps its old configuration when it happens on reload.
public struct ConfigurationError: Error, Sendable, CustomStringConvertible {
    public var file: String
    public var line: Int?
    public var message: String

    public var description: String {
        if let line { return "\(file):\(line): \(message)" }
        return "\(file): \(message)"
    }

    public static let exitStatus: Int32 = 78
}

extension Configuration {
    /// Reads and validates the file at `path`.
    /// - Parameter environment: used for `CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`).
    /// - Throws: `ConfigurationError` naming the file, line and key, and what to do.
    public static func load(path: String, environment: [String: String]) throws(ConfigurationError) -> Configuration {
        // Checked before reading, so that a wrong path (a log, a device) is not read into memory.
        if let size = (try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int, size > maximumFileBytes {
            throw tooLarge(path, bytes: size)
        }
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigurationError(file: path, line: nil, message: "cannot read the configuration file (\(Self.reason(error))); check that it exists and is readable by the service user")
        }
        return try parse(text, file: path, environment: environment)
    }

    /// A configuration of a thousand apps takes about 150 KB; anything over this is not one.
    public static let maximumFileBytes = 1 << 20

    private static func tooLarge(_ file: String, bytes: Int) -> ConfigurationError {
        ConfigurationError(
            file: file, line: nil,
            message: "the file is \(bytes) bytes, more than the \(maximumFileBytes / 1024) KiB a configuration may have; check that --config names the right file")
    }

    public static func parse(_ text: String, file: String, environment: [String: String]) throws(ConfigurationError) -> Configuration {
        guard text.utf8.count <= maximumFileBytes else { throw tooLarge(file, bytes: text.utf8.count) }
        let document: TOMLDocument
        do {
            document = try TOMLDocument(parsing: text)
        } catch {
            throw ConfigurationError(file: file, line: error.line, message: "\(error.message)")
        }
        var reader = ConfigurationReader(file: file, environment: environment)
        return try reader.read(document.root)
    }

    private static func reason(_ error: any Error) -> String {
        let nsError = error as NSError
        if let underlying = nsError.userInfo[NSUnderlyingErrorKey] as? NSError,
            underlying.domain == NSPOSIXErrorDomain, let code = POSIXErrorCode(rawValue: Int32(underlying.code))
        {
            return String(cString: strerror(code.rawValue))
        }
        return nsError.localizedDescription
    }
}

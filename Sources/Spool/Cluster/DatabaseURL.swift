import Foundation

/// Where the cluster's PostgreSQL is, read from a libpq-style URL:
/// `postgresql://user@host:5432/dingstream?sslmode=verify-full`, or a unix socket directory as
/// `postgresql://user@/dingstream?host=/run/postgresql`. The password never comes from the URL
/// (`password_file` or the systemd credential `cluster`), so that it stays out of the
/// configuration file, `ps` and the log.
public struct DatabaseURL: Sendable, Equatable, CustomStringConvertible {
    public enum Endpoint: Sendable, Equatable {
        case tcp(host: String, port: Int)
        /// The socket file itself: `<dir>/.s.PGSQL.<port>`.
        case unixSocket(path: String)
    }

    /// libpq's `sslmode`, less `allow` and `prefer`: a cluster either encrypts or says it does not.
    public enum TLSMode: String, Sendable, Equatable, CaseIterable {
        case disable
        /// Encrypted, the server's certificate not checked.
        case require
        /// Encrypted, the certificate checked against the CA, not the host name.
        case verifyCA = "verify-ca"
        /// Encrypted, certificate and host name checked.
        case verifyFull = "verify-full"
    }

    public var endpoint: Endpoint
    public var user: String
    public var database: String
    public var tls: TLSMode
    /// How long one connection attempt may take.
    public var connectTimeout: Duration

    /// The URL as an operator would recognise it (no password, it never has one).
    public var description: String {
        switch endpoint {
        case .tcp(let host, let port):
            let shown = host.contains(":") ? "[\(host)]" : host
            return "postgresql://\(Self.escaped(user))@\(shown):\(port)/\(Self.escaped(database))?sslmode=\(tls.rawValue)"
        case .unixSocket(let path):
            return "postgresql://\(Self.escaped(user))@/\(Self.escaped(database))?host=\((path as NSString).deletingLastPathComponent)"
        }
    }

    /// ASCII letters, digits, `-`, `.` and `_`: a DNS name (an international one in its xn-- form)
    /// or an IPv4 address.
    private static let hostNameCharacters = CharacterSet(
        charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")

    /// `text` as it must be written in a URL's user or path (`@`, `/`, `?`, `%`… percent-encoded).
    private static func escaped(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? text
    }

    /// Why a URL cannot be used, in words that name the remedy.
    public struct Problem: Error, Sendable, CustomStringConvertible {
        public var description: String
    }

    /// Parses `text`. TCP defaults to `sslmode=verify-full` (libpq's default `prefer` would
    /// silently send message contents in clear text to a server without TLS); a unix socket to `disable`.
    /// - Throws: `Problem` naming the part that is wrong.
    public init(parsing text: String) throws(Problem) {
        // Foundation turns non-ASCII host names into their xn-- form and back, not always to the
        // same name; the URL an operator writes is ASCII, with the rest percent-encoded.
        if let odd = text.unicodeScalars.first(where: { !$0.isASCII }) {
            throw Problem(description: "the URL holds \"\(odd.escaped(asASCII: true))\"; write an international host name in its xn-- form and percent-encode anything else")
        }
        guard let components = URLComponents(string: text), let scheme = components.scheme else {
            throw Problem(description: "\"\(text)\" is not a URL; write it like postgresql://dingstream@db.example.com:5432/dingstream?sslmode=verify-full")
        }
        guard scheme == "postgresql" || scheme == "postgres" else {
            throw Problem(description: "the scheme \"\(scheme)\" is not postgresql://; write it like postgresql://dingstream@db.example.com:5432/dingstream")
        }
        if components.password != nil {
            throw Problem(description: "the URL holds a password; remove it and put the password in password_file (or the systemd credential \"cluster\")")
        }
        guard let user = components.user, !user.isEmpty else {
            throw Problem(description: "the URL names no user; write it as postgresql://USER@host/database")
        }
        var database = components.path
        if database.hasPrefix("/") { database.removeFirst() }
        guard !database.isEmpty, !database.contains("/") else {
            throw Problem(description: "the URL names no database; end it with /DATABASE, e.g. postgresql://\(user)@host:5432/dingstream")
        }
        var port = components.port ?? 5432
        var socketDirectory: String?
        var tls: TLSMode?
        var connectTimeout: Duration = .seconds(5)
        for item in components.queryItems ?? [] {
            let value = item.value ?? ""
            switch item.name {
            case "sslmode":
                guard let mode = TLSMode(rawValue: value) else {
                    let known = TLSMode.allCases.map(\.rawValue).joined(separator: ", ")
                    throw Problem(description: "sslmode=\(value) is not supported; use one of \(known)")
                }
                tls = mode
            case "host":
                guard value.hasPrefix("/") else {
                    throw Problem(description: "host=\(value) in the query must be a unix socket directory (starting with /); put a network host before the path instead")
                }
                socketDirectory = value
            case "port":
                guard let number = Int(value), (1...65535).contains(number) else {
                    throw Problem(description: "port=\(value) is not a port number")
                }
                port = number
            case "connect_timeout":
                guard let seconds = Int(value), (1...600).contains(seconds) else {
                    throw Problem(description: "connect_timeout=\(value) must be whole seconds, 1 to 600")
                }
                connectTimeout = .seconds(seconds)
            default:
                throw Problem(description: "the URL parameter \"\(item.name)\" is not supported; use sslmode, host, port or connect_timeout")
            }
        }
        if let host = components.host, host.hasPrefix("/") { socketDirectory = host }  // %2F-encoded socket directory
        if let socketDirectory {
            guard tls == nil || tls == .disable else {
                throw Problem(description: "sslmode=\(tls!.rawValue) with a unix socket; a local socket is not encrypted, drop sslmode")
            }
            endpoint = .unixSocket(path: "\(socketDirectory)/.s.PGSQL.\(port)")
            self.tls = .disable
        } else {
            var host = components.host ?? ""
            // An IPv6 literal comes with its brackets, which no resolver takes; inside them only an
            // IPv6 address will do ("[]" and "[1%]" are no host).
            if host.hasPrefix("["), host.hasSuffix("]") {
                host = String(host.dropFirst().dropLast())
                var address = in6_addr()
                guard inet_pton(AF_INET6, host, &address) == 1 else {
                    throw Problem(description: "[\(host)] is not an IPv6 address; write an IPv6 host in brackets, postgresql://\(user)@[::1]:5432/\(database), or a host name without them")
                }
            } else if let odd = host.unicodeScalars.first(where: { !Self.hostNameCharacters.contains($0) }) {
                throw Problem(description: "the host \"\(host)\" holds \"\(odd.escaped(asASCII: true))\", which no host name does; write a name (an international one in its xn-- form) or an address, postgresql://\(user)@db.example.com:5432/\(database)")
            }
            guard !host.isEmpty else {
                throw Problem(description: "the URL names no host; write postgresql://\(user)@HOST:5432/\(database), or ?host=/run/postgresql for a unix socket")
            }
            endpoint = .tcp(host: host, port: port)
            self.tls = tls ?? .verifyFull
        }
        self.user = user
        self.database = database
        self.connectTimeout = connectTimeout
    }
}

/// The `[cluster]` section: several hosts share one PostgreSQL store.
public struct ClusterSettings: Sendable, Equatable, CustomStringConvertible {
    public var database: DatabaseURL
    /// From `password_file` or the credential `cluster`; nil for trust or peer authentication.
    public var password: String?
    /// CA bundle (PEM) that signed the server's certificate; nil uses the system's.
    public var caFile: String?
    /// This host's name in the cluster: who holds a claim. Unique per host.
    public var node: String
    /// How long a claim holds without renewal; a dead host's messages move on after it.
    public var lease: Duration

    public init(database: DatabaseURL, password: String? = nil, caFile: String? = nil, node: String, lease: Duration = .seconds(30)) {
        self.database = database
        self.password = password
        self.caFile = caFile
        self.node = node
        self.lease = lease
    }

    /// Never the password.
    public var description: String {
        "\(database) as node \(node), lease \(lease)"
    }

    /// The host name, the default `node`.
    public static func defaultNode() -> String {
        var buffer = [UInt8](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        let name = String(decoding: buffer.prefix { $0 != 0 }, as: UTF8.self)
        return name.isEmpty ? "localhost" : name
    }
}

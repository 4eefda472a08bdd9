import Foundation
import Spool

#if canImport(Glibc)
import Glibc
#endif

/// A PostgreSQL of the test's own: Debian's binaries, `initdb` into a temporary directory, a
/// server listening only on a unix socket in that directory (no port to collide with other
/// tests), password login (scram), stopped and removed at the end. As root (CI) the server
/// runs as the `postgres` user, since PostgreSQL refuses to run as root.
public final class PostgresServer: Sendable {
    public static let binaries = "/usr/lib/postgresql/15/bin"
    public static let user = "dingstream"
    public static let password = "test-secret-4711"

    public let directory: String
    var dataDirectory: String { directory + "/data" }
    /// Who runs the server: `postgres` when the tests run as root, else the tests' user.
    let runAs: String?
    /// With fsync on (the bench measures durable commits); tests run without it.
    let durable: Bool
    /// Also listening on 127.0.0.1 at this port (nil: the unix socket only).
    public let port: Int?
    /// With TLS on that port: a certificate for `localhost` signed by `caFile`.
    public let tls: Bool
    /// The CA that signed the server's certificate (when `tls`).
    public var caFile: String { directory + "/ca.crt" }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    private init(directory: String, runAs: String?, durable: Bool, port: Int?, tls: Bool) {
        self.directory = directory
        self.runAs = runAs
        self.durable = durable
        self.port = port
        self.tls = tls
    }

    /// initdb, start, createdb `dingstream`. `tcp`: also on a free port of 127.0.0.1, with TLS
    /// when `tls` (a CA and a server certificate for `localhost` made with openssl).
    /// - Throws: `Failure` saying what to install or what the server logged.
    public static func start(durable: Bool = false, tcp: Bool = false, tls: Bool = false) throws -> PostgresServer {
        guard FileManager.default.isExecutableFile(atPath: binaries + "/initdb") else {
            throw Failure(description: "PostgreSQL 15 is not installed (\(binaries)/initdb); run make deps (it installs Debian's postgresql)")
        }
        // Short: a unix socket path is limited to 107 bytes.
        let directory = "/tmp/pg-" + UUID().uuidString.prefix(8).lowercased()
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        let runAs: String? = getuid() == 0 ? "postgres" : nil
        if let runAs {
            guard let account = getpwnam(runAs) else {
                throw Failure(description: "running as root, but there is no \(runAs) user to run PostgreSQL as; install Debian's postgresql")
            }
            chown(directory, account.pointee.pw_uid, account.pointee.pw_gid)
        }
        let server = PostgresServer(directory: directory, runAs: runAs, durable: durable, port: tcp || tls ? try unusedLoopbackPort() : nil, tls: tls)
        do {
            try server.write(Self.password + "\n", to: directory + "/pwfile")
            if tls { try server.makeCertificates() }
            try server.run(
                "initdb", ["-D", server.dataDirectory, "-U", user, "--pwfile", directory + "/pwfile", "-A", "scram-sha-256", "--no-sync", "-E", "UTF8", "--locale", "C"])
            try server.startServer()
            try server.run("createdb", ["-h", directory] + server.portOption + ["-U", user, "dingstream"])
        } catch {
            server.remove()
            throw error
        }
        return server
    }

    /// The server again on the same data (after `stop`).
    public func startServer() throws {
        var options = "-k \(directory)\(durable ? "" : " -c fsync=off") -c max_connections=40"
        if let port {
            options += " -c listen_addresses=127.0.0.1 -p \(port)"
        } else {
            options += " -c listen_addresses=''"
        }
        if tls { options += " -c ssl=on -c ssl_cert_file=\(directory)/server.crt -c ssl_key_file=\(directory)/server.key" }
        try run("pg_ctl", ["-D", dataDirectory, "-l", directory + "/server.log", "-w", "-t", "30", "-o", options, "start"])
    }

    /// The port names the unix socket too (`.s.PGSQL.<port>`).
    var portOption: [String] { port.map { ["-p", "\($0)"] } ?? [] }

    /// A CA and a server certificate for `localhost` (no IP address in it) signed by it.
    private func makeCertificates() throws {
        let openssl = "/usr/bin/openssl"
        try run("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=dingstream test CA",
            "-keyout", directory + "/ca.key", "-out", caFile], binary: openssl)
        try run("openssl", ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
            "-keyout", directory + "/server.key", "-out", directory + "/server.csr"], binary: openssl)
        try write("subjectAltName=DNS:localhost\n", to: directory + "/server.ext")
        try run("openssl", ["x509", "-req", "-in", directory + "/server.csr", "-CA", caFile, "-CAkey", directory + "/ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", directory + "/server.ext", "-out", directory + "/server.crt"], binary: openssl)
        // PostgreSQL refuses a key others can read.
        chmod(directory + "/server.key", 0o600)
        if let runAs, let account = getpwnam(runAs) {
            for file in ["server.key", "server.crt", "ca.crt"] { chown(directory + "/" + file, account.pointee.pw_uid, account.pointee.pw_gid) }
        }
    }

    /// `fast`: clients are disconnected, the server shuts down cleanly.
    public func stop(mode: String = "fast") throws {
        try run("pg_ctl", ["-D", dataDirectory, "-m", mode, "-w", "-t", "30", "stop"])
    }

    public func remove() {
        _ = try? run("pg_ctl", ["-D", dataDirectory, "-m", "immediate", "-w", "-t", "30", "stop"])
        try? FileManager.default.removeItem(atPath: directory)
    }

    public func settings(node: String, lease: Duration = .seconds(30), password: String? = PostgresServer.password) throws -> ClusterSettings {
        let url = try DatabaseURL(parsing: "postgresql://\(Self.user)@/dingstream?host=\(directory)\(port.map { "&port=\($0)" } ?? "")")
        return ClusterSettings(database: url, password: password, node: node, lease: lease)
    }

    /// Over TCP to `host` (127.0.0.1 or localhost) at `port`, with `sslmode`.
    public func tcpSettings(node: String, host: String = "127.0.0.1", sslmode: String, caFile: String? = nil) throws -> ClusterSettings {
        guard let port else { throw Failure(description: "this server listens on its unix socket only; start it with tcp: true") }
        let url = try DatabaseURL(parsing: "postgresql://\(Self.user)@\(host):\(port)/dingstream?sslmode=\(sslmode)")
        return ClusterSettings(database: url, password: Self.password, caFile: caFile, node: node)
    }

    /// Runs `sql` through psql and returns its unaligned output.
    public func psql(_ sql: String) throws -> String {
        try run("psql", ["-h", directory] + portOption + ["-U", Self.user, "-d", "dingstream", "-X", "-A", "-t", "-c", sql], binary: "/usr/bin/psql")
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private func write(_ text: String, to path: String) throws {
        try text.write(toFile: path, atomically: false, encoding: .utf8)
        if let runAs, let account = getpwnam(runAs) { chown(path, account.pointee.pw_uid, account.pointee.pw_gid) }
    }

    @discardableResult
    private func run(_ tool: String, _ arguments: [String], binary: String? = nil) throws -> String {
        let path = binary ?? "\(Self.binaries)/\(tool)"
        // From /: the postgres user may not enter the tests' working directory.
        let inRoot = ["/bin/sh", "-c", "cd / && exec \"$@\"", "sh"]
        let argv = inRoot + (runAs.map { ["/usr/sbin/runuser", "-u", $0, "--", path] } ?? [path])
        // The child's environment only; the test process's stays as it is.
        var environment = ProcessInfo.processInfo.environment
        environment["PGPASSWORD"] = Self.password
        // A file, not a pipe: the server pg_ctl starts would hold a pipe open after pg_ctl exits.
        let outputPath = NSTemporaryDirectory() + "pg-tool-" + UUID().uuidString
        defer { unlink(outputPath) }
        let status = try spawnAndWait(argv + arguments, environment: environment, output: outputPath)
        let text = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        guard status == 0 else {
            let log = (try? String(contentsOfFile: directory + "/server.log", encoding: .utf8)).map { "\nserver.log:\n\($0.suffix(2000))" } ?? ""
            throw Failure(description: "\(tool) \(arguments.joined(separator: " ")) exited \(status): \(text.suffix(2000))\(log)")
        }
        return text
    }
}

/// posix_spawn and a blocking waitpid for this child only (Foundation's `Process` did not
/// notice `runuser` ending here); stdout and stderr go to `output`.
func spawnAndWait(_ argv: [String], environment: [String: String], output: String) throws -> Int32 {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    let cArguments = argv.map { strdup($0) } + [nil]
    let cEnvironment = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer {
        cArguments.forEach { free($0) }
        cEnvironment.forEach { free($0) }
    }
    var pid: pid_t = 0
    let spawned = posix_spawn(&pid, argv[0], &actions, nil, cArguments, cEnvironment)
    guard spawned == 0 else {
        throw PostgresServer.Failure(description: "cannot start \(argv[0]): \(String(cString: strerror(spawned)))")
    }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 {
        guard errno == EINTR else { throw PostgresServer.Failure(description: "waitpid \(argv[0]): \(String(cString: strerror(errno)))") }
    }
    // WIFEXITED / WEXITSTATUS by hand (macros are not imported).
    return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
}

/// Runs `body` with a PostgreSQL of its own, stopped and removed after.
public func withPostgres<T>(tcp: Bool = false, tls: Bool = false, _ body: (PostgresServer) async throws -> T) async throws -> T {
    let server = try PostgresServer.start(tcp: tcp, tls: tls)
    defer { server.remove() }
    return try await body(server)
}

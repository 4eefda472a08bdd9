import DingStream
import Foundation
import Spool
import Testing

/// `[cluster]`: what a valid section gives, and that every mistake is refused (exit 78) with
/// the key, the line and the remedy.
@Suite("Cluster configuration", .timeLimit(.minutes(1)))
struct ClusterTests {
    static let app = "[[app]]\nname = \"helpdesk\"\nclient_id = \"dingabc\"\nclient_secret = \"x\"\n"

    func parse(_ cluster: String, environment: [String: String] = [:]) throws(ConfigurationError) -> Configuration {
        try Configuration.parse(Self.app + "\n" + cluster, file: "test.toml", environment: environment)
    }

    /// Lines of `[cluster]` start at line 6 of the text `parse` builds.
    func refusal(_ cluster: String, environment: [String: String] = [:]) -> ConfigurationError? {
        #expect(throws: ConfigurationError.self) { try parse(cluster, environment: environment) }
    }

    @Test func withoutTheSectionNothingChanges() throws {
        #expect(try parse("").cluster == nil)
    }

    @Test func readsTheSectionWithItsDefaults() throws {
        let directory = NSTemporaryDirectory() + "clustercfg-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try "pa ss\n".write(toFile: directory + "/pw", atomically: true, encoding: .utf8)
        let cluster = try #require(
            try parse("[cluster]\ndatabase = \"postgresql://ding@db.example.com:6432/stream?sslmode=verify-full\"\npassword_file = \"\(directory)/pw\"\n").cluster)
        #expect(cluster.database.endpoint == .tcp(host: "db.example.com", port: 6432))
        #expect(cluster.database.user == "ding")
        #expect(cluster.database.database == "stream")
        #expect(cluster.database.tls == .verifyFull)
        #expect(cluster.password == "pa ss")
        #expect(cluster.node == ClusterSettings.defaultNode())
        #expect(cluster.lease == .seconds(30))
        #expect(!"\(cluster)".contains("pa ss"))

        // The credential `cluster` when no password_file; a unix socket needs no TLS.
        try "fromcred".write(toFile: directory + "/cluster", atomically: true, encoding: .utf8)
        let local = try #require(
            try parse(
                "[cluster]\ndatabase = \"postgresql://ding@/stream?host=/run/postgresql\"\nnode = \"host-2\"\nlease = \"5s\"\n",
                environment: ["CREDENTIALS_DIRECTORY": directory]
            ).cluster)
        #expect(local.database.endpoint == .unixSocket(path: "/run/postgresql/.s.PGSQL.5432"))
        #expect(local.database.tls == .disable)
        #expect(local.password == "fromcred")
        #expect(local.node == "host-2")
        #expect(local.lease == .seconds(5))
        // TCP without sslmode checks the certificate: no silent clear text.
        #expect(try parse("[cluster]\ndatabase = \"postgresql://ding@10.0.0.5/stream\"\n").cluster?.database.tls == .verifyFull)
    }

    @Test(arguments: [
        ("[cluster]\nnode = \"a\"\n", 6, "no \"database\""),
        ("[cluster]\ndatabase = \"mysql://ding@db/stream\"\n", 7, "postgresql://"),
        ("[cluster]\ndatabase = \"postgresql://ding:secret@db/stream\"\n", 7, "password_file"),
        ("[cluster]\ndatabase = \"postgresql://db/stream\"\n", 7, "no user"),
        ("[cluster]\ndatabase = \"postgresql://ding@db\"\n", 7, "no database"),
        ("[cluster]\ndatabase = \"postgresql://ding@db/stream?sslmode=prefer\"\n", 7, "verify-full"),
        ("[cluster]\ndatabase = \"postgresql://ding@db/stream?pool=3\"\n", 7, "\"pool\" is not supported"),
        ("[cluster]\ndatabase = \"postgresql://ding@db/stream\"\npassword_file = \"/nonexistent/pw\"\n", 8, "cannot read"),
        ("[cluster]\ndatabase = \"postgresql://ding@db/stream\"\nca_file = \"/nonexistent/ca.pem\"\n", 8, "ca_file"),
        ("[cluster]\ndatabase = \"postgresql://ding@db/stream?sslmode=require\"\nca_file = \"/etc/hostname\"\n", 8, "does not check"),
        ("[cluster]\ndatabase = \"postgresql://ding@db/stream\"\nnode = \"my host\"\n", 8, "node"),
        ("[cluster]\ndatabase = \"postgresql://ding@db/stream\"\nlease = \"100ms\"\n", 8, "out of range"),
        ("[cluster]\ndatabase = \"postgresql://ding@db/stream\"\nleese = \"5s\"\n", 8, "did you mean \"lease\""),
        ("[cluster]\ndatabase = 5432\n", 7, "must be a string"),
    ])
    func mistakesAreRefusedWithTheLine(cluster: String, line: Int, says: String) {
        let error = refusal(cluster)
        #expect(error?.line == line, "\(error.map { "\($0)" } ?? "accepted")")
        #expect(error?.description.contains(says) == true, "\(error.map { "\($0)" } ?? "accepted")")
        #expect(ConfigurationError.exitStatus == 78)
    }
}

import Testing

@testable import Spool

/// Inputs `make fuzz` found (Fuzz/targets/database-url.swift).
@Suite(.timeLimit(.minutes(1))) struct DatabaseURLTests {
    /// An IPv6 literal kept its brackets as the host, which no resolver takes: the cluster could
    /// not connect to `postgres://u@[::1]:6543/d`.
    @Test func anIPv6HostLosesItsBrackets() throws {
        let url = try DatabaseURL(parsing: "postgres://u@[::1]:6543/d?sslmode=require&connect_timeout=5")
        #expect(url.endpoint == .tcp(host: "::1", port: 6543))
        #expect(url.description == "postgresql://u@[::1]:6543/d?sslmode=require")
    }

    /// The log line names the same server, user and database the URL did, escapes included.
    @Test(arguments: [
        "postgres://u@[::1]:6543/d?sslmode=require",
        "postgresql://a%40b@db.example.com:5432/x%3Fy",
        "postgresql://dingstream@/dingstream?host=/run/postgresql",
    ])
    func theDescriptionReadsBackAsTheSameURL(_ text: String) throws {
        let url = try DatabaseURL(parsing: text)
        let again = try DatabaseURL(parsing: url.description)
        #expect(again.endpoint == url.endpoint && again.user == url.user && again.database == url.database, "\(url)")
    }

    /// Whatever stood in brackets was taken as the host, and its description read back as another
    /// URL or none: `postgres://u@@[]:5/dei`, `postgres://u@[1%]/i`.
    @Test(arguments: ["postgres://u@@[]:5/dei", "postgres://u@[1%]/i"])
    func bracketsHoldAnIPv6AddressOrNothingIsTaken(_ text: String) {
        let problem = #expect(throws: DatabaseURL.Problem.self) { try DatabaseURL(parsing: text) }
        #expect(problem?.description.contains("is not an IPv6 address") == true, "\(String(describing: problem))")
    }

    /// A host of query-like text (`u@bct_timeout=+01&…`) was taken as a host name whose description
    /// could not be read back.
    @Test func aHostNameHoldsOnlyHostNameCharacters() {
        let problem = #expect(throws: DatabaseURL.Problem.self) { try DatabaseURL(parsing: "postgres://u@bct_timeout=+01&x/d") }
        #expect(problem?.description.contains("which no host name does") == true, "\(String(describing: problem))")
        #expect(throws: Never.self) { try DatabaseURL(parsing: "postgresql://dingstream@db-1.example.com:5432/dingstream") }
        #expect(throws: Never.self) { try DatabaseURL(parsing: "postgresql://dingstream@10.0.0.5/dingstream") }
        // A non-ASCII name came back from its description as another name (IDNA on the way out).
        let unicode = #expect(throws: DatabaseURL.Problem.self) { try DatabaseURL(parsing: "postgresql://d@d\u{0614}aqxxxe.c2/l") }
        #expect(unicode?.description.contains("xn--") == true, "\(String(describing: unicode))")
        let mangled = #expect(throws: DatabaseURL.Problem.self) { try DatabaseURL(parsing: "postgresql://d@d\u{0614}aqxxxe.%\u{0614}432/l") }
        #expect(mangled?.description.contains("xn--") == true, "\(String(describing: mangled))")
    }
}

import Foundation

/// Command line of `dingstream-bench`; every option has a default that fits `make bench`.
struct BenchOptions: Sendable {
    var messages = 100_000
    /// Bursts per subject; throughput and CPU are the median burst's, as one burst on a shared
    /// machine can be off by a tenth either way.
    var bursts = 3
    var window = 4000
    var warmup = 5000
    var rate = 1000
    var seconds = 10.0
    /// Seconds the burst may take before it is reported as it stands.
    var timeout = 60.0
    /// A shell command that starts a peer client against `DINGTALK_OPENAPI_ENDPOINT`.
    var peerCommand: String?
    var peerName = "python sdk"
    /// Where the temporary spool goes (default: the temporary folder). Put it on the filesystem you mean to measure.
    var spoolParent: String?
    /// The daemon on SQLite (its own filesystem and the shared one); `--sqlite no` measures only the cluster.
    var sqlite = true
    /// Also two daemons sharing a PostgreSQL, when Debian's PostgreSQL is installed.
    var cluster = FileManager.default.isExecutableFile(atPath: "/usr/lib/postgresql/15/bin/initdb")
    /// The daemon's `log_level`; nil leaves the default (info), as deployed.
    var daemonLogLevel: String?
    /// The daemon's `metrics_listen` (e.g. "127.0.0.1:0"); nil leaves metrics off, the default.
    var daemonMetrics: String?
    /// Message-to-reply times through an HTTP handler, a script handler and the peer replying:
    /// "yes" after the ack measurements, "only" without them, "no" not at all.
    var repliesMode = "yes"
    var replyMessages = 3000
    var replyWindow = 200
    var replyWarmup = 300
    var replyRate = 100
    var replySeconds = 10.0
    /// Rounds of the reply subjects, one after the other in each round; the table shows each
    /// metric's median over the rounds, since the machine's own swing between two runs is larger
    /// than the differences to decide.
    var replyRounds = 3
    /// Slices of each round's paced phase, taking turns between the subjects.
    var replySlices = 10
    /// The HTTP-mode bot server the HTTP handler posts to; it prints its port first.
    var httpServerScript = "etc/http-handler-example.py"
    /// Only the warm-up and the burst (no paced phase, no spool alone): own CPU per message in
    /// a minute, for comparing two builds or profiling the daemon under the burst.
    var burstOnly = false

    var acks: Bool { repliesMode != "only" }
    var replies: Bool { repliesMode != "no" }

    static let usage = """
        usage: dingstream-bench [--messages N] [--bursts N] [--window N] [--warmup N] [--rate N] [--seconds S] [--timeout S]
                                [--spool-parent DIR] [--daemon-log-level LEVEL] [--daemon-metrics ADDRESS]
                                [--sqlite yes|no] [--cluster yes|no] [--peer COMMAND] [--peer-name NAME]
                                [--replies yes|no|only] [--reply-messages N] [--reply-window N] [--reply-warmup N]
                                [--reply-rate N] [--reply-seconds S] [--reply-rounds N] [--reply-slices N]
                                [--http-server SCRIPT]
                                [--burst-only yes|no]
        """

    struct Invalid: Error, CustomStringConvertible {
        var description: String
    }

    init(_ arguments: some Sequence<String>) throws {
        var iterator = arguments.makeIterator()
        while let option = iterator.next() {
            guard let value = iterator.next() else { throw Invalid(description: "\(option) needs a value") }
            func integer() throws -> Int {
                guard let number = Int(value), number > 0 else { throw Invalid(description: "\(option) wants a positive integer, not \(value)") }
                return number
            }
            func real() throws -> Double {
                guard let number = Double(value), number > 0 else { throw Invalid(description: "\(option) wants a positive number, not \(value)") }
                return number
            }
            func yesOrNo() throws -> Bool {
                guard value == "yes" || value == "no" else { throw Invalid(description: "\(option) wants yes or no, not \(value)") }
                return value == "yes"
            }
            switch option {
            case "--messages": messages = try integer()
            case "--bursts": bursts = try integer()
            case "--window": window = try integer()
            case "--warmup": warmup = try integer()
            case "--rate": rate = try integer()
            case "--seconds": seconds = try real()
            case "--timeout": timeout = try real()
            case "--spool-parent": spoolParent = value
            case "--daemon-log-level": daemonLogLevel = value
            case "--daemon-metrics": daemonMetrics = value
            case "--cluster": cluster = try yesOrNo()
            case "--sqlite": sqlite = try yesOrNo()
            case "--peer": peerCommand = value
            case "--peer-name": peerName = value
            case "--replies":
                guard ["yes", "no", "only"].contains(value) else { throw Invalid(description: "--replies wants yes, no or only, not \(value)") }
                repliesMode = value
            case "--reply-messages": replyMessages = try integer()
            case "--reply-window": replyWindow = try integer()
            case "--reply-warmup": replyWarmup = try integer()
            case "--reply-rate": replyRate = try integer()
            case "--reply-seconds": replySeconds = try real()
            case "--reply-rounds": replyRounds = max(1, try integer())
            case "--reply-slices": replySlices = max(1, try integer())
            case "--http-server": httpServerScript = value
            case "--burst-only": burstOnly = try yesOrNo()
            default: throw Invalid(description: "unknown option \(option)")
            }
        }
    }
}

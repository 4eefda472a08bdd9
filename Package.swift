// swift-tools-version: 6.1
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let log = Target.Dependency.product(name: "Logging", package: "swift-log")
let nioCore = Target.Dependency.product(name: "NIOCore", package: "swift-nio")
let nioPosix = Target.Dependency.product(name: "NIOPosix", package: "swift-nio")
let nioHTTP1 = Target.Dependency.product(name: "NIOHTTP1", package: "swift-nio")
let nioWebSocket = Target.Dependency.product(name: "NIOWebSocket", package: "swift-nio")
let nioSSL = Target.Dependency.product(name: "NIOSSL", package: "swift-nio-ssl")
let nioExtras = Target.Dependency.product(name: "NIOExtras", package: "swift-nio-extras")
let httpClient = Target.Dependency.product(name: "AsyncHTTPClient", package: "async-http-client")
let postgres = Target.Dependency.product(name: "PostgresNIO", package: "postgres-nio")
let lifecycle = Target.Dependency.product(name: "ServiceLifecycle", package: "swift-service-lifecycle")
let coreMetrics = Target.Dependency.product(name: "CoreMetrics", package: "swift-metrics")
let crypto = Target.Dependency.product(name: "Crypto", package: "swift-crypto")
let prometheus = Target.Dependency.product(name: "Prometheus", package: "swift-prometheus")

let package = Package(
    name: "dingstream",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "dingstream", targets: ["dingstream"]),
        .executable(name: "dingstream-bench", targets: ["dingstream-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.81.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.29.0"),
        // Already resolved for async-http-client; the sockets use its HTTP CONNECT handler.
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.26.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.25.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        // Already resolved for postgres-nio; signs requests to HTTP handlers.
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
    ],
    targets: [
        // Wire formats, keys, backoff and state machines: no I/O.
        .target(name: "StreamProtocol", swiftSettings: swiftSettings),
        .target(
            name: "StreamClient",
            dependencies: ["StreamProtocol", log, nioCore, nioPosix, nioHTTP1, nioWebSocket, nioSSL, nioExtras, httpClient, lifecycle],
            swiftSettings: swiftSettings
        ),
        // Debian's libsqlite3: the spool's database (see README, "Why SQLite through the C library").
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3", providers: [.apt(["libsqlite3-dev"])]),
        // The shared store of a cluster (`[cluster]`): PostgreSQL through postgres-nio.
        .target(name: "Spool", dependencies: ["StreamProtocol", "CSQLite", log, postgres, nioCore, nioPosix, nioSSL], swiftSettings: swiftSettings),
        .target(name: "Handlers", dependencies: ["StreamProtocol", log], swiftSettings: swiftSettings),
        .target(
            name: "Replies",
            dependencies: ["StreamProtocol", log, httpClient, nioCore, nioPosix, nioHTTP1],
            swiftSettings: swiftSettings
        ),
        .target(name: "Systemd", dependencies: [log], swiftSettings: swiftSettings),
        // The local DingTalk: tests, sandbox and benchmarks talk to it. It shares no wire code with
        // the daemon on purpose, so each is a check on the other's reading of the protocol.
        .target(
            name: "Simulator",
            dependencies: ["StreamProtocol", log, nioCore, nioPosix, nioHTTP1, nioWebSocket, nioSSL],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "DingStream",
            dependencies: [
                "StreamProtocol", "StreamClient", "Spool", "Handlers", "Replies", "Systemd", "Simulator", log, lifecycle, coreMetrics, prometheus,
                .product(name: "UnixSignals", package: "swift-service-lifecycle"), nioCore, nioPosix, nioHTTP1, httpClient, crypto,
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "dingstream",
            dependencies: [
                "DingStream", "StreamClient", "Spool", "Handlers", "Replies", "Simulator", log, httpClient,
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // `make bench`: durable ingest against the simulator over loopback (not a test).
        .executableTarget(
            name: "dingstream-bench", dependencies: ["DingStream", "Spool", "StreamProtocol", "Simulator", "PostgresTestServer", log],
            swiftSettings: swiftSettings),
        .testTarget(name: "StreamProtocolTests", dependencies: ["StreamProtocol", log], swiftSettings: swiftSettings),
        .testTarget(
            name: "StreamClientTests",
            dependencies: [
                "StreamClient", "StreamProtocol", "Simulator", log, nioCore, nioWebSocket,
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "InMemoryLogging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // A PostgreSQL of a test's own (initdb + pg_ctl in a temporary directory), for the cluster tests.
        .target(name: "PostgresTestServer", dependencies: ["Spool"], path: "Tests/Support/PostgresTestServer", swiftSettings: swiftSettings),
        .testTarget(name: "SpoolTests", dependencies: ["Spool", "PostgresTestServer", log], swiftSettings: swiftSettings),
        .testTarget(name: "HandlersTests", dependencies: ["Handlers", log], swiftSettings: swiftSettings),
        .testTarget(name: "RepliesTests", dependencies: ["Replies", "Simulator", log], swiftSettings: swiftSettings),
        .testTarget(name: "SystemdTests", dependencies: ["Systemd", log], swiftSettings: swiftSettings),
        .testTarget(name: "SimulatorTests", dependencies: ["Simulator", log], swiftSettings: swiftSettings),
        .testTarget(
            name: "DingStreamTests",
            dependencies: ["DingStream", "Simulator", "Replies", "Spool", "PostgresTestServer", log, httpClient, nioCore, nioHTTP1],
            swiftSettings: swiftSettings),
    ]
)

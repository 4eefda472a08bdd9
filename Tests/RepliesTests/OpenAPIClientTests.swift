import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import Simulator
import Synchronization
import Testing

@testable import Replies

@Suite struct OpenAPIClientTests {
    @Test(.timeLimit(.minutes(1))) func tokenIsCachedAndRefreshedBeforeItExpires() async throws {
        try await withStack { stack in
            let first = try await stack.tokens.token()
            #expect(try await stack.tokens.token() == first)
            // 7200 s tokens are refreshed once less than 5 minutes remain.
            stack.clock.advance(.seconds(7200 - 301))
            #expect(try await stack.tokens.token() == first)
            stack.clock.advance(.seconds(2))
            let second = try await stack.tokens.token()
            #expect(second != first)
            // The simulator accepts the new token for a send.
            _ = try await stack.client.sendToUsers(["0423297"], message: .text("hi"))
            #expect(try await stack.tokens.token() == second)
        }
    }

    @Test(.timeLimit(.minutes(1))) func refusedTokenIsReplacedOnceAndTheCallSucceeds() async throws {
        try await withStack { stack in
            let first = try await stack.tokens.token()
            try stack.sim.expireTokens(app: "helpdesk")
            let result = try await stack.client.sendToUsers(["0423297"], message: .text("hi"))
            #expect(result.invalidStaffIDs.isEmpty)
            #expect(stack.sim.openAPISends().count == 1)
            #expect(try await stack.tokens.token() != first)
        }
    }

    @Test(.timeLimit(.minutes(1))) func concurrentCallersShareOneTokenFetch() async throws {
        try await withStack { stack in
            let tokens = stack.tokens
            let values = try await withThrowingTaskGroup(of: String.self) { group in
                for _ in 0..<8 { group.addTask { try await tokens.token() } }
                return try await group.reduce(into: Set<String>()) { $0.insert($1) }
            }
            #expect(values.count == 1)
        }
    }

    @Test(.timeLimit(.minutes(1))) func appsNeverShareTokens() async throws {
        let configuration = SimulatorConfiguration(apps: [
            SimulatedApp(name: "a", clientId: "dingA", clientSecret: "sa"), SimulatedApp(name: "b", clientId: "dingB", clientSecret: "sb"),
        ])
        try await withStack(configuration) { stack in
            let other = AppCredentials(name: "b", clientID: "dingB", clientSecret: "sb", apiBase: stack.sim.baseURL)
            let otherTokens = AccessTokenProvider(credentials: other, httpClient: stack.http, logger: quietLogger)
            let otherClient = OpenAPIClient(credentials: other, httpClient: stack.http, tokens: otherTokens, logger: quietLogger)
            try await stack.client.sendToGroup("cid1", message: .text("from a"))
            try await otherClient.sendToGroup("cid1", message: .text("from b"))
            #expect(try await stack.tokens.token() != (try await otherTokens.token()))
            // The simulator checks that each token belongs to the robotCode's app.
            #expect(stack.sim.openAPISends(app: "a").count == 1)
            #expect(stack.sim.openAPISends(app: "b").count == 1)
        }
    }

    @Test(.timeLimit(.minutes(1))) func wrongSecretIsACredentialsErrorNotRetried() async throws {
        try await withStack { stack in
            let wrong = AppCredentials(name: "helpdesk", clientID: "dinghelpdesk", clientSecret: "nope", apiBase: stack.sim.baseURL)
            let tokens = AccessTokenProvider(credentials: wrong, httpClient: stack.http, logger: quietLogger)
            let error = await #expect(throws: ReplyError.self) { try await tokens.token() }
            #expect(error?.code == .credentials)
            #expect(error?.isRetryable == false)
            #expect(error?.description.contains("client_secret") == true)
        }
    }

    @Test(.timeLimit(.minutes(1))) func slowAnswerTimesOutAsRetryable() async throws {
        try await withStack(requestTimeout: .milliseconds(300)) { stack in
            _ = try await stack.tokens.token()
            try stack.sim.apply(.http(endpoint: .batchSend, failure: .delay(.seconds(3)), count: 1))
            let started = ContinuousClock.now
            let error = await #expect(throws: ReplyError.self) {
                try await stack.client.sendToUsers(["0423297"], message: .text("hi"))
            }
            #expect(error?.code == .timeout)
            #expect(error?.isRetryable == true)
            #expect(ContinuousClock.now - started < .seconds(2))
        }
    }

    @Test(.timeLimit(.minutes(1))) func serverErrorsAndThrottlingAreRetryablePermissionIsNot() async throws {
        try await withStack { stack in
            try stack.sim.apply(.http(endpoint: .groupMessages, failure: .serverError(status: 503), count: 1))
            try stack.sim.apply(.http(endpoint: .groupMessages, failure: .throttle, count: 1))
            try stack.sim.apply(.http(endpoint: .groupMessages, failure: .permissionDenied, count: 1))
            var codes: [ReplyError.Code] = []
            for _ in 0..<3 {
                do {
                    try await stack.client.sendToGroup("cid1", message: .text("x"))
                } catch let error as ReplyError {
                    codes.append(error.code)
                    #expect(error.isRetryable == (codes.count < 3))
                }
            }
            #expect(codes.count == 3)
            #expect(codes[0] == .server(status: 503))
            #expect(codes[1] == .throttled)
            guard case .permission(let permission) = codes[2] else {
                Issue.record("expected a permission error, got \(codes[2])")
                return
            }
            #expect(permission.contains("qyapi_robot_sendmsg"))
        }
    }

    @Test(.timeLimit(.minutes(1))) func downloadURLServesTheFile() async throws {
        try await withStack { stack in
            let bytes: [UInt8] = Array("attachment body".utf8)
            try stack.sim.registerFile(app: "helpdesk", downloadCode: "dc123", bytes: bytes)
            let url = try await stack.client.downloadURL(downloadCode: "dc123")
            let response = try await stack.http.execute(HTTPClientRequest(url: url), timeout: .seconds(5))
            let body = try await response.body.collect(upTo: 1 << 20)
            #expect(Array(body.readableBytesView) == bytes)
            let error = await #expect(throws: ReplyError.self) { try await stack.client.downloadURL(downloadCode: "unknown") }
            #expect(error?.code == .rejected(status: 400))
        }
    }

    @Test(.timeLimit(.minutes(1))) func moreThanTwentyUsersIsRefusedBeforeCalling() async throws {
        try await withStack { stack in
            let error = await #expect(throws: ReplyError.self) {
                try await stack.client.sendToUsers((1...21).map { "u\($0)" }, message: .text("x"))
            }
            #expect(error != nil)
            #expect(stack.sim.openAPISends().isEmpty)
        }
    }

    /// Issue 19: token and OpenAPI lines carried the app as `reply.app`, so `journalctl APP=…`
    /// (the `app` key everywhere else) missed them.
    @Test(.timeLimit(.minutes(1))) func tokenAndOpenAPILinesCarryTheAppUnderTheSameKey() async throws {
        try await DingTalkSimulator.withRunning(.single("helpdesk")) { sim in
            let http = HTTPClient.onOneEventLoop()
            defer { _ = http.shutdown(queue: .global()) { _ in } }
            let lines = CapturedLines()
            var logger = Logger(label: "replies.test") { _ in CapturingHandler(lines: lines) }
            logger.logLevel = .trace
            let app = try #require(sim.configuration.apps.first)
            let real = AppCredentials(name: "helpdesk", clientID: app.clientId, clientSecret: app.clientSecret, apiBase: sim.baseURL)
            let tokens = AccessTokenProvider(credentials: real, httpClient: http, logger: logger)
            let client = OpenAPIClient(credentials: real, httpClient: http, tokens: tokens, logger: logger)
            _ = try await tokens.token()
            try sim.expireTokens(app: "helpdesk")
            _ = try await client.sendToUsers(["0423297"], message: .text("hi"))
            let entries = lines.entries
            // A token fetched, refused by the OpenAPI, invalidated and fetched again.
            #expect(entries.count >= 4, "\(entries.map(\.message))")
            #expect(entries.allSatisfy { $0.metadata["app"] == "helpdesk" }, "\(entries)")
            #expect(entries.allSatisfy { $0.metadata["reply.app"] == nil })
        }
    }
}

@Suite struct ProactiveSenderTests {
    @Test(.timeLimit(.minutes(1))) func fortyFiveUsersGoInThreeCalls() async throws {
        var configuration = SimulatorConfiguration.single("helpdesk")
        configuration.invalidStaffIds = ["u7", "u44"]
        try await withStack(configuration) { stack in
            let users = (1...45).map { "u\($0)" } + ["u3"]  // a duplicate is sent once
            let summary = await ProactiveSender(client: stack.client).send(message: .text("maintenance at 22:00"), users: users)
            let sends = stack.sim.openAPISends(app: "helpdesk")
            #expect(sends.count == 3)
            #expect(sends.map { (jsonObject($0.body)["userIds"] as? [String])?.count } == [20, 20, 5])
            let sentTo = sends.flatMap { jsonObject($0.body)["userIds"] as? [String] ?? [] }
            #expect(sentTo == (1...45).map { "u\($0)" })
            #expect(summary.calls == 3)
            #expect(summary.invalid == ["u7", "u44"])
            #expect(summary.delivered.count == 43)
            #expect(!summary.delivered.contains("u7"))
            #expect(summary.notDelivered == ["u7", "u44"])
            #expect(summary.exitStatus == 2)
            #expect(summary.lines.first == "sent to 43 of 45 users")
        }
    }

    @Test(.timeLimit(.minutes(1))) func throttledBatchIsRetriedAndFailedBatchIsReported() async throws {
        try await withStack { stack in
            try stack.sim.apply(.http(endpoint: .batchSend, failure: .throttle, count: 1))
            let clock = stack.clock
            let sender = ProactiveSender(client: stack.client, maxAttempts: 3, sleep: { clock.recordSleep($0) }, random: { 0.5 })
            let ok = await sender.send(message: .markdown(title: "t", text: "x"), users: ["a", "b"])
            #expect(ok.exitStatus == 0)
            #expect(ok.delivered == ["a", "b"])
            #expect(ok.calls == 2)
            #expect(clock.sleeps.count == 1)

            try stack.sim.apply(.http(endpoint: .batchSend, failure: .permissionDenied, count: 1))
            let failed = await sender.send(message: .text("x"), users: ["a"])
            #expect(failed.exitStatus == 1)
            #expect(failed.failedBatches.first?.userIDs == ["a"])
            #expect(failed.failedBatches.first?.error.contains("qyapi_robot_sendmsg") == true)
        }
    }

    @Test(.timeLimit(.minutes(1))) func groupSendSplitsLongTextInOrder() async throws {
        try await withStack { stack in
            let text = (1...4).map { "section \($0)\n" + String(repeating: "w", count: 3_000) }.joined(separator: "\n\n")
            let summary = await ProactiveSender(client: stack.client).send(message: .text(text), group: "cidALL")
            #expect(summary.exitStatus == 0)
            let contents = stack.sim.openAPISends().map { msgParam(jsonObject($0.body))["content"] as? String ?? "" }
            #expect(contents.count == 4)
            #expect(contents.enumerated().allSatisfy { $0.element.hasPrefix("section \($0.offset + 1)\n") })
            #expect(contents.joined(separator: "\n\n") == text)
        }
    }
}

/// Log lines as written, with their merged metadata.
final class CapturedLines: Sendable {
    private let state = Mutex<[(message: String, metadata: [String: String])]>([])
    func append(_ message: String, _ metadata: [String: String]) { state.withLock { $0.append((message, metadata)) } }
    var entries: [(message: String, metadata: [String: String])] { state.withLock { $0 } }
}

struct CapturingHandler: LogHandler {
    let lines: CapturedLines
    var logLevel: Logger.Level = .trace
    var metadata: Logger.Metadata = [:]
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        lines.append(event.message.description, merged.mapValues(\.description))
    }
}

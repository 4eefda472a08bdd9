import Foundation
import Simulator
import Testing

@testable import Replies

@Suite struct ReplyDelivererTests {
    @Test(.timeLimit(.minutes(1))) func liveWebhookCarriesTheReply() async throws {
        try await withStack { stack in
            let message = try stack.sim.injectText("ping", app: "helpdesk")
            let progress = ProgressLog()
            let outcome = await stack.deliverer().deliver(
                [.text("pong")], to: try stack.target(of: message), firstAttemptAt: stack.clock.now, progress: { progress.record($0) })
            #expect(outcome == .delivered(paths: [.sessionWebhook], reportedUsers: []))
            #expect(progress.all == [1])
            let replies = stack.sim.webhookReplies(app: "helpdesk")
            #expect(replies.count == 1)
            #expect(replies.first?.errcode == 0)
            #expect(replies.first?.msgId == message.msgId)
            #expect((jsonObject(replies.first?.body ?? "")["text"] as? [String: Any])?["content"] as? String == "pong")
            #expect(stack.sim.openAPISends().isEmpty)
        }
    }

    @Test(.timeLimit(.minutes(1))) func expiredWebhookInPrivateChatFallsBackToBatchSend() async throws {
        try await withStack { stack in
            // Expires inside the 10 s margin: not even tried.
            let message = try stack.sim.injectBotMessage(BotMessageSpec(app: "helpdesk", content: .text("q"), senderStaffId: "manager42", webhookLifetime: .seconds(5)))
            let outcome = await stack.deliverer().deliver(
                [.text("answer")], to: try stack.target(of: message), firstAttemptAt: stack.clock.now, progress: { _ in })
            #expect(outcome == .delivered(paths: [.privateChat], reportedUsers: []))
            #expect(stack.sim.webhookReplies().isEmpty)
            let sends = stack.sim.openAPISends(app: "helpdesk")
            try #require(sends.count == 1)
            #expect(sends[0].endpoint == .batchSend)
            let body = jsonObject(sends[0].body)
            #expect(body["robotCode"] as? String == "dinghelpdesk")
            #expect(body["userIds"] as? [String] == ["manager42"])
            #expect(body["msgKey"] as? String == "sampleText")
            #expect(msgParam(body)["content"] as? String == "answer")
        }
    }

    /// A webhook that accepts the request and never answers costs one request timeout; the
    /// OpenAPI then carries the reply in the same attempt.
    @Test(.timeLimit(.minutes(1))) func hangingWebhookTimesOutAndTheOpenAPICarriesTheReply() async throws {
        try await withStack(requestTimeout: .seconds(1)) { stack in
            let message = try stack.sim.injectBotMessage(
                BotMessageSpec(app: "helpdesk", content: .text("q"), senderStaffId: "manager42", webhookLifetime: .seconds(3600)))
            // Far longer than the test may run: only the client's timeout ends the wait.
            try stack.sim.apply(.http(endpoint: .webhook, failure: .delay(.seconds(600)), count: 1))
            let outcome = await stack.deliverer().deliver(
                [.text("answer")], to: try stack.target(of: message), firstAttemptAt: stack.clock.now, progress: { _ in })
            #expect(outcome == .delivered(paths: [.privateChat], reportedUsers: []))
            let sends = stack.sim.openAPISends(app: "helpdesk")
            try #require(sends.count == 1)
            #expect(sends[0].endpoint == .batchSend)
            #expect(msgParam(jsonObject(sends[0].body))["content"] as? String == "answer")
        }
    }

    @Test(.timeLimit(.minutes(1))) func expiredWebhookInGroupFallsBackToGroupSend() async throws {
        try await withStack { stack in
            let message = try stack.sim.injectBotMessage(
                BotMessageSpec(app: "helpdesk", content: .text("q"), conversation: .group(conversationId: "cidOPS", title: "ops"), webhookLifetime: .seconds(1)))
            let target = try stack.target(of: message)
            #expect(target.conversation == .group)
            let outcome = await stack.deliverer().deliver(
                [.markdown(title: "Status", text: "## all green")], to: target, firstAttemptAt: stack.clock.now, progress: { _ in })
            #expect(outcome == .delivered(paths: [.group], reportedUsers: []))
            let sends = stack.sim.openAPISends(app: "helpdesk")
            try #require(sends.count == 1)
            #expect(sends[0].endpoint == .groupMessages)
            let body = jsonObject(sends[0].body)
            #expect(body["openConversationId"] as? String == "cidOPS")
            #expect(body["robotCode"] as? String == "dinghelpdesk")
            #expect(body["msgKey"] as? String == "sampleMarkdown")
            #expect(msgParam(body)["title"] as? String == "Status")
            #expect(msgParam(body)["text"] as? String == "## all green")
        }
    }

    @Test(.timeLimit(.minutes(1))) func webhook300001FallsBackAtOnceAndIsNotTriedAgain() async throws {
        try await withStack { stack in
            let message = try stack.sim.injectText("ping", app: "helpdesk")
            stack.sim.expireWebhook(message)  // looks valid for 90 min, answers 300001
            let progress = ProgressLog()
            let outcome = await stack.deliverer().deliver(
                [.text("one"), .text("two")], to: try stack.target(of: message), firstAttemptAt: stack.clock.now,
                progress: { progress.record($0) })
            #expect(outcome == .delivered(paths: [.privateChat, .privateChat], reportedUsers: []))
            #expect(stack.sim.webhookReplies().map(\.errcode) == [300001])
            #expect(stack.sim.openAPISends().map { msgParam(jsonObject($0.body))["content"] as? String } == ["one", "two"])
            #expect(stack.clock.sleeps.isEmpty)
            #expect(progress.all == [1, 2])
        }
    }

    @Test(.timeLimit(.minutes(1))) func throttlingIsRetriedWithGrowingBackoffUntilItPasses() async throws {
        try await withStack { stack in
            let message = try stack.sim.injectBotMessage(BotMessageSpec(app: "helpdesk", content: .text("q"), webhookLifetime: .seconds(1)))
            try stack.sim.apply(.http(endpoint: .batchSend, failure: .throttle, count: 3))
            let outcome = await stack.deliverer().deliver(
                [.text("late answer")], to: try stack.target(of: message), firstAttemptAt: stack.clock.now, progress: { _ in })
            #expect(outcome == .delivered(paths: [.privateChat], reportedUsers: []))
            // random() is 1: the delays are the full windows, 100 ms doubling.
            #expect(stack.clock.sleeps == [.milliseconds(100), .milliseconds(200), .milliseconds(400)])
            #expect(stack.sim.openAPISends().count == 1)
        }
    }

    @Test(.timeLimit(.minutes(1))) func webhookSendTooFastBacksOffAndStaysOnTheWebhook() async throws {
        try await withStack { stack in
            let message = try stack.sim.injectText("ping", app: "helpdesk")
            try stack.sim.apply(.throttleWebhooks(true))
            let sim = stack.sim
            let deliverer = stack.deliverer(onSleep: { count in
                if count == 2 { try? sim.apply(.throttleWebhooks(false)) }
            })
            let outcome = await deliverer.deliver([.text("pong")], to: try stack.target(of: message), firstAttemptAt: stack.clock.now, progress: { _ in })
            #expect(outcome == .delivered(paths: [.sessionWebhook], reportedUsers: []))
            #expect(stack.sim.webhookReplies().map(\.errcode) == [130101, 130101, 0])
            #expect(stack.sim.openAPISends().isEmpty)
        }
    }

    @Test(.timeLimit(.minutes(1))) func throttlingPastTheDeadlineIsDeadLettered() async throws {
        try await withStack { stack in
            let message = try stack.sim.injectBotMessage(BotMessageSpec(app: "helpdesk", content: .text("q"), webhookLifetime: .seconds(1)))
            try stack.sim.apply(.http(endpoint: .batchSend, failure: .throttle, count: 1_000))
            let outcome = await stack.deliverer(replyDeadline: .seconds(5)).deliver(
                [.text("never")], to: try stack.target(of: message), firstAttemptAt: stack.clock.now, progress: { _ in })
            guard case .deadLetter(let reason) = outcome else {
                Issue.record("expected a dead letter, got \(outcome)")
                return
            }
            #expect(reason.contains("reply_deadline"))
            #expect(reason.contains("QpsLimit"))
            let slept = stack.clock.sleeps.reduce(Duration.zero, +)
            #expect(slept <= .seconds(5))
            #expect(stack.clock.sleeps.count >= 3)
        }
    }

    @Test(.timeLimit(.minutes(1))) func permissionErrorIsDeadLetteredAtOnceNamingThePermission() async throws {
        try await withStack { stack in
            let message = try stack.sim.injectBotMessage(BotMessageSpec(app: "helpdesk", content: .text("q"), webhookLifetime: .seconds(1)))
            try stack.sim.apply(.http(endpoint: .batchSend, failure: .permissionDenied, count: 1))
            let outcome = await stack.deliverer().deliver(
                [.text("x")], to: try stack.target(of: message), firstAttemptAt: stack.clock.now, progress: { _ in })
            guard case .deadLetter(let reason) = outcome else {
                Issue.record("expected a dead letter, got \(outcome)")
                return
            }
            #expect(reason.contains("qyapi_robot_sendmsg"))
            #expect(reason.contains("developer console"))
            #expect(stack.clock.sleeps.isEmpty)
        }
    }

    @Test(.timeLimit(.minutes(1))) func aPermissionErrorIsNotFinalWhileTheWebhookMayRecover() async throws {
        try await withStack { stack in
            let message = try stack.sim.injectText("ping", app: "helpdesk")
            try stack.sim.apply(.http(endpoint: .webhook, failure: .serverError(status: 503), count: 1))
            try stack.sim.apply(.http(endpoint: .batchSend, failure: .permissionDenied, count: 1))
            let outcome = await stack.deliverer().deliver(
                [.text("pong")], to: try stack.target(of: message), firstAttemptAt: stack.clock.now, progress: { _ in })
            #expect(outcome == .delivered(paths: [.sessionWebhook], reportedUsers: []))
            #expect(stack.clock.sleeps.count == 1)
        }
    }

    @Test(.timeLimit(.minutes(1))) func invalidRecipientIsReportedAndDeadLettered() async throws {
        var configuration = SimulatorConfiguration.single("helpdesk")
        configuration.invalidStaffIds = ["ghost"]
        try await withStack(configuration) { stack in
            let message = try stack.sim.injectBotMessage(BotMessageSpec(app: "helpdesk", content: .text("q"), senderStaffId: "ghost", webhookLifetime: .seconds(1)))
            let outcome = await stack.deliverer().deliver(
                [.text("x")], to: try stack.target(of: message), firstAttemptAt: stack.clock.now, progress: { _ in })
            guard case .deadLetter(let reason) = outcome else {
                Issue.record("expected a dead letter, got \(outcome)")
                return
            }
            #expect(reason.contains("ghost"))
            #expect(reason.contains("invalidStaffIdList"))
        }
    }

    @Test(.timeLimit(.minutes(1))) func aRestartResumesAfterTheLastDeliveredPart() async throws {
        try await withStack { stack in
            let message = try stack.sim.injectText("ping", app: "helpdesk")
            let long = (1...12).map { "line \($0): " + String(repeating: "z", count: 900) }.joined(separator: "\n")
            let parts = ReplyMessage.text(long).split(maxBytes: 5_000)
            try #require(parts.count == 3)
            let progress = ProgressLog()
            let outcome = await stack.deliverer().deliver(
                parts, to: try stack.target(of: message), firstAttemptAt: stack.clock.now, alreadyDelivered: 1,
                progress: { progress.record($0) })
            #expect(outcome == .delivered(paths: [.sessionWebhook, .sessionWebhook], reportedUsers: []))
            #expect(progress.all == [2, 3])
            let sent = stack.sim.webhookReplies().map { (jsonObject($0.body)["text"] as? [String: Any])?["content"] as? String }
            #expect(sent == [parts[1], parts[2]].map { part -> String? in
                if case .text(let content) = part { return content }
                return nil
            })
        }
    }

    @Test(.timeLimit(.minutes(1))) func cancellationLeavesTheReplyInTheOutbox() async throws {
        try await withStack { stack in
            let message = try stack.sim.injectBotMessage(BotMessageSpec(app: "helpdesk", content: .text("q"), webhookLifetime: .seconds(1)))
            try stack.sim.apply(.http(endpoint: .batchSend, failure: .serverError(status: 503), count: 1_000))
            let target = try stack.target(of: message)
            let deliverer = ReplyDeliverer(
                clients: ["helpdesk": stack.client], webhook: stack.webhook, now: { stack.clock.now },
                sleep: { delay in
                    stack.clock.recordSleep(delay)
                    try await Task.sleep(for: .seconds(3600))
                }, logger: quietLogger)
            let task = Task { await deliverer.deliver([.text("x")], to: target, firstAttemptAt: stack.clock.now, progress: { _ in }) }
            let clock = stack.clock
            try await stack.sim.waitUntil(timeout: .seconds(10), "the first backoff") { _ in clock.sleeps.count == 1 }
            task.cancel()
            #expect(await task.value == .interrupted(delivered: 0))
        }
    }
}

@Suite struct ReplyDelivererEdgeTests {
    @Test(.timeLimit(.minutes(1))) func aTypeWithoutOpenAPIFormIsDeadLetteredWhenTheWebhookIsGone() async throws {
        try await withStack { stack in
            let message = try stack.sim.injectBotMessage(BotMessageSpec(app: "helpdesk", content: .text("q"), webhookLifetime: .seconds(1)))
            let feed = ReplyMessage(webhookObject: ["msgtype": "feedCard", "feedCard": ["links": [String]()]])
            let outcome = await stack.deliverer().deliver([feed], to: try stack.target(of: message), firstAttemptAt: stack.clock.now, progress: { _ in })
            guard case .deadLetter(let reason) = outcome else {
                Issue.record("expected a dead letter, got \(outcome)")
                return
            }
            #expect(reason.contains("feedCard"))
            #expect(reason.contains("msgKey"))
            #expect(stack.sim.openAPISends().isEmpty)
        }
    }

    @Test(.timeLimit(.minutes(1))) func aReplyForAnUnconfiguredAppIsDeadLettered() async throws {
        try await withStack { stack in
            let message = try stack.sim.injectBotMessage(BotMessageSpec(app: "helpdesk", content: .text("q"), webhookLifetime: .seconds(1)))
            var target = try stack.target(of: message)
            target.app = "elsewhere"
            let outcome = await stack.deliverer().deliver([.text("x")], to: target, firstAttemptAt: stack.clock.now, progress: { _ in })
            guard case .deadLetter(let reason) = outcome else {
                Issue.record("expected a dead letter, got \(outcome)")
                return
            }
            #expect(reason.contains("elsewhere"))
        }
    }

    @Test(.timeLimit(.minutes(1))) func aWebhookJustOutsideTheMarginIsStillUsed() async throws {
        try await withStack { stack in
            let message = try stack.sim.injectBotMessage(BotMessageSpec(app: "helpdesk", content: .text("q"), webhookLifetime: .seconds(15)))
            let outcome = await stack.deliverer().deliver([.text("x")], to: try stack.target(of: message), firstAttemptAt: stack.clock.now, progress: { _ in })
            #expect(outcome == .delivered(paths: [.sessionWebhook], reportedUsers: []))
            // Once the clock passes expiry − margin, the same target goes through the OpenAPI.
            stack.clock.advance(.seconds(6))
            let later = await stack.deliverer().deliver([.text("y")], to: try stack.target(of: message), firstAttemptAt: stack.clock.now, progress: { _ in })
            #expect(later == .delivered(paths: [.privateChat], reportedUsers: []))
        }
    }
}

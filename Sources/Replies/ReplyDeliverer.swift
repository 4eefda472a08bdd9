import Logging
import StreamProtocol

/// The way one part of a reply went out.
public enum DeliveryPath: String, Sendable, Codable, Equatable {
    case sessionWebhook = "webhook"
    case privateChat = "openapi.batchSend"
    case group = "openapi.groupSend"
}

/// A user DingTalk named in `invalidStaffIdList` or `flowControlledStaffIdList`.
public struct ReportedUser: Sendable, Equatable, Hashable {
    public enum Reason: String, Sendable {
        case invalid
        case flowControlled
    }

    public var id: String
    public var reason: Reason

    public init(id: String, reason: Reason) {
        self.id = id
        self.reason = reason
    }
}

public enum DeliveryOutcome: Sendable, Equatable {
    /// Every part went out; `paths` has one entry per part sent by this call, in order.
    case delivered(paths: [DeliveryPath], reportedUsers: [ReportedUser])
    /// No path can deliver (or the deadline passed): make the entry a dead letter. `reason` says
    /// what to fix.
    case deadLetter(reason: String)
    /// Cancelled (shutdown) after `delivered` parts; the intent stays in the outbox.
    case interrupted(delivered: Int)
}

/// Delivers the parts of one reply, in order: through the session webhook while it lives, else
/// through the robot OpenAPI of the target's app, retrying with backoff until `replyDeadline`.
///
/// Replies to one conversation must be delivered one after another (await each `deliver`) so
/// that they arrive in order.
public struct ReplyDeliverer: Sendable {
    let clients: [String: OpenAPIClient]
    private let webhook: SessionWebhookClient
    private let webhookMargin: Duration
    private let replyDeadline: Duration
    private let backoff: Backoff
    private let now: @Sendable () -> Int64
    private let sleep: @Sendable (Duration) async throws -> Void
    private let random: @Sendable () -> Double
    private let observer: ReplyObserver
    private let logger: Logger

    /// - Parameters:
    ///   - clients: the OpenAPI client of each app, keyed by app name.
    ///   - webhookMargin: a webhook is used only while `now < expiresAt − webhookMargin`.
    ///   - replyDeadline: measured from `firstAttemptAt`; after it the reply is dead-lettered.
    ///   - now: epoch milliseconds. `sleep` throws when cancelled. `random` returns `0 ..< 1`.
    public init(
        clients: [String: OpenAPIClient], webhook: SessionWebhookClient,
        webhookMargin: Duration = .seconds(10), replyDeadline: Duration = .seconds(3600),
        backoff: Backoff = Backoff(base: .seconds(1), cap: .seconds(300)),
        now: @escaping @Sendable () -> Int64 = epochMilliseconds,
        sleep: @escaping @Sendable (Duration) async throws -> Void = { try await Task.sleep(for: $0) },
        random: @escaping @Sendable () -> Double = { Double.random(in: 0..<1) },
        observer: ReplyObserver = .none,
        logger: Logger
    ) {
        self.clients = clients
        self.webhook = webhook
        self.webhookMargin = webhookMargin
        self.replyDeadline = replyDeadline
        self.backoff = backoff
        self.now = now
        self.sleep = sleep
        self.random = random
        self.observer = observer
        self.logger = logger
    }

    /// Delivers `parts[alreadyDelivered...]` to `target`, calling `progress(n)` after part `n`
    /// (counting from 1) went out, so a restart resumes after it instead of sending it twice.
    /// Never throws: retryable failures are retried with backoff until `firstAttemptAt +
    /// replyDeadline` (epoch ms); a failure no retry can fix, or the deadline, gives
    /// `.deadLetter` with the reason; cancellation gives `.interrupted`.
    public func deliver(
        _ parts: [ReplyMessage], to target: ReplyTarget, firstAttemptAt: Int64, alreadyDelivered: Int = 0,
        progress: @Sendable (Int) async -> Void
    ) async -> DeliveryOutcome {
        var logger = logger
        logger[metadataKey: "app"] = "\(target.app)"
        logger[metadataKey: "reply.conversation"] = "\(target.conversationKey)"
        let deadline = firstAttemptAt + milliseconds(replyDeadline)
        var state = AttemptState()
        var paths: [DeliveryPath] = []
        var failures = 0
        var attempts = 0
        if alreadyDelivered == 0 {
            for part in parts {
                guard let cut = part.cutBytes else { continue }
                logger.warning(
                    "replies: reply cut to \(ReplyMessage.defaultMaxParts) messages of \(ReplyMessage.defaultPartBytes) bytes; \(cut) bytes not sent (write long output to a file and reply with a link)")
            }
        }
        for index in max(alreadyDelivered, 0)..<parts.count {
            logger[metadataKey: "reply.part"] = "\(index + 1)/\(parts.count)"
            while true {
                if Task.isCancelled { return .interrupted(delivered: index) }
                attempts += 1
                let result = await attempt(parts[index], to: target, state: &state, logger: logger)
                let error: ReplyError
                switch result {
                case .delivered(let path):
                    logger.debug("replies: part delivered", metadata: ["reply.path": "\(path.rawValue)"])
                    paths.append(path)
                    await progress(index + 1)
                    failures = 0
                case .fatal(let fatal):
                    let reason = "reply part \(index + 1)/\(parts.count) to \(target.conversationKey) not delivered: \(fatal)"
                    logger.error("replies: dead letter", metadata: ["reply.reason": "\(fatal)"])
                    return .deadLetter(reason: reason)
                case .retry(let retry):
                    error = retry
                    let delay = backoff.delay(afterFailures: failures, unit: random())
                    failures += 1
                    if now() + milliseconds(delay) > deadline {
                        let reason =
                            "reply part \(index + 1)/\(parts.count) to \(target.conversationKey) not delivered within "
                            + "reply_deadline \(replyDeadline) (\(attempts) attempts); last error: \(error)"
                        logger.error("replies: dead letter, deadline passed", metadata: ["reply.reason": "\(error)"])
                        return .deadLetter(reason: reason)
                    }
                    logger.notice(
                        "replies: delivery failed, retrying",
                        metadata: ["reply.retry_in": "\(delay.formattedSeconds)", "reply.attempt": "\(attempts)", "error": "\(error)"]
                    )
                    do { try await sleep(delay) } catch { return .interrupted(delivered: index) }
                    continue
                }
                break
            }
        }
        return .delivered(paths: paths, reportedUsers: state.reported)
    }

    private struct AttemptState {
        /// Set once the webhook answered 300001 (or refused for good): never try it again.
        var webhookDead = false
        var reported: [ReportedUser] = []

        mutating func report(_ user: ReportedUser) {
            if !reported.contains(user) { reported.append(user) }
        }
    }

    private enum AttemptResult {
        case delivered(DeliveryPath)
        case retry(ReplyError)
        case fatal(ReplyError)
    }

    private func attempt(
        _ part: ReplyMessage, to target: ReplyTarget, state: inout AttemptState, logger: Logger
    ) async -> AttemptResult {
        // A webhook failure that may pass: while it stands, an OpenAPI refusal is not final.
        var webhookTrouble: ReplyError?
        if !state.webhookDead, let url = target.sessionWebhook, !url.isEmpty, webhookLive(target) {
            do {
                try await webhook.post(part, to: url)
                observer.attempt(target.app, .sessionWebhook, .ok)
                return .delivered(.sessionWebhook)
            } catch {
                observer.attempt(target.app, .sessionWebhook, ReplyAttemptResult(error))
                switch error.code {
                case .webhookThrottled:
                    return .retry(error)
                case _ where error.isRetryable:
                    webhookTrouble = error
                default:
                    state.webhookDead = true
                }
                logger.info("replies: session webhook failed, trying the OpenAPI", metadata: ["error": "\(error)"])
            }
        }
        func giveUp(_ error: ReplyError) -> AttemptResult {
            if error.isRetryable { return .retry(error) }
            if let webhookTrouble { return .retry(webhookTrouble) }
            return .fatal(error)
        }
        guard let client = clients[target.app] else {
            return giveUp(
                ReplyError(
                    .unknownApp, endpoint: "robot OpenAPI",
                    context: "app \(target.app) has no OpenAPI client and the session webhook is gone"
                )
            )
        }
        // Set just before an OpenAPI call, so that its failure below is counted for its path.
        var calledPath: DeliveryPath?
        do {
            switch target.conversation {
            case .private:
                guard let user = target.senderStaffID, !user.isEmpty else {
                    return giveUp(
                        ReplyError(
                            .invalidRecipient, endpoint: OpenAPIClient.batchSendPath,
                            context: "the sender has no staff id (an external user?) and the session webhook is gone"
                        )
                    )
                }
                calledPath = .privateChat
                let result = try await client.sendToUsers([user], message: part, robotCode: target.robotCode)
                if result.invalidStaffIDs.contains(user) {
                    state.report(ReportedUser(id: user, reason: .invalid))
                    observer.attempt(target.app, .privateChat, .refused)
                    return giveUp(ReplyError(.invalidRecipient, endpoint: OpenAPIClient.batchSendPath, context: "user \(user)"))
                }
                if result.flowControlledStaffIDs.contains(user) {
                    state.report(ReportedUser(id: user, reason: .flowControlled))
                    observer.attempt(target.app, .privateChat, .throttled)
                    return .retry(
                        ReplyError(.throttled, endpoint: OpenAPIClient.batchSendPath, context: "user \(user) is flow-controlled")
                    )
                }
                observer.attempt(target.app, .privateChat, .ok)
                return .delivered(.privateChat)
            case .group:
                guard let group = target.openConversationID, !group.isEmpty else {
                    return giveUp(
                        ReplyError(
                            .invalidRecipient, endpoint: OpenAPIClient.groupSendPath,
                            context: "the message has no openConversationId and the session webhook is gone"
                        )
                    )
                }
                calledPath = .group
                try await client.sendToGroup(group, message: part, robotCode: target.robotCode)
                observer.attempt(target.app, .group, .ok)
                return .delivered(.group)
            }
        } catch {
            if let calledPath { observer.attempt(target.app, calledPath, ReplyAttemptResult(error)) }
            return giveUp(error)
        }
    }

    private func webhookLive(_ target: ReplyTarget) -> Bool {
        // Without an expiry time the webhook is tried: 300001 will tell if it is gone.
        guard let expiresAt = target.sessionWebhookExpiresAt else { return true }
        return now() < expiresAt - milliseconds(webhookMargin)
    }
}

func milliseconds(_ duration: Duration) -> Int64 {
    let (seconds, attoseconds) = duration.components
    return seconds * 1000 + attoseconds / 1_000_000_000_000_000
}

import Logging
import StreamProtocol

/// What `dingstream send` reports: who got the message and who did not, and why.
public struct SendSummary: Sendable, Equatable {
    public struct FailedBatch: Sendable, Equatable {
        public var userIDs: [String]
        public var error: String
    }

    /// Users who got every part.
    public var delivered: [String] = []
    /// Users DingTalk named in `invalidStaffIdList`.
    public var invalid: [String] = []
    /// Users DingTalk named in `flowControlledStaffIdList`.
    public var flowControlled: [String] = []
    /// Calls that failed as a whole, after retries.
    public var failedBatches: [FailedBatch] = []
    /// The group, for a group send; `groupDelivered` tells if it got every part.
    public var group: String?
    public var groupDelivered = false
    /// How many API calls were made, retries included.
    public var calls = 0

    /// The recipients that did not get the message.
    public var notDelivered: [String] {
        var seen = Set(delivered)
        var missing: [String] = []
        for id in invalid + flowControlled + failedBatches.flatMap(\.userIDs) where seen.insert(id).inserted {
            missing.append(id)
        }
        return missing
    }

    /// 0: every recipient got it. 1: nobody did. 2: some did, some did not.
    public var exitStatus: Int32 {
        if group != nil { return groupDelivered ? 0 : 1 }
        if notDelivered.isEmpty && !delivered.isEmpty { return 0 }
        return delivered.isEmpty ? 1 : 2
    }

    /// Human-readable lines for the terminal or a cron mail.
    public var lines: [String] {
        var lines: [String] = []
        if let group {
            lines.append(groupDelivered ? "sent to group \(group)" : "NOT sent to group \(group)")
        } else {
            lines.append("sent to \(delivered.count) of \(delivered.count + notDelivered.count) users")
        }
        if !invalid.isEmpty { lines.append("invalid user ids (not in the org or outside the app's range): \(invalid.joined(separator: " "))") }
        if !flowControlled.isEmpty { lines.append("flow-controlled (too many messages, try later): \(flowControlled.joined(separator: " "))") }
        for batch in failedBatches {
            lines.append("failed for \(batch.userIDs.isEmpty ? "the group" : batch.userIDs.joined(separator: " ")): \(batch.error)")
        }
        return lines
    }
}

/// Proactive messages (`dingstream send`): to users in batches of at most 20, or to a group.
/// Retryable failures (throttling, 5xx, timeouts) are retried a few times with backoff.
public struct ProactiveSender: Sendable {
    private let client: OpenAPIClient
    private let maxAttempts: Int
    private let backoff: Backoff
    private let sleep: @Sendable (Duration) async throws -> Void
    private let random: @Sendable () -> Double
    private let partBytes: Int

    public init(
        client: OpenAPIClient, maxAttempts: Int = 5, backoff: Backoff = Backoff(base: .seconds(1), cap: .seconds(30)),
        partBytes: Int = ReplyMessage.defaultPartBytes,
        sleep: @escaping @Sendable (Duration) async throws -> Void = { try await Task.sleep(for: $0) },
        random: @escaping @Sendable () -> Double = { Double.random(in: 0..<1) }
    ) {
        self.client = client
        self.maxAttempts = max(maxAttempts, 1)
        self.backoff = backoff
        self.sleep = sleep
        self.random = random
        self.partBytes = partBytes
    }

    /// Sends `message` (split if long) to `users` (duplicates removed, order kept), 20 per call.
    /// Never throws: every failure lands in the summary; a user counts as delivered only when
    /// every part reached them.
    public func send(message: ReplyMessage, users: [String]) async -> SendSummary {
        var seen = Set<String>()
        let recipients = users.filter { !$0.isEmpty && seen.insert($0).inserted }
        var summary = SendSummary()
        var missed = Set<String>()
        let parts = message.split(maxBytes: partBytes)
        for start in stride(from: 0, to: recipients.count, by: OpenAPIClient.maxUsersPerCall) {
            let batch = Array(recipients[start..<min(start + OpenAPIClient.maxUsersPerCall, recipients.count)])
            for part in parts {
                // Users who missed an earlier part are not sent the later ones out of context.
                let targets = batch.filter { !missed.contains($0) }
                if targets.isEmpty { break }
                let result = await withRetries(&summary) { () async throws(ReplyError) -> BatchSendResult in
                    try await client.sendToUsers(targets, message: part)
                }
                switch result {
                case .success(let answer):
                    for id in answer.invalidStaffIDs where missed.insert(id).inserted { summary.invalid.append(id) }
                    for id in answer.flowControlledStaffIDs where missed.insert(id).inserted { summary.flowControlled.append(id) }
                case .failure(let error):
                    summary.failedBatches.append(.init(userIDs: targets, error: "\(error)"))
                    missed.formUnion(targets)
                }
            }
            summary.delivered.append(contentsOf: batch.filter { !missed.contains($0) })
        }
        return summary
    }

    /// Sends `message` (split if long) to the group `openConversationID`. Never throws.
    public func send(message: ReplyMessage, group openConversationID: String) async -> SendSummary {
        var summary = SendSummary()
        summary.group = openConversationID
        for part in message.split(maxBytes: partBytes) {
            let result = await withRetries(&summary) { () async throws(ReplyError) -> String? in
                try await client.sendToGroup(openConversationID, message: part)
            }
            if case .failure(let error) = result {
                summary.failedBatches.append(.init(userIDs: [], error: "\(error)"))
                return summary
            }
        }
        summary.groupDelivered = true
        return summary
    }

    private func withRetries<T>(
        _ summary: inout SendSummary, _ call: () async throws(ReplyError) -> T
    ) async -> Result<T, ReplyError> {
        var failures = 0
        while true {
            summary.calls += 1
            do {
                return .success(try await call())
            } catch {
                failures += 1
                if !error.isRetryable || failures >= maxAttempts { return .failure(error) }
                do {
                    try await sleep(backoff.delay(afterFailures: failures - 1, unit: random()))
                } catch {
                    return .failure(ReplyError(.timeout, endpoint: "send", context: "cancelled while waiting to retry"))
                }
            }
        }
    }
}

import Foundation
import Testing

@testable import DingStream

@Suite("When a message that asked to be retried runs again", .timeLimit(.minutes(1)))
struct DispatchSettingsTests {
    /// Issue 15 (confusing): the wait was drawn between half and all of retry_delay (doubling),
    /// and logged with 15 digits. It is retry_delay, then twice that, up to an hour, written as
    /// the configuration writes durations.
    @Test func theRetryWaitIsNeverShorterThanConfiguredAndDoublesUpToAnHour() {
        let settings = DispatchSettings(apps: [:], handlerTimeout: .seconds(60), maxAttempts: 20, retryDelay: .seconds(30), attachments: nil)
        let delays = (1...10).map { settings.nextTry(afterAttempt: $0).delay }
        #expect(delays.prefix(8).map(DurationText.format) == ["30s", "1m", "2m", "4m", "8m", "16m", "32m", "1h"])
        #expect(delays.suffix(2).allSatisfy { $0 == .seconds(3600) })
        let before = Date()
        let (delay, due) = settings.nextTry(afterAttempt: 1)
        #expect(delay == .seconds(30))
        #expect(due.timeIntervalSince(before) >= 30)
        // A retry_delay above the hour is kept as it is.
        let long = DispatchSettings(apps: [:], handlerTimeout: .seconds(60), maxAttempts: 5, retryDelay: .seconds(7200), attachments: nil)
        #expect(long.nextTry(afterAttempt: 3).delay == .seconds(7200))
    }
}

/// Exponential backoff with full jitter.
///
///     delay(n) = random(0 ... min(cap, base · 2ⁿ))      n = failures so far, from 0
///
/// Full jitter spreads reconnect storms of many clients evenly over the window instead of
/// bunching them at the exponential steps.
public struct Backoff: Sendable, Equatable {
    public var base: Duration
    public var cap: Duration

    public init(base: Duration = .seconds(1), cap: Duration = .seconds(60)) {
        self.base = base
        self.cap = cap
    }

    /// The upper bound of the window after `failures` consecutive failures.
    public func ceiling(afterFailures failures: Int) -> Duration {
        let exponent = min(max(failures, 0), 40)
        let scaled = base * Double(UInt64(1) << UInt64(exponent))
        return scaled < cap ? scaled : cap
    }

    /// A delay drawn uniformly from `0 ... ceiling`; `unit` is a random number in `0 ..< 1`.
    public func delay(afterFailures failures: Int, unit: Double) -> Duration {
        ceiling(afterFailures: failures) * min(max(unit, 0), 1)
    }
}

extension Duration {
    /// A backoff delay for log lines, in tenths of a second: `0.4s`, `12.7s`.
    public var formattedSeconds: String {
        let (seconds, attoseconds) = components
        let tenths = max(0, seconds * 10 + (attoseconds + 50_000_000_000_000_000) / 100_000_000_000_000_000)
        return "\(tenths / 10).\(tenths % 10)s"
    }
}

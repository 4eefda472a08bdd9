/// Durations as people write them, in the configuration and on the command line: "500ms",
/// "90s", "5m", "6h", "7d", "2w", "1.5h", or a bare number of seconds. One grammar for every place.
public enum DurationText {
    /// The longest duration read anywhere (100 years). Far beyond any sensible setting, and far
    /// enough from `Int64` nanoseconds (292 years) that no later conversion or sum can overflow.
    public static let limit: Duration = .seconds(100 * 365 * 86_400)

    private static let units: [(suffix: String, seconds: Double)] = [
        ("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86_400), ("w", 604_800),
    ]

    /// The duration `text` stands for, or nil when it is not a plain decimal number with an
    /// optional unit (signs, exponents, "inf" and "nan" are refused) or is longer than `limit`.
    public static func parse(_ text: String) -> Duration? {
        if case .duration(let duration) = read(text) { return duration }
        return nil
    }

    enum Reading: Equatable {
        case duration(Duration)
        /// Well written, but longer than `limit`.
        case tooLong
        case malformed
    }

    static func read(_ text: String) -> Reading {
        var number = Substring(text.trimmingWhitespace())
        var factor = 1.0
        for unit in units where number.hasSuffix(unit.suffix) {
            number = number.dropLast(unit.suffix.count)
            factor = unit.seconds
            break
        }
        guard isDecimal(number), let value = Double(number) else { return .malformed }
        let seconds = value * factor
        // Compared as Double before any integer conversion, so no input can reach a trap.
        guard seconds.isFinite, seconds <= Double(limit.components.seconds) else { return .tooLong }
        return .duration(.milliseconds(Int64((seconds * 1000).rounded())))
    }

    /// Digits with at most one decimal point and a digit on each side of it.
    private static func isDecimal(_ text: Substring) -> Bool {
        let parts = text.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        return !parts.isEmpty && parts.allSatisfy { part in !part.isEmpty && part.allSatisfy { ("0"..."9").contains($0) } }
    }

    /// The shortest exact form in the largest whole unit: "500ms", "90s", "24h", "7d".
    public static func format(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        let milliseconds = seconds * 1000 + attoseconds / 1_000_000_000_000_000
        if milliseconds == 0 { return "0s" }
        // Weeks are read but not written: "14d" is clearer in a range than "2w".
        for (suffix, unitSeconds) in units.dropLast().reversed() {
            let unit = Int64(unitSeconds * 1000)
            if milliseconds % unit == 0 { return "\(milliseconds / unit)\(suffix)" }
        }
        return "\(milliseconds)ms"
    }
}

extension String {
    fileprivate func trimmingWhitespace() -> String {
        var scalars = Substring(self)
        while let first = scalars.first, first == " " || first == "\t" { scalars.removeFirst() }
        while let last = scalars.last, last == " " || last == "\t" { scalars.removeLast() }
        return String(scalars)
    }
}

import Foundation
import Simulator

#if canImport(Glibc)
import Glibc
#endif

/// Pushes bot messages through the simulator from a plain thread: blocking waits, monotonic time.
struct LoadDriver: Sendable {
    let simulator: DingTalkSimulator
    let app: String

    struct Burst: Sendable {
        var acked: Int
        /// Seconds from the first push to the last ack (or to the timeout).
        var elapsed: Double
    }

    /// Pushes `count` messages keeping about `window` unacked, and waits for their acks.
    /// Stops waiting after `timeout` seconds and reports what was acked by then.
    func burst(count: Int, window: Int, timeout: Double) throws -> Burst {
        let chunk = max(1, min(500, window / 4))
        let baseline = simulator.stats(app: app).acks
        let start = Self.seconds()
        var injected = 0
        var acked = 0
        while acked < count {
            acked = simulator.stats(app: app).acks - baseline
            if Self.seconds() - start > timeout { break }
            if injected < count && injected - acked + chunk <= window {
                let next = min(chunk, count - injected)
                try simulator.injectTextMessages(count: next, app: app, text: "bench \(injected)")
                injected += next
            } else {
                // The driver shares the machine with what it measures: a millisecond between
                // looks keeps about 20 of the 4000 in-flight frames' worth of slack at 20,000/s.
                usleep(1000)
            }
        }
        return Burst(acked: acked, elapsed: Self.seconds() - start)
    }

    /// Pushes one message every 1/`rate` s for `seconds`, catching up when late, then waits for
    /// every ack (up to `timeout` s more).
    func paced(rate: Int, seconds: Double, timeout: Double) throws {
        let total = Int(Double(rate) * seconds)
        let baseline = simulator.stats(app: app).acks
        let start = Self.seconds()
        var injected = 0
        while injected < total {
            let due = min(total, Int((Self.seconds() - start) * Double(rate)) + 1)
            if due > injected {
                try simulator.injectTextMessages(count: due - injected, app: app, text: "paced \(injected)")
                injected = due
            }
            let next = start + Double(injected) / Double(rate)
            let wait = next - Self.seconds()
            if wait > 0 { usleep(useconds_t(wait * 1e6)) }
        }
        let end = Self.seconds() + timeout
        while simulator.stats(app: app).acks - baseline < total && Self.seconds() < end { usleep(1000) }
    }

    static func seconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }
}

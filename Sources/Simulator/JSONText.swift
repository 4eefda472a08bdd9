import Foundation
import StreamProtocol

/// Small JSON helpers: frames are built by hand (cheap on the push path), bodies parsed with
/// JSONSerialization (flexible, the simulator must accept whatever a client sends; acks of the
/// usual shape take `StreamAck.decodeReceived` first) and written with StreamProtocol's writer
/// (keys sorted, no locale).
enum JSONText {
    /// `s` as a JSON string literal, quotes included.
    static func quote(_ s: String) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(s.utf8.count + 16)
        JSON.appendQuoted(s, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Parses a JSON object; nil when `bytes` is not one.
    static func object(_ bytes: some Collection<UInt8>) -> [String: Any]? {
        guard !bytes.isEmpty else { return nil }
        return (try? JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])) as? [String: Any]
    }

    static func object(_ string: String) -> [String: Any]? {
        object(Array(string.utf8))
    }

    /// Serializes a JSON value (dictionary with sorted keys, array, string, number, bool, NSNull);
    /// `null` when it holds something JSON cannot say.
    static func encode(_ value: Any) -> String {
        JSON.text(value) ?? "null"
    }
}

/// Deterministic random numbers, so a seeded simulator picks the same sockets and ids every run
/// (and tests can replay what a printed seed chose).
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func hex(_ count: Int) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var bytes = [UInt8]()
        bytes.reserveCapacity(count)
        var bits = next()
        var left = 16
        for _ in 0..<count {
            if left == 0 { bits = next(); left = 16 }
            bytes.append(digits[Int(bits & 0xF)])
            bits >>= 4
            left -= 1
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    mutating func alnum(_ count: Int) -> String {
        let digits = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        var bytes = [UInt8]()
        for _ in 0..<count { bytes.append(digits[Int(next() & 63)]) }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// A UUID-shaped string (tickets, opaque values, request ids).
    mutating func uuid() -> String {
        "\(hex(8))-\(hex(4))-4\(hex(3))-a\(hex(3))-\(hex(12))"
    }

    /// Shaped like DingTalk's `headers.messageId` (`212b9d7c_165f_19bfa1a500a_1461def`).
    mutating func messageId() -> String {
        "\(hex(8))_\(hex(4))_\(hex(11))_\(hex(7))"
    }
}

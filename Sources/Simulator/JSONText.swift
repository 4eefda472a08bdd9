import Foundation

/// Small JSON helpers: frames are built by hand (cheap on the push path), bodies parsed with
/// JSONSerialization (flexible, the simulator must accept whatever a client sends).
enum JSONText {
    /// `s` as a JSON string literal, quotes included. Works on UTF-8 bytes: this is on the push path.
    static func quote(_ s: String) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(s.utf8.count + 16)
        appendQuoted(s, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    static func appendQuoted(_ s: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for byte in s.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out.append(UInt8(ascii: "\\")); out.append(UInt8(ascii: "\""))
            case UInt8(ascii: "\\"): out.append(UInt8(ascii: "\\")); out.append(UInt8(ascii: "\\"))
            case 0x0A: out.append(UInt8(ascii: "\\")); out.append(UInt8(ascii: "n"))
            case 0x0D: out.append(UInt8(ascii: "\\")); out.append(UInt8(ascii: "r"))
            case 0x09: out.append(UInt8(ascii: "\\")); out.append(UInt8(ascii: "t"))
            case 0..<0x20:
                out.append(contentsOf: ("\\u00".utf8))
                out.append(hexDigits[Int(byte >> 4)])
                out.append(hexDigits[Int(byte & 0xF)])
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// Parses a JSON object; nil when `bytes` is not one.
    static func object(_ bytes: some Collection<UInt8>) -> [String: Any]? {
        guard !bytes.isEmpty else { return nil }
        return (try? JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])) as? [String: Any]
    }

    static func object(_ string: String) -> [String: Any]? {
        object(Array(string.utf8))
    }

    /// Serializes a JSON value (dictionary with sorted keys, array, string, number, bool, NSNull).
    /// Written by hand because JSONSerialization's writer is slow on Linux; unknown values become null.
    static func encode(_ value: Any) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        append(value, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    static func append(_ value: Any, to out: inout [UInt8]) {
        // Exact dynamic types first: on Linux a parsed NSNumber 1 also casts to Bool.
        let dynamicType = type(of: value)
        if dynamicType == Bool.self, let b = value as? Bool {
            out.append(contentsOf: (b ? "true" : "false").utf8)
            return
        }
        if dynamicType == Int.self, let i = value as? Int {
            out.append(contentsOf: String(i).utf8)
            return
        }
        if dynamicType == Int64.self, let i = value as? Int64 {
            out.append(contentsOf: String(i).utf8)
            return
        }
        if dynamicType == Double.self, let d = value as? Double {
            out.append(contentsOf: (d.isFinite ? String(d) : "null").utf8)
            return
        }
        switch value {
        case let s as String:
            appendQuoted(s, to: &out)
        case let n as NSNumber:
            switch String(cString: n.objCType) {
            case "c", "B": out.append(contentsOf: (n.boolValue ? "true" : "false").utf8)
            case "d", "f": out.append(contentsOf: (n.doubleValue.isFinite ? String(n.doubleValue) : "null").utf8)
            default: out.append(contentsOf: n.stringValue.utf8)
            }
        case let dict as [String: Any]:
            out.append(UInt8(ascii: "{"))
            var first = true
            for key in dict.keys.sorted() {
                if !first { out.append(UInt8(ascii: ",")) }
                first = false
                appendQuoted(key, to: &out)
                out.append(UInt8(ascii: ":"))
                append(dict[key] ?? NSNull(), to: &out)
            }
            out.append(UInt8(ascii: "}"))
        case let array as [Any]:
            out.append(UInt8(ascii: "["))
            for (i, element) in array.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                append(element, to: &out)
            }
            out.append(UInt8(ascii: "]"))
        default:
            out.append(contentsOf: ("null".utf8))
        }
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

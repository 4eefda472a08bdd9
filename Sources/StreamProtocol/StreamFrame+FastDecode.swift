/// A strict single-pass reader for the usual frame shape: an object whose `specVersion` and `type`
/// are strings, `headers` an object of strings, and `data` a string or null, with any other
/// member a valid JSON value. It answers nil for anything else (numbers in headers, `data` as an
/// object, duplicate members, invalid JSON), and `decode` then takes the general path, whose
/// results and errors are the reference. The frame's `data` is JSON text inside a JSON string, so
/// it is full of escaped quotes: JSONSerialization spends most of a frame's time on exactly that.
struct FastFrameReader {
    private let bytes: UnsafeBufferPointer<UInt8>
    private var index = 0
    /// Set when the bytes are known to be valid UTF-8: skipped strings are then only scanned.
    private var knownUTF8 = false
    /// Whether `nextMember` is at the first member of the top-level object.
    private var firstMember = true

    private init(_ bytes: UnsafeBufferPointer<UInt8>) {
        self.bytes = bytes
    }

    /// The frame's UTF-8 is checked once, up front: its strings are then made without checking
    /// each again through the generic `String(validating:as:)`, and skipped ones are only scanned.
    static func decode(_ bytes: UnsafeBufferPointer<UInt8>) -> StreamFrame? {
        read(bytes) { $0.frame() }
    }

    /// Runs `body` on a reader of `bytes` once they are known to be valid UTF-8.
    private static func read<Value>(_ bytes: UnsafeBufferPointer<UInt8>, _ body: (inout FastFrameReader) -> Value?) -> Value? {
        guard UTF8Check.isValid(bytes) else { return nil }
        var reader = FastFrameReader(bytes)
        reader.knownUTF8 = true
        return body(&reader)
    }

    /// For the text of a frame's `data`: nil unless it is one valid JSON object with `member` at
    /// most once; then that member's value when it is a string, else `.some(nil)`.
    /// The text came from a Swift string, so it is valid UTF-8 and strings are only checked for
    /// their escapes, not copied.
    static func stringMember(_ member: String, ofObject bytes: UnsafeBufferPointer<UInt8>) -> String?? {
        var reader = FastFrameReader(bytes)
        reader.knownUTF8 = true
        return reader.stringMember(member)
    }

    /// As `stringMember`, for several members in one pass: nil when the scan cannot vouch for
    /// the object, else each member's string value (nil when absent or not a string).
    static func stringMembers(_ members: [String], ofObject bytes: UnsafeBufferPointer<UInt8>) -> [String?]? {
        var reader = FastFrameReader(bytes)
        reader.knownUTF8 = true
        return reader.stringMembers(members.map { Array($0.utf8) })
    }

    private mutating func stringMembers(_ members: [[UInt8]]) -> [String?]? {
        var values = [String?](repeating: nil, count: members.count)
        var seen = [Bool](repeating: false, count: members.count)
        guard beginObject() else { return nil }
        while true {
            skipSpace()
            let first = firstMember
            firstMember = false
            if take(UInt8(ascii: "}")) {
                skipSpace()
                return index == bytes.count ? values : nil
            }
            guard first || take(UInt8(ascii: ",")) else { return nil }
            skipSpace()
            // Member names are compared as bytes; only an escaped name is decoded.
            let nameStart = index + 1
            guard skipString() else { return nil }
            let raw = UnsafeBufferPointer(rebasing: bytes[nameStart..<(index - 1)])
            let slot: Int?
            if raw.contains(UInt8(ascii: "\\")) {
                var copy = FastFrameReader(UnsafeBufferPointer(rebasing: bytes[(nameStart - 1)..<index]))
                copy.knownUTF8 = true
                guard let name = copy.string() else { return nil }
                slot = members.firstIndex { $0.elementsEqual(name.utf8) }
            } else {
                slot = members.firstIndex { $0.elementsEqual(raw) }
            }
            skipSpace()
            guard take(UInt8(ascii: ":")) else { return nil }
            skipSpace()
            if let slot {
                guard !seen[slot] else { return nil }
                seen[slot] = true
                if index < bytes.count, bytes[index] == UInt8(ascii: "\"") {
                    guard let text = string() else { return nil }
                    values[slot] = text
                    continue
                }
            }
            guard skipValue(depth: 1) else { return nil }
        }
    }

    private mutating func stringMember(_ member: String) -> String?? {
        var value: String?
        var seen = false
        guard beginObject() else { return nil }
        while true {
            switch nextMember() {
            case .invalid: return nil
            case .end: return index == bytes.count ? .some(value) : nil
            case .member(let name):
                if name == member {
                    guard !seen else { return nil }
                    seen = true
                    if index < bytes.count, bytes[index] == UInt8(ascii: "\"") {
                        guard let text = string() else { return nil }
                        value = text
                        continue
                    }
                }
                guard skipValue(depth: 1) else { return nil }
            }
        }
    }

    private enum MemberStep {
        /// The member's name; the reader is at its value, which the caller must read or skip.
        case member(String)
        /// The closing brace was read, and white space after it.
        case end
        case invalid
    }

    /// Starts reading the top-level object.
    private mutating func beginObject() -> Bool {
        skipSpace()
        firstMember = true
        return take(UInt8(ascii: "{"))
    }

    /// The next member of the object begun with `beginObject`.
    private mutating func nextMember() -> MemberStep {
        skipSpace()
        let first = firstMember
        firstMember = false
        if take(UInt8(ascii: "}")) {
            skipSpace()
            return .end
        }
        guard first || take(UInt8(ascii: ",")) else { return .invalid }
        skipSpace()
        guard let name = string() else { return .invalid }
        skipSpace()
        guard take(UInt8(ascii: ":")) else { return .invalid }
        skipSpace()
        return .member(name)
    }

    private mutating func frame() -> StreamFrame? {
        var specVersion: String?
        var type: String?
        var shared = SharedMembers()
        let valid = readObject { reader, name in
            switch name {
            case "specVersion":
                guard specVersion == nil, let value = reader.string() else { return false }
                specVersion = value
            case "type":
                guard type == nil, let value = reader.string() else { return false }
                type = value
            default:
                return reader.sharedMember(name, into: &shared)
            }
            return true
        }
        guard valid, let type, let headers = shared.headers else { return nil }
        return StreamFrame(specVersion: specVersion ?? "1.0", kind: .init(wireValue: type), headers: headers, data: shared.data ?? "")
    }

    /// The members frames and acks have in common: `headers`, an object of strings, and `data`,
    /// a string or null.
    private struct SharedMembers {
        var headers: [String: String]?
        var data: String?
        var sawData = false
    }

    /// Reads member `name`'s value into `shared` when it is one of them, else skips it; false
    /// when the value is not what the fast path takes.
    private mutating func sharedMember(_ name: String, into shared: inout SharedMembers) -> Bool {
        switch name {
        case "headers":
            guard shared.headers == nil, let value = stringObject() else { return false }
            shared.headers = value
        case "data":
            guard !shared.sawData else { return false }
            shared.sawData = true
            if !literal("null") {
                guard let value = string() else { return false }
                shared.data = value
            }
        default:
            return skipValue(depth: 0)
        }
        return true
    }

    /// Reads the top-level object to its end, `member` reading each member's value; false for
    /// invalid JSON, anything after the object, or a member `member` refused.
    private mutating func readObject(_ member: (inout FastFrameReader, String) -> Bool) -> Bool {
        guard beginObject() else { return false }
        while true {
            switch nextMember() {
            case .invalid: return false
            case .end: return index == bytes.count
            case .member(let name): guard member(&self, name) else { return false }
            }
        }
    }

    private mutating func stringObject() -> [String: String]? {
        guard take(UInt8(ascii: "{")) else { return nil }
        var result: [String: String] = [:]
        skipSpace()
        if take(UInt8(ascii: "}")) { return result }
        repeat {
            skipSpace()
            guard let name = string() else { return nil }
            skipSpace()
            guard take(UInt8(ascii: ":")) else { return nil }
            skipSpace()
            guard let value = string(), result.updateValue(value, forKey: name) == nil else { return nil }
            skipSpace()
        } while take(UInt8(ascii: ","))
        return take(UInt8(ascii: "}")) ? result : nil
    }

    /// A string literal at `index`, unescaped; nil when there is none or it is invalid.
    private mutating func string() -> String? {
        guard take(UInt8(ascii: "\"")) else { return nil }
        let start = index
        // The common case: nothing escaped, copied straight from the buffer.
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") {
                defer { index += 1 }
                let text = UnsafeBufferPointer(rebasing: bytes[start..<index])
                if knownUTF8 { return String(decoding: text, as: UTF8.self) }
                return String(validating: text, as: UTF8.self)
            }
            if byte == UInt8(ascii: "\\") { break }
            if byte < 0x20 { return nil }
            index += 1
        }
        if knownUTF8 { return unescapedString(from: start) }
        var out = Array(bytes[start..<index])
        while index < bytes.count {
            let byte = bytes[index]
            index += 1
            switch byte {
            case UInt8(ascii: "\""):
                return String(validating: out, as: UTF8.self)
            case UInt8(ascii: "\\"):
                guard index < bytes.count else { return nil }
                let escape = bytes[index]
                index += 1
                switch escape {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(escape)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    guard var scalar = hex4() else { return nil }
                    if (0xD800..<0xDC00).contains(scalar) {
                        guard take(UInt8(ascii: "\\")), take(UInt8(ascii: "u")), let low = hex4(), (0xDC00..<0xE000).contains(low)
                        else { return nil }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    }
                    guard let unicode = Unicode.Scalar(scalar) else { return nil }
                    out.append(contentsOf: UTF8.encode(unicode)!)
                default: return nil
                }
            default:
                if byte < 0x20 { return nil }
                out.append(byte)
            }
        }
        return nil
    }

    /// The rest of a string literal of valid UTF-8 that began at `start` and has an escape at
    /// `index`, unescaped straight into the string's storage: its end is found (and its escapes
    /// checked) first, and unescaping never lengthens it, so that length is the capacity.
    private mutating func unescapedString(from start: Int) -> String? {
        index = start - 1
        guard skipString() else { return nil }
        let end = index - 1
        let source = bytes
        return String(unsafeUninitializedCapacity: end - start) { out in
            var read = start
            var written = 0
            func put(_ byte: UInt8) {
                out[written] = byte
                written += 1
            }
            func hex4(at offset: Int) -> UInt32 {
                var value: UInt32 = 0
                for byte in source[offset..<offset + 4] {
                    let digit: UInt8
                    switch byte {
                    case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
                    case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
                    default: digit = byte - UInt8(ascii: "A") + 10
                    }
                    value = value << 4 | UInt32(digit)
                }
                return value
            }
            while read < end {
                let byte = source[read]
                read += 1
                guard byte == UInt8(ascii: "\\") else {
                    put(byte)
                    continue
                }
                let escape = source[read]
                read += 1
                switch escape {
                case UInt8(ascii: "b"): put(0x08)
                case UInt8(ascii: "f"): put(0x0C)
                case UInt8(ascii: "n"): put(0x0A)
                case UInt8(ascii: "r"): put(0x0D)
                case UInt8(ascii: "t"): put(0x09)
                case UInt8(ascii: "u"):
                    // skipString let only valid escapes and whole surrogate pairs through.
                    var scalar = hex4(at: read)
                    read += 4
                    if (0xD800..<0xDC00).contains(scalar) {
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (hex4(at: read + 2) - 0xDC00)
                        read += 6
                    }
                    for unit in UTF8.encode(Unicode.Scalar(scalar)!)! { put(unit) }
                default: put(escape)  // \" \\ \/
                }
            }
            return written
        }
    }

    /// Moves past a string literal whose bytes are valid UTF-8, checking only its escapes.
    private mutating func skipString() -> Bool {
        guard take(UInt8(ascii: "\"")) else { return false }
        while index < bytes.count {
            let byte = bytes[index]
            index += 1
            switch byte {
            case UInt8(ascii: "\""):
                return true
            case UInt8(ascii: "\\"):
                guard index < bytes.count else { return false }
                let escape = bytes[index]
                index += 1
                switch escape {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
                    UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                    continue
                case UInt8(ascii: "u"):
                    // Lone surrogates are left to the general path, as `string()` does.
                    guard let scalar = hex4() else { return false }
                    if (0xD800..<0xDC00).contains(scalar) {
                        guard take(UInt8(ascii: "\\")), take(UInt8(ascii: "u")), let low = hex4(), (0xDC00..<0xE000).contains(low)
                        else { return false }
                    } else if (0xDC00..<0xE000).contains(scalar) {
                        return false
                    }
                default: return false
                }
            default:
                if byte < 0x20 { return false }
            }
        }
        return false
    }

    private mutating func hex4() -> UInt32? {
        guard index + 4 <= bytes.count else { return nil }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let byte = bytes[index]
            index += 1
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: return nil
            }
            value = value << 4 | UInt32(digit)
        }
        return value
    }

    /// Moves past one valid JSON value; false when it is not one (or nests absurdly deep).
    private mutating func skipValue(depth: Int) -> Bool {
        guard depth < 64, index < bytes.count else { return false }
        switch bytes[index] {
        case UInt8(ascii: "\""):
            return knownUTF8 ? skipString() : string() != nil
        case UInt8(ascii: "{"):
            index += 1
            skipSpace()
            if take(UInt8(ascii: "}")) { return true }
            repeat {
                skipSpace()
                guard string() != nil else { return false }
                skipSpace()
                guard take(UInt8(ascii: ":")) else { return false }
                skipSpace()
                guard skipValue(depth: depth + 1) else { return false }
                skipSpace()
            } while take(UInt8(ascii: ","))
            return take(UInt8(ascii: "}"))
        case UInt8(ascii: "["):
            index += 1
            skipSpace()
            if take(UInt8(ascii: "]")) { return true }
            repeat {
                skipSpace()
                guard skipValue(depth: depth + 1) else { return false }
                skipSpace()
            } while take(UInt8(ascii: ","))
            return take(UInt8(ascii: "]"))
        case UInt8(ascii: "t"): return literal("true")
        case UInt8(ascii: "f"): return literal("false")
        case UInt8(ascii: "n"): return literal("null")
        default: return number()
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    private mutating func number() -> Bool {
        _ = take(UInt8(ascii: "-"))
        if take(UInt8(ascii: "0")) {
        } else {
            guard index < bytes.count, (UInt8(ascii: "1")...UInt8(ascii: "9")).contains(bytes[index]) else { return false }
            skipDigits()
        }
        if take(UInt8(ascii: ".")) {
            guard digitsFollow() else { return false }
            skipDigits()
        }
        if take(UInt8(ascii: "e")) || take(UInt8(ascii: "E")) {
            if !take(UInt8(ascii: "+")) { _ = take(UInt8(ascii: "-")) }
            guard digitsFollow() else { return false }
            skipDigits()
        }
        return true
    }

    private func digitsFollow() -> Bool {
        index < bytes.count && (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index])
    }

    private mutating func skipDigits() {
        while digitsFollow() { index += 1 }
    }

    private mutating func literal(_ word: StaticString) -> Bool {
        let count = word.utf8CodeUnitCount
        guard index + count <= bytes.count else { return false }
        let matches = word.withUTF8Buffer { $0.elementsEqual(bytes[index..<index + count]) }
        if matches { index += count }
        return matches
    }

    private mutating func take(_ byte: UInt8) -> Bool {
        guard index < bytes.count, bytes[index] == byte else { return false }
        index += 1
        return true
    }

    private mutating func skipSpace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x0A, 0x0D, 0x09: index += 1
            default: return
            }
        }
    }
}

/// An ack as the server reads it: its code, its headers, and its `data` when that is a string.
public struct ReceivedAck: Sendable, Equatable {
    public var code: Int
    public var headers: [String: String]
    public var data: String?
}

extension StreamAck {
    /// Reads an ack of the usual shape (`code` an integer, `headers` an object of strings, `data`
    /// a string or null, any other member a valid JSON value) in one pass; nil for anything
    /// else, which the reader then parses the general way. For the simulator, which reads every
    /// ack of a burst: JSONSerialization took most of its time there.
    public static func decodeReceived<Bytes: Collection<UInt8>>(_ bytes: Bytes) -> ReceivedAck? {
        bytes.withContiguousStorageIfAvailable { FastFrameReader.decodeAck($0) } ?? nil
    }
}

extension FastFrameReader {
    static func decodeAck(_ bytes: UnsafeBufferPointer<UInt8>) -> ReceivedAck? {
        read(bytes) { $0.ack() }
    }

    private mutating func ack() -> ReceivedAck? {
        var code: Int?
        var shared = SharedMembers()
        let valid = readObject { reader, name in
            guard name == "code" else { return reader.sharedMember(name, into: &shared) }
            guard code == nil, let value = reader.integer() else { return false }
            code = value
            return true
        }
        guard valid, let code, let headers = shared.headers else { return nil }
        return ReceivedAck(code: code, headers: headers, data: shared.data)
    }

    /// A JSON integer of at most 18 digits; nil for anything else (a fraction, an exponent).
    private mutating func integer() -> Int? {
        let negative = take(UInt8(ascii: "-"))
        let start = index
        var value = 0
        while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) {
            value = value * 10 + Int(bytes[index] - UInt8(ascii: "0"))
            index += 1
        }
        let digits = index - start
        guard digits > 0, digits <= 18, digits == 1 || bytes[start] != UInt8(ascii: "0") else { return nil }
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") || bytes[index] | 0x20 == UInt8(ascii: "e") { return nil }
        return negative ? -value : value
    }
}

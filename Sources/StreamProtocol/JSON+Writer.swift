import Foundation

/// The project's JSON writer: object members in the order of their names' UTF-8 bytes (Unicode
/// scalar order, what Python's `sort_keys` gives), so the same value always gives the same bytes.
/// JSONSerialization's `.sortedKeys` compares names through ICU's collator in a locale instead,
/// which loads the collator and ICU's locale data into every process that writes a status file
/// or a registration body.
extension JSON {
    /// `value` as JSON text; nil when it holds something JSON cannot say (a non-finite number, a
    /// dictionary whose keys are not strings, a value of another type). `pretty` indents by two
    /// spaces and writes `"name" : value`, as JSONSerialization's `.prettyPrinted` does.
    public static func text(_ value: Any, pretty: Bool = false) -> String? {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        guard append(value, to: &out, indent: pretty ? 0 : nil) else { return nil }
        return String(decoding: out, as: UTF8.self)
    }

    /// `text(value)` as bytes, `{}` when it cannot be written.
    public static func data(_ value: Any) -> Data {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        return append(value, to: &out) ? Data(out) : Data("{}".utf8)
    }

    /// Appends `value`'s JSON to `out`; false (with `out` partly written) when it cannot be.
    /// `indent` is the current depth when pretty-printing, nil for compact output.
    public static func append(_ value: Any, to out: inout [UInt8], indent: Int? = nil) -> Bool {
        // Exact types first: on Linux an NSNumber also casts to Bool and Int, and an Int to NSNumber.
        let dynamicType = type(of: value)
        if dynamicType == Bool.self, let flag = value as? Bool {
            out.append(contentsOf: (flag ? "true" : "false").utf8)
            return true
        }
        if dynamicType is NSNumber.Type, let number = value as? NSNumber {
            return appendNumber(number, to: &out)
        }
        switch value {
        case let string as String:
            appendQuoted(string, to: &out)
        case let integer as any BinaryInteger:
            out.append(contentsOf: String(describing: integer).utf8)
        case let double as Double:
            guard double.isFinite else { return false }
            appendFloat(double.description, to: &out)
        case let float as Float:
            guard float.isFinite else { return false }
            appendFloat(float.description, to: &out)
        case is NSNull:
            out.append(contentsOf: "null".utf8)
        case let object as [String: Any]:
            return appendObject(object, to: &out, indent: indent)
        case let array as [Any]:
            return appendArray(array, to: &out, indent: indent)
        default:
            // An optional stored in an `Any` (a dictionary literal's `String?` member).
            let mirror = Mirror(reflecting: value)
            guard mirror.displayStyle == .optional else { return false }
            guard let wrapped = mirror.children.first?.value else {
                out.append(contentsOf: "null".utf8)
                return true
            }
            return append(wrapped, to: &out, indent: indent)
        }
        return true
    }

    /// Appends `text` as a JSON string literal: quotes, backslashes and control characters
    /// escaped, everything else (slashes, non-ASCII) as it is. On the ack path (every spool
    /// entry's strings, every ack) and the simulator's frames: text with nothing to escape is
    /// copied whole, and a native string's bytes are scanned in place rather than through the
    /// UTF-8 view's indices (which took most of this function's time).
    public static func appendQuoted(_ text: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        let copied: Void? = text.utf8.withContiguousStorageIfAvailable { bytes in appendEscaped(bytes, to: &out) }
        if copied == nil { appendEscaped(Array(text.utf8), to: &out) }
        out.append(UInt8(ascii: "\""))
    }

    /// Copies the runs between characters that need escaping whole: a frame's `data` (JSON
    /// inside a JSON string) has a quote every few bytes, and appending byte by byte was most of
    /// the cost of writing it.
    private static func appendEscaped<Bytes: Collection<UInt8>>(_ bytes: Bytes, to out: inout [UInt8]) {
        out.reserveCapacity(out.count + bytes.count + 2)
        var runStart = bytes.startIndex
        var index = bytes.startIndex
        while index != bytes.endIndex {
            let byte = bytes[index]
            if byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") {
                out.append(contentsOf: bytes[runStart..<index])
                switch byte {
                case UInt8(ascii: "\""): out.append(contentsOf: #"\""#.utf8)
                case UInt8(ascii: "\\"): out.append(contentsOf: #"\\"#.utf8)
                case 0x0A: out.append(contentsOf: #"\n"#.utf8)
                case 0x0D: out.append(contentsOf: #"\r"#.utf8)
                case 0x09: out.append(contentsOf: #"\t"#.utf8)
                default:
                    out.append(contentsOf: #"\u00"#.utf8)
                    out.append(hexDigits[Int(byte >> 4)])
                    out.append(hexDigits[Int(byte & 0xF)])
                }
                runStart = bytes.index(after: index)
            }
            index = bytes.index(after: index)
        }
        out.append(contentsOf: bytes[runStart..<bytes.endIndex])
    }

    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    private static func appendNumber(_ number: NSNumber, to out: inout [UInt8]) -> Bool {
        switch UInt8(bitPattern: number.objCType.pointee) {
        case UInt8(ascii: "c"), UInt8(ascii: "B"):
            out.append(contentsOf: (number.boolValue ? "true" : "false").utf8)
        case UInt8(ascii: "d"), UInt8(ascii: "f"):
            guard number.doubleValue.isFinite else { return false }
            appendFloat(number.doubleValue.description, to: &out)
        default:
            out.append(contentsOf: number.stringValue.utf8)
        }
        return true
    }

    /// A whole number written by Swift as `12.0` goes out as `12`, as JSONSerialization writes it.
    private static func appendFloat(_ description: String, to out: inout [UInt8]) {
        out.append(contentsOf: description.hasSuffix(".0") ? description.utf8.dropLast(2) : description.utf8[...])
    }

    private static func appendObject(_ object: [String: Any], to out: inout [UInt8], indent: Int?) -> Bool {
        let members = object.sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
        out.append(UInt8(ascii: "{"))
        for (index, member) in members.enumerated() {
            if index > 0 { out.append(UInt8(ascii: ",")) }
            newline(to: &out, indent: indent.map { $0 + 1 })
            appendQuoted(member.key, to: &out)
            out.append(contentsOf: (indent == nil ? ":" : " : ").utf8)
            guard append(member.value, to: &out, indent: indent.map { $0 + 1 }) else { return false }
        }
        if !members.isEmpty { newline(to: &out, indent: indent) }
        out.append(UInt8(ascii: "}"))
        return true
    }

    private static func appendArray(_ array: [Any], to out: inout [UInt8], indent: Int?) -> Bool {
        out.append(UInt8(ascii: "["))
        for (index, element) in array.enumerated() {
            if index > 0 { out.append(UInt8(ascii: ",")) }
            newline(to: &out, indent: indent.map { $0 + 1 })
            guard append(element, to: &out, indent: indent.map { $0 + 1 }) else { return false }
        }
        if !array.isEmpty { newline(to: &out, indent: indent) }
        out.append(UInt8(ascii: "]"))
        return true
    }

    private static func newline(to out: inout [UInt8], indent: Int?) {
        guard let indent else { return }
        out.append(0x0A)
        out.append(contentsOf: repeatElement(UInt8(ascii: " "), count: 2 * indent))
    }
}

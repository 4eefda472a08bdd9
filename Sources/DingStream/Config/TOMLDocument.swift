import Foundation

/// A small TOML reader that keeps the line of every key, so configuration errors can name it.
///
/// It reads the part of TOML a daemon configuration needs: comments, `[table]`, `[a.b]`,
/// `[[array]]`, bare and quoted keys, basic and literal strings, decimal integers, floats,
/// booleans and (multi-line) arrays. Anything else (multi-line strings, inline tables,
/// hexadecimal numbers, dates) is an error naming the line and saying it is not supported.
struct TOMLDocument {
    indirect enum Value {
        case string(String)
        case integer(Int64)
        case float(Double)
        case boolean(Bool)
        case array([Value])
        case table(Table)
        case tableArray([Table])

        var typeName: String {
            switch self {
            case .string: "a string"
            case .integer: "an integer"
            case .float: "a number"
            case .boolean: "a boolean"
            case .array: "an array"
            case .table: "a table"
            case .tableArray: "an array of tables"
            }
        }
    }

    struct Entry {
        var value: Value
        var line: Int
    }

    /// Keys in file order, each with the line it was defined on.
    struct Table {
        var name: String
        var line: Int
        var keys: [String] = []
        var entries: [String: Entry] = [:]

        subscript(key: String) -> Entry? { entries[key] }

        mutating func set(_ key: String, _ entry: Entry) {
            if entries[key] == nil { keys.append(key) }
            entries[key] = entry
        }

        /// Changes the value of `key` (an existing one, or nil) in place. The entry is out of the
        /// dictionary while `body` runs, so a table or array inside it is not copied: one key or
        /// one `[[app]]` costs the same in a file of ten apps as in one of ten thousand.
        mutating func update(
            _ key: String, line: Int, _ body: (inout Value?) throws(ParseError) -> Void
        ) throws(ParseError) {
            var taken = entries.removeValue(forKey: key)
            var value = taken?.value
            // Drop the entry's own reference, so that `value` is the only one.
            taken?.value = .boolean(false)
            try body(&value)
            guard let value else { return }
            if taken == nil { keys.append(key) }
            entries[key] = Entry(value: value, line: taken?.line ?? line)
        }
    }

    struct ParseError: Error {
        var line: Int
        var message: String
    }

    var root: Table

    init(parsing text: String) throws(ParseError) {
        var parser = Parser(text: text)
        root = try parser.parseDocument()
    }
}

private struct Parser {
    private let bytes: [UInt8]
    private var index = 0
    private var line = 1
    /// Arrays open around the value being read: bounded, so that `[[[[…` cannot exhaust the stack.
    private var arrayDepth = 0
    private static let maximumArrayDepth = 32

    init(text: String) {
        bytes = Array(text.utf8)
    }

    // The path of the table the following keys go to; for arrays of tables, the last element.
    private enum Segment {
        case key(String)
        case lastElement(String)
    }

    mutating func parseDocument() throws(TOMLDocument.ParseError) -> TOMLDocument.Table {
        var root = TOMLDocument.Table(name: "", line: 0)
        var current: [Segment] = []
        var currentName = ""
        var definedTables: Set<String> = []
        while true {
            try skipWhitespaceAndNewlinesAndComments()
            guard let byte = peek() else { break }
            if byte == UInt8(ascii: "[") {
                let tableLine = line
                let isArray = peek(offset: 1) == UInt8(ascii: "[")
                index += isArray ? 2 : 1
                skipSpaces()
                let path = try parseKeyPath()
                skipSpaces()
                try expect("]")
                if isArray { try expect("]") }
                try endOfLine()
                let name = path.joined(separator: ".")
                if isArray {
                    try Self.modify(&root, path: path.dropLast().map { .key($0) }, line: tableLine) { table throws(TOMLDocument.ParseError) in
                        let key = path[path.count - 1]
                        let definedOn = table[key]?.line
                        try table.update(key, line: tableLine) { value throws(TOMLDocument.ParseError) in
                            var list: [TOMLDocument.Table] = []
                            if let existing = value {
                                guard case .tableArray(let tables) = existing else {
                                    throw TOMLDocument.ParseError(line: tableLine, message: "\"\(name)\" is already defined on line \(definedOn ?? 0) as \(existing.typeName)")
                                }
                                list = tables
                                value = nil
                            }
                            list.append(TOMLDocument.Table(name: name, line: tableLine))
                            value = .tableArray(list)
                        }
                    }
                    current = path.dropLast().map { .key($0) } + [.lastElement(path[path.count - 1])]
                } else {
                    guard !definedTables.contains(name) else {
                        throw TOMLDocument.ParseError(line: tableLine, message: "table [\(name)] is defined twice")
                    }
                    definedTables.insert(name)
                    try Self.modify(&root, path: path.map { .key($0) }, line: tableLine) { _ throws(TOMLDocument.ParseError) in }
                    current = path.map { .key($0) }
                }
                currentName = name
                continue
            }
            let keyLine = line
            let path = try parseKeyPath()
            skipSpaces()
            try expect("=")
            skipSpaces()
            let value = try parseValue()
            try endOfLine()
            let tableName = currentName
            try Self.modify(&root, path: current + path.dropLast().map { .key($0) }, line: keyLine) { table throws(TOMLDocument.ParseError) in
                let key = path[path.count - 1]
                if let existing = table[key] {
                    let place = tableName.isEmpty ? "" : " in [\(tableName)]"
                    throw TOMLDocument.ParseError(line: keyLine, message: "key \"\(key)\"\(place) is already set on line \(existing.line)")
                }
                table.set(key, .init(value: value, line: keyLine))
            }
        }
        return root
    }

    private static func modify(
        _ table: inout TOMLDocument.Table, path: some Collection<Segment>, line: Int,
        _ body: (inout TOMLDocument.Table) throws(TOMLDocument.ParseError) -> Void
    ) throws(TOMLDocument.ParseError) {
        guard let first = path.first else {
            try body(&table)
            return
        }
        let rest = path.dropFirst()
        switch first {
        case .key(let key):
            let definedOn = table[key]?.line
            let name = table.name.isEmpty ? key : "\(table.name).\(key)"
            try table.update(key, line: line) { value throws(TOMLDocument.ParseError) in
                var child = TOMLDocument.Table(name: name, line: line)
                if let existing = value {
                    guard case .table(let existingTable) = existing else {
                        throw TOMLDocument.ParseError(line: line, message: "\"\(key)\" is \(existing.typeName) (line \(definedOn ?? 0)), not a table")
                    }
                    child = existingTable
                    value = nil
                }
                try modify(&child, path: rest, line: line, body)
                value = .table(child)
            }
        case .lastElement(let key):
            try table.update(key, line: line) { value throws(TOMLDocument.ParseError) in
                guard case .tableArray(var list) = value, !list.isEmpty else {
                    throw TOMLDocument.ParseError(line: line, message: "internal: missing array of tables \"\(key)\"")
                }
                value = nil
                try modify(&list[list.count - 1], path: rest, line: line, body)
                value = .tableArray(list)
            }
        }
    }

    // MARK: Lexing

    private func peek(offset: Int = 0) -> UInt8? {
        index + offset < bytes.count ? bytes[index + offset] : nil
    }

    private mutating func skipSpaces() {
        while let byte = peek(), byte == 0x20 || byte == 0x09 { index += 1 }
    }

    private mutating func skipComment() throws(TOMLDocument.ParseError) {
        if peek() == UInt8(ascii: "#") {
            while let byte = peek(), byte != 0x0A {
                if byte != 0x0D { try refuseControl(byte, in: "a comment") }
                index += 1
            }
        }
    }

    /// TOML allows no control character but tab in strings and comments. A NUL would also cut a
    /// path short when it reaches the C library, so it is refused here, naming the line.
    private func refuseControl(_ byte: UInt8, in place: String) throws(TOMLDocument.ParseError) {
        guard byte < 0x20 && byte != 0x09 || byte == 0x7F else { return }
        let hex = String(byte, radix: 16, uppercase: true)
        let code = "U+" + String(repeating: "0", count: 4 - hex.count) + hex
        throw error("\(place) holds the control character \(code), which TOML does not allow; remove it (in a \"string\" write \\t or \\n instead)")
    }

    private mutating func skipWhitespaceAndNewlinesAndComments() throws(TOMLDocument.ParseError) {
        while let byte = peek() {
            switch byte {
            case 0x20, 0x09, 0x0D: index += 1
            case 0x0A:
                index += 1
                line += 1
            case UInt8(ascii: "#"): try skipComment()
            default: return
            }
        }
    }

    private mutating func expect(_ character: Character) throws(TOMLDocument.ParseError) {
        guard let byte = peek(), let ascii = character.asciiValue, byte == ascii else {
            throw error("expected \"\(character)\" \(found())")
        }
        index += 1
    }

    private mutating func endOfLine() throws(TOMLDocument.ParseError) {
        skipSpaces()
        try skipComment()
        if peek() == 0x0D { index += 1 }
        guard let byte = peek() else { return }
        guard byte == 0x0A else { throw error("unexpected text after the value \(found())") }
        index += 1
        line += 1
    }

    private func found() -> String {
        guard let byte = peek() else { return "but the file ended" }
        if byte == 0x0A { return "but the line ended" }
        var end = index
        while end < bytes.count, end - index < 20, bytes[end] != 0x0A { end += 1 }
        return "at \"\(String(decoding: bytes[index..<end], as: UTF8.self))\""
    }

    private func error(_ message: String) -> TOMLDocument.ParseError {
        TOMLDocument.ParseError(line: line, message: message)
    }

    private static func isBareKey(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"), UInt8(ascii: "-"):
            true
        default: false
        }
    }

    private mutating func parseKeyPath() throws(TOMLDocument.ParseError) -> [String] {
        var path: [String] = []
        while true {
            skipSpaces()
            guard let byte = peek() else { throw error("expected a key \(found())") }
            if byte == UInt8(ascii: "\"") {
                path.append(try parseBasicString())
            } else if byte == UInt8(ascii: "'") {
                path.append(try parseLiteralString())
            } else {
                let start = index
                while let next = peek(), Self.isBareKey(next) { index += 1 }
                guard index > start else { throw error("expected a key \(found())") }
                path.append(String(decoding: bytes[start..<index], as: UTF8.self))
            }
            skipSpaces()
            guard peek() == UInt8(ascii: ".") else { return path }
            index += 1
        }
    }

    private mutating func parseValue() throws(TOMLDocument.ParseError) -> TOMLDocument.Value {
        guard let byte = peek() else { throw error("expected a value \(found())") }
        switch byte {
        case UInt8(ascii: "\""):
            if peek(offset: 1) == UInt8(ascii: "\""), peek(offset: 2) == UInt8(ascii: "\"") {
                throw error("multi-line strings are not supported; write the value on one line")
            }
            return .string(try parseBasicString())
        case UInt8(ascii: "'"):
            if peek(offset: 1) == UInt8(ascii: "'"), peek(offset: 2) == UInt8(ascii: "'") {
                throw error("multi-line literal strings ('''…''') are not supported; write the value on one line")
            }
            return .string(try parseLiteralString())
        case UInt8(ascii: "["):
            return try parseArray()
        case UInt8(ascii: "{"):
            throw error("inline tables are not supported; use a [table] section")
        case UInt8(ascii: "t"), UInt8(ascii: "f"):
            let start = index
            while let next = peek(), Self.isBareKey(next) { index += 1 }
            switch String(decoding: bytes[start..<index], as: UTF8.self) {
            case "true": return .boolean(true)
            case "false": return .boolean(false)
            case let word: throw error("\"\(word)\" is not a value; quote strings: \"\(word)\"")
            }
        default:
            return try parseNumber()
        }
    }

    private mutating func parseNumber() throws(TOMLDocument.ParseError) -> TOMLDocument.Value {
        let start = index
        // ":" belongs to a time: read on, so that one is named as such, not taken for a string.
        while let next = peek(), Self.isBareKey(next) || next == UInt8(ascii: "+") || next == UInt8(ascii: ".") || next == UInt8(ascii: ":") {
            index += 1
        }
        let raw = String(decoding: bytes[start..<index], as: UTF8.self)
        let digits = raw.replacingUnderscores()
        if let integer = Int64(digits) { return .integer(integer) }
        if digits.contains("."), let float = Double(digits) { return .float(float) }
        if raw.isEmpty { throw error("expected a value \(found())") }
        if let unsupported = Self.unsupportedNumber(raw, digits: digits) { throw error(unsupported) }
        throw error("\"\(raw)\" is not a value; quote strings: \"\(raw)\"")
    }

    /// Why `raw`, which looks like a number or a date, is not read: nil when it does not look like one.
    private static func unsupportedNumber(_ raw: String, digits: String) -> String? {
        let unsigned = digits.hasPrefix("-") || digits.hasPrefix("+") ? String(digits.dropFirst()) : digits
        if ["0x", "0o", "0b"].contains(where: { unsigned.hasPrefix($0) }) {
            return "\"\(raw)\": hexadecimal, octal and binary numbers are not supported; write the number in decimal"
        }
        if !unsigned.isEmpty, unsigned.allSatisfy({ ("0"..."9").contains($0) }) {
            return "\"\(raw)\" is beyond the range of a 64-bit integer; no setting takes a number this large"
        }
        if startsLikeDateOrTime(raw) {
            return "\"\(raw)\": dates and times are not supported (durations are strings such as \"90s\")"
        }
        if ["inf", "nan"].contains(unsigned) {
            return "\"\(raw)\": inf and nan are not supported; write a finite number"
        }
        return nil
    }

    /// `1979-05-27…` or `07:32…`: the start of a TOML date or time.
    private static func startsLikeDateOrTime(_ raw: String) -> Bool {
        func matches(_ shape: String) -> Bool {
            raw.utf8.count >= shape.utf8.count
                && zip(raw.utf8, shape.utf8).allSatisfy { byte, expected in
                    expected == UInt8(ascii: "d") ? (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) : byte == expected
                }
        }
        return matches("dddd-dd-dd") || matches("dd:dd")
    }

    private mutating func parseArray() throws(TOMLDocument.ParseError) -> TOMLDocument.Value {
        guard arrayDepth < Self.maximumArrayDepth else {
            throw error("arrays nested more than \(Self.maximumArrayDepth) deep; no setting takes more than one level")
        }
        arrayDepth += 1
        defer { arrayDepth -= 1 }
        index += 1
        var items: [TOMLDocument.Value] = []
        while true {
            try skipWhitespaceAndNewlinesAndComments()
            if peek() == UInt8(ascii: "]") {
                index += 1
                return .array(items)
            }
            items.append(try parseValue())
            try skipWhitespaceAndNewlinesAndComments()
            if peek() == UInt8(ascii: ",") {
                index += 1
                continue
            }
            guard peek() == UInt8(ascii: "]") else { throw error("expected \",\" or \"]\" in the array \(found())") }
        }
    }

    private mutating func parseLiteralString() throws(TOMLDocument.ParseError) -> String {
        index += 1
        let start = index
        while let byte = peek(), byte != UInt8(ascii: "'") {
            guard byte != 0x0A else { throw error("the string is not closed on this line") }
            try refuseControl(byte, in: "the string")
            index += 1
        }
        guard peek() != nil else { throw error("the string is not closed") }
        let value = String(decoding: bytes[start..<index], as: UTF8.self)
        index += 1
        return value
    }

    private mutating func parseBasicString() throws(TOMLDocument.ParseError) -> String {
        index += 1
        var result: [UInt8] = []
        while true {
            guard let byte = peek() else { throw error("the string is not closed") }
            guard byte != 0x0A else { throw error("the string is not closed on this line") }
            try refuseControl(byte, in: "the string")
            index += 1
            if byte == UInt8(ascii: "\"") { break }
            guard byte == UInt8(ascii: "\\") else {
                result.append(byte)
                continue
            }
            guard let escaped = peek() else { throw error("the string is not closed") }
            index += 1
            switch escaped {
            case UInt8(ascii: "n"): result.append(0x0A)
            case UInt8(ascii: "t"): result.append(0x09)
            case UInt8(ascii: "r"): result.append(0x0D)
            case UInt8(ascii: "\""): result.append(UInt8(ascii: "\""))
            case UInt8(ascii: "\\"): result.append(UInt8(ascii: "\\"))
            case UInt8(ascii: "u"), UInt8(ascii: "U"):
                let length = escaped == UInt8(ascii: "u") ? 4 : 8
                guard index + length <= bytes.count,
                    let code = UInt32(String(decoding: bytes[index..<index + length], as: UTF8.self), radix: 16),
                    let scalar = Unicode.Scalar(code)
                else { throw error("invalid unicode escape in the string") }
                // TOML allows an escaped NUL, but no value here may hold one: paths and ids go to C.
                guard code != 0 else { throw error("the string holds \\u0000 (NUL), which no configuration value may contain; remove it") }
                index += length
                result.append(contentsOf: Array(String(Character(scalar)).utf8))
            default:
                throw error("unknown escape \"\\\(Character(Unicode.Scalar(escaped)))\" in the string")
            }
        }
        return String(decoding: result, as: UTF8.self)
    }
}

extension String {
    fileprivate func replacingUnderscores() -> String {
        String(self.filter { $0 != "_" })
    }
}

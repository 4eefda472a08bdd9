import Foundation

extension ReplyMessage {
    /// The default size of one text part: well under the OpenAPI's 15,000-byte `msgParam` even
    /// when JSON escaping doubles some bytes.
    public static let defaultPartBytes = 5_000

    /// The most messages one reply becomes. A handler printing 1 MB made 210 chat messages; a
    /// chat is no place for that, so the rest is cut with a notice the reader sees.
    public static let defaultMaxParts = 5

    /// Splits a long text or markdown message into parts of at most `maxBytes` UTF-8 bytes each,
    /// in order: at paragraph breaks first, then line breaks, then between characters as a last
    /// resort (never inside a UTF-8 sequence). Parts that would be only whitespace are dropped.
    /// Of more than `maxParts` parts the first are kept and the last kept one ends with a
    /// notice of how many bytes were cut (see `cutBytes`). Markdown parts keep the title.
    /// Links, action cards and raw bodies are never split.
    public func split(maxBytes: Int = ReplyMessage.defaultPartBytes, maxParts: Int = ReplyMessage.defaultMaxParts) -> [ReplyMessage] {
        switch self {
        case .text(let content):
            return Self.capped(Self.splitText(content, maxBytes: maxBytes), maxParts: maxParts, maxBytes: maxBytes).map { .text($0) }
        case .markdown(let title, let text):
            return Self.capped(Self.splitText(text, maxBytes: maxBytes), maxParts: maxParts, maxBytes: maxBytes).map {
                .markdown(title: title, text: $0)
            }
        case .link, .actionCard, .raw:
            return [self]
        }
    }

    /// The number of bytes cut from the reply this part ends, read from its notice; nil when
    /// nothing was cut.
    public var cutBytes: Int? {
        let content: String
        switch self {
        case .text(let text), .markdown(_, let text): content = text
        case .link, .actionCard, .raw: return nil
        }
        guard content.hasSuffix(Self.cutNoticeEnd), let start = content.range(of: Self.cutNoticeStart, options: .backwards) else { return nil }
        let number = content[start.upperBound...].prefix { $0.isASCII && $0.isNumber }
        return Int(number)
    }

    private static let cutNoticeStart = "\n\n[… "
    private static let cutNoticeEnd = " more bytes cut: a reply is at most this long]"

    private static func cutNotice(_ bytes: Int) -> String { cutNoticeStart + "\(bytes)" + cutNoticeEnd }

    /// The first `maxParts` of `parts`, the last one shortened so that it still fits `maxBytes`
    /// with the notice of what was cut.
    static func capped(_ parts: [String], maxParts: Int, maxBytes: Int) -> [String] {
        let keep = max(maxParts, 1)
        guard parts.count > keep else { return parts }
        var kept = Array(parts.prefix(keep))
        var last = kept.removeLast()
        var cut = parts.dropFirst(keep).reduce(0) { $0 + $1.utf8.count }
        while !last.isEmpty, last.utf8.count + cutNotice(cut).utf8.count > maxBytes {
            cut += last.removeLast().utf8.count
        }
        kept.append(last + cutNotice(cut))
        return kept
    }

    static func splitText(_ text: String, maxBytes: Int) -> [String] {
        // One Unicode scalar takes up to 4 bytes; a smaller limit could not make progress.
        let limit = max(maxBytes, 4)
        if text.utf8.count <= limit { return [text] }
        let parts = pack(text, separators: ["\n\n", "\n"], limit: limit)
        let kept = parts.filter { !$0.allSatisfy(\.isWhitespace) }
        return kept.isEmpty ? [text] : kept
    }

    /// Greedily joins the pieces between `separators.first` while they fit; a piece too long on
    /// its own is split with the next separator (or between characters), and its sub-parts are
    /// taken as they are, so no separator is invented where the text had none.
    private static func pack(_ text: String, separators: ArraySlice<String>, limit: Int) -> [String] {
        if text.utf8.count <= limit { return [text] }
        guard let separator = separators.first else { return hardSplit(text, limit: limit) }
        var parts: [String] = []
        var current: String?
        for piece in text.components(separatedBy: separator) {
            if piece.utf8.count > limit {
                if let current { parts.append(current) }
                var sub = pack(piece, separators: separators.dropFirst(), limit: limit)
                current = sub.popLast()
                parts.append(contentsOf: sub)
            } else if let joined = current, joined.utf8.count + separator.utf8.count + piece.utf8.count <= limit {
                current = joined + separator + piece
            } else {
                if let current { parts.append(current) }
                current = piece
            }
        }
        if let current { parts.append(current) }
        return parts
    }

    /// Splits between characters; a single character longer than `limit` (a huge grapheme
    /// cluster) is split between its scalars.
    private static func hardSplit(_ text: String, limit: Int) -> [String] {
        var parts: [String] = []
        var current = ""
        var currentBytes = 0
        func add(_ piece: String, bytes: Int) {
            if currentBytes + bytes > limit, currentBytes > 0 {
                parts.append(current)
                current = ""
                currentBytes = 0
            }
            current += piece
            currentBytes += bytes
        }
        for character in text {
            let bytes = character.utf8.count
            if bytes <= limit {
                add(String(character), bytes: bytes)
            } else {
                for scalar in character.unicodeScalars {
                    add(String(scalar), bytes: String(scalar).utf8.count)
                }
            }
        }
        if currentBytes > 0 { parts.append(current) }
        return parts
    }
}

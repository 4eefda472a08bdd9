import Foundation

extension ReplyMessage {
    /// The default size of one text part: well under the OpenAPI's 15,000-byte `msgParam` even
    /// when JSON escaping doubles some bytes.
    public static let defaultPartBytes = 5_000

    /// Splits a long text or markdown message into parts of at most `maxBytes` UTF-8 bytes each,
    /// in order: at paragraph breaks first, then line breaks, then between characters as a last
    /// resort (never inside a UTF-8 sequence). Parts that would be only whitespace are dropped.
    /// Markdown parts keep the title. Links, action cards and raw bodies are never split.
    public func split(maxBytes: Int = ReplyMessage.defaultPartBytes) -> [ReplyMessage] {
        switch self {
        case .text(let content):
            return Self.splitText(content, maxBytes: maxBytes).map { .text($0) }
        case .markdown(let title, let text):
            return Self.splitText(text, maxBytes: maxBytes).map { .markdown(title: title, text: $0) }
        case .link, .actionCard, .raw:
            return [self]
        }
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

/// A file a user sent with a bot message, before it is downloaded: what to ask DingTalk for and
/// which name it gets in the message's attachments folder.
public struct Attachment: Sendable, Equatable {
    /// `picture`, `file`, `audio` or `video`.
    public var kind: String
    public var downloadCode: String
    /// The name in the attachments folder: safe (no `/`, no leading dot, at most
    /// `AttachmentNames.maxBytes`), unique within the message, never ending in `.missing`.
    public var fileName: String

    public init(kind: String, downloadCode: String, fileName: String) {
        self.kind = kind
        self.downloadCode = downloadCode
        self.fileName = fileName
    }

    /// Name of the note written instead of the file when it could not be downloaded.
    public var missingNoteName: String { fileName + ".missing" }

    /// The `msgtype`s whose messages can carry files (`list` reads no others).
    public static let messageTypes: Set<String> = ["picture", "audio", "video", "file", "richText"]

    /// The attachments of a bot message's `data` (PROTOCOL.md section 3): the `downloadCode` of
    /// picture, file, audio and video messages and of each picture in a richText, in message
    /// order, with names made safe and unique. Other message types have none.
    public static func list(in data: [String: Any]) -> [Attachment] {
        let msgtype = data["msgtype"] as? String ?? ""
        let content = data["content"] as? [String: Any] ?? [:]
        var found: [(kind: String, code: String, name: String)] = []
        switch msgtype {
        case "picture", "audio", "video":
            if let code = downloadCode(content) {
                found.append((msgtype, code, msgtype + defaultExtension(msgtype, content)))
            }
        case "file":
            if let code = downloadCode(content) {
                found.append(("file", code, content["fileName"] as? String ?? "file"))
            }
        case "richText":
            let parts = (content["richText"] as? [Any] ?? []).compactMap { $0 as? [String: Any] }
            let pictures = parts.filter { ($0["type"] as? String) == "picture" }.compactMap(downloadCode)
            for (index, code) in pictures.enumerated() {
                found.append(("picture", code, pictures.count == 1 ? "picture" : "picture-\(index + 1)"))
            }
        default:
            break
        }
        let names = AttachmentNames.assign(found.map(\.name))
        return zip(found, names).map { Attachment(kind: $0.kind, downloadCode: $0.code, fileName: $1) }
    }

    private static func downloadCode(_ content: [String: Any]) -> String? {
        for key in ["downloadCode", "pictureDownloadCode"] {
            if let code = content[key] as? String, !code.isEmpty { return code }
        }
        return nil
    }

    /// Videos say their container; pictures and audio do not, so they get none rather than a guess.
    private static func defaultExtension(_ msgtype: String, _ content: [String: Any]) -> String {
        guard msgtype == "video", let type = content["videoType"] as? String else { return "" }
        let safe = type.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) }
        return safe && !type.isEmpty && type.count <= 8 ? "." + type : ""
    }
}

/// File names for attachments. The names come from the sender (a `file` message's `fileName`),
/// so they are treated as hostile: only the last path component is kept, and nothing can make
/// the name leave the folder, hide it, or overwrite another attachment.
public enum AttachmentNames {
    /// Linux allows 255 bytes per name; room is left for a `-N` suffix and `.missing`.
    public static let maxBytes = 200

    /// A safe name for `proposed`: the part after the last `/` or `\`, control characters
    /// replaced by `_`, leading dots and spaces removed, cut to `maxBytes` keeping the extension;
    /// `file` when nothing is left.
    public static func sanitize(_ proposed: String) -> String {
        let last = proposed.split(whereSeparator: { $0 == "/" || $0 == "\\" }).last.map(String.init) ?? ""
        var scalars = String.UnicodeScalarView()
        for scalar in last.unicodeScalars {
            let control = scalar.value < 0x20 || scalar.value == 0x7F || (0x80..<0xA0).contains(scalar.value)
            scalars.append(control ? "_" : scalar)
        }
        var name = String(scalars)
        while let first = name.first, first == "." || first == " " { name.removeFirst() }
        while let last = name.last, last == " " { name.removeLast() }
        name = cut(name, to: maxBytes)
        return name.isEmpty ? "file" : name
    }

    /// Sanitizes each name and makes them unique within one message (`name-2.ext`, …). A name
    /// ending in `.missing` is renamed too, so that notes about failed downloads can never clash
    /// with a file.
    public static func assign(_ proposed: [String]) -> [String] {
        var used: Set<String> = []
        return proposed.map { raw in
            var name = sanitize(raw)
            if name.hasSuffix(".missing") { name += "_" }
            let (stem, ext) = split(name)
            var candidate = name
            var counter = 2
            while used.contains(candidate) || used.contains(candidate + ".missing") {
                candidate = cut(stem, to: maxBytes - ext.utf8.count - 4) + "-\(counter)" + ext
                counter += 1
            }
            used.insert(candidate)
            used.insert(candidate + ".missing")
            return candidate
        }
    }

    /// `("report", ".pdf")`; no extension when the dot is the first character or the tail is long.
    private static func split(_ name: String) -> (String, String) {
        guard let dot = name.lastIndex(of: "."), dot != name.startIndex else { return (name, "") }
        let ext = String(name[dot...])
        return ext.utf8.count <= 16 ? (String(name[..<dot]), ext) : (name, "")
    }

    /// At most `limit` UTF-8 bytes, cut at a character boundary, keeping a short extension.
    private static func cut(_ name: String, to limit: Int) -> String {
        guard name.utf8.count > limit else { return name }
        let (stem, ext) = split(name)
        let room = max(limit - ext.utf8.count, 1)
        var result = ""
        for character in stem {
            if result.utf8.count + character.utf8.count > room { break }
            result.append(character)
        }
        return result + (ext.utf8.count < limit ? ext : "")
    }
}

import StreamProtocol

/// The environment a handler sees: the `DINGSTREAM_*` contract plus `PATH`, `HOME` and `LANG`.
/// Nothing else of the daemon's environment passes (no credentials, no `NOTIFY_SOCKET`).
public enum HandlerEnvironment {
    public static let defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    public static let defaultHome = "/"
    public static let defaultLang = "C.UTF-8"
    /// Longest `DINGSTREAM_TEXT` passed; Linux refuses exec with one string over 128 KiB, and the
    /// whole message is in `DINGSTREAM_MESSAGE_FILE` anyway.
    public static let textLimit = 64 * 1024

    /// Builds the environment for one message. Keys of the contract are always present (empty
    /// when the message has no such field, e.g. events); `DINGSTREAM_ATTACHMENTS` only when
    /// `attachments` is given. `PATH`, `HOME`, `LANG` come from `base` when set and non-empty.
    public static func make(
        app: String,
        kind: MessageKind,
        topic: String,
        message: BotMessage?,
        messageFile: String,
        attachments: String? = nil,
        base: [String: String]
    ) -> [String: String] {
        var environment: [String: String] = [
            "DINGSTREAM_APP": app,
            "DINGSTREAM_KIND": kind.rawValue,
            "DINGSTREAM_TOPIC": topic,
            "DINGSTREAM_MSGTYPE": message?.msgtype ?? "",
            "DINGSTREAM_CONVERSATION": message?.conversation.rawValue ?? "",
            "DINGSTREAM_CONVERSATION_ID": message?.conversationID ?? "",
            "DINGSTREAM_SENDER": message?.senderStaffID ?? "",
            "DINGSTREAM_SENDER_NICK": message?.senderNick ?? "",
            "DINGSTREAM_TEXT": truncated(message?.text ?? "", to: textLimit),
            "DINGSTREAM_MESSAGE_FILE": messageFile,
            "PATH": nonEmpty(base["PATH"]) ?? defaultPath,
            "HOME": nonEmpty(base["HOME"]) ?? defaultHome,
            "LANG": nonEmpty(base["LANG"]) ?? defaultLang,
        ]
        if let attachments, !attachments.isEmpty {
            environment["DINGSTREAM_ATTACHMENTS"] = attachments
        }
        // A NUL cannot be passed through execve; drop it rather than cut the value short.
        return environment.mapValues { $0.contains("\0") ? $0.replacingNUL() : $0 }
    }

    private static func nonEmpty(_ value: String?) -> String? {
        guard let value, !value.isEmpty else { return nil }
        return value
    }

    private static func truncated(_ text: String, to limit: Int) -> String {
        guard text.utf8.count > limit else { return text }
        // Cut at a character boundary so the value stays valid UTF-8.
        var result = ""
        var size = 0
        for character in text {
            size += character.utf8.count
            if size > limit { break }
            result.append(character)
        }
        return result
    }
}

extension String {
    fileprivate func replacingNUL() -> String {
        String(String.UnicodeScalarView(unicodeScalars.filter { $0 != "\0" }))
    }
}

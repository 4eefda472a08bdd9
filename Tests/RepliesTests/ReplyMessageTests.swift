import Foundation
import Testing

@testable import Replies

private func object(_ data: Data) -> [String: Any] {
    (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? [:]
}

private func object(_ string: String) -> [String: Any] { object(Data(string.utf8)) }

@Suite struct ReplyMessageTests {
    @Test(.timeLimit(.minutes(1))) func jsonWithMsgtypeBecomesThatMessage() throws {
        // What handlers print is parsed by HandlerReply; the outbox keeps it as a webhook body.
        let markdown = ReplyMessage(webhookObject: object(###"{"msgtype":"markdown","markdown":{"title":"T","text":"## hi"}}"###))
        #expect(markdown == .markdown(title: "T", text: "## hi"))
        let card = ReplyMessage(
            webhookObject: object(#"{"msgtype":"actionCard","actionCard":{"title":"t","text":"x","singleTitle":"Open","singleURL":"https://e"}}"#))
        #expect(card == .actionCard(title: "t", text: "x", singleTitle: "Open", singleURL: "https://e"))
        // Unknown types and known types with extra keys are kept whole.
        let withAt = ReplyMessage(webhookObject: object(#"{"msgtype":"text","text":{"content":"hi"},"at":{"isAtAll":true}}"#))
        guard case .raw(let msgtype, let body) = withAt else {
            Issue.record("expected raw, got \(withAt)")
            return
        }
        #expect(msgtype == "text")
        #expect((object(body)["at"] as? [String: Any])?["isAtAll"] as? Bool == true)
        #expect((object(withAt.webhookBody)["text"] as? [String: Any])?["content"] as? String == "hi")
        // The OpenAPI has no `at`: the text goes without it.
        let form = try withAt.openAPIForm()
        #expect(form.msgKey == "sampleText")
        #expect(object(form.msgParam)["content"] as? String == "hi")
    }

    @Test(.timeLimit(.minutes(1))) func webhookBodiesFollowTheProtocol() {
        let text = object(ReplyMessage.text("hi").webhookBody)
        #expect(text["msgtype"] as? String == "text")
        #expect((text["text"] as? [String: Any])?["content"] as? String == "hi")
        let link = object(ReplyMessage.link(title: "t", text: "x", messageURL: "https://m", picURL: "https://p").webhookBody)
        let fields = link["link"] as? [String: Any]
        #expect(fields?["messageUrl"] as? String == "https://m")
        #expect(fields?["picUrl"] as? String == "https://p")
    }

    @Test(.timeLimit(.minutes(1))) func openAPIFormsUseMsgKeysAndStringParams() throws {
        let text = try ReplyMessage.text("hi \"there\"").openAPIForm()
        #expect(text.msgKey == "sampleText")
        #expect(object(text.msgParam)["content"] as? String == "hi \"there\"")
        let markdown = try ReplyMessage.markdown(title: "T", text: "md").openAPIForm()
        #expect(markdown.msgKey == "sampleMarkdown")
        #expect(object(markdown.msgParam)["title"] as? String == "T")
        #expect(try ReplyMessage.link(title: "t", text: "x", messageURL: "u", picURL: nil).openAPIForm().msgKey == "sampleLink")
        let card = try ReplyMessage.actionCard(title: "t", text: "x", singleTitle: "s", singleURL: "u").openAPIForm()
        #expect(card.msgKey == "sampleActionCard")
        #expect(object(card.msgParam)["singleURL"] as? String == "u")
        // A raw body may name its own OpenAPI form; without one it cannot go that way.
        let custom = ReplyMessage(webhookObject: ["msgtype": "feedCard", "feedCard": [String: Any](), "msgKey": "sampleFile", "msgParam": ["mediaId": "m"]])
        #expect(try custom.openAPIForm().msgKey == "sampleFile")
        #expect(object(try custom.openAPIForm().msgParam)["mediaId"] as? String == "m")
        let bare = ReplyMessage(webhookObject: ["msgtype": "feedCard", "feedCard": [String: Any]()])
        #expect(throws: ReplyError.self) { try bare.openAPIForm() }
    }

    @Test(.timeLimit(.minutes(1))) func codableRoundTripKeepsEveryKind() throws {
        let messages: [ReplyMessage] = [
            .text("hi"), .markdown(title: "T", text: "x"), .link(title: "t", text: "x", messageURL: "u", picURL: nil),
            .actionCard(title: "t", text: "x", singleTitle: "s", singleURL: "u"),
            ReplyMessage(webhookObject: ["msgtype": "feedCard", "feedCard": ["links": [String]()]]),
        ]
        let data = try JSONEncoder().encode(messages)
        #expect(try JSONDecoder().decode([ReplyMessage].self, from: data) == messages)
        // The stored form is DingTalk's webhook shape.
        let first = try #require((try JSONSerialization.jsonObject(with: data) as? [[String: Any]])?.first)
        #expect((first["text"] as? [String: Any])?["content"] as? String == "hi")
    }

    @Test(.timeLimit(.minutes(1))) func shortMessagesAreNotSplit() {
        #expect(ReplyMessage.text("short").split() == [.text("short")])
        let link = ReplyMessage.link(title: "t", text: String(repeating: "x", count: 20_000), messageURL: "u", picURL: nil)
        #expect(link.split(maxBytes: 100) == [link])
    }

    @Test(.timeLimit(.minutes(1))) func longTextSplitsAtParagraphsThenLines() {
        let paragraphs = (1...30).map { "paragraph \($0) " + String(repeating: "x", count: 200) }
        let text = paragraphs.joined(separator: "\n\n")
        let parts = ReplyMessage.text(text).split(maxBytes: 1_000, maxParts: .max)
        #expect(parts.count > 1)
        var contents: [String] = []
        for part in parts {
            guard case .text(let content) = part else { Issue.record("not text"); return }
            #expect(content.utf8.count <= 1_000)
            // Paragraphs are never cut in half.
            #expect(content.components(separatedBy: "\n\n").allSatisfy { paragraphs.contains($0) })
            contents.append(content)
        }
        #expect(contents.joined(separator: "\n\n") == text)

        let lines = (1...50).map { "line \($0) " + String(repeating: "y", count: 60) }
        let block = lines.joined(separator: "\n")
        let lineParts = ReplyMessage.markdown(title: "log", text: block).split(maxBytes: 500, maxParts: .max)
        var joined: [String] = []
        for part in lineParts {
            guard case .markdown(let title, let content) = part else { Issue.record("not markdown"); return }
            #expect(title == "log")
            #expect(content.utf8.count <= 500)
            #expect(content.split(separator: "\n").allSatisfy { lines.contains(String($0)) })
            joined.append(content)
        }
        #expect(joined.joined(separator: "\n") == block)
    }

    @Test(.timeLimit(.minutes(1))) func unbrokenTextSplitsOnCharacterBoundaries() {
        let text = String(repeating: "钉钉🙂é", count: 2_000)
        let parts = ReplyMessage.text(text).split(maxBytes: 5_000)
        #expect(parts.count >= 3)
        var rebuilt = ""
        for part in parts {
            guard case .text(let content) = part else { Issue.record("not text"); return }
            #expect(content.utf8.count <= 5_000)
            #expect(content.utf8.count > 4_000)
            rebuilt += content
        }
        #expect(rebuilt == text)
    }

    /// Issue 15, bug 4: 1 MB of handler output made 210 chat messages.
    @Test(.timeLimit(.minutes(1))) func aHugeReplyIsCutToAFewPartsWithAVisibleNotice() throws {
        let line = "a line of handler output, numbered so that nothing repeats exactly\n"
        let text = String(repeating: line, count: 1_000_000 / line.utf8.count)
        let parts = ReplyMessage.text(text).split()
        #expect(parts.count == ReplyMessage.defaultMaxParts)
        let uncapped = ReplyMessage.text(text).split(maxParts: .max)
        #expect(Array(parts.dropLast()) == Array(uncapped.prefix(parts.count - 1)))
        for part in parts {
            guard case .text(let content) = part else { throw TestFailure("not text: \(part)") }
            #expect(content.utf8.count <= ReplyMessage.defaultPartBytes)
        }
        let last = try #require(parts.last)
        guard case .text(let content) = last else { throw TestFailure("not text: \(last)") }
        #expect(content.contains("more bytes cut"))
        let cut = try #require(last.cutBytes)
        // Everything but the five parts sent (less the line breaks they were split at).
        #expect(cut > 1_000_000 - 6 * ReplyMessage.defaultPartBytes && cut < 1_000_000, "cut \(cut)")
        // Markdown keeps its title; a short reply is left alone.
        let markdown = ReplyMessage.markdown(title: "T", text: text).split()
        #expect(markdown.count == ReplyMessage.defaultMaxParts && markdown.last?.cutBytes != nil)
        #expect(ReplyMessage.text("short").split() == [.text("short")])
        #expect(ReplyMessage.text("short").cutBytes == nil)
    }
}

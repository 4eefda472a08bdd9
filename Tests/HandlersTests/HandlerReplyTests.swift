import Foundation
import Testing

@testable import Handlers

@Suite struct HandlerReplyTests {
    @Test(.timeLimit(.minutes(1))) func emptyMeansNoReply() {
        #expect(HandlerReply.parse(stdout: []) == nil)
        #expect(HandlerReply.parse(stdout: Array(" \n\t\r\n".utf8)) == nil)
    }

    @Test(.timeLimit(.minutes(1))) func plainTextIsTrimmed() {
        #expect(HandlerReply.parse(stdout: Array("hello\nworld\n\n".utf8)) == .text("hello\nworld"))
    }

    @Test(.timeLimit(.minutes(1))) func jsonWithMsgtypeIsAMessage() throws {
        let json = ##"{"msgtype":"markdown","markdown":{"title":"t","text":"# hi"}}"##
        let reply = HandlerReply.parse(stdout: Array((json + "\n").utf8))
        guard case .message(let msgtype, let body) = reply else {
            Issue.record("expected a message, got \(String(describing: reply))")
            return
        }
        #expect(msgtype == "markdown")
        let object = try #require(try JSONSerialization.jsonObject(with: body) as? [String: Any])
        #expect((object["markdown"] as? [String: Any])?["text"] as? String == "# hi")
    }

    @Test(.timeLimit(.minutes(1))) func otherJsonIsText() {
        #expect(HandlerReply.parse(stdout: Array(#"{"text":"x"}"#.utf8)) == .text(#"{"text":"x"}"#))
        #expect(HandlerReply.parse(stdout: Array(#"{"msgtype":3}"#.utf8)) == .text(#"{"msgtype":3}"#))
        #expect(HandlerReply.parse(stdout: Array(#"[{"msgtype":"text"}]"#.utf8)) == .text(#"[{"msgtype":"text"}]"#))
        #expect(HandlerReply.parse(stdout: Array(#"{"msgtype":"text""#.utf8)) == .text(#"{"msgtype":"text""#))
    }

    @Test(.timeLimit(.minutes(1))) func invalidUTF8IsReplaced() {
        #expect(HandlerReply.parse(stdout: [0x61, 0xFF, 0x62]) == .text("a\u{FFFD}b"))
    }
}

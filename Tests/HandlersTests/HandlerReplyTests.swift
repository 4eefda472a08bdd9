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

    /// Issue 15 (confusing): output that looked like a message but was not one went out silently
    /// as text, an unknown msgtype was forwarded without a word. Both are named for the log.
    @Test(.timeLimit(.minutes(1))) func oddOutputIsNamedForAWarning() {
        #expect(HandlerReply.problem(stdout: Array(#"{"msgtype":"markdown","markdown":{"title":"t","text":"x"}}"#.utf8)) == nil)
        #expect(HandlerReply.problem(stdout: Array("plain text\n".utf8)) == nil)
        #expect(HandlerReply.problem(stdout: Array(#"{"msgtype":"markdown", oops}"#.utf8))?.contains("is not valid JSON") == true)
        #expect(HandlerReply.problem(stdout: Array(#"{"text":"x"}"#.utf8))?.contains("without a string \"msgtype\"") == true)
        let unknown = HandlerReply.problem(stdout: Array(#"{"msgtype":"bogus"}"#.utf8))
        #expect(unknown?.contains(#"msgtype "bogus" is not one DingTalk takes"#) == true, "\(String(describing: unknown))")
    }

    /// Issue 15 (confusing): a dead letter's reason kept stderr but not what the handler printed.
    @Test(.timeLimit(.minutes(1))) func aDeadLetterReasonKeepsTheTailOfStdout() {
        let long = Array(repeating: UInt8(ascii: "a"), count: 5000) + Array("last words\n".utf8)
        let failed = HandlerResult(executable: "/h/10-x", status: .exited(3), stdout: long, stderrTail: "boom\n")
        #expect(failed.reasonText.contains("stdout (tail):\n"), "\(failed.reasonText)")
        #expect(failed.reasonText.contains("last words\n"))
        #expect(!failed.reasonText.contains(String(repeating: "a", count: 1100)), "bounded")
        let short = HandlerResult(executable: "/h/10-x", status: .exited(3), stdout: Array("step 1 done\n".utf8))
        #expect(short.reasonText.contains("stdout (all):\nstep 1 done\n"), "\(short.reasonText)")
        #expect(!HandlerResult(executable: "/h/10-x", status: .exited(3)).reasonText.contains("stdout ("))
    }
}

import Synchronization
import Testing

@testable import Handlers

@Suite struct AttachmentTests {
    @Test(.timeLimit(.minutes(1))) func hostileNamesStayInsideTheFolder() {
        #expect(AttachmentNames.sanitize("../../etc/passwd") == "passwd")
        #expect(AttachmentNames.sanitize("..\\..\\boot.ini") == "boot.ini")
        #expect(AttachmentNames.sanitize("..") == "file")
        #expect(AttachmentNames.sanitize("/") == "file")
        #expect(AttachmentNames.sanitize("") == "file")
        #expect(AttachmentNames.sanitize(".bashrc") == "bashrc")
        #expect(AttachmentNames.sanitize("a\nb\u{0}c.txt") == "a_b_c.txt")
        #expect(AttachmentNames.sanitize("报告 2024.pdf") == "报告 2024.pdf")
        let long = AttachmentNames.sanitize(String(repeating: "界", count: 300) + ".pdf")
        #expect(long.utf8.count <= AttachmentNames.maxBytes)
        #expect(long.hasSuffix(".pdf"))
    }

    @Test(.timeLimit(.minutes(1))) func namesAreUniqueAndNeverClashWithNotes() {
        let names = AttachmentNames.assign(["a.txt", "dir/a.txt", "a.txt.missing", "b", "b.missing"])
        #expect(Set(names).count == names.count)
        #expect(names[0] == "a.txt")
        #expect(names[1] == "a-2.txt")
        for name in names {
            #expect(!name.hasSuffix(".missing"))
            #expect(!names.contains(name + ".missing"))
        }
    }

    @Test(.timeLimit(.minutes(1))) func everyKindOfAttachmentIsFound() {
        #expect(Attachment.list(in: ["msgtype": "text", "text": ["content": "hi"]]).isEmpty)
        #expect(
            Attachment.list(in: ["msgtype": "picture", "content": ["downloadCode": "p1", "pictureDownloadCode": "p1"]])
                == [Attachment(kind: "picture", downloadCode: "p1", fileName: "picture")])
        #expect(
            Attachment.list(in: ["msgtype": "file", "content": ["downloadCode": "f1", "fileName": "../x.pdf"]])
                == [Attachment(kind: "file", downloadCode: "f1", fileName: "x.pdf")])
        #expect(
            Attachment.list(in: ["msgtype": "audio", "content": ["downloadCode": "a1", "recognition": "hi"]])
                == [Attachment(kind: "audio", downloadCode: "a1", fileName: "audio")])
        #expect(
            Attachment.list(in: ["msgtype": "video", "content": ["downloadCode": "v1", "videoType": "mp4"]])
                == [Attachment(kind: "video", downloadCode: "v1", fileName: "video.mp4")])
        let rich: [String: Any] = [
            "msgtype": "richText",
            "content": ["richText": [["text": "look"], ["type": "picture", "downloadCode": "r1"], ["type": "picture", "downloadCode": "r2"]]],
        ]
        #expect(Attachment.list(in: rich).map(\.fileName) == ["picture-1", "picture-2"])
        #expect(Attachment.list(in: rich).map(\.downloadCode) == ["r1", "r2"])
        // A file message without a code has nothing to download.
        #expect(Attachment.list(in: ["msgtype": "file", "content": ["fileName": "x"]]).isEmpty)
    }

    @Test(.timeLimit(.minutes(1)))
    func urgentJobsTakeTheNextFreeWorker() async throws {
        let scheduler = ConversationScheduler(workers: 1)
        let log = EventLog()
        let first = Gate()
        let done = Gate()
        scheduler.submit(conversation: "a") {
            log.record("a")
            await first.wait()
        }
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { await scheduler.run() }
            // With the only worker busy, queue a normal job and then an urgent one.
            while log.events.isEmpty { try await Task.sleep(for: .milliseconds(5)) }
            scheduler.submit(conversation: "b") { log.record("b"); done.open() }
            scheduler.submit(conversation: "card", urgent: true) { log.record("card") }
            first.open()
            await done.wait()
            scheduler.shutdown()
        }
        #expect(log.events == ["a", "card", "b"])
    }
}

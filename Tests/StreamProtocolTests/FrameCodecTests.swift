import Foundation
import Testing

@testable import StreamProtocol

@Suite("Frame and ack codecs on the samples of PROTOCOL.md")
struct FrameCodecTests {
    static let botFrame = #"""
        {"specVersion":"1.0","type":"CALLBACK",
         "headers":{"appId":"765e","connectionId":"2f9c","contentType":"application/json",
                    "messageId":"212b9d7c_165f_19bfa1a500a_1461def","time":"1769851697756",
                    "topic":"/v1.0/im/bot/messages/get","extraHeader":"kept"},
         "data":"{\"conversationId\":\"cidXXXX\",\"conversationType\":\"1\",\"msgId\":\"msgXXXX==\",\"msgtype\":\"text\",\"text\":{\"content\":\" hello\"},\"createAt\":1695283635765,\"senderStaffId\":\"0423297\",\"senderNick\":\"Zhang San\",\"robotCode\":\"dingXXXX\",\"sessionWebhook\":\"https://oapi.dingtalk.com/robot/sendBySession?session=79b4\",\"sessionWebhookExpiredTime\":1695289035996}"}
        """#

    @Test(.timeLimit(.minutes(1))) func decodesABotMessageFrame() throws {
        let frame = try StreamFrame.decode(Array(Self.botFrame.utf8))
        #expect(frame.kind == .callback)
        #expect(frame.messageID == "212b9d7c_165f_19bfa1a500a_1461def")
        #expect(frame.topic == Topic.botMessage)
        #expect(frame.headers["extraHeader"] == "kept")
        let data = try #require(frame.dataObject())
        let message = try #require(BotMessage(data: data))
        #expect(message.msgID == "msgXXXX==")
        #expect(message.text == "hello")
        #expect(message.conversation == .private)
        #expect(message.senderStaffID == "0423297")
        #expect(message.sessionWebhookExpiredTime == 1_695_289_035_996)
        #expect(MessageKey(app: "helpdesk", frame: frame) == MessageKey(app: "helpdesk", kind: .bot, id: "msgXXXX=="))
    }

    @Test(.timeLimit(.minutes(1))) func pingIsEchoedWithItsOpaque() throws {
        let ping = #"{"specVersion":"1.0","type":"SYSTEM","headers":{"messageId":"m-1","topic":"ping","contentType":"application/json"},"data":"{\"opaque\":\"7f3a\"}"}"#
        let frame = try StreamFrame.decode(Array(ping.utf8))
        let ack = try #require(JSON.object(StreamAck.pong(to: frame).encoded()))
        #expect(ack["code"] as? Int == 200)
        #expect((ack["headers"] as? [String: Any])?["messageId"] as? String == "m-1")
        let dataText = try #require(ack["data"] as? String)
        let data = try #require(JSON.object(dataText))
        #expect(data["opaque"] as? String == "7f3a")
    }

    @Test(.timeLimit(.minutes(1))) func eventAcksCarryAStatus() throws {
        let event = StreamFrame(kind: .event, headers: ["messageId": "e-1", "eventId": "ev-9", "topic": "*"], data: "{}")
        #expect(MessageKey(app: "a", frame: event)?.id == "ev-9")
        let success = try #require(JSON.object(StreamAck.event(event).encoded()))
        #expect(JSON.object(success["data"] as? String ?? "")?["status"] as? String == "SUCCESS")
        let later = try #require(JSON.object(StreamAck.event(event, later: true).encoded()))
        #expect(JSON.object(later["data"] as? String ?? "")?["status"] as? String == "LATER")
    }

    @Test(.timeLimit(.minutes(1))) func callbackAckCarriesTheCardResponse() throws {
        let card = StreamFrame(kind: .callback, headers: ["messageId": "c-1", "topic": Topic.cardCallback], data: "{}")
        let ack = try #require(JSON.object(StreamAck.callback(card, response: #"{"cardData":{"cardParamMap":{"status":"done"}}}"#).encoded()))
        let dataText = try #require(ack["data"] as? String)
        let data = try #require(JSON.object(dataText))
        let response = try #require(data["response"] as? [String: Any])
        #expect((response["cardData"] as? [String: Any]) != nil)
        let botAck = try #require(JSON.object(StreamAck.callback(card).encoded()))
        #expect((botAck["data"] as? String) == #"{"response":null}"#)
    }

    /// The server side's one-pass ack reader agrees with the general parse where it answers,
    /// and answers nil (general parse) for every shape it does not vouch for.
    @Test(.timeLimit(.minutes(1))) func receivedAcksReadInOnePassAgreeWithTheGeneralParse() throws {
        let ours = StreamAck(code: 200, messageID: "m-\"1\"", data: #"{"response":null}"#).encoded()
        let pythonStyle = #"{"code": 200, "headers": {"contentType": "application/json", "messageId": "m-2"}, "message": "OK", "data": "{\"status\": \"SUCCESS\"}"}"#
        for text in [ours, pythonStyle, #"{"headers":{"messageId":"m-3"},"code":-1,"data":null,"extra":[1,{"a":2.5e3}]}"#] {
            let ack = try #require(StreamAck.decodeReceived(Array(text.utf8)), "\(text)")
            let general = try #require(JSON.object(text))
            #expect(ack.code == general["code"] as? Int)
            #expect(ack.headers == general["headers"] as? [String: String])
            #expect(ack.data == general["data"] as? String)
        }
        for text in [
            #"{"code":200.5,"headers":{"messageId":"m"},"data":"{}"}"#, #"{"code":2e2,"headers":{"messageId":"m"}}"#,
            #"{"code":200,"headers":{"messageId":1}}"#, #"{"code":200,"headers":{"messageId":"m"},"data":{"a":1}}"#,
            #"{"code":200,"code":201,"headers":{"messageId":"m"}}"#, #"{"code":012,"headers":{"messageId":"m"}}"#,
            #"{"headers":{"messageId":"m"}}"#, #"{"code":200,"headers":{"messageId":"m"}} x"#, #"{"code":200"#, "",
        ] {
            #expect(StreamAck.decodeReceived(Array(text.utf8)) == nil, "\(text)")
        }
    }

    @Test(.timeLimit(.minutes(1))) func malformedFramesAreNamed() {
        #expect(throws: FrameError(.notJSON)) { try StreamFrame.decode(Array("{nope".utf8)) }
        #expect(throws: FrameError(.notAnObject)) { try StreamFrame.decode(Array("[1]".utf8)) }
        #expect(throws: FrameError(.missingField("type"))) { try StreamFrame.decode(Array(#"{"headers":{}}"#.utf8)) }
        let huge = Array(repeating: UInt8(ascii: " "), count: StreamFrame.maximumSize + 1)
        #expect(throws: FrameError(.tooLarge(huge.count))) { try StreamFrame.decode(huge) }
    }

    /// Frames the quick reader takes and frames it leaves to JSONSerialization decode alike.
    @Test(.timeLimit(.minutes(1))) func unusualFramesDecodeLikeUsualOnes() throws {
        let escaped = try StreamFrame.decode(Array(#"{"type":"EVENT","extra":[1,-2.5e3,{"a":null}],"headers":{"eventId":"e\u00e9\ud83d\ude00\n\/"},"data":"{\"k\":\"\\\"q\\\"\"}"}"#.utf8))
        #expect(escaped.kind == .event)
        #expect(escaped.specVersion == "1.0")
        #expect(escaped.headers["eventId"] == "e\u{e9}\u{1F600}\n/")
        #expect(escaped.data == #"{"k":"\"q\""}"#)
        // A number in the headers and data as an object: the general path, as before.
        let lenient = try StreamFrame.decode(Array(#"{"type":"CALLBACK","headers":{"time":17},"data":{"b":1}}"#.utf8))
        #expect(lenient.headers["time"] == "17")
        #expect(lenient.data == #"{"b":1}"#)
        let null = try StreamFrame.decode(Array(#" {"type":"EVENT","headers":{},"data":null} "#.utf8))
        #expect(null.data == "")
        #expect(throws: FrameError(.notJSON)) { try StreamFrame.decode(Array(#"{"type":"EVENT","headers":{}} x"#.utf8)) }
    }

    /// The intake's quick scan of `data` never disagrees with the full parse: where it answers,
    /// validity and `msgId` match; where it cannot vouch it says so and the full parse decides.
    @Test(.timeLimit(.minutes(1))) func dataScanAgreesWithTheFullParse() throws {
        let samples = [
            #"{"msgId":"m1","text":{"content":" hi"},"atUsers":[{"dingtalkId":"$:LWCP"}],"createAt":1700000000000}"#,
            #" { "msgId" : "m\u00e9\ud83d\ude00\n" , "n": -0.5E+2, "t": true, "f": false, "z": null } "#,
            #"{"text":{"msgId":"nested only"}}"#,
            #"{"msgId":"m2","conversationId":"cid==","conversationType":"2"}"#,
            #"{"conversation\u0049d":"escaped name","msgId":"m3"}"#,
            #"{"conversationId":"c1","conversationId":"c2","msgId":"m4"}"#,
            #"{"msgId":42}"#,
            #"{"msgId":"a","msgId":"b"}"#,
            #"{}"#,
            #"{"a":"\ud800"}"#,
            #"{"a":"\udc00x"}"#,
            #"{"a":"\x"}"#,
            "{\"a\":\"tab\there\"}",
            #"{"a":01}"#,
            #"{"a":1.}"#,
            #"{"a":[1,]}"#,
            #"{"a":1} x"#,
            #"{"a" 1}"#,
            #"[{"msgId":"m"}]"#,
            #"{"msgId":"m""#,
            String(repeating: #"{"a":"#, count: 70) + "1" + String(repeating: "}", count: 70),
        ]
        for text in samples {
            let frame = StreamFrame(kind: .callback, headers: ["topic": Topic.botMessage], data: text)
            let reference = frame.dataObject()
            guard let scanned = frame.dataObjectMember("msgId") else { continue }
            #expect(reference != nil, "the scan took invalid data: \(text)")
            #expect(scanned == reference?["msgId"] as? String, "msgId differs for \(text)")
            // The one-pass scan of several members, when it answers (a duplicate of a member it
            // looks for sends it to the full parse), agrees with the parse.
            guard let both = frame.dataObjectMembers(["msgId", "conversationId"]) else { continue }
            #expect(both[0] == reference?["msgId"] as? String, "msgId differs in the one-pass scan for \(text)")
            #expect(both[1] == reference?["conversationId"] as? String, "conversationId differs for \(text)")
        }
        // The usual bot message goes the quick way.
        let usual = StreamFrame(kind: .callback, headers: ["topic": Topic.botMessage], data: samples[0])
        #expect(usual.dataObjectMember("msgId") == .some("m1"))
        #expect(usual.dataObjectMember("missing") == .some(nil))
        let withConversation = StreamFrame(kind: .callback, headers: ["topic": Topic.botMessage], data: samples[3])
        #expect(withConversation.dataObjectMembers(["msgId", "conversationId"]) == ["m2", "cid=="])
        let escapedName = StreamFrame(kind: .callback, headers: ["topic": Topic.botMessage], data: samples[4])
        #expect(escapedName.dataObjectMembers(["msgId", "conversationId"]) == ["m3", "escaped name"])
    }

    @Test(.timeLimit(.minutes(1))) func keysDoNotDependOnTheMessageID() throws {
        let first = StreamFrame(kind: .callback, headers: ["messageId": "a", "topic": Topic.botMessage], data: #"{"msgId":"m1"}"#)
        var redelivery = first
        redelivery.headers["messageId"] = "b"
        #expect(MessageKey(app: "x", frame: first) == MessageKey(app: "x", frame: redelivery))
        #expect(MessageKey(app: "x", frame: first)?.hash != MessageKey(app: "y", frame: first)?.hash)
    }

    /// The hash is in every entry name and in a 0.1 spool's dedup.log: it must never change.
    /// Expected value: FNV-1a 64 over "helpdesk\0bot\0msg-1", computed independently.
    @Test(.timeLimit(.minutes(1))) func keyHashIsFNV1aOfAppKindAndID() {
        #expect(MessageKey(app: "helpdesk", kind: .bot, id: "msg-1").hash == "bb0a76cd89b9bb29")
    }

    @Test(.timeLimit(.minutes(1))) func backoffFollowsFullJitterUpToTheCap() {
        let backoff = Backoff(base: .seconds(1), cap: .seconds(60))
        #expect(backoff.ceiling(afterFailures: 0) == .seconds(1))
        #expect(backoff.ceiling(afterFailures: 3) == .seconds(8))
        #expect(backoff.ceiling(afterFailures: 6) == .seconds(60))
        #expect(backoff.ceiling(afterFailures: 500) == .seconds(60))
        #expect(backoff.delay(afterFailures: 10, unit: 0.5) == .seconds(30))
        #expect(backoff.delay(afterFailures: 10, unit: 0) == .zero)
    }

    /// Issue 15, bug 2: numbers from the network never reach a trapping conversion; times that
    /// cannot be times are absent.
    @Test(.timeLimit(.minutes(1))) func impossibleTimesInABotMessageAreAbsent() throws {
        for value in [1e300, -1e300, 1.5e19, -1] as [Any] + [Int64.min, "-9223372036854775808", "99999999999999999999"] {
            let message = try #require(BotMessage(data: ["msgId": "m1", "createAt": value, "sessionWebhookExpiredTime": value]))
            #expect(message.createAt == nil, "createAt \(value)")
            #expect(message.sessionWebhookExpiredTime == nil, "sessionWebhookExpiredTime \(value)")
        }
        let message = try #require(BotMessage(data: ["msgId": "m1", "createAt": 1695283635765.0, "sessionWebhookExpiredTime": "1695289035996"]))
        #expect(message.createAt == 1_695_283_635_765)
        #expect(message.sessionWebhookExpiredTime == 1_695_289_035_996)
    }

    /// The frame's one UTF-8 check agrees with the standard library on well-formed text, on
    /// each kind of malformed sequence (also behind runs of ASCII the check takes eight at a
    /// time), and on random bytes.
    @Test(.timeLimit(.minutes(1))) func utf8CheckAgreesWithTheStandardLibrary() {
        func agree(_ bytes: [UInt8], _ label: String) {
            let reference = String(validating: bytes, as: UTF8.self) != nil
            #expect(bytes.withUnsafeBufferPointer { UTF8Check.isValid($0) } == reference, "\(label): \(bytes)")
        }
        let samples: [[UInt8]] = [
            [], Array("plain ascii".utf8), Array("é 中文 😀 \u{10FFFF}".utf8),
            [0xC0, 0x80], [0xC1, 0xBF], [0xE0, 0x80, 0x80], [0xE0, 0x9F, 0xBF], [0xED, 0xA0, 0x80], [0xED, 0xBF, 0xBF],
            [0xF0, 0x80, 0x80, 0x80], [0xF0, 0x8F, 0xBF, 0xBF], [0xF4, 0x90, 0x80, 0x80], [0xF5, 0x80, 0x80, 0x80], [0xFF],
            [0x80], [0xC3], [0xE4, 0xB8], [0xF0, 0x9F, 0x98], [0xC3, 0x28], [0xE4, 0x28, 0xAD], [0xF0, 0x9F, 0x28, 0x80],
            [0xEE, 0x80, 0x80], [0xED, 0x9F, 0xBF], [0xF4, 0x8F, 0xBF, 0xBF],
        ]
        for sample in samples {
            agree(sample, "alone")
            agree(Array("0123456789abcdef".utf8) + sample + Array("tail".utf8), "behind ascii")
        }
        var generator = SplitMix64(seed: 12)
        for round in 0..<20_000 {
            let count = Int(generator.next() % 24)
            // Mostly high bytes, so that every lead and continuation shows up.
            let bytes = (0..<count).map { _ in UInt8(truncatingIfNeeded: generator.next() % 3 == 0 ? generator.next() % 0x80 : 0x80 | generator.next()) }
            agree(bytes, "random \(round)")
        }
        // A frame with a malformed string goes to the general parse, which refuses it.
        let broken = Array(#"{"type":"EVENT","headers":{"eventId":"e"#.utf8) + [0xC3, 0x28] + Array(#""},"data":"{}"}"#.utf8)
        #expect(broken.withUnsafeBufferPointer { FastFrameReader.decode($0) } == nil)
        #expect(throws: FrameError(.notJSON)) { try StreamFrame.decode(broken) }
        // Escapes between multibyte characters, unescaped straight into the string.
        let mixed = Array(#"{"type":"EVENT","headers":{"eventId":"é\"中\u00e9\ud83d\ude00\\😀\t"},"data":"x"}"#.utf8).withUnsafeBufferPointer {
            FastFrameReader.decode($0)
        }
        #expect(mixed?.headers["eventId"] == "é\"中é😀\\😀\t")
    }
}

/// A small seeded generator, so that the random samples are the same on every run.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE5_E4B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

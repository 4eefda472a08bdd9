import Foundation
import NIOHTTP1
import Testing
@testable import Simulator

@Suite("Simulator over real loopback sockets")
struct SimulatorTests {
    @Test(.timeLimit(.minutes(1)))
    func registrationRecordsBodyAndRejectsBadSecret() async throws {
        try await DingTalkSimulator.test { sim in
            let app = sim.configuration.apps[0]
            let ticket = try await TestSocket.register(port: sim.port, app: app)
            #expect(!ticket.isEmpty)
            let regs = sim.registrations(app: "helpdesk")
            #expect(regs.count == 1)
            #expect(regs.first?.ua == "simtest/1")
            #expect(regs.first?.localIp == "127.0.0.1")
            #expect(regs.first?.subscriptions == ["EVENT|*", "CALLBACK|/v1.0/im/bot/messages/get"])

            let bad = try await TestHTTP.request(port: sim.port, path: "/v1.0/gateway/connections/open",
                                                 json: #"{"clientId":"\#(app.clientId)","clientSecret":"wrong"}"#)
            #expect(bad.status == 401)
            #expect(bad.json["code"] as? String == "authFailed")
            #expect(bad.json["requestid"] is String)
            #expect(sim.registrations().count == 1)

            let ok = try await TestHTTP.request(port: sim.port, path: "/v1.0/gateway/connections/open",
                                                json: #"{"clientId":"\#(app.clientId)","clientSecret":"\#(app.clientSecret)"}"#)
            #expect(ok.json["endpoint"] as? String == "ws://127.0.0.1:\(sim.port)/connect")
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func ticketIsSingleUseAndUnknownTicketsAreRefused() async throws {
        try await DingTalkSimulator.test { sim in
            let ticket = try await TestSocket.register(port: sim.port, app: sim.configuration.apps[0])
            let first = try await TestSocket.connect(port: sim.port, ticket: ticket)
            try await sim.waitUntil("first socket live") { $0.liveSockets(app: "helpdesk").count == 1 }
            await #expect(throws: NotUpgraded()) {
                _ = try await TestSocket.connect(port: sim.port, ticket: ticket)
            }
            let reused = try await TestHTTP.request(port: sim.port, method: .GET, path: "/connect?ticket=\(ticket)")
            #expect(reused.status == 403)
            let unknown = try await TestHTTP.request(port: sim.port, method: .GET, path: "/connect?ticket=nope")
            #expect(unknown.status == 401)
            #expect(sim.sockets(app: "helpdesk").count == 1)
            await first.close()
            try await sim.waitUntil("socket closed") { $0.liveSockets(app: "helpdesk").isEmpty }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func expiredTicketIsRefused() async throws {
        try await DingTalkSimulator.test({ $0.ticketLifetime = .milliseconds(20) }) { sim in
            let ticket = try await TestSocket.register(port: sim.port, app: sim.configuration.apps[0])
            try await Task.sleep(for: .milliseconds(60))  // the ticket's lifetime passing, not a synchronisation
            await #expect(throws: NotUpgraded()) {
                _ = try await TestSocket.connect(port: sim.port, ticket: ticket)
            }
            #expect(sim.sockets(app: "helpdesk").isEmpty)
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func pingEchoesAreCheckedPerSocket() async throws {
        try await DingTalkSimulator.test({ $0.pingInterval = .milliseconds(30) }) { sim in
            let good = try await TestSocket.open(sim)
            let bad = try await TestSocket.open(sim, autoPing: false)
            try await sim.waitUntil("ping reached the silent socket") { _ in !bad.frames(topic: "ping").isEmpty }
            let ping = try #require(bad.frames(topic: "ping").first)
            #expect((ping["type"] as? String) == "SYSTEM")
            #expect((ping["data"] as? String)?.contains("opaque") == true)
            bad.ack(ping, data: #"{"opaque":"not-the-one"}"#)
            try await sim.waitUntil("mismatch recorded") { $0.pingEchoes().contains { !$0.matched } }
            try await sim.waitUntil("good echoes") { s in s.pingEchoes().filter { $0.matched }.count >= 2 }
            let echoes = sim.pingEchoes()
            let goodId = try #require(sim.sockets(app: "helpdesk").first?.id)
            #expect(echoes.filter { $0.matched }.allSatisfy { $0.socketId == goodId })
            #expect(echoes.filter { !$0.matched }.allSatisfy { $0.socketId != goodId && $0.echoedOpaque == "not-the-one" })
            #expect(sim.stats(app: "helpdesk").pingMismatches == 1)
            await good.close(); await bad.close()
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func pushCarriesFullPayloadAndAckIsRecorded() async throws {
        try await DingTalkSimulator.test { sim in
            let socket = try await TestSocket.open(sim)
            try await sim.waitUntil { $0.liveSockets(app: "helpdesk").count == 1 }
            let spec = BotMessageSpec(app: "helpdesk", content: .text("hello"), conversation: .group(conversationId: "cidGroup==", title: "Ops"))
            let injected = try sim.injectBotMessage(spec)
            try await sim.waitUntil("push arrived") { _ in !socket.frames(topic: "/v1.0/im/bot/messages/get").isEmpty }
            let frame = try #require(socket.frames(topic: "/v1.0/im/bot/messages/get").first)
            let headers = try #require(frame["headers"] as? [String: Any])
            #expect(frame["type"] as? String == "CALLBACK")
            #expect(frame["specVersion"] as? String == "1.0")
            #expect(headers.values.allSatisfy { $0 is String })
            #expect(headers["messageId"] as? String == injected.messageId)
            let dataText = try #require(frame["data"] as? String)
            let data = try #require((try JSONSerialization.jsonObject(with: Data(dataText.utf8))) as? [String: Any])
            #expect(data["msgId"] as? String == injected.msgId)
            #expect(data["conversationType"] as? String == "2")
            #expect(data["conversationId"] as? String == "cidGroup==")
            #expect(data["conversationTitle"] as? String == "Ops")
            #expect(data["robotCode"] as? String == "dinghelpdesk")
            #expect((data["text"] as? [String: Any])?["content"] as? String == "hello")
            #expect((data["sessionWebhook"] as? String)?.hasPrefix(sim.baseURL + "/robot/sendBySession?session=") == true)
            let created = try #require(data["createAt"] as? Int64)
            let expires = try #require(data["sessionWebhookExpiredTime"] as? Int64)
            #expect(expires - created == 90 * 60 * 1000)

            socket.ack(frame)
            try await sim.waitUntil("ack recorded") { $0.isAcked(app: "helpdesk", businessId: injected.msgId) }
            let ack = try #require(sim.acks().first)
            #expect(ack.code == 200 && ack.matchedPush && ack.onPushSocket == true)
            #expect(ack.messageId == injected.messageId)
            #expect(sim.stats(app: "helpdesk").unacked == 0)
            await socket.close()
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func unackedPushIsRedeliveredWithNewMessageIdAndSameMsgId() async throws {
        try await DingTalkSimulator.test({ $0.redeliveryTimeout = .milliseconds(150) }) { sim in
            let injected = try sim.injectText("queued before any socket", app: "helpdesk")
            #expect(injected.messageId == nil)
            let socket = try await TestSocket.open(sim)
            let topic = "/v1.0/im/bot/messages/get"
            try await sim.waitUntil("two pushes") { _ in socket.frames(topic: topic).count >= 2 }
            let frames = socket.frames(topic: topic)
            let ids = frames.map { ($0["headers"] as? [String: Any])?["messageId"] as? String }
            #expect(ids[0] != ids[1])
            #expect(frames[0]["data"] as? String == frames[1]["data"] as? String)
            let pushes = sim.pushes(app: "helpdesk")
            #expect(pushes.allSatisfy { $0.businessId == injected.msgId })
            #expect(pushes[1].isRedelivery)
            socket.ack(frames[1])
            try await sim.waitUntil("acked") { $0.isAcked(app: "helpdesk", businessId: injected.msgId) }
            let settledCount = socket.frames(topic: topic).count
            try await Task.sleep(for: .milliseconds(400))
            #expect(socket.frames(topic: topic).count == settledCount, "no more redeliveries after the ack")

            // On command, for dedup tests.
            _ = try sim.redeliver(injected)
            try await sim.waitUntil("redelivered on command") { _ in socket.frames(topic: topic).count == settledCount + 1 }
            await socket.close()
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func ackOnAnotherSocketDoesNotSettle() async throws {
        try await DingTalkSimulator.test({ $0.redeliveryTimeout = .seconds(30) }) { sim in
            let a = try await TestSocket.open(sim)
            try await sim.waitUntil { $0.liveSockets(app: "helpdesk").count == 1 }
            let injected = try sim.injectText("x", app: "helpdesk")
            try await sim.waitUntil { _ in !a.frames(topic: "/v1.0/im/bot/messages/get").isEmpty }
            let frame = a.frames(topic: "/v1.0/im/bot/messages/get")[0]
            try sim.disconnect(app: "helpdesk", mode: .deaf)
            let b = try await TestSocket.open(sim)
            b.ack(frame)
            try await sim.waitUntil { !$0.acks().isEmpty }
            #expect(sim.acks()[0].onPushSocket == false)
            #expect(!sim.isAcked(app: "helpdesk", businessId: injected.msgId))
            a.ack(frame)
            try await sim.waitUntil { $0.isAcked(app: "helpdesk", businessId: injected.msgId) }
            await a.close(); await b.close()
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func webhookRepliesAreRecordedAndExpire() async throws {
        try await DingTalkSimulator.test { sim in
            let m = try sim.injectText("hi", app: "helpdesk")
            let path = String(m.sessionWebhook.dropFirst(sim.baseURL.count))
            let ok = try await TestHTTP.request(port: sim.port, path: path, json: #"{"msgtype":"text","text":{"content":"pong"}}"#)
            #expect(ok.status == 200 && ok.json["errcode"] as? Int == 0)
            let reply = try #require(sim.webhookReplies().first)
            #expect(reply.msgId == m.msgId && reply.body.contains("pong") && reply.errcode == 0)

            sim.expireWebhook(m)
            let expired = try await TestHTTP.request(port: sim.port, path: path, json: #"{"msgtype":"text","text":{"content":"late"}}"#)
            #expect(expired.status == 200 && expired.json["errcode"] as? Int == 300001)

            let short = try sim.injectBotMessage(BotMessageSpec(app: "helpdesk", content: .text("x"), webhookLifetime: .milliseconds(30)))
            try await Task.sleep(for: .milliseconds(80))
            let late = try await TestHTTP.request(port: sim.port, path: String(short.sessionWebhook.dropFirst(sim.baseURL.count)), json: #"{"msgtype":"text","text":{"content":"x"}}"#)
            #expect(late.json["errcode"] as? Int == 300001)

            try sim.apply(.throttleWebhooks(true))
            let fresh = try sim.injectText("y", app: "helpdesk")
            let throttled = try await TestHTTP.request(port: sim.port, path: String(fresh.sessionWebhook.dropFirst(sim.baseURL.count)), json: #"{"msgtype":"text","text":{"content":"y"}}"#)
            #expect(throttled.json["errcode"] as? Int == 130101)
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func tokenAndBatchSendCheckTheHeader() async throws {
        try await DingTalkSimulator.test({ $0.invalidStaffIds = ["ghost"] }) { sim in
            let tokenAnswer = try await TestHTTP.request(port: sim.port, path: "/v1.0/oauth2/accessToken", json: #"{"appKey":"dinghelpdesk","appSecret":"secret-helpdesk"}"#)
            #expect(tokenAnswer.json["expireIn"] as? Int == 7200)
            let token = try #require(tokenAnswer.json["accessToken"] as? String)
            let send = #"{"robotCode":"dinghelpdesk","userIds":["0423297","ghost"],"msgKey":"sampleText","msgParam":"{\"content\":\"hi\"}"}"#
            let missing = try await TestHTTP.request(port: sim.port, path: "/v1.0/robot/oToMessages/batchSend", json: send)
            #expect(missing.status == 400 && missing.json["code"] as? String == "InvalidAuthentication")
            let ok = try await TestHTTP.request(port: sim.port, path: "/v1.0/robot/oToMessages/batchSend", json: send, headers: ["x-acs-dingtalk-access-token": token])
            #expect(ok.status == 200)
            #expect(ok.json["invalidStaffIdList"] as? [String] == ["ghost"])
            #expect(ok.json["processQueryKey"] is String)
            #expect(sim.openAPISends().count == 1 && sim.openAPISends()[0].endpoint == .batchSend)

            let notString = #"{"robotCode":"dinghelpdesk","userIds":["1"],"msgKey":"sampleText","msgParam":{"content":"hi"}}"#
            let rejected = try await TestHTTP.request(port: sim.port, path: "/v1.0/robot/oToMessages/batchSend", json: notString, headers: ["x-acs-dingtalk-access-token": token])
            #expect(rejected.status == 400)
            let tooMany = #"{"robotCode":"dinghelpdesk","userIds":[\#((1...21).map { "\"u\($0)\"" }.joined(separator: ","))],"msgKey":"sampleText","msgParam":"{}"}"#
            #expect(try await TestHTTP.request(port: sim.port, path: "/v1.0/robot/oToMessages/batchSend", json: tooMany, headers: ["x-acs-dingtalk-access-token": token]).status == 400)

            let group = #"{"robotCode":"dinghelpdesk","openConversationId":"cid1","msgKey":"sampleMarkdown","msgParam":"{\"title\":\"t\",\"text\":\"md\"}"}"#
            let g = try await TestHTTP.request(port: sim.port, path: "/v1.0/robot/groupMessages/send", json: group, headers: ["x-acs-dingtalk-access-token": token])
            #expect(g.status == 200 && g.json["processQueryKey"] is String)

            try sim.expireTokens(app: "helpdesk")
            let expired = try await TestHTTP.request(port: sim.port, path: "/v1.0/robot/groupMessages/send", json: group, headers: ["x-acs-dingtalk-access-token": token])
            #expect(expired.status == 400 && expired.json["code"] as? String == "InvalidAuthentication")
            #expect(sim.openAPISends().count == 2)
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func faultSwitchesAnswerOnceThenRecover() async throws {
        try await DingTalkSimulator.test { sim in
            let app = sim.configuration.apps[0]
            try sim.apply(.registration(app: nil, failure: .unavailable, count: 1))
            let body = #"{"clientId":"\#(app.clientId)","clientSecret":"\#(app.clientSecret)"}"#
            #expect(try await TestHTTP.request(port: sim.port, path: "/v1.0/gateway/connections/open", json: body).status == 503)
            #expect(try await TestHTTP.request(port: sim.port, path: "/v1.0/gateway/connections/open", json: body).status == 200)

            let fault = try await TestHTTP.request(port: sim.port, path: "/_sim/faults", json: #"{"kind":"http","endpoint":"accessToken","failure":"throttle","count":2}"#)
            #expect(fault.status == 200)
            let tokenBody = #"{"appKey":"dinghelpdesk","appSecret":"secret-helpdesk"}"#
            for _ in 0..<2 {
                let t = try await TestHTTP.request(port: sim.port, path: "/v1.0/oauth2/accessToken", json: tokenBody)
                #expect(t.status == 403 && (t.json["code"] as? String)?.contains("QpsLimit") == true)
            }
            try sim.apply(.http(endpoint: .accessToken, failure: .permissionDenied, count: 1))
            let denied = try await TestHTTP.request(port: sim.port, path: "/v1.0/oauth2/accessToken", json: tokenBody)
            #expect(denied.status == 403 && (denied.json["message"] as? String)?.contains("qyapi_robot_sendmsg") == true)
            #expect(try await TestHTTP.request(port: sim.port, path: "/v1.0/oauth2/accessToken", json: tokenBody).status == 200)
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func outageEndsWhenItsFaultsAreClearedAndFaultedCallsAreCounted() async throws {
        try await DingTalkSimulator.test { sim in
            try sim.apply(.http(endpoint: .accessToken, failure: .serverError(status: 503), count: 1000))
            let tokenBody = #"{"appKey":"dinghelpdesk","appSecret":"secret-helpdesk"}"#
            for _ in 0..<2 {
                #expect(try await TestHTTP.request(port: sim.port, path: "/v1.0/oauth2/accessToken", json: tokenBody).status == 503)
            }
            #expect(sim.faultedCalls(.accessToken) == 2)
            let unknown = try await TestHTTP.request(port: sim.port, path: "/_sim/faults", json: #"{"kind":"clearHTTPFaults","endpoint":"nope"}"#)
            #expect(unknown.status != 200)
            let clear = try await TestHTTP.request(port: sim.port, path: "/_sim/faults", json: #"{"kind":"clearHTTPFaults","endpoint":"accessToken"}"#)
            #expect(clear.status == 200)
            #expect(try await TestHTTP.request(port: sim.port, path: "/v1.0/oauth2/accessToken", json: tokenBody).status == 200)
            #expect(sim.faultedCalls(.accessToken) == 2)
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func gapRecordStaysEmptyAcrossMakeBeforeBreakAndCountsAbruptLoss() async throws {
        try await DingTalkSimulator.test({ $0.disconnectGrace = .milliseconds(100) }) { sim in
            let first = try await TestSocket.open(sim)
            try await sim.waitUntil { $0.liveSockets(app: "helpdesk").count == 1 }
            let firstId = sim.liveSockets(app: "helpdesk")[0].id
            // Make before break: the replacement is live before the old one gets its disconnect frame.
            let second = try await TestSocket.open(sim)
            try await sim.waitUntil { $0.liveSockets(app: "helpdesk").count == 2 }
            try sim.disconnect(app: "helpdesk", socket: firstId, mode: .disconnectFrame)
            try await sim.waitUntil("disconnect frame") { _ in !first.frames(topic: "disconnect").isEmpty }
            let reason = first.frames(topic: "disconnect")[0]["data"] as? String
            #expect(reason?.contains("persistent connection is timeout") == true)
            _ = try sim.injectText("after rotation", app: "helpdesk")
            try await sim.waitUntil { _ in !second.frames(topic: "/v1.0/im/bot/messages/get").isEmpty }
            #expect(first.frames(topic: "/v1.0/im/bot/messages/get").isEmpty, "no pushes after disconnect frame")
            try await sim.waitUntil("TCP closed after grace") { $0.sockets(app: "helpdesk").first { $0.id == firstId }?.state == .closed }
            #expect(sim.gaps(app: "helpdesk").isEmpty)

            // Break before make: abrupt loss leaves a gap until the next socket is live.
            try sim.disconnect(app: "helpdesk", mode: .abruptClose)
            try await sim.waitUntil { $0.liveSockets(app: "helpdesk").isEmpty }
            #expect(sim.gaps(app: "helpdesk").count == 1 && sim.gaps(app: "helpdesk")[0].end == nil)
            let third = try await TestSocket.open(sim)
            try await sim.waitUntil { $0.liveSockets(app: "helpdesk").count == 1 }
            let gaps = sim.gaps(app: "helpdesk")
            #expect(gaps.count == 1 && gaps[0].end != nil)
            #expect(sim.stats(app: "helpdesk").gaps == 1)
            await first.close(); await second.close(); await third.close()
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func controlAPIInjectsAndListsReplies() async throws {
        try await DingTalkSimulator.test { sim in
            let socket = try await TestSocket.open(sim)
            try await sim.waitUntil { $0.liveSockets(app: "helpdesk").count == 1 }
            let injected = try await TestHTTP.request(port: sim.port, path: "/_sim/messages", json: #"{"app":"helpdesk","text":"ping","conversation":"private","sender":"007"}"#)
            #expect(injected.status == 200)
            let msgId = try #require(injected.json["msgId"] as? String)
            let webhook = try #require(injected.json["sessionWebhook"] as? String)
            try await sim.waitUntil { _ in !socket.frames(topic: "/v1.0/im/bot/messages/get").isEmpty }
            let data = socket.frames(topic: "/v1.0/im/bot/messages/get")[0]["data"] as? String ?? ""
            #expect(data.contains(msgId) && data.contains(#""senderStaffId":"007""#) && data.contains(#""conversationType":"1""#))

            _ = try await TestHTTP.request(port: sim.port, path: String(webhook.dropFirst(sim.baseURL.count)), json: #"{"msgtype":"text","text":{"content":"pong"}}"#)
            let replies = try await TestHTTP.request(port: sim.port, method: .GET, path: "/_sim/replies?since=0")
            let list = try #require(replies.json["replies"] as? [[String: Any]])
            #expect(list.count == 1 && list[0]["kind"] as? String == "webhook" && list[0]["msgId"] as? String == msgId)
            let seq = try #require(list[0]["seq"] as? Int)
            let none = try await TestHTTP.request(port: sim.port, method: .GET, path: "/_sim/replies?since=\(seq)")
            #expect((none.json["replies"] as? [Any])?.isEmpty == true)
            let stats = try await TestHTTP.request(port: sim.port, method: .GET, path: "/_sim/stats")
            let app = (stats.json["apps"] as? [String: Any])?["helpdesk"] as? [String: Any]
            #expect(app?["pushes"] as? Int == 1 && app?["liveSockets"] as? Int == 1)
            await socket.close()
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func pictureDownloadServesRegisteredBytes() async throws {
        try await DingTalkSimulator.test { sim in
            let m = try sim.injectBotMessage(BotMessageSpec(app: "helpdesk", content: .picture(bytes: Array("PNGDATA".utf8))))
            let code = try #require(m.downloadCodes.first)
            let token = try await TestHTTP.request(port: sim.port, path: "/v1.0/oauth2/accessToken", json: #"{"appKey":"dinghelpdesk","appSecret":"secret-helpdesk"}"#).json["accessToken"] as? String ?? ""
            let answer = try await TestHTTP.request(port: sim.port, path: "/v1.0/robot/messageFiles/download", json: #"{"robotCode":"dinghelpdesk","downloadCode":"\#(code)"}"#, headers: ["x-acs-dingtalk-access-token": token])
            let url = try #require(answer.json["downloadUrl"] as? String)
            let file = try await TestHTTP.request(port: sim.port, method: .GET, path: String(url.dropFirst(sim.baseURL.count)))
            #expect(file.status == 200 && file.body == "PNGDATA")
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func cardCallbackReturnsTheAckResponse() async throws {
        try await DingTalkSimulator.test { sim in
            let socket = try await TestSocket.open(sim)
            try await sim.waitUntil { $0.liveSockets(app: "helpdesk").count == 1 }
            async let response = sim.injectCardCallback(app: "helpdesk", outTrackId: "track-1", actionIds: ["agree"])
            try await sim.waitUntil { _ in !socket.frames(topic: "/v1.0/card/instances/callback").isEmpty }
            let frame = socket.frames(topic: "/v1.0/card/instances/callback")[0]
            #expect((frame["data"] as? String)?.contains("track-1") == true)
            socket.ack(frame, data: #"{"response":{"cardData":{"cardParamMap":{"status":"done"}}}}"#)
            let text = try #require(try await response)
            #expect(text.contains(#""status":"done""#))
            await socket.close()
        }
    }
}

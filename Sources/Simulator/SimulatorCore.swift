import Foundation
import NIOCore

/// A frame to write once the lock is released.
struct PendingWrite: Sendable {
    var channel: any Channel
    var text: String
}

/// One business message (bot message, event, card click) and everything needed to push it again.
struct Delivery {
    var id: Int
    var app: String
    var type: FrameType
    var topic: String
    var data: String
    var businessId: String
    /// Pre-rendered extra header members, each starting with a comma.
    var extraHeaders: String
    var settled = false
    var isCard = false
    var isEvent = false
    var pushCount = 0
}

struct PendingPush {
    var deliveryId: Int
    var socketId: Int
    /// When the frame was built for writing: the start of its ack latency.
    var pushedAt: NIODeadline
}

struct SocketEntry {
    var id: Int
    var app: String
    var channel: any Channel
    var state: SocketState
    var openedAt: Date
    var openedDeadline: NIODeadline
    var connectionId: String
    /// Outstanding server pings: messageId → opaque.
    var pings: [String: String] = [:]
    var blackHoled = false
    var closedAt: Date?
}

struct TicketEntry {
    var app: String
    var expires: NIODeadline
    var used = false
}

struct SessionEntry {
    var app: String
    var msgId: String
    var expiresAt: Date
    var expiredByCommand = false
}

struct TokenEntry {
    var app: String
    var expiresAt: Date
}

struct FileEntry {
    var app: String
    var bytes: [UInt8]
    var urlToken: String
}

struct CountedRegistrationFault {
    var app: String?
    var failure: RegistrationFailure
    var remaining: Int
}

struct CountedHTTPFault {
    var failure: HTTPFailure
    var remaining: Int
}

/// Everything mutable, behind one lock. Functions here never do I/O: they return writes.
struct SimulatorCore {
    var rng: SplitMix64
    var port = 0
    var scheme = "http"
    var shutDown = false

    var tickets: [String: TicketEntry] = [:]
    var registrations: [RegistrationRecord] = []
    var registrationFaults: [CountedRegistrationFault] = []
    var httpFaults: [OpenAPIEndpoint: [CountedHTTPFault]] = [:]
    var faultedCalls: [OpenAPIEndpoint: Int] = [:]
    var rotationAge: Duration?
    var webhookThrottle = false

    /// Every accepted TCP connection still open (HTTP and upgraded), closed at shutdown.
    var connections: [ObjectIdentifier: any Channel] = [:]
    var sockets: [Int: SocketEntry] = [:]
    var liveByApp: [String: [Int]] = [:]
    var nextSocketId = 1

    var deliveries: [Int: Delivery] = [:]
    var deliveryByBusinessKey: [String: Int] = [:]
    var nextDeliveryId = 1
    var pending: [String: PendingPush] = [:]
    /// Redelivery deadlines in push order (deadlines only grow), consumed from `timeoutHead`.
    var timeouts: [(deadline: NIODeadline, messageId: String)] = []
    var timeoutHead = 0
    var waiting: [String: [Int]] = [:]
    var cardWaiters: [Int: (continuation: CheckedContinuation<String?, any Error>, deadline: NIODeadline)] = [:]
    var cardResponses: [Int: String?] = [:]

    var pushes: [PushRecord] = []
    var acks: [AckRecord] = []
    /// Push-to-ack times of accepted acks, when `SimulatorConfiguration.recordAckLatencies` is on.
    var ackLatencies: [TimeAmount] = []
    var pingEchoes: [PingEchoRecord] = []
    var webhookReplies: [WebhookReplyRecord] = []
    var openAPISends: [OpenAPISendRecord] = []
    var replySequence = 0

    var sessions: [String: SessionEntry] = [:]
    var tokens: [String: TokenEntry] = [:]
    var files: [String: FileEntry] = [:]
    var fileByURLToken: [String: String] = [:]

    var stats: [String: AppStats] = [:]
    var gaps: [String: [GapRecord]] = [:]
    var openGap: [String: Date] = [:]
    var malformedFrames = 0

    init(seed: UInt64, apps: [SimulatedApp]) {
        rng = SplitMix64(seed: seed)
        for app in apps { stats[app.name] = AppStats(); liveByApp[app.name] = [] }
    }

    static func businessKey(app: String, id: String) -> String { app + "\u{1}" + id }

    // MARK: sockets and gaps

    mutating func setSocketState(_ id: Int, _ new: SocketState, now: Date) {
        guard var entry = sockets[id], entry.state != new else { return }
        let old = entry.state
        entry.state = new
        if new == .closed || new == .draining { entry.pings = [:] }
        if new == .closed { entry.closedAt = now }
        sockets[id] = entry
        let app = entry.app
        let before = liveByApp[app, default: []].count
        if old == .live { liveByApp[app, default: []].removeAll { $0 == id } }
        if new == .live { liveByApp[app, default: []].append(id) }
        let after = liveByApp[app, default: []].count
        stats[app, default: AppStats()].liveSockets = after
        if new == .closed { stats[app, default: AppStats()].openSockets -= 1 }
        if before > 0 && after == 0 {
            openGap[app] = now
        } else if before == 0 && after > 0, let start = openGap.removeValue(forKey: app) {
            gaps[app, default: []].append(GapRecord(app: app, start: start, end: now))
            stats[app, default: AppStats()].gaps += 1
            stats[app, default: AppStats()].gapSeconds += now.timeIntervalSince(start)
        }
    }

    // MARK: pushes

    mutating func newDelivery(app: String, type: FrameType, topic: String, data: String, businessId: String?, extraHeaders: String, isCard: Bool = false, isEvent: Bool = false) -> Int {
        let id = nextDeliveryId
        nextDeliveryId += 1
        let business = businessId ?? "delivery-\(id)"
        deliveries[id] = Delivery(id: id, app: app, type: type, topic: topic, data: data, businessId: business, extraHeaders: extraHeaders, isCard: isCard, isEvent: isEvent)
        deliveryByBusinessKey[Self.businessKey(app: app, id: business)] = id
        return id
    }

    /// Pushes delivery `id` to one random live socket of its app, or parks it until one is live.
    mutating func push(_ id: Int, now: Date, recordDetails: Bool, redeliveryTimeout: TimeAmount) -> (messageId: String?, write: PendingWrite?) {
        guard var delivery = deliveries[id] else { return (nil, nil) }
        let live = liveByApp[delivery.app, default: []]
        guard !live.isEmpty else {
            waiting[delivery.app, default: []].append(id)
            return (nil, nil)
        }
        let socketId = live.count == 1 ? live[0] : live[Int(rng.next() % UInt64(live.count))]
        guard let socket = sockets[socketId] else { return (nil, nil) }
        let messageId = rng.messageId()
        let isRedelivery = delivery.pushCount > 0
        delivery.pushCount += 1
        if !isRedelivery && delivery.businessId.hasPrefix("delivery-") {
            // Callbacks without a business id are keyed by the first push's messageId.
            deliveryByBusinessKey[Self.businessKey(app: delivery.app, id: delivery.businessId)] = nil
            delivery.businessId = messageId
            deliveryByBusinessKey[Self.businessKey(app: delivery.app, id: messageId)] = id
        }
        deliveries[id] = delivery
        let pushedAt = NIODeadline.now()
        pending[messageId] = PendingPush(deliveryId: id, socketId: socketId, pushedAt: pushedAt)
        timeouts.append((pushedAt + redeliveryTimeout, messageId))
        var appStats = stats[delivery.app, default: AppStats()]
        appStats.pushes += 1
        if isRedelivery { appStats.redeliveries += 1 }
        appStats.unacked += 1
        stats[delivery.app] = appStats
        if recordDetails {
            pushes.append(PushRecord(app: delivery.app, type: delivery.type, topic: delivery.topic, messageId: messageId, businessId: delivery.businessId, socketId: socketId, isRedelivery: isRedelivery, time: now))
        }
        let millis = Int64(now.timeIntervalSince1970 * 1000)
        var text = #"{"specVersion":"1.0","type":""#
        text += delivery.type.rawValue
        text += #"","headers":{"appId":""#
        text += appId(delivery.app)
        text += #"","connectionId":""#
        text += socket.connectionId
        text += #"","contentType":"application/json","messageId":""#
        text += messageId
        text += #"","time":""#
        text += String(millis)
        text += #"","topic":"#
        text += JSONText.quote(delivery.topic)
        text += delivery.extraHeaders
        text += #"},"data":"#
        text += JSONText.quote(delivery.data)
        text += "}"
        return (messageId, PendingWrite(channel: socket.channel, text: text))
    }

    func appId(_ app: String) -> String {
        // Stable per app name, shaped like a uuid without dashes.
        var h = SplitMix64(seed: app.utf8.reduce(UInt64(7)) { $0 &* 31 &+ UInt64($1) })
        return h.hex(32)
    }

    /// Pushes everything parked for `app` (called when a socket of it becomes live).
    mutating func flushWaiting(app: String, now: Date, recordDetails: Bool, redeliveryTimeout: TimeAmount) -> [PendingWrite] {
        guard let parked = waiting.removeValue(forKey: app), !parked.isEmpty else { return [] }
        var writes: [PendingWrite] = []
        for id in parked {
            if let w = push(id, now: now, recordDetails: recordDetails, redeliveryTimeout: redeliveryTimeout).write { writes.append(w) }
        }
        return writes
    }

    // MARK: acks

    enum AckOutcome {
        case none
        case card(CheckedContinuation<String?, any Error>, String?)
    }

    mutating func receiveAck(
        socketId: Int, code: Int, messageId: String, data: String?, now: Date, recordDetails: Bool, acceptOtherSockets: Bool,
        receivedAt: NIODeadline? = nil
    ) -> AckOutcome {
        guard let socket = sockets[socketId] else { return .none }
        let app = socket.app
        if let opaque = socket.pings[messageId] {
            sockets[socketId]?.pings[messageId] = nil
            let echoed = data.flatMap { JSONText.object($0)?["opaque"] as? String }
            let record = PingEchoRecord(app: app, socketId: socketId, messageId: messageId, expectedOpaque: opaque, echoedOpaque: echoed, code: code, time: now)
            stats[app, default: AppStats()].pingEchoes += 1
            if !record.matched { stats[app, default: AppStats()].pingMismatches += 1 }
            if recordDetails || !record.matched { pingEchoes.append(record) }
            return .none
        }
        guard let push = pending[messageId] else {
            if recordDetails {
                acks.append(AckRecord(app: app, code: code, messageId: messageId, data: data, socketId: socketId, matchedPush: false, onPushSocket: nil, time: now))
            }
            return .none
        }
        let onPushSocket = push.socketId == socketId
        var appStats = stats[app, default: AppStats()]
        appStats.acks += 1
        if !onPushSocket { appStats.acksOnWrongSocket += 1 }
        if recordDetails {
            acks.append(AckRecord(app: app, code: code, messageId: messageId, data: data, socketId: socketId, matchedPush: true, onPushSocket: onPushSocket, time: now))
        }
        guard code == 200, onPushSocket || acceptOtherSockets, var delivery = deliveries[push.deliveryId] else {
            stats[app] = appStats
            return .none
        }
        var cardResponse: String?? = nil
        if delivery.isEvent || delivery.isCard {
            let object = data.flatMap { JSONText.object($0) }
            if delivery.isEvent, (object?["status"] as? String)?.uppercased() == "LATER" {
                stats[app] = appStats
                return .none  // stays pending: pushed again after the redelivery timeout
            }
            if delivery.isCard {
                let response = object?["response"]
                cardResponse = .some(response.map { JSONText.encode($0) }.flatMap { $0 == "null" ? nil : $0 })
            }
        }
        pending[messageId] = nil
        if let receivedAt { ackLatencies.append(receivedAt - push.pushedAt) }
        appStats.unacked -= 1
        stats[app] = appStats
        delivery.settled = true
        if recordDetails || delivery.isCard {
            deliveries[push.deliveryId] = delivery
        } else {
            // Benchmarks: forget settled messages so memory stays flat (no redeliver-on-command for them).
            deliveries[push.deliveryId] = nil
            deliveryByBusinessKey[Self.businessKey(app: app, id: delivery.businessId)] = nil
        }
        if let cardResponse {
            cardResponses[push.deliveryId] = cardResponse
            if let waiter = cardWaiters.removeValue(forKey: push.deliveryId) {
                return .card(waiter.continuation, cardResponse)
            }
        }
        return .none
    }

    // MARK: redelivery sweep

    mutating func sweep(now: Date, nowDeadline: NIODeadline, recordDetails: Bool, redeliveryTimeout: TimeAmount) -> (writes: [PendingWrite], expiredCards: [CheckedContinuation<String?, any Error>]) {
        var writes: [PendingWrite] = []
        while timeoutHead < timeouts.count, timeouts[timeoutHead].deadline <= nowDeadline {
            let messageId = timeouts[timeoutHead].messageId
            timeoutHead += 1
            guard let push = pending.removeValue(forKey: messageId) else { continue }
            guard let delivery = deliveries[push.deliveryId] else { continue }
            stats[delivery.app, default: AppStats()].unacked -= 1
            if delivery.settled { continue }
            if let w = self.push(push.deliveryId, now: now, recordDetails: recordDetails, redeliveryTimeout: redeliveryTimeout).write { writes.append(w) }
        }
        if timeoutHead > 4096 && timeoutHead * 2 > timeouts.count {
            timeouts.removeFirst(timeoutHead)
            timeoutHead = 0
        }
        var expired: [CheckedContinuation<String?, any Error>] = []
        if !cardWaiters.isEmpty {
            for (id, waiter) in cardWaiters where waiter.deadline <= nowDeadline {
                cardWaiters[id] = nil
                expired.append(waiter.continuation)
            }
        }
        return (writes, expired)
    }
}

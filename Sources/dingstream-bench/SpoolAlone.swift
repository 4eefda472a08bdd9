import Foundation
import Logging
import Spool
import StreamProtocol

/// The spool by itself on the same filesystem: records submitted from one thread with `window`
/// in flight, no sockets, no simulator, no dispatcher. Next to the full run, it shows how much of
/// the end-to-end rate the file work alone leaves on this machine.
enum SpoolAlone {
    static func measure(parent: String, _ options: BenchOptions, leftovers: inout [String]) async throws -> LoadResult {
        let root = parent + "/dingstream-bench-spool-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        leftovers.append(root)
        var logger = Logger(label: "bench.spool")
        logger.logLevel = .error
        let spool = Spool(directory: root, logger: logger)
        try spool.open()
        let records = (0..<options.messages).compactMap { record(index: $0) }
        let runner = Task { await spool.run() }
        let drain = Task {
            // Nothing dispatches here; the announcements are only drained.
            for await _ in spool.entries {}
        }
        let cpu = MachineCPU()
        // This process: the simulator in it idles meanwhile.
        let ownCPU = ProcessCPU([getpid()])
        let (stored, elapsed) = try await Bench.onOwnThread { submitAll(records, to: spool, window: options.window) }
        var result = LoadResult(acked: stored, offered: records.count, elapsed: elapsed)
        result.cpuMicrosPerMessage = cpu.microsPerMessage(stored)
        result.ownCPUMicrosPerMessage = ownCPU.microsPerMessage(stored)
        runner.cancel()
        await runner.value
        await drain.value
        return result
    }

    /// Submits every record keeping at most `window` outstanding; returns how many were stored
    /// and the seconds from the first submit to the last completion.
    private static func submitAll(_ records: [IntakeRecord], to spool: Spool, window: Int) -> (Int, Double) {
        let slots = DispatchSemaphore(value: window)
        let done = DispatchGroup()
        let stored = StoredCount()
        let start = LoadDriver.seconds()
        for record in records {
            slots.wait()
            done.enter()
            spool.submit(record) { outcome in
                if case .stored = outcome { stored.add() }
                slots.signal()
                done.leave()
            }
        }
        done.wait()
        return (stored.value, LoadDriver.seconds() - start)
    }

    /// A bot message as the simulator pushes it, unique per index.
    private static func record(index: Int) -> IntakeRecord? {
        let id = "msgbench\(index)=="
        let data = """
            {"conversationId":"cidbenchconversation==","atUsers":[{"dingtalkId":"$:LWCP_v1:$bench"}],"chatbotCorpId":"dingbenchcorp",\
            "chatbotUserId":"$:LWCP_v1:$botbench","msgId":"\(id)","senderNick":"Bench User","isAdmin":false,\
            "senderStaffId":"staffbench","sessionWebhookExpiredTime":1900000000000,"createAt":1700000000000,\
            "senderCorpId":"dingbenchcorp","conversationType":"1","senderId":"$:LWCP_v1:$senderbench",\
            "sessionWebhook":"https://oapi.dingtalk.com/robot/sendBySession?session=benchsession",\
            "robotCode":"dingbench","msgtype":"text","text":{"content":"bench \(index)"}}
            """
        let frame = StreamFrame(
            kind: .callback,
            headers: [
                "appId": "bench", "connectionId": "bench-conn", "contentType": "application/json",
                "messageId": "bench-\(index)", "time": "1700000000000", "topic": Topic.botMessage,
            ],
            data: data)
        return IntakeRecord(app: "bench", frame: frame, connection: "bench-conn", receivedMillis: 1_700_000_000_000 + Int64(index))
    }
}

private final class StoredCount: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0

    func add() {
        lock.lock()
        count += 1
        lock.unlock()
    }

    var value: Int {
        lock.lock()
        defer { lock.unlock() }
        return count
    }
}

/// Busy CPU time of the whole machine (every core, kernel threads included) since creation, from
/// /proc/stat: what one acked message costs, load generator and writeback included.
struct MachineCPU {
    private let startBusy: Double?

    init() { startBusy = Self.busySeconds() }

    func microsPerMessage(_ messages: Int) -> Double {
        guard let startBusy, let endBusy = Self.busySeconds(), messages > 0 else { return .nan }
        return (endBusy - startBusy) / Double(messages) * 1e6
    }

    /// user + nice + system + irq + softirq + steal, in seconds.
    static func busySeconds() -> Double? {
        guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
            let line = text.split(separator: "\n").first, line.hasPrefix("cpu ")
        else { return nil }
        let fields = line.split(separator: " ").dropFirst().compactMap { Double($0) }
        guard fields.count >= 8 else { return nil }
        let ticks = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7]
        return ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
    }
}

/// CPU time (user + system) of some processes together, from `/proc/PID/stat`.
struct ProcessCPU {
    let pids: [Int32]
    private let start: Double?

    init(_ pids: [Int32]) {
        self.pids = pids
        start = Self.seconds(pids)
    }

    func microsPerMessage(_ messages: Int) -> Double {
        guard let start, let end = Self.seconds(pids), messages > 0 else { return .nan }
        return (end - start) / Double(messages) * 1e6
    }

    static func seconds(_ pids: [Int32]) -> Double? {
        var total = 0.0
        for pid in pids {
            guard let seconds = seconds(pid) else { return nil }
            total += seconds
        }
        return total
    }

    static func seconds(_ pid: Int32) -> Double? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = text.lastIndex(of: ")")
        else { return nil }
        // After "pid (comm)": state is field 3, utime 14, stime 15.
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// A field of `/proc/PID/status` in MiB: `VmRSS` (all resident pages), `RssAnon` (the
    /// process's own memory, without the shared code of its libraries).
    static func residentMiB(_ pid: Int32, field: String = "VmRSS") -> Double {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix(field + ":") }),
            let kib = Double(line.split(separator: " ").dropFirst().first ?? "")
        else { return .nan }
        return kib / 1024
    }
}

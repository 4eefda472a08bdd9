import CoreMetrics
import Foundation
import Handlers
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Spool
import StreamProtocol
import Synchronization

/// Settings the dispatcher reads per message; replaced on reload.
struct DispatchSettings: Sendable {
    var apps: [String: Configuration.App]
    var handlerTimeout: Duration
    var maxAttempts: Int
    /// The wait before the second try; doubled for each further one, up to an hour.
    var retryDelay: Duration
    /// Downloads the files of bot messages before their handlers run; nil downloads nothing.
    var attachments: AttachmentFetcher?
    /// Each app's `http_handler`, called before the scripts of handlers/.
    var httpHandlers: [String: HTTPHandler] = [:]

    /// When a message whose `attempt`-th try asked to come back is tried again: `retryDelay`,
    /// then twice that, and so on, never less than configured (these are single messages, not
    /// a crowd of clients to spread out) and at most an hour (or `retryDelay`, if longer).
    func nextTry(afterAttempt attempt: Int) -> (delay: Duration, due: Date) {
        let cap = max(retryDelay, .seconds(3600))
        // 2^20 times a second is already far past the cap: no overflow.
        let delay = min(retryDelay * (1 << min(max(attempt - 1, 0), 20)), cap)
        let seconds = Double(delay.components.seconds) + Double(delay.components.attoseconds) / 1e18
        return (delay, Date().addingTimeInterval(seconds))
    }
}

/// Takes committed entries from `new/`, runs the handlers for each (one conversation at a time,
/// `workers` at most), and hands replies to the outbox. On graceful shutdown it stops taking
/// entries, lets running handlers finish until the stop's deadline, and leaves the rest in the spool.
final class Dispatcher: Service {
    private let spool: Spool
    private let scheduler: ConversationScheduler
    private let settings: Mutex<DispatchSettings>
    private let handlerScans: HandlerScanCache
    private let baseEnvironment: [String: String]
    private let stopDeadline: StopDeadline
    /// Takes an entry whose replies were just committed to the outbox, for delivery.
    private let deliverReplies: @Sendable (SpoolEntry) -> Void
    private let cards: CardResponder?
    private let metrics: DaemonMetrics
    /// Told of every handler run as it ends (the sandbox page lists them).
    private let onHandlerRun: (@Sendable (HandlerRunReport) -> Void)?
    private let logger: Logger
    /// The handler refusals last logged, so that a file turning unsafe while the daemon runs is
    /// reported once, not once per message.
    private let loggedRefusals = Mutex<Set<String>>([])
    private let inFlight = Mutex<Set<EntryName>>([])
    /// Announcements to mark done without a handler. One writer job takes all that queued up
    /// meanwhile, so that a burst costs one change rather than one per message.
    private let unhandled = Mutex<[Announcement]>([])
    /// When a handler run last ended (nanoseconds of the monotonic clock); the watchdog checks
    /// that it moves while work is queued.
    private let lastProgress = Atomic<Int64>(Dispatcher.monotonicNanoseconds())
    /// Set by graceful shutdown: announcements are no longer taken.
    private let stopping = Atomic<Bool>(false)

    init(
        spool: Spool, workers: Int, settings: DispatchSettings, baseEnvironment: [String: String],
        stopDeadline: StopDeadline, deliverReplies: @escaping @Sendable (SpoolEntry) -> Void, cards: CardResponder? = nil,
        metrics: DaemonMetrics = .disabled, onHandlerRun: (@Sendable (HandlerRunReport) -> Void)? = nil, logger: Logger
    ) {
        self.spool = spool
        self.scheduler = ConversationScheduler(workers: workers)
        self.settings = Mutex(settings)
        self.handlerScans = HandlerScanCache(path: spool.directory + "/handlers", allowedOwners: HandlerDirectory.allowedOwners())
        self.baseEnvironment = baseEnvironment
        self.stopDeadline = stopDeadline
        self.deliverReplies = deliverReplies
        self.cards = cards
        self.metrics = metrics
        self.onHandlerRun = onHandlerRun
        self.logger = logger
        spool.storeHandlerless { [weak self] in self?.handlerlessApps() ?? [] }
        spool.announce(
            to: { [weak self] announcement, claimed in self?.offer(announcement, claimed: claimed) },
            claims: { [weak self] candidates in self?.intakeClaims(candidates) ?? candidates.map { _ in .queue } })
    }

    /// Which entries of an intake round to take for handling in that round: those that would
    /// start at once. That spares each a claim of its own, a commit and two thread hand-offs.
    /// Those that would wait stay `new` until they can run (`spool ls` shows what really runs).
    /// Those nothing reads are finished (as `handlerlessApps` would), from the same scan.
    private func intakeClaims(_ candidates: [Announcement]) -> [IntakeClaim] {
        let scan = currentScan()
        var claims = candidates.map { readsNothing($0.name.app, scan) ? IntakeClaim.finish : .queue }
        guard !stopping.load(ordering: .relaxed) else { return claims }
        let eligible = candidates.indices.filter { claims[$0] == .queue }
        let starts = scheduler.wouldStart(eligible.map { Self.queue(of: candidates[$0]) })
        // The message file is for scripts; an HTTP handler alone gets the body.
        for (index, starts) in zip(eligible, starts) where starts { claims[index] = .claim(messageFile: !scan.runnable.isEmpty) }
        return claims
    }

    /// The scheduler's queue of an entry: its conversation, else its own.
    private static func queue(of announcement: Announcement) -> String {
        announcement.conversation ?? announcement.name.value
    }

    /// The configured apps whose messages nothing would read now: no runnable handler in
    /// `handlers/` and no `http_handler`. The spool stores theirs as done at once. Asked once per
    /// intake round, so a handler dropped in is used from the next round on.
    func handlerlessApps() -> Set<String> {
        handlerlessApps(currentScan())
    }

    /// The handler scan as it stands, its refusals logged when it was just taken.
    private func currentScan() -> HandlerScan {
        let (scan, fresh) = handlerScans.current()
        if fresh { logRefusals(scan) }
        return scan
    }

    private func handlerlessApps(_ scan: HandlerScan) -> Set<String> {
        guard scan.runnable.isEmpty else { return [] }
        return settings.withLock { current in Set(current.apps.keys.filter { current.httpHandlers[$0] == nil }) }
    }

    /// Whether nothing would read a message of `app` (also one no longer configured).
    private func readsNothing(_ app: String, _ scan: HandlerScan) -> Bool {
        scan.runnable.isEmpty && settings.withLock { $0.httpHandlers[app] == nil }
    }

    func update(_ new: DispatchSettings, workers: Int) {
        settings.withLock { $0 = new }
        scheduler.setWorkers(workers)
    }

    /// Messages whose handlers run now.
    var running: Int { scheduler.snapshot.running }

    var queued: Int { scheduler.snapshot.queued + scheduler.snapshot.running }

    /// The watchdog's dispatcher probe: with handlers running or waiting, one must have ended
    /// within `handler_timeout` plus a minute (a run past its timeout is killed, which ends it),
    /// else the dispatcher is stuck and systemd should restart the daemon.
    func isMakingProgress() -> Bool {
        guard queued > 0 else {
            lastProgress.store(Self.monotonicNanoseconds(), ordering: .relaxed)
            return true
        }
        let limit = settings.withLock { $0.handlerTimeout } + .seconds(60)
        let idle = Self.monotonicNanoseconds() - lastProgress.load(ordering: .relaxed)
        return idle < limit.components.seconds * 1_000_000_000
    }

    static func monotonicNanoseconds() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
    }

    func run() async throws {
        logRefusals(handlerScans.current().scan, force: true)
        await withTaskGroup(of: Void.self) { group in
            // The spool announces what waits from before the start (recovery, retries) first,
            // then whatever commits; the scheduler starts what was offered before it runs.
            group.addTask { await self.scheduler.run() }
            try? await gracefulShutdown()
            stopping.store(true, ordering: .relaxed)
            // No new handler starts; running ones get what is left of the grace, then are cancelled
            // (their process groups killed) and their entries go back to new/ at the next start.
            scheduler.shutdown()
            let running = scheduler.snapshot.running
            if running > 0 {
                logger.notice(
                    "stopping: waiting up to \(stopDeadline.remainingText) for the handlers of \(running) message\(running == 1 ? "" : "s"); those still running then are stopped and run again after the next start")
            }
            group.addTask { [stopDeadline] in try? await Task.sleep(for: stopDeadline.remaining) }
            await group.next()
            group.cancelAll()
        }
    }

    /// Queues an announced entry unless it is already queued or running. One conversation's
    /// messages are handled in arrival order; without a conversation the message is its own
    /// queue. Card callbacks are urgent: their ack waits for the answer. Called on the spool's
    /// writer thread, in the order the entries became runnable; `claimed` when the intake round
    /// took it for handling already.
    private func offer(_ announcement: Announcement, claimed: ClaimedEntry?) {
        // A claimed entry not taken stays running until the next start makes it new again.
        guard !stopping.load(ordering: .relaxed) else { return }
        let name = announcement.name
        // A claimed entry has a reader: the round's claim decision just looked at handlers/.
        if claimed == nil, readsNothing(name.app, currentScan()) {
            // Nothing would read it: done with the writer's next round, without a task (logged
            // once, in logRefusals). Announced twice, the second finds it done.
            let first = unhandled.withLock { queued in
                queued.append(announcement)
                return queued.count == 1
            }
            guard first else { return }  // the job queued with the first one takes it
            spool.perform { [self] writer in
                let taken = unhandled.withLock { queued in
                    defer { queued = [] }
                    return queued
                }
                do throws(SpoolError) {
                    try writer.skip(taken.map(\.name))
                } catch {
                    logger.error("spool: \(error)", metadata: ["msg.key": "\(taken.map(\.name.value).joined(separator: " "))"])
                }
                for done in taken where done.kind == .card { cards?.finished(done.name) }
            }
            return
        }
        guard inFlight.withLock({ $0.insert(name).inserted }) else { return }
        let httpFirst = claimed.flatMap { httpHandlerFirst($0.entry) }
        let accepted = scheduler.submit(
            conversation: Self.queue(of: announcement), urgent: announcement.kind == .card, startHere: httpFirst != nil,
            executor: httpFirst?.executor
        ) { [self] in
            await handle(name, kind: announcement.kind, claimed: claimed)
            _ = inFlight.withLock { $0.remove(name) }
        }
        if !accepted { _ = inFlight.withLock { $0.remove(name) } }
    }

    /// The HTTP handler that handling `entry` begins with, when nothing slow comes before its
    /// request (no files to download). Such a job runs on the writer thread until the request is
    /// out, which saves waking a thread for it first, and then on the handler's event loop until
    /// its outcome is recorded: the answer is read, the outcome committed (`Spool.performHere`)
    /// and the reply sent from there, with no thread woken between the answer and the reply
    /// while the writer is free.
    private func httpHandlerFirst(_ entry: SpoolEntry) -> HTTPHandler? {
        settings.withLock { current in
            guard current.attachments == nil || entry.botMessage?.msgtype == "text" else { return nil }
            return current.httpHandlers[entry.app]
        }
    }

    /// Logs the scan's refusals when they differ from the last ones logged (or with `force`).
    private func logRefusals(_ scan: HandlerScan, force: Bool = false) {
        var current = Set(scan.entries.filter { !$0.isRunnable }.map { "\($0.path) \($0.status)" })
        if let problem = scan.directoryProblem { current.insert("\(scan.directory) \(problem)") }
        if scan.runnable.isEmpty { current.insert("no runnable handler") }
        let changed = loggedRefusals.withLock { logged in
            defer { logged = current }
            return logged != current
        }
        guard force || changed else { return }
        scan.log(to: logger)
        // Said once while it lasts, not once per message; an app with an http_handler has one.
        if !handlerlessApps(scan).isEmpty {
            logger.warning("no runnable handler in \(handlerScans.path); messages are marked done without a reply until one is added (see dingstream handlers check)")
        }
    }

    private func handle(_ name: EntryName, kind: MessageKind, claimed claimedAtIntake: ClaimedEntry?) async {
        var log = logger
        log[metadataKey: "msg.key"] = "\(name)"
        let scan = currentScan()
        let claimed: ClaimedEntry
        do {
            // The message file is for scripts; an HTTP handler alone gets the body.
            let messageFile = !scan.runnable.isEmpty
            if let claimedAtIntake {
                claimed = claimedAtIntake
            } else {
                claimed = try await spool.perform { writer throws(SpoolError) in try writer.claim(name, messageFile: messageFile) }
            }
        } catch where error.code == .notFound {
            return
        } catch where error.code == .corrupt {
            log.error("cannot read \(name): \(error)")
            metrics.app(name.app).deadLetters[.unreadable]?.increment()
            _ = try? await spool.perform { writer throws(SpoolError) in try writer.deadLetter(name, reason: "\(error)") }
            return
        } catch {
            log.error("cannot claim \(name): \(error)")
            return  // still new: the next rescan offers it again
        }
        let entry = claimed.entry
        let series = metrics.app(entry.app)
        log[metadataKey: "app"] = "\(entry.app)"
        // Whatever happens below, a card callback's ack must not wait longer than this run.
        defer { if entry.kind == .card { cards?.finished(name) } }
        let current = settings.withLock { $0 }
        let message = entry.botMessage
        if let actor = Self.actor(of: entry), let app = current.apps[entry.app], !app.allows(staffID: actor.staffID) {
            log.warning(
                "\(actor.what) from \(actor.staffID ?? "unknown sender")\(actor.nick.map { " (\($0))" } ?? "") refused: not in allowed_users of app \(entry.app); add the staff id there to let them in")
            series.refused[.notAllowed]?[entry.kind].increment()
            let note = "refused: \(actor.staffID ?? "unknown sender") is not in allowed_users of app \(entry.app)\n"
            await finish { writer throws(SpoolError) in try writer.complete(name, replies: nil, note: note) }
            return
        }
        var attachmentsFolder: String?
        if let fetcher = current.attachments {
            let attempts = entry.attempts + 1
            switch await fetcher.fetch(entry, spool: spool, finalAttempt: attempts >= current.maxAttempts, logger: log) {
            case .ready(let folder):
                attachmentsFolder = folder
            case .retryLater(let reason):
                let (delay, due) = current.nextTry(afterAttempt: attempts)
                log.warning("attachments not downloaded (\(reason)); message tried again in \(DurationText.format(delay)) (attempt \(attempts) of \(current.maxAttempts))")
                await finish { writer throws(SpoolError) in try writer.retryLater(name, attempts: attempts, notBefore: due) }
                return
            }
        }
        let environment = scan.runnable.isEmpty ? [:] : HandlerEnvironment.make(
            app: entry.app, kind: entry.kind, topic: entry.topic ?? "", message: message, messageFile: claimed.path ?? "/dev/null",
            attachments: attachmentsFolder, base: baseEnvironment)
        var replies: [String] = []
        // The HTTP handler first, then the scripts, each after the one before has finished.
        var steps: [HandlerStep] = current.httpHandlers[entry.app].map { [.http($0)] } ?? []
        steps += scan.runnable.map { .script($0) }
        for step in steps {
            var handlerLog = log
            let run: HandlerRun
            switch step {
            case .http(let handler):
                handlerLog[metadataKey: "handler.name"] = "\(handler.settings.url)"
                run = await handler.call(entry, attachments: attachmentsFolder)
            case .script(let handler):
                handlerLog[metadataKey: "handler.name"] = "\(handler.name)"
                // Off the event loop an HTTP handler's answer may have left this job on.
                run = await withTaskExecutorPreference(globalConcurrentExecutor) {
                    HandlerRun(
                        await HandlerRunner.run(
                            executable: handler.path, stdinPath: claimed.path ?? "/dev/null", environment: environment,
                            workingDirectory: spool.directory, timeout: current.handlerTimeout, outputLimit: 1 << 20,
                            stderrTailBytes: 4096))
                }
            }
            lastProgress.store(Self.monotonicNanoseconds(), ordering: .relaxed)
            if let result = run.script, result.outcome == .done, !result.stderrTail.isEmpty {
                // A failure's stderr goes into its dead letter; a success's would be lost.
                handlerLog.info("handler wrote to stderr: \(Self.bounded(result.stderrTail))")
            }
            series.handlerRuns[run.metricsResult]?.increment()
            series.handlerDuration.recordNanoseconds(DaemonMetrics.nanoseconds(run.duration))
            onHandlerRun?(HandlerRunReport(entry: name, kind: entry.kind, handler: step.name, run: run))
            switch run.outcome {
            case .done where entry.kind == .card:
                // A card's answer is the ack's response, not a message: it has no conversation.
                if let response = Self.cardResponse(run.output) {
                    cards?.answer(name, response: response)
                } else if !run.output.isEmpty {
                    handlerLog.notice("card handler answered something that is not a JSON object; ignored (answer a card update object, or nothing)")
                }
            case .done where entry.kind == .event:
                // An event has no conversation to answer in; a handler that wants to tell someone
                // uses `dingstream send`.
                if !run.output.isEmpty {
                    handlerLog.notice("event handler answered with output; events have no conversation to reply to, so it is ignored (use dingstream send)")
                }
            case .done:
                let (reply, problem) = HandlerReply.read(stdout: run.output)
                if let problem { handlerLog.warning("\(problem)") }
                if let reply { replies.append(Self.webhookBody(reply)) }
            case .retryLater:
                let attempts = entry.attempts + 1
                if attempts >= current.maxAttempts {
                    handlerLog.error("handler asked to retry \(attempts) times; giving up", metadata: ["message.id": "handlerFailed"])
                    series.deadLetters[.retries]?.increment()
                    await finish { writer throws(SpoolError) in
                        try writer.deadLetter(name, reason: run.reasonText + "\nattempts: \(attempts) of max_attempts \(current.maxAttempts)\n")
                    }
                } else {
                    let (delay, due) = current.nextTry(afterAttempt: attempts)
                    handlerLog.info("handler asked to retry later\(run.note) (attempt \(attempts) of \(current.maxAttempts)); next try in \(DurationText.format(delay))")
                    await finish { writer throws(SpoolError) in try writer.retryLater(name, attempts: attempts, notBefore: due) }
                }
                return
            case .interrupted:
                // Left running: the next start makes it new again, with its attempts as they were.
                handlerLog.notice("handler stopped by shutdown; the message runs again at the next start")
                return
            case .failed(let reason):
                handlerLog.error("handler failed: \(reason); the message is a dead letter (dingstream spool show \(name))", metadata: ["message.id": "handlerFailed"])
                series.deadLetters[.handler]?.increment()
                await finish { writer throws(SpoolError) in try writer.deadLetter(name, reason: run.reasonText) }
                return
            }
        }
        var outgoing = entry
        outgoing.replies = replies
        outgoing.delivered = 0
        outgoing.deliveryAttempts = 0
        // Handed over as it was committed, from the writer thread: the sender need not read it back.
        let delivery: (@Sendable () -> Void)? = replies.isEmpty ? nil : { @Sendable [deliverReplies, outgoing] in deliverReplies(outgoing) }
        await finish(afterCommit: delivery) { [replies] writer throws(SpoolError) in try writer.complete(name, replies: replies.isEmpty ? nil : replies) }
        // The handlers are through with the files; copies they want to keep are theirs to make.
        if attachmentsFolder != nil { AttachmentFetcher.remove(spool: spool, name: name) }
    }

    /// One handler of a message.
    private enum HandlerStep {
        case http(HTTPHandler)
        case script(HandlerEntry)

        var name: String {
            switch self {
            case .http(let handler): handler.settings.url
            case .script(let handler): handler.name
            }
        }
    }

    /// Who acted, for `allowed_users`: the sender of a bot message, the user who clicked a card;
    /// nil for what no user sends (events, other topics), which the allowlist does not cover.
    static func actor(of entry: SpoolEntry) -> (what: String, staffID: String?, nick: String?)? {
        switch entry.kind {
        case .bot: ("message", entry.botMessage?.senderStaffID, entry.botMessage?.senderNick)
        case .card: ("card action", entry.dataObject()?["userId"] as? String, nil)
        case .event, .other: nil
        }
    }

    /// At most `limit` characters of `text`, its end kept (the last lines say the most).
    static func bounded(_ text: String, limit: Int = 1000) -> String {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        return trimmed.count <= limit ? trimmed : "…" + String(trimmed.suffix(limit))
    }

    /// stdout of a card handler as the ack's `response`: a JSON object, else nil.
    static func cardResponse(_ stdout: [UInt8]) -> String? {
        let text = String(decoding: stdout, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard text.hasPrefix("{"), JSON.object(text) != nil else { return nil }
        return text
    }

    /// Records a handling's outcome: on this thread when the writer is free (`performHere`),
    /// else in the writer's next round. A failure leaves the entry running, so it runs again
    /// after the next start.
    private func finish(afterCommit: (@Sendable () -> Void)? = nil, _ body: @escaping @Sendable (Spool.Writer) throws(SpoolError) -> Void) async {
        switch spool.performHere(body) {
        case .success:
            afterCommit?()
            // Its fsync is the writer's; woken once this turn of the event loop (which may be
            // about to send the reply) is through, else at once.
            if let loop = MultiThreadedEventLoopGroup.currentEventLoop {
                loop.execute { [spool] in spool.syncCommittedHere() }
            } else {
                spool.syncCommittedHere()
            }
        case .failure(let error):
            logger.error("spool: \(error)")
        case nil:
            await spool.change(logger: logger, afterCommit: afterCommit, body)
        }
    }

    /// The reply as the session webhook body; the outbox keeps it in this form.
    static func webhookBody(_ reply: HandlerReply) -> String {
        switch reply {
        case .text(let text):
            return JSON.encode(["msgtype": "text", "text": ["content": text]])
        case .message(_, let body):
            return String(decoding: body, as: UTF8.self)
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The poll loop over one child: reads its output, enforces the timeout, kills its group.
/// Used from exactly one thread, hence unchecked.
final class ChildWatch: @unchecked Sendable {
    struct Output: Sendable {
        var status: HandlerResult.Status
        var stdout: [UInt8]
        var stdoutTruncated: Bool
        var stderrTail: [UInt8]

        func result(executable: String, duration: Duration) -> HandlerResult {
            HandlerResult(
                executable: executable, status: status, stdout: stdout, stdoutTruncated: stdoutTruncated,
                stderrTail: String(decoding: stderrTail, as: UTF8.self), duration: duration)
        }
    }

    private enum Phase {
        case running
        /// SIGTERM sent; SIGKILL at the instant.
        case terminating(killAt: ContinuousClock.Instant)
        case killed
    }

    private enum Stop {
        case timedOut
        case cancelled
    }

    /// Without a pidfd, how often the loop checks whether the child exited.
    private static let exitPollInterval: Duration = .milliseconds(20)
    private static let chunk = 64 * 1024

    private let child: SpawnedChild
    private let clock = ContinuousClock()
    private let deadline: ContinuousClock.Instant
    private let killGrace: Duration
    private let outputLimit: Int
    private let stderrTailBytes: Int

    private var stdoutFD: Int32
    private var stderrFD: Int32
    private var stdout: [UInt8] = []
    private var truncated = false
    private var stderrTail: [UInt8] = []
    private var phase = Phase.running
    private var stop: Stop?
    private var waitStatus: HandlerResult.Status?
    private var drainUntil: ContinuousClock.Instant?

    init(
        child: SpawnedChild, start: ContinuousClock.Instant, timeout: Duration, killGrace: Duration,
        outputLimit: Int, stderrTailBytes: Int
    ) {
        self.child = child
        self.deadline = start + timeout
        self.killGrace = killGrace
        self.outputLimit = outputLimit
        self.stderrTailBytes = stderrTailBytes
        self.stdoutFD = child.stdout
        self.stderrFD = child.stderr
    }

    func run() -> Output {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.chunk, alignment: 1)
        defer { buffer.deallocate() }
        while true {
            let now = clock.now
            if waitStatus == nil, childHasExited() { reap(now: now) }
            if waitStatus != nil {
                if stdoutFD < 0 && stderrFD < 0 { break }
                if let drainUntil, now >= drainUntil { break }
            } else {
                enforceDeadlines(now: now)
            }
            pollOnce(now: clock.now, buffer: buffer)
        }
        return finish()
    }

    /// The reader thread could not start: stop the child at once and report it.
    func abandon() -> Output {
        kill(-child.pid, SIGKILL)
        if waitStatus == nil { reap(now: clock.now) }
        var output = finish()
        output.status = .couldNotStart(
            HandlerError(.spawnFailed, path: "reader thread", detail: "could not create a thread to watch the handler"))
        return output
    }

    private func enforceDeadlines(now: ContinuousClock.Instant) {
        switch phase {
        case .running where now >= deadline:
            terminate(reason: .timedOut, now: now)
        case .terminating(let killAt) where now >= killAt:
            kill(-child.pid, SIGKILL)
            phase = .killed
        default:
            break
        }
    }

    private func terminate(reason: Stop, now: ContinuousClock.Instant) {
        guard case .running = phase else { return }
        stop = reason
        kill(-child.pid, SIGTERM)
        phase = .terminating(killAt: now + killGrace)
    }

    private func pollOnce(now: ContinuousClock.Instant, buffer: UnsafeMutableRawBufferPointer) {
        var fds: [pollfd] = []
        if stdoutFD >= 0 { fds.append(pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0)) }
        if stderrFD >= 0 { fds.append(pollfd(fd: stderrFD, events: Int16(POLLIN), revents: 0)) }
        let watchingExit = waitStatus == nil
        if watchingExit && child.pidfd >= 0 { fds.append(pollfd(fd: child.pidfd, events: Int16(POLLIN), revents: 0)) }
        if watchingExit && stop == nil { fds.append(pollfd(fd: child.cancel.readFD, events: Int16(POLLIN), revents: 0)) }

        var wake: ContinuousClock.Instant?
        func earliest(_ instant: ContinuousClock.Instant) { wake = min(wake ?? instant, instant) }
        if let drainUntil { earliest(drainUntil) }
        if watchingExit {
            switch phase {
            case .running: earliest(deadline)
            case .terminating(let killAt): earliest(killAt)
            case .killed: break
            }
            if child.pidfd < 0 { earliest(now + Self.exitPollInterval) }
        }
        let timeout: Int32 = wake.map { Int32(clamping: max(0, Native.milliseconds($0 - now) + 1)) } ?? -1

        let ready = poll(&fds, nfds_t(fds.count), timeout)
        guard ready > 0 else { return }  // timeout or EINTR: the loop re-checks everything
        for entry in fds where entry.revents != 0 {
            if entry.fd == stdoutFD {
                readStdout(buffer)
            } else if entry.fd == stderrFD {
                readStderr(buffer)
            } else if entry.fd == child.cancel.readFD {
                terminate(reason: .cancelled, now: clock.now)
            }
            // pidfd readiness needs no action: the next turn of the loop reaps.
        }
    }

    private func readStdout(_ buffer: UnsafeMutableRawBufferPointer) {
        let count = read(stdoutFD, buffer.baseAddress, buffer.count)
        if count < 0 && (errno == EINTR || errno == EAGAIN) { return }
        guard count > 0 else {
            close(stdoutFD)
            stdoutFD = -1
            return
        }
        let room = outputLimit - stdout.count
        if count > room { truncated = true }
        if room > 0 { stdout.append(contentsOf: buffer.prefix(min(count, room))) }
    }

    private func readStderr(_ buffer: UnsafeMutableRawBufferPointer) {
        let count = read(stderrFD, buffer.baseAddress, buffer.count)
        if count < 0 && (errno == EINTR || errno == EAGAIN) { return }
        guard count > 0 else {
            close(stderrFD)
            stderrFD = -1
            return
        }
        guard stderrTailBytes > 0 else { return }
        stderrTail.append(contentsOf: buffer.prefix(count).suffix(stderrTailBytes))
        // Trim in batches so the tail costs amortized constant time per byte.
        if stderrTail.count > 2 * stderrTailBytes { stderrTail.removeFirst(stderrTail.count - stderrTailBytes) }
    }

    /// True once the child is a zombie (not yet reaped, so its pid and group id stay reserved).
    private func childHasExited() -> Bool {
        var info = siginfo_t()
        let rc = waitid(P_PID, id_t(child.pid), &info, WEXITED | WNOHANG | WNOWAIT)
        if rc < 0 { return errno == ECHILD }
        return info.si_signo == SIGCHLD
    }

    /// Kills what is left of the group while the leader's zombie still holds the group id, then reaps.
    private func reap(now: ContinuousClock.Instant) {
        kill(-child.pid, SIGKILL)
        var status: Int32 = 0
        var rc: pid_t
        repeat { rc = waitpid(child.pid, &status, 0) } while rc < 0 && errno == EINTR
        // ECHILD: someone else reaped it; its status is lost.
        waitStatus = rc == child.pid ? Native.decode(waitStatus: status) : .exited(-1)
        // A process that left the group may hold the pipes open; do not wait for it forever.
        drainUntil = now + killGrace
    }

    private func finish() -> Output {
        if stdoutFD >= 0 { close(stdoutFD) }
        if stderrFD >= 0 { close(stderrFD) }
        stdoutFD = -1
        stderrFD = -1
        if child.pidfd >= 0 { close(child.pidfd) }
        child.cancel.close()
        let status: HandlerResult.Status =
            switch stop {
            case .timedOut: .timedOut
            case .cancelled: .cancelled
            case nil: waitStatus ?? .exited(-1)
            }
        if stderrTail.count > stderrTailBytes { stderrTail.removeFirst(stderrTail.count - stderrTailBytes) }
        return Output(status: status, stdout: stdout, stdoutTruncated: truncated, stderrTail: stderrTail)
    }
}

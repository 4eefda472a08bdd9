#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// Runs one handler as a child process in its own process group, by hand with posix_spawn.
///
/// stdin is the message file, stdout and stderr are pipes read concurrently by a poll loop on a
/// dedicated thread (never blocking the cooperative pool). The child gets only `environment`,
/// default signal dispositions, an empty signal mask and no descriptor beyond 0–2.
///
/// Not swift-subprocess: it reaps the child itself, while this runner kills what is left of the
/// group before reaping (the zombie keeps the group id from being reused), and bounds the wait for
/// output held open by a process that left the group, which needs the exit inside the read loop.
public enum HandlerRunner {
    /// Runs `executable` and returns how it ended; never throws.
    ///
    /// - On timeout: SIGTERM to the whole process group, SIGKILL after `killGrace`; `.timedOut`.
    /// - On task cancellation (shutdown): the same, reported as `.cancelled` (the message runs again at the next start, costing no attempt).
    /// - After the handler exits, whatever is left of its group (background jobs) gets SIGKILL,
    ///   so nothing survives it. Output still open after that (a process that left the group)
    ///   is waited for at most `killGrace`.
    /// - stdout beyond `outputLimit` bytes is read and discarded (`stdoutTruncated`); of stderr
    ///   only the last `stderrTailBytes` are kept, so memory stays bounded whatever it prints.
    /// - If it cannot be started, the status is `.couldNotStart` with the reason.
    public static func run(
        executable: String,
        stdinPath: String,
        environment: [String: String],
        workingDirectory: String,
        timeout: Duration,
        outputLimit: Int,
        stderrTailBytes: Int,
        killGrace: Duration = .seconds(2)
    ) async -> HandlerResult {
        let clock = ContinuousClock()
        let start = clock.now
        let child: SpawnedChild
        do {
            child = try spawn(
                executable: executable, stdinPath: stdinPath, environment: environment,
                workingDirectory: workingDirectory)
        } catch {
            return HandlerResult(executable: executable, status: .couldNotStart(error), duration: clock.now - start)
        }
        let watch = ChildWatch(
            child: child, start: start, timeout: timeout, killGrace: killGrace,
            outputLimit: max(0, outputLimit), stderrTailBytes: max(0, stderrTailBytes))
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<ChildWatch.Output, Never>) in
                let started = startThread {
                    continuation.resume(returning: watch.run())
                }
                if !started {
                    // No thread: still never leave a process behind.
                    continuation.resume(returning: watch.abandon())
                }
            }
        } onCancel: {
            child.cancel.fire()
        }.result(executable: executable, duration: clock.now - start)
    }

    /// Spawns the child; every descriptor it returns is close-on-exec in the parent.
    /// - Throws: `HandlerError` `.stdinUnreadable` or `.spawnFailed`; nothing is left open then.
    static func spawn(
        executable: String, stdinPath: String, environment: [String: String], workingDirectory: String
    ) throws(HandlerError) -> SpawnedChild {
        let input = open(stdinPath, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw HandlerError(.stdinUnreadable, path: stdinPath, errno: errno) }
        defer { close(input) }
        guard let cancel = CancelSignal() else {
            throw HandlerError(.spawnFailed, path: executable, errno: errno, detail: "no descriptors left for pipes")
        }
        guard case .success(let out) = Native.pipe() else {
            cancel.close()
            throw HandlerError(.spawnFailed, path: executable, errno: errno, detail: "no descriptors left for pipes")
        }
        guard case .success(let err) = Native.pipe() else {
            cancel.close()
            close(out.read)
            close(out.write)
            throw HandlerError(.spawnFailed, path: executable, errno: errno, detail: "no descriptors left for pipes")
        }
        // The child's ends are closed in the parent whatever happens, or EOF would never come.
        defer {
            close(out.write)
            close(err.write)
        }
        var spawned = false
        defer {
            if !spawned {
                close(out.read)
                close(err.read)
                cancel.close()
            }
        }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        guard let addChdir = Native.addChdir else {
            throw HandlerError(.spawnFailed, path: executable, detail: "the C library lacks posix_spawn_file_actions_addchdir_np (glibc 2.29 or newer is needed)")
        }
        _ = addChdir(&actions, workingDirectory)
        posix_spawn_file_actions_adddup2(&actions, input, 0)
        posix_spawn_file_actions_adddup2(&actions, out.write, 1)
        posix_spawn_file_actions_adddup2(&actions, err.write, 2)
        // Descriptors of other threads (sockets, spool files) must not leak into handlers.
        if let addCloseFrom = Native.addCloseFrom { _ = addCloseFrom(&actions, 3) }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(
            &attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        posix_spawnattr_setpgroup(&attributes, 0)
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        // The daemon ignores SIGPIPE; ignored dispositions survive exec, and a shell pipeline in a
        // handler must see the defaults.
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)

        let argv = CStringArray([executable])
        let envp = CStringArray(environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" })
        defer {
            argv.free()
            envp.free()
        }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, executable, &actions, &attributes, argv.pointers, envp.pointers)
        guard rc == 0 else {
            throw HandlerError(
                .spawnFailed, path: executable, errno: rc,
                detail: "check that it exists, is executable, starts with a valid #! line, and that \(workingDirectory) exists")
        }
        spawned = true
        let pidfd = Native.pidfdOpen?(pid, 0) ?? -1
        return SpawnedChild(pid: pid, stdout: out.read, stderr: err.read, pidfd: pidfd, cancel: cancel)
    }

    /// Runs `body` on a new detached thread; false if none could be created.
    static func startThread(_ body: @escaping @Sendable () -> Void) -> Bool {
        final class Box {
            let body: @Sendable () -> Void
            init(_ body: @escaping @Sendable () -> Void) { self.body = body }
        }
        let box = Unmanaged.passRetained(Box(body))
        var thread = pthread_t()
        let rc = pthread_create(
            &thread, nil,
            { raw in
                guard let raw else { return nil }
                Unmanaged<Box>.fromOpaque(raw).takeRetainedValue().body()
                return nil
            }, box.toOpaque())
        guard rc == 0 else {
            box.release()
            return false
        }
        pthread_detach(thread)
        return true
    }
}

/// A NULL-terminated `char *[]` for posix_spawn; `free()` releases it.
struct CStringArray {
    let pointers: [UnsafeMutablePointer<CChar>?]

    init(_ strings: [String]) {
        pointers = strings.map { strdup($0) } + [nil]
    }

    func free() {
        for pointer in pointers { Glibc.free(pointer) }
    }
}

/// The parent's ends of a running child.
struct SpawnedChild: Sendable {
    let pid: pid_t
    let stdout: Int32
    let stderr: Int32
    /// -1 when pidfd_open is unavailable; exits are then polled.
    let pidfd: Int32
    let cancel: CancelSignal
}

/// Wakes the poll loop when the calling task is cancelled. Safe to fire after the loop ended.
final class CancelSignal: Sendable {
    private let fds: Mutex<(read: Int32, write: Int32)?>
    let readFD: Int32

    init?() {
        guard case .success(let pair) = Native.pipe() else { return nil }
        fds = Mutex(pair)
        readFD = pair.read
    }

    func fire() {
        fds.withLock { pair in
            guard let pair else { return }
            var byte: UInt8 = 1
            _ = write(pair.write, &byte, 1)
        }
    }

    func close() {
        fds.withLock { pair in
            guard let open = pair else { return }
            Glibc.close(open.read)
            Glibc.close(open.write)
            pair = nil
        }
    }
}

import Foundation
import Logging
import Spool

extension Spool {
    /// The watchdog's spool probe, run as a job of the writer thread: a small file can still be
    /// written and synced beside the database, and the writer gets to it. A wedged filesystem or
    /// a stuck writer leaves it waiting (a suspended task, no thread held), the probe misses its
    /// deadline and the watchdog stops pinging. A full disk is not a hang: intake refuses frames
    /// and says so, the daemon stays up.
    func canCommit() async -> Bool {
        do {
            let failure = try await perform { [directory] _ in probeWriteAndSync(in: directory + "/running") }
            return failure == 0 || failure == ENOSPC || failure == EDQUOT
        } catch {
            // The writer answered, its round failed (disk full, a lock): alive, and saying so in the log.
            return error.code != .closed
        }
    }
}

/// Creates, syncs and removes a small file in `directory`, as a commit would: 0 when that
/// works, else the errno of the step that failed.
func probeWriteAndSync(in directory: String) -> Int32 {
    let path = directory + "/.probe-\(getpid())"
    let descriptor = Glibc.open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
    guard descriptor >= 0 else { return errno }
    defer {
        Glibc.close(descriptor)
        unlink(path)
    }
    return fsync(descriptor) == 0 ? 0 : errno
}

extension Spool {
    /// Runs a state change of an entry on the spool's writer thread (off the cooperative threads,
    /// its commit shared with the frames and changes of the same round). A failure leaves the
    /// entry where it was (the error says which path and why) and it is handled again after the
    /// next start, so logging is all there is to do. Returns whether the change was committed;
    /// `afterCommit` runs on the writer thread once it is (see `perform`).
    @discardableResult
    func change(
        logger: Logger, afterCommit: (@Sendable () -> Void)? = nil, _ body: @escaping @Sendable (Spool.Writer) throws(SpoolError) -> Void
    ) async -> Bool {
        do {
            var committed: (@Sendable (()) -> Void)?
            if let afterCommit { committed = { @Sendable _ in afterCommit() } }
            try await perform(body, afterCommit: committed)
            return true
        } catch {
            logger.error("spool: \(error)")
            return false
        }
    }
}

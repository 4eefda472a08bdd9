import Foundation
import Logging
import Spool

extension Spool {
    /// The watchdog's spool probe: a small file can still be written and synced in tmp/. A wedged
    /// filesystem blocks here, the probe misses its deadline and the watchdog stops pinging.
    /// A full disk is not a hang: intake refuses frames and says so, the daemon stays up.
    func canCommit() -> Bool {
        let path = directory + "/tmp/.watchdog-\(getpid())"
        let descriptor = Glibc.open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
        guard descriptor >= 0 else { return errno == ENOSPC || errno == EDQUOT }
        defer {
            Glibc.close(descriptor)
            unlink(path)
        }
        return fsync(descriptor) == 0
    }
}

extension Logger {
    /// A state change of an entry that failed leaves the entry where it was (the spool says
    /// which path and why); it is retried after the next start, so logging is all there is to do.
    func loggingSpoolFailure(_ body: () throws(SpoolError) -> Void) {
        do {
            try body()
        } catch {
            self.error("spool: \(error)")
        }
    }
}

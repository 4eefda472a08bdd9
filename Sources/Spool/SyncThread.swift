import Dispatch
import Foundation

/// A thread that runs one blocking call (the write-ahead log's fsync) while the writer thread
/// goes on with something else, and that the writer then waits for.
///
/// Why a thread rather than the writer itself: a round that claimed messages for an HTTP
/// handler hands them over on the writer thread, and waking the event loop that sends the
/// request makes the kernel switch to it at once; the writer, still runnable, waited for the
/// CPU until the handler server had answered, and only then started the fsync, so the two
/// never overlapped. Here the fsync is already under way (this thread blocked in it) before
/// the writer wakes anyone. Started on first use: a spool without such rounds never has it.
final class SyncThread: @unchecked Sendable {
    /// What the work reports: why it failed, if it did, and how long it took.
    typealias Result = (failure: SpoolError?, time: Duration)

    private let go = DispatchSemaphore(value: 0)
    private let done = DispatchSemaphore(value: 0)
    // Handed over through the semaphores, which order the accesses of the two threads.
    private var work: (() -> Result)?
    private var result: Result = (nil, .zero)
    private var stopping = false

    init() {
        let thread = Thread { [self] in
            FileIO.nameThread("spool-sync")
            loop()
        }
        thread.name = "spool-sync"
        thread.start()
    }

    /// Starts `work` on the thread; `finish()` must follow before the next `start`.
    func start(_ work: @escaping () -> Result) {
        self.work = work
        go.signal()
    }

    /// Waits for the work `start` began and returns what it returned.
    func finish() -> Result {
        done.wait()
        return result
    }

    /// Ends the thread once the current work (if any) is through.
    func stop() {
        stopping = true
        go.signal()
    }

    private func loop() {
        while true {
            go.wait()
            guard let work else { if stopping { return } else { continue } }
            self.work = nil
            result = work()
            done.signal()
        }
    }
}

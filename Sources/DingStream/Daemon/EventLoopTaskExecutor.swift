import NIOCore

/// Runs the jobs of the tasks that prefer it on one event loop. A task waiting for I/O of that
/// loop (an HTTP handler's answer) then goes on where the answer arrived, in the same turn of
/// the loop, instead of waking a thread of the global pool to carry on.
final class EventLoopTaskExecutor: TaskExecutor {
    let loop: any EventLoop

    init(_ loop: any EventLoop) {
        self.loop = loop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// glibc extensions that the Swift Glibc module does not import (they sit behind `_GNU_SOURCE`),
/// looked up once at run time. Each is nil when the C library lacks it.
enum Native {
    typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32
    typealias AddChdir = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, UnsafePointer<CChar>?) -> Int32
    typealias PidfdOpen = @convention(c) (pid_t, UInt32) -> Int32
    typealias Pipe2 = @convention(c) (UnsafeMutablePointer<Int32>?, Int32) -> Int32

    static let addCloseFrom: AddCloseFrom? = symbol("posix_spawn_file_actions_addclosefrom_np")
    static let addChdir: AddChdir? = symbol("posix_spawn_file_actions_addchdir_np")
    static let pidfdOpen: PidfdOpen? = symbol("pidfd_open")
    static let pipe2: Pipe2? = symbol("pipe2")

    private static func symbol<T>(_ name: String) -> T? {
        #if canImport(Glibc)
        // RTLD_DEFAULT is a null handle on glibc.
        guard let pointer = dlsym(nil, name) else { return nil }
        return unsafeBitCast(pointer, to: T.self)
        #else
        return nil
        #endif
    }

    /// A close-on-exec pipe (read end, write end); errno on failure.
    static func pipe() -> Result<(read: Int32, write: Int32), NativeErrno> {
        var fds: [Int32] = [-1, -1]
        if let pipe2 {
            guard pipe2(&fds, O_CLOEXEC) == 0 else { return .failure(NativeErrno(errno)) }
        } else {
            // Racy against a concurrent spawn, which is why the child also closes from fd 3 up.
            guard Glibc.pipe(&fds) == 0 else { return .failure(NativeErrno(errno)) }
            _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
            _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        }
        return .success((fds[0], fds[1]))
    }

    /// Decodes a wait status without the C macros (not importable).
    static func decode(waitStatus status: Int32) -> HandlerResult.Status {
        let signal = status & 0x7f
        if signal == 0 { return .exited((status >> 8) & 0xff) }
        return .signaled(signal)
    }

    static func milliseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}

struct NativeErrno: Error {
    let code: Int32
    init(_ code: Int32) { self.code = code }
}

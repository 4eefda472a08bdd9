#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Synchronization

/// The last `HandlerDirectory.scan`, reused while nothing it depends on has changed: the
/// directory's inode, mode, owner and times, and each listed file's inode and ctime (a chmod or
/// chown changes the ctime). Checking that costs one stat per file instead of a listing and an
/// access() per file. Rescans at least every `maximumAge` regardless, for anything else.
public final class HandlerScanCache: Sendable {
    private struct Cached {
        var scan: HandlerScan
        var fingerprint: [Fingerprint]
        var taken: ContinuousClock.Instant
    }

    private struct Fingerprint: Equatable {
        var device: UInt64
        var inode: UInt64
        var mode: UInt32
        var owner: UInt32
        var modified: timespec
        var changed: timespec
        var error: Int32

        static func == (a: Self, b: Self) -> Bool {
            a.device == b.device && a.inode == b.inode && a.mode == b.mode && a.owner == b.owner && a.error == b.error
                && a.modified.tv_sec == b.modified.tv_sec && a.modified.tv_nsec == b.modified.tv_nsec
                && a.changed.tv_sec == b.changed.tv_sec && a.changed.tv_nsec == b.changed.tv_nsec
        }

        init(_ path: String) {
            var info = stat()
            error = stat(path, &info) == 0 ? 0 : errno
            device = UInt64(info.st_dev)
            inode = UInt64(info.st_ino)
            mode = UInt32(info.st_mode)
            owner = UInt32(info.st_uid)
            modified = info.st_mtim
            changed = info.st_ctim
        }
    }

    public let path: String
    public let allowedOwners: Set<uid_t>
    public let maximumAge: Duration
    private let cached = Mutex<Cached?>(nil)

    public init(path: String, allowedOwners: Set<uid_t>, maximumAge: Duration = .seconds(1)) {
        self.path = path
        self.allowedOwners = allowedOwners
        self.maximumAge = maximumAge
    }

    /// The scan as it stands; `fresh` when it was just taken (the caller may log its refusals).
    public func current() -> (scan: HandlerScan, fresh: Bool) {
        let now = ContinuousClock.now
        let previous = cached.withLock { $0 }
        if let previous, now - previous.taken < maximumAge, fingerprint(of: previous.scan) == previous.fingerprint {
            return (previous.scan, false)
        }
        // A change racing the scan may go unseen until `maximumAge` has passed.
        let scan = HandlerDirectory.scan(path: path, allowedOwners: allowedOwners)
        let taken = Cached(scan: scan, fingerprint: fingerprint(of: scan), taken: now)
        cached.withLock { $0 = taken }
        return (scan, true)
    }

    private func fingerprint(of scan: HandlerScan) -> [Fingerprint] {
        [Fingerprint(path)] + scan.entries.map { Fingerprint($0.path) }
    }
}

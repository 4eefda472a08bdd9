import Foundation

/// The one error type of the spool. `description` says what happened, where, and what to do.
public struct SpoolError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// The filesystem of the spool is full (ENOSPC, EDQUOT).
        case diskFull
        /// The service user may not write or read a spool path (EACCES, EPERM, EROFS).
        case permissionDenied
        /// Any other I/O failure.
        case io
        /// No entry of that name or key.
        case notFound
        /// A spool file that is not the JSON the spool writes.
        case corrupt
        /// A key prefix that matches more than one entry.
        case ambiguous
        /// The spool's run loop has ended; nothing more is accepted.
        case closed
        /// The spool directory itself does not exist.
        case noSpool
        /// Another process holds a lock on the database (SQLITE_BUSY): someone else writes to it.
        case locked
        /// A running daemon owns the spool; `detail` names its pid.
        case inUse
        /// The spool directory (or a folder in it) is a file.
        case notADirectory
        /// The directory above the spool does not exist.
        case noParent
        /// The cluster's PostgreSQL is unreachable, refused the login or failed a statement;
        /// `path` is the database URL, `detail` what happened and the remedy.
        case database
    }

    public var code: Code
    /// The file or directory concerned.
    public var path: String
    /// The errno of the failed call, when there was one.
    public var errno: Int32?
    /// What was being done or found, for the log.
    public var detail: String?

    public init(_ code: Code, path: String, errno: Int32? = nil, detail: String? = nil) {
        self.code = code
        self.path = path
        self.errno = errno
        self.detail = detail
    }

    /// Maps the errno of a failed system call on `path` to a spool error.
    static func posix(_ errno: Int32, path: String, doing: String) -> SpoolError {
        let code: Code
        switch errno {
        case ENOSPC, EDQUOT: code = .diskFull
        case EACCES, EPERM, EROFS: code = .permissionDenied
        case ENOENT: code = .notFound
        default: code = .io
        }
        return SpoolError(code, path: path, errno: errno, detail: doing)
    }

    public var description: String {
        let cause = errno.map { " (\(String(cString: strerror($0))))" } ?? ""
        let doing = detail.map { " \($0)" } ?? ""
        switch code {
        case .diskFull:
            return "spool: disk full\(doing) \(path)\(cause); free space on that filesystem, intake resumes by itself"
        case .permissionDenied:
            return "spool: permission denied\(doing) \(path)\(cause); the spool must be owned and writable by the service user (directories 0750, files 0640)"
        case .io:
            return "spool: I/O error\(doing) \(path)\(cause); check the filesystem (dmesg) and the spool directory"
        case .noSpool:
            return "spool: there is no spool at \(path)\(doing); check spool_dir (or [cluster] database) in the configuration, or start the daemon once to create it"
        case .notFound:
            return "spool: no entry \(path)\(doing); list entries with `dingstream spool ls`"
        case .corrupt:
            return "spool: \(path) is not a valid spool entry\(doing); inspect it, then move it away or purge it"
        case .ambiguous:
            return "spool: key \(path) matches several entries\(doing); give more of the name"
        case .locked:
            return "spool: the database \(path) is locked by another process\(doing); close other writers (a `sqlite3` shell holding a transaction), intake resumes by itself"
        case .inUse:
            return "spool: \(path) is in use\(doing); stop that daemon first, or give this one a spool_dir of its own"
        case .database:
            return "spool: cluster database \(path)\(doing)"
        case .notADirectory:
            return "spool: \(path) is not a directory; point spool_dir at a directory (the package's tmpfiles.d creates /var/spool/dingstream), or move the file away"
        case .noParent:
            return "spool: cannot create \(path): the directory above it does not exist; create it, or point spool_dir elsewhere"
        case .closed:
            return "spool: closed\(doing); the daemon is shutting down, the frame stays unacked and will be pushed again"
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging

/// Reads `<spool>/handlers/` the way run-parts does, and decides what may run.
public enum HandlerDirectory {
    /// Who may own handlers: root, the user dingstream runs as, and `serviceUID` when given (the
    /// service user, for checks run by someone else).
    public static func allowedOwners(serviceUID: uid_t? = nil) -> Set<uid_t> {
        var owners: Set<uid_t> = [0, geteuid()]
        if let serviceUID { owners.insert(serviceUID) }
        return owners
    }

    /// Lists every entry of `path` (except `.` and `..`) in byte-wise lexical order, each either
    /// runnable or with the reason it is skipped.
    ///
    /// Nothing runs from a directory that is missing, not a directory, writable by group or
    /// others, or owned by a uid outside `allowedOwners`: then `directoryProblem` is set and every
    /// entry is skipped. Never throws; all failures are in the returned scan.
    public static func scan(path: String, allowedOwners: Set<uid_t>) -> HandlerScan {
        var info = stat()
        guard stat(path, &info) == 0 else {
            return HandlerScan(directory: path, directoryProblem: .unreadable(errno: errno), entries: [])
        }
        var directoryProblem: SkipReason?
        if info.st_mode & S_IFMT != S_IFDIR {
            return HandlerScan(directory: path, directoryProblem: .notDirectory, entries: [])
        } else if info.st_mode & (S_IWGRP | S_IWOTH) != 0 {
            directoryProblem = .writableByOthers(mode: info.st_mode & 0o7777)
        } else if !allowedOwners.contains(info.st_uid) {
            directoryProblem = .wrongOwner(uid: info.st_uid)
        }

        let (names, listError) = listNames(path)
        if listError != 0 {
            return HandlerScan(directory: path, directoryProblem: .unreadable(errno: listError), entries: [])
        }
        let entries = names.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }.map { name in
            let file = path.hasSuffix("/") ? path + name : path + "/" + name
            var status = check(file: file, name: name, allowedOwners: allowedOwners)
            if status == .runnable, directoryProblem != nil { status = .skipped(.directoryUnsafe) }
            return HandlerEntry(name: name, path: file, status: status)
        }
        return HandlerScan(directory: path, directoryProblem: directoryProblem, entries: entries)
    }

    /// The run-parts rule: `^[A-Za-z0-9_-]+$`. Excludes dotfiles, editor backups (`x~`) and
    /// package leftovers (`x.dpkg-old`).
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty
            && name.utf8.allSatisfy { byte in
                switch byte {
                case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                    UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"), UInt8(ascii: "-"):
                    true
                default: false
                }
            }
    }

    static func check(file: String, name: String, allowedOwners: Set<uid_t>) -> HandlerEntry.Status {
        guard isValidName(name) else { return .skipped(.badName) }
        // Symlinks are followed (as run-parts does); the target must pass the same checks.
        var info = stat()
        guard stat(file, &info) == 0 else {
            let code = errno
            var link = stat()
            if lstat(file, &link) == 0, link.st_mode & S_IFMT == S_IFLNK { return .skipped(.brokenLink) }
            return .skipped(.unreadable(errno: code))
        }
        guard info.st_mode & S_IFMT == S_IFREG else { return .skipped(.notRegularFile) }
        guard allowedOwners.contains(info.st_uid) else { return .skipped(.wrongOwner(uid: info.st_uid)) }
        guard info.st_mode & (S_IWGRP | S_IWOTH) == 0 else {
            return .skipped(.writableByOthers(mode: info.st_mode & 0o7777))
        }
        // access() answers for this process's uid, which is the one that will exec it.
        guard access(file, X_OK) == 0 else { return .skipped(.notExecutable) }
        return .runnable
    }

    /// The names in `path` and 0, or `errno` of the failure.
    private static func listNames(_ path: String) -> ([String], Int32) {
        guard let dir = opendir(path) else { return ([], errno) }
        defer { closedir(dir) }
        var names: [String] = []
        while true {
            errno = 0
            guard let entry = readdir(dir) else {
                if errno != 0 { return ([], errno) }
                break
            }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return (names, 0)
    }
}

/// Why a handler (or the whole directory) does not run.
public enum SkipReason: Sendable, Equatable {
    case badName
    case notRegularFile
    case notDirectory
    case brokenLink
    case notExecutable
    case writableByOthers(mode: mode_t)
    case wrongOwner(uid: uid_t)
    /// The file itself is fine, but the directory holding it is refused.
    case directoryUnsafe
    case unreadable(errno: Int32)

    /// Whether this is a refusal for safety (logged as an error) rather than a disabled file.
    public var isSafetyRefusal: Bool {
        switch self {
        case .writableByOthers, .wrongOwner, .directoryUnsafe: true
        default: false
        }
    }

    /// What is wrong with `path` and the command that fixes it.
    public func explanation(path: String) -> String {
        switch self {
        case .badName:
            "name is not [A-Za-z0-9_-]+ (run-parts rule: no dots or extensions), so it is ignored; rename it to enable it"
        case .notRegularFile:
            "not a regular file; move it out of the handlers directory"
        case .notDirectory:
            "not a directory; create it with `install -d -m 0755 \(path)`"
        case .brokenLink:
            "symbolic link to a missing file; fix or remove the link"
        case .notExecutable:
            "not executable by the service user, so it is disabled; enable it with `chmod 0755 \(path)`"
        case .writableByOthers(let mode):
            "writable by group or others (mode \(Self.octal(mode))), so anyone could run code as the service; fix with `chmod go-w \(path)`"
        case .wrongOwner(let uid):
            "owned by uid \(uid), neither root nor the service user; fix with `chown root: \(path)`"
        case .directoryUnsafe:
            "not run because its directory is refused (see above)"
        case .unreadable(let code):
            "cannot be read: \(HandlerError.errnoText(code)); check that it exists and its permissions"
        }
    }

    static func octal(_ mode: mode_t) -> String {
        let digits = String(mode, radix: 8)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }
}

/// One entry of the handlers directory.
public struct HandlerEntry: Sendable, Equatable {
    public enum Status: Sendable, Equatable {
        case runnable
        case skipped(SkipReason)
    }

    public var name: String
    /// `directory/name`; the path to exec.
    public var path: String
    public var status: Status

    public var isRunnable: Bool { status == .runnable }
}

/// The outcome of `HandlerDirectory.scan`.
public struct HandlerScan: Sendable, Equatable {
    public var directory: String
    /// Set when nothing in the directory may run.
    public var directoryProblem: SkipReason?
    /// Every entry in lexical order.
    public var entries: [HandlerEntry]

    /// What runs for each message, in order.
    public var runnable: [HandlerEntry] { entries.filter(\.isRunnable) }

    /// The text of `dingstream handlers check`: what would run, and why anything would not.
    public func report() -> String {
        var lines = ["handlers in \(directory):"]
        if let problem = directoryProblem {
            lines.append("  REFUSED directory: \(problem.explanation(path: directory))")
        }
        if entries.isEmpty {
            lines.append("  (no files)")
        }
        for entry in entries {
            switch entry.status {
            case .runnable:
                lines.append("  run   \(entry.name)")
            case .skipped(let reason):
                lines.append("  skip  \(entry.name): \(reason.explanation(path: entry.path))")
            }
        }
        let count = runnable.count
        lines.append("\(count) handler\(count == 1 ? "" : "s") will run for each message.")
        return lines.joined(separator: "\n") + "\n"
    }

    /// Logs one line per refused or skipped entry: safety refusals as errors, disabled files
    /// (bad name, not executable) at notice. Metadata: `handler.name`, `handler.path`.
    public func log(to logger: Logger) {
        if let problem = directoryProblem {
            logger.error(
                "refusing handlers directory: \(problem.explanation(path: directory))",
                metadata: ["handler.path": .string(directory)])
        }
        for entry in entries {
            guard case .skipped(let reason) = entry.status, reason != .directoryUnsafe else { continue }
            let metadata: Logger.Metadata = ["handler.name": .string(entry.name), "handler.path": .string(entry.path)]
            let message: Logger.Message = "skipping handler \(entry.path): \(reason.explanation(path: entry.path))"
            if reason.isSafetyRefusal {
                logger.error(message, metadata: metadata)
            } else {
                logger.notice(message, metadata: metadata)
            }
        }
    }
}

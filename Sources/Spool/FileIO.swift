import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Thin POSIX calls with errno mapped to `SpoolError`. Every descriptor is closed before return.
enum FileIO {
    static let directoryMode: mode_t = 0o750
    static let fileMode: mode_t = 0o640

    /// Creates `path` with mode 0750 unless it exists.
    static func makeDirectory(_ path: String) throws(SpoolError) {
        if mkdir(path, directoryMode) == 0 {
            // mkdir honours the umask; the spool's modes are part of its interface.
            if chmod(path, directoryMode) != 0 { throw .posix(errno, path: path, doing: "setting mode of") }
            return
        }
        let code = errno
        var info = stat()
        if code == EEXIST, stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR { return }
        // The two mistakes of a hand-written spool_dir get their own advice, not "check dmesg".
        if code == EEXIST || code == ENOTDIR { throw SpoolError(.notADirectory, path: path) }
        if code == ENOENT { throw SpoolError(.noParent, path: path) }
        throw .posix(code, path: path, doing: "creating directory")
    }

    /// Writes `bytes` to a new file at `path` (mode 0640). With `sync`, the data is on disk before
    /// return. `modified` sets the mtime (Postfix-style retry time).
    /// - Throws: `SpoolError`; the partial file is removed first, so nothing half-written stays.
    static func writeFile(
        _ path: String, _ bytes: some Collection<UInt8>, exclusive: Bool, sync: Bool, modified: Date? = nil
    ) throws(SpoolError) {
        let flags = O_WRONLY | O_CREAT | O_CLOEXEC | (exclusive ? O_EXCL : O_TRUNC)
        let fd = open(path, flags, fileMode)
        guard fd >= 0 else { throw .posix(errno, path: path, doing: "creating") }
        var failure: SpoolError?
        // A file just created exclusively already has the mode, unless the umask took bits away.
        if !(exclusive && umaskKeepsFileMode), fchmod(fd, fileMode) != 0 { failure = .posix(errno, path: path, doing: "setting mode of") }
        if failure == nil {
            failure = bytes.withContiguousStorageIfAvailable { buffer in writeAll(fd, buffer, path: path) }
                ?? Array(bytes).withUnsafeBufferPointer { buffer in writeAll(fd, buffer, path: path) }
        }
        if failure == nil, let modified {
            let seconds = modified.timeIntervalSince1970
            let whole = seconds.rounded(.down)
            let spec = timespec(tv_sec: Int(whole), tv_nsec: Int((seconds - whole) * 1e9))
            var times = [spec, spec]
            if futimens(fd, &times) != 0 { failure = .posix(errno, path: path, doing: "setting time of") }
        }
        if failure == nil, sync, fdatasync(fd) != 0 { failure = .posix(errno, path: path, doing: "syncing") }
        if close(fd) != 0, failure == nil { failure = .posix(errno, path: path, doing: "closing") }
        if let failure {
            unlink(path)
            throw failure
        }
    }

    /// Whether the process umask leaves 0640 as it is (022, 027, …), so that open() alone gives
    /// entries their mode; read once from /proc, as umask() can only be read by changing it.
    static let umaskKeepsFileMode: Bool = {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Umask:") }),
            let mask = mode_t(line.dropFirst("Umask:".count).trimmingCharacters(in: .whitespaces), radix: 8)
        else { return false }
        return mask & fileMode == 0
    }()

    private static func writeAll(_ fd: Int32, _ buffer: UnsafeBufferPointer<UInt8>, path: String) -> SpoolError? {
        var offset = 0
        while offset < buffer.count {
            let written = write(fd, buffer.baseAddress! + offset, buffer.count - offset)
            if written < 0 {
                if errno == EINTR { continue }
                return .posix(errno, path: path, doing: "writing")
            }
            if written == 0 { return SpoolError(.io, path: path, detail: "writing (no progress)") }
            offset += written
        }
        return nil
    }

    static func readFile(_ path: String) throws(SpoolError) -> Data {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .posix(errno, path: path, doing: "opening") }
        defer { close(fd) }
        var result = Data()
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw .posix(errno, path: path, doing: "reading")
            }
            if count == 0 { return result }
            result.append(contentsOf: chunk[0..<count])
        }
    }

    static func rename(_ from: String, _ to: String) throws(SpoolError) {
        if Foundation.rename(from, to) != 0 { throw .posix(errno, path: to, doing: "moving \(from) to") }
    }

    /// Removes `path`; a missing file is not an error.
    static func remove(_ path: String) throws(SpoolError) {
        if unlink(path) != 0, errno != ENOENT { throw .posix(errno, path: path, doing: "removing") }
    }

    /// A C library function that Glibc's module map hides (GNU extensions), looked up at run time.
    private static func hiddenFunction<Function>(_ name: String, as type: Function.Type) -> Function? {
        guard let handle = dlopen(nil, RTLD_NOW), let symbol = dlsym(handle, name) else { return nil }
        return unsafeBitCast(symbol, to: type)
    }

    /// Names the calling thread as `top -H` and `ps -L` show it (Linux keeps 15 bytes; Foundation's
    /// `Thread.name` does not reach the kernel there).
    static func nameThread(_ name: String) {
        guard let setName = setThreadNameFunction, let short = String(name.utf8.prefix(15)) else { return }
        _ = short.withCString { setName(pthread_self(), $0) }
    }

    private typealias SetThreadName = @convention(c) (pthread_t, UnsafePointer<CChar>) -> Int32
    private static let setThreadNameFunction = hiddenFunction("pthread_setname_np", as: SetThreadName.self)

    /// Names in a directory, without `.` and `..`.
    static func list(_ path: String) throws(SpoolError) -> [String] {
        guard let dir = opendir(path) else { throw .posix(errno, path: path, doing: "listing") }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) { pointer in
                pointer.withMemoryRebound(to: CChar.self, capacity: Int(NAME_MAX) + 1) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Modification time, or nil if the file does not exist.
    static func modified(_ path: String) -> Date? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return Date(timeIntervalSince1970: Double(info.st_mtim.tv_sec) + Double(info.st_mtim.tv_nsec) / 1e9)
    }

    static func exists(_ path: String) -> Bool {
        access(path, F_OK) == 0
    }
}

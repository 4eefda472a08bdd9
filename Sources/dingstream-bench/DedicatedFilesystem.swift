import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A spool filesystem of the bench's own, as a deployment gives the spool its own `/var/spool`
/// filesystem: a sparse ext4 image, loop-mounted (root only). Its syncfs then flushes the
/// spool's writes, not whatever else is dirty on the machine.
struct DedicatedFilesystem: Sendable {
    static let sizeMiB = 2048
    let image: String
    let mountPoint: String
    var device = ""

    struct Unavailable: Error, CustomStringConvertible {
        var description: String
    }

    static func make() -> Result<DedicatedFilesystem, Unavailable> {
        guard geteuid() == 0 else { return .failure(Unavailable(description: "not root, cannot mount")) }
        let base = NSTemporaryDirectory() + "dingstream-bench-fs-\(UUID().uuidString.prefix(8))"
        var filesystem = DedicatedFilesystem(image: base + ".img", mountPoint: base)
        do {
            try FileManager.default.createDirectory(atPath: filesystem.mountPoint, withIntermediateDirectories: true)
            guard FileManager.default.createFile(atPath: filesystem.image, contents: nil),
                truncate(filesystem.image, off_t(sizeMiB) << 20) == 0
            else { throw Unavailable(description: "cannot create \(filesystem.image)") }
            // One inode per 4 KiB: an entry is one small file, and a run leaves ~150,000 of them.
            // Without a journal, like the root filesystem of the machine this was tuned on, so
            // that sharing is the one difference between the two measurements.
            try run("/sbin/mkfs.ext4", ["-q", "-F", "-i", "4096"] + (rootHasJournal ? [] : ["-O", "^has_journal"]) + [filesystem.image])
            // Direct I/O: the image's blocks are not cached a second time in the page cache of
            // the filesystem that holds it.
            filesystem.device = try run("/sbin/losetup", ["--direct-io=on", "--find", "--show", filesystem.image])
                .trimmingCharacters(in: .whitespacesAndNewlines)
            try run("/bin/mount", [filesystem.device, filesystem.mountPoint])
        } catch {
            filesystem.remove()
            return .failure(error as? Unavailable ?? Unavailable(description: "\(error)"))
        }
        return .success(filesystem)
    }

    /// Whether the filesystem holding / runs a journal (jbd2 lists the journals it runs).
    static var rootHasJournal: Bool {
        let journals = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/fs/jbd2")) ?? []
        let root = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8))?
            .split(separator: "\n").map { $0.split(separator: " ") }.last { $0.count > 1 && $0[1] == "/" }
        guard let device = root?.first?.split(separator: "/").last else { return true }
        return journals.contains { $0.hasPrefix(device + "-") }
    }

    func remove() {
        _ = try? Self.run("/bin/umount", [mountPoint])
        if !device.isEmpty { _ = try? Self.run("/sbin/losetup", ["-d", device]) }
        try? FileManager.default.removeItem(atPath: image)
        try? FileManager.default.removeItem(atPath: mountPoint)
    }

    /// Runs `tool` and returns its standard output.
    @discardableResult
    private static func run(_ tool: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        let bytes = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw Unavailable(description: "\(tool) \(arguments.joined(separator: " ")) exited with \(process.terminationStatus)")
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

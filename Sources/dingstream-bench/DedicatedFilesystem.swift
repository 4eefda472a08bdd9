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

    struct Unavailable: Error, CustomStringConvertible {
        var description: String
    }

    static func make() -> Result<DedicatedFilesystem, Unavailable> {
        guard geteuid() == 0 else { return .failure(Unavailable(description: "not root, cannot mount")) }
        let base = NSTemporaryDirectory() + "/dingstream-bench-fs-\(UUID().uuidString.prefix(8))"
        let filesystem = DedicatedFilesystem(image: base + ".img", mountPoint: base)
        do {
            try FileManager.default.createDirectory(atPath: filesystem.mountPoint, withIntermediateDirectories: true)
            guard FileManager.default.createFile(atPath: filesystem.image, contents: nil),
                truncate(filesystem.image, off_t(sizeMiB) << 20) == 0
            else { throw Unavailable(description: "cannot create \(filesystem.image)") }
            // One inode per 4 KiB: an entry is one small file, and a run leaves ~150,000 of them.
            try run("/sbin/mkfs.ext4", ["-q", "-F", "-i", "4096", filesystem.image])
            try run("/bin/mount", ["-o", "loop", filesystem.image, filesystem.mountPoint])
        } catch {
            filesystem.remove()
            return .failure(error as? Unavailable ?? Unavailable(description: "\(error)"))
        }
        return .success(filesystem)
    }

    func remove() {
        _ = try? Self.run("/bin/umount", [mountPoint])
        try? FileManager.default.removeItem(atPath: image)
        try? FileManager.default.removeItem(atPath: mountPoint)
    }

    private static func run(_ tool: String, _ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw Unavailable(description: "\(tool) \(arguments.joined(separator: " ")) exited with \(process.terminationStatus)")
        }
    }
}

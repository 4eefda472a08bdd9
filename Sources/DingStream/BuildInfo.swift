import Foundation

/// What `dingstream version` tells beyond the version: how the binary was built and when, so a
/// bug report says which build it is about.
public enum BuildInfo {
    public static var configuration: String {
        #if DEBUG
        "debug build"
        #else
        "release build"
        #endif
    }

    public static var compiler: String {
        #if compiler(>=6.3)
        "Swift 6.3"
        #elseif compiler(>=6.2)
        "Swift 6.2"
        #elseif compiler(>=6.1)
        "Swift 6.1"
        #else
        "Swift 6.0"
        #endif
    }

    public static var architecture: String {
        #if arch(x86_64)
        "x86_64"
        #elseif arch(arm64)
        "arm64"
        #else
        "other architecture"
        #endif
    }

    /// The modification time of the running binary (the build, or the package's file time), UTC.
    public static var binaryDate: String? {
        guard let path = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"),
            let date = (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date
        else { return nil }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyy-MM-dd HH:mm 'UTC'"
        return formatter.string(from: date)
    }

    /// `dingstream 0.1.0 (release build, Swift 6.3, x86_64, binary of 2026-11-29 06:00 UTC)`.
    public static var line: String {
        let details = [configuration, compiler, architecture] + (binaryDate.map { ["binary of \($0)"] } ?? [])
        return "dingstream \(Daemon.version) (\(details.joined(separator: ", ")))"
    }
}

import Glibc
import Testing

@testable import Handlers

@Suite struct HandlerDirectoryTests {
    let owner = Set([geteuid()])

    @Test(.timeLimit(.minutes(1)))
    func listsInLexicalOrderWithReasons() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        try dir.write("20-markdown", "#!/bin/sh\n")
        try dir.write("10-echo", "#!/bin/sh\n")
        try dir.write("README.md", "docs\n", mode: 0o644)
        try dir.write("30-backup~", "#!/bin/sh\n")
        try dir.write(".hidden", "#!/bin/sh\n")
        try dir.write("40-disabled", "#!/bin/sh\n", mode: 0o644)
        try dir.write("50-world", "#!/bin/sh\n", mode: 0o757)
        try dir.write("55-group", "#!/bin/sh\n", mode: 0o775)
        mkdir(dir.file("60-subdir"), 0o755)
        symlink(dir.file("missing"), dir.file("70-dangling"))
        symlink(dir.file("10-echo"), dir.file("80-link"))

        let scan = HandlerDirectory.scan(path: dir.path, allowedOwners: owner)
        #expect(scan.directoryProblem == nil)
        #expect(scan.entries.map(\.name) == [
            ".hidden", "10-echo", "20-markdown", "30-backup~", "40-disabled", "50-world", "55-group",
            "60-subdir", "70-dangling", "80-link", "README.md",
        ])
        let statuses = Dictionary(uniqueKeysWithValues: scan.entries.map { ($0.name, $0.status) })
        #expect(statuses[".hidden"] == .skipped(.badName))
        #expect(statuses["30-backup~"] == .skipped(.badName))
        #expect(statuses["README.md"] == .skipped(.badName))
        #expect(statuses["40-disabled"] == .skipped(.notExecutable))
        #expect(statuses["50-world"] == .skipped(.writableByOthers(mode: 0o757)))
        #expect(statuses["55-group"] == .skipped(.writableByOthers(mode: 0o775)))
        #expect(statuses["60-subdir"] == .skipped(.notRegularFile))
        #expect(statuses["70-dangling"] == .skipped(.brokenLink))
        #expect(scan.runnable.map(\.name) == ["10-echo", "20-markdown", "80-link"])
        #expect(scan.runnable.first?.path == dir.file("10-echo"))

        let report = scan.report()
        #expect(report.contains("run   10-echo"))
        #expect(report.contains("skip  50-world: writable by group or others (mode 0757)"))
        #expect(report.contains("chmod go-w \(dir.file("50-world"))"))
        #expect(report.contains("chmod 0755 \(dir.file("40-disabled"))"))
        #expect(report.contains("3 handlers will run"))
    }

    @Test(.timeLimit(.minutes(1)))
    func refusesGroupWritableDirectory() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        try dir.write("10-echo", "#!/bin/sh\n")
        chmod(dir.path, 0o775)
        let scan = HandlerDirectory.scan(path: dir.path, allowedOwners: owner)
        #expect(scan.directoryProblem == .writableByOthers(mode: 0o775))
        #expect(scan.runnable.isEmpty)
        #expect(scan.entries.map(\.status) == [.skipped(.directoryUnsafe)])
        #expect(scan.report().contains("REFUSED directory: writable by group or others (mode 0775)"))
        #expect(scan.report().contains("0 handlers will run"))
    }

    @Test(.timeLimit(.minutes(1)))
    func refusesForeignOwners() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let file = try dir.write("10-echo", "#!/bin/sh\n")
        // The directory's owner is not allowed: nothing runs.
        let foreignDirectory = HandlerDirectory.scan(path: dir.path, allowedOwners: [geteuid() &+ 4242])
        #expect(foreignDirectory.directoryProblem == .wrongOwner(uid: geteuid()))
        #expect(foreignDirectory.runnable.isEmpty)
        // A file owned by someone else (needs root to arrange).
        if geteuid() == 0 {
            #expect(chown(file, 4242, 0) == 0)
            let scan = HandlerDirectory.scan(path: dir.path, allowedOwners: [0])
            #expect(scan.entries.first?.status == .skipped(.wrongOwner(uid: 4242)))
            #expect(scan.report().contains("chown root: \(file)"))
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func missingDirectory() {
        let scan = HandlerDirectory.scan(path: "/nonexistent/handlers", allowedOwners: owner)
        #expect(scan.directoryProblem == .unreadable(errno: ENOENT))
        #expect(scan.entries.isEmpty)
    }

    @Test(.timeLimit(.minutes(1))) func runPartsNames() {
        #expect(HandlerDirectory.isValidName("10-echo_2"))
        #expect(!HandlerDirectory.isValidName("echo.sh"))
        #expect(!HandlerDirectory.isValidName(""))
        #expect(!HandlerDirectory.isValidName("é"))
        #expect(!HandlerDirectory.isValidName("a b"))
    }
}

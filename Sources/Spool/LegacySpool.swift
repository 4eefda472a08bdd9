import Foundation
import Logging
import StreamProtocol

/// A spool of dingstream 0.1: one JSON file per message in `new/ cur/ outbox/ done/ failed/`
/// (dead letters with `failed/<name>.reason`), `tmp/` for partial writes, and `dedup.log` with
/// the keys of pruned entries. Imported once into the database, then removed.
struct LegacySpool {
    let directory: String
    let logger: Logger

    static let stateFolders: [EntryState] = [.new, .running, .outbox, .done, .failed]

    var exists: Bool {
        Self.stateFolders.contains { FileIO.exists("\(directory)/\($0.legacyFolder)") } || FileIO.exists(dedupLog)
    }

    private var dedupLog: String { "\(directory)/dedup.log" }

    /// Copies every entry and dedup record into `store` in one transaction, then removes the
    /// folders. A name found in two folders (a crash between rename and unlink) keeps the state
    /// of higher precedence; an entry whose handlers were running becomes new again. A file that
    /// does not parse is left where it is and logged; the folders it is in stay.
    /// - Throws: `SpoolError`; nothing is removed unless the transaction committed, so a failed
    ///   import runs again at the next start and inserts nothing twice.
    func importInto(_ store: SQLiteStore, nowMillis: Int64) throws(SpoolError) {
        var found: [EntryName: EntryState] = [:]
        for state in Self.stateFolders {
            let folder = "\(directory)/\(state.legacyFolder)"
            guard FileIO.exists(folder) else { continue }
            for file in try FileIO.list(folder) where file.hasSuffix(".json") {
                guard let name = EntryName(file) else { continue }
                if let other = found[name], other.precedence >= state.precedence { continue }
                found[name] = state
            }
        }
        var imported = 0
        var unreadable: [String] = []
        try store.inTransaction { () throws(SpoolError) in
            for (name, state) in found.sorted(by: { $0.key < $1.key }) {
                let path = "\(directory)/\(state.legacyFolder)/\(name.fileName)"
                let entry: SpoolEntry
                do throws(SpoolError) {
                    entry = try SpoolEntry.parse(try FileIO.readFile(path), name: name, path: path)
                } catch {
                    unreadable.append(path)
                    continue
                }
                let modified = FileIO.modified(path).map { Spool.millis($0) } ?? name.receivedMillis
                let reasonPath = "\(directory)/failed/\(name.value).reason"
                let reason = state == .failed ? (try? FileIO.readFile(reasonPath)).map { String(decoding: $0, as: UTF8.self) } : nil
                // A retry waited in new/ with its due time as mtime.
                let target: EntryState = state == .running ? .new : state
                let notBefore = target == .new ? modified : nowMillis
                if try store.importEntry(entry, state: target, notBeforeMillis: notBefore, changedMillis: modified, reason: reason) {
                    imported += 1
                }
            }
            if FileIO.exists(dedupLog) {
                let text = String(decoding: try FileIO.readFile(dedupLog), as: UTF8.self)
                for line in text.split(separator: "\n") {
                    let parts = line.split(separator: " ", maxSplits: 1)
                    guard parts.count == 2, let millis = Int64(parts[0]) else { continue }
                    try store.insertLegacySeen(String(parts[1]), receivedMillis: millis)
                }
            }
        }
        removeFolders(keeping: Set(unreadable))
        logger.notice(
            "spool: imported \(imported) entries of the folder layout into \(store.path)\(unreadable.isEmpty ? "" : "; \(unreadable.count) unreadable files were left in place: \(unreadable.prefix(3).joined(separator: ", "))")",
            metadata: ["spool.dir": "\(directory)"])
    }

    /// Removes what was imported; folders holding an unreadable file stay with that file.
    private func removeFolders(keeping unreadable: Set<String>) {
        for folder in Self.stateFolders.map(\.legacyFolder) + ["tmp"] {
            let path = "\(directory)/\(folder)"
            guard let files = try? FileIO.list(path) else { continue }
            for file in files where !unreadable.contains("\(path)/\(file)") { unlink("\(path)/\(file)") }
            rmdir(path)
        }
        unlink(dedupLog)
    }
}

import Foundation
import Logging
import StreamProtocol
import Synchronization

extension Spool {
    /// Queues `record` for the next group commit and returns at once (no I/O, no task; the entry
    /// is encoded on the caller's thread). `completion` is called exactly once, from the spool's
    /// commit thread: `.stored` after the entry is durable, `.duplicate` without writing,
    /// `.failed` when it could not be stored (do not ack). After `run` has ended it is called at
    /// once, on the caller's thread, with `.failed(.closed)`.
    public func submit(_ record: IntakeRecord, completion: @escaping @Sendable (IntakeOutcome) -> Void) {
        let item = Pending(record: record, bytes: record.encoded(), completion: completion)
        if !queue.append(item) { completion(.failed(SpoolError(.closed, path: directory))) }
    }

    /// The intake: commits queued frames in groups, announces entries on `entries`, rescans `new/`
    /// every `rescanInterval` and prunes every `pruneInterval`, all on a dedicated thread so that
    /// writes and syncs never block a cooperative thread. Call `open` first.
    /// Returns when its task is cancelled, after committing what was already queued; later
    /// submits fail with `.closed`. Write failures never end it: they fail the frames concerned.
    public func run() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (finished: CheckedContinuation<Void, Never>) in
                let thread = Thread { [self] in
                    commitLoop()
                    finished.resume()
                }
                thread.name = "dingstream-spool"
                thread.start()
            }
        } onCancel: {
            queue.requestStop()
        }
    }

    /// The body of the commit thread.
    private func commitLoop() {
        queue.markRunning()
        rescan()
        let interval = Double(Self.millis(rescanInterval)) / 1000
        var nextMaintenance = Date().addingTimeInterval(interval)
        while true {
            let (batch, syncs, stopping) = queue.next(limit: Self.maximumBatch, deadline: nextMaintenance)
            if !batch.isEmpty || !syncs.isEmpty { commit(batch, syncs: syncs) }
            if stopping { break }
            if Date() >= nextMaintenance {
                maintain()
                nextMaintenance = Date().addingTimeInterval(interval)
            }
        }
        // Shutting down: store what is queued, refuse the rest.
        let rest = queue.close()
        if !rest.batch.isEmpty || !rest.syncs.isEmpty { commit(rest.batch, syncs: rest.syncs) }
        entriesContinuation.finish()
    }

    /// Makes the state moves behind `syncs` durable: the batch's syncfs already did (their
    /// renames came before it), else their folders are synced here, once each.
    private func finishSyncs(_ syncs: [CommitQueue.SyncRequest], coveredBySync: Bool) {
        guard !syncs.isEmpty else { return }
        var failure: SpoolError?
        if !coveredBySync {
            for folder in syncs.reduce(into: Set<String>(), { $0.formUnion($1.folders) }).sorted() {
                do {
                    try FileIO.syncDirectory(folder)
                } catch {
                    failure = failure ?? error
                }
            }
        }
        for request in syncs { request.completion(failure) }
    }

    private func maintain() {
        rescan()
        let due = loop.withLock { now().timeIntervalSince($0.lastPrune) >= Double(Self.millis(pruneInterval)) / 1000 }
        guard due else { return }
        do {
            try prune()
        } catch {
            logger.warning("\(error)", metadata: ["spool.dir": "\(directory)"])
        }
    }

    /// Announces due entries of `new/` not announced yet (recovered, retried, put back by the CLI).
    func rescan() {
        let names: [String]
        do {
            names = try FileIO.list(folder(.new))
        } catch {
            logger.warning("\(error)", metadata: ["spool.dir": "\(directory)"])
            return
        }
        let current = now()
        var listed: [EntryName] = []
        for file in names where file.hasSuffix(".json") {
            if let name = EntryName(file) { listed.append(name) }
        }
        listed.sort()
        let fresh = loop.withLock { state -> [EntryName] in
            state.announced.formIntersection(listed)
            return listed.filter { !state.announced.contains($0) }
        }
        var announce: [EntryName] = []
        for name in fresh {
            // A retry waits in new/ with its due time as mtime.
            guard let due = FileIO.modified(path(of: name, in: .new)), due <= current else { continue }
            announce.append(name)
        }
        loop.withLock { state in state.announced.formUnion(announce) }
        for name in announce { entriesContinuation.yield(name) }
    }

    /// One group commit: dedup, write every new entry to tmp/, one sync, rename into new/,
    /// one directory sync, then complete every frame.
    func commit(_ batch: [Pending], syncs: [CommitQueue.SyncRequest] = []) {
        var syncsCovered = false
        defer { finishSyncs(syncs, coveredBySync: syncsCovered) }
        var duplicates: [Pending] = []
        // Copies of a frame written by this very batch: they may be acked only once that write
        // is durable, else an ack of the copy loses the message if the write fails or we crash.
        var copies: [Substring: [Pending]] = [:]
        var writes: [(name: EntryName, pending: Pending)] = []
        loop.withLock { state in
            for pending in batch {
                let name = EntryName(receivedMillis: pending.record.receivedMillis, key: pending.record.key)
                if state.index[String(name.dedupKey)] != nil {
                    duplicates.append(pending)
                } else if copies[name.dedupKey] != nil {
                    copies[name.dedupKey, default: []].append(pending)
                } else {
                    copies[name.dedupKey] = []
                    writes.append((name, pending))
                }
            }
        }
        for pending in duplicates { pending.completion(.duplicate) }
        guard !writes.isEmpty else { return }

        let groupSync = syncMode == .filesystem && FileIO.hasSyncFS
        var failures: [(Pending, SpoolError)] = []
        var committed: [(name: EntryName, pending: Pending)] = []
        var directoryFailure: SpoolError?
        do {
            // Descriptors of tmp/ and new/: every name below is resolved relative to them.
            let temporaries = try FileIO.Directory(tmpFolder)
            let destination = try FileIO.Directory(folder(.new))
            var written: [(name: EntryName, file: String, pending: Pending)] = []
            for item in writes {
                let file = item.name.fileName
                do {
                    try temporaries.createFile(file, item.pending.bytes, sync: !groupSync)
                    written.append((item.name, file, item.pending))
                } catch {
                    failures.append((item.pending, error))
                }
            }
            if groupSync, !written.isEmpty {
                do {
                    syncsCovered = try FileIO.syncFilesystem(tmpFolder)
                } catch {
                    for item in written {
                        try? temporaries.remove(item.file)
                        failures.append((item.pending, error))
                    }
                    written = []
                }
            }
            for item in written {
                do {
                    try temporaries.rename(item.file, to: destination)
                    committed.append((item.name, item.pending))
                } catch {
                    try? temporaries.remove(item.file)
                    failures.append((item.pending, error))
                }
            }
            if !committed.isEmpty {
                do {
                    try destination.sync()
                } catch {
                    directoryFailure = error
                }
            }
        } catch {
            // tmp/ or new/ cannot be opened: nothing of this batch is written.
            failures = writes.map { ($0.pending, error) }
        }

        // Entries in new/ are indexed and announced even if the directory sync failed: they may
        // well survive, and a redelivery must not create a second copy.
        let (logFailure, logRecovery) = loop.withLock { state -> (SpoolError?, Bool) in
            for item in committed {
                state.index[String(item.name.dedupKey)] = item.name.receivedMillis
                state.announced.insert(item.name)
                if state.committed.count < Self.committedCacheLimit {
                    state.committed[item.name] = (item.pending.record, item.pending.bytes)
                }
            }
            let firstFailure = directoryFailure ?? failures.first?.1
            if let firstFailure {
                defer { state.fault = firstFailure }
                return (state.fault?.code == firstFailure.code ? nil : firstFailure, false)
            }
            defer { state.fault = nil }
            return (nil, state.fault != nil)
        }
        if let logFailure {
            logger.error(
                "\(logFailure); frames stay unacked until it is fixed",
                metadata: ["spool.dir": "\(directory)", "spool.path": "\(logFailure.path)"])
        }
        if logRecovery {
            logger.notice("spool: intake recovered, storing frames again", metadata: ["spool.dir": "\(directory)"])
        }

        for item in committed { entriesContinuation.yield(item.name) }
        for (pending, error) in failures {
            pending.completion(.failed(error))
            let key = EntryName(receivedMillis: pending.record.receivedMillis, key: pending.record.key).dedupKey
            for copy in copies[key] ?? [] { copy.completion(.failed(error)) }
        }
        for item in committed {
            let outcome: IntakeOutcome = directoryFailure.map { .failed($0) } ?? .stored(item.name)
            item.pending.completion(outcome)
            for copy in copies[item.name.dedupKey] ?? [] {
                copy.completion(directoryFailure.map { .failed($0) } ?? .duplicate)
            }
        }
    }
}

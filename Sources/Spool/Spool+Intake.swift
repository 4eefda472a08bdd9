import Foundation
import Logging
import StreamProtocol
import Synchronization

extension Spool {
    /// Queues `record` for the next group commit and returns at once (no I/O, no task; the entry
    /// is encoded on the caller's thread). `completion` is called exactly once, from the spool's
    /// sync thread: `.stored` after the entry is durable, `.duplicate` without writing,
    /// `.failed` when it could not be stored (do not ack). After `run` has ended it is called at
    /// once, on the caller's thread, with `.failed(.closed)`.
    public func submit(_ record: IntakeRecord, completion: @escaping @Sendable (IntakeOutcome) -> Void) {
        let item = Pending(record: record, bytes: record.encoded(), completion: completion)
        if !queue.append(item) { completion(.failed(SpoolError(.closed, path: directory))) }
    }

    /// The intake: commits queued frames in groups, announces entries on `entries`, rescans `new/`
    /// every `rescanInterval` and prunes every `pruneInterval`, on two threads of its own so that
    /// writes and syncs never block a cooperative thread: the writer puts files into `tmp/` while
    /// the syncer makes the previous batch durable and moves it into `new/`. Call `open` first.
    /// Returns when its task is cancelled, after committing what was already queued; later
    /// submits fail with `.closed`. Write failures never end it: they fail the frames concerned.
    public func run() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (finished: CheckedContinuation<Void, Never>) in
                let stage = SyncStage()
                let syncer = Thread { [self] in
                    FileIO.nameThread("spool-syncer")
                    syncLoop(stage)
                    entriesContinuation.finish()
                    finished.resume()
                }
                syncer.name = "spool-syncer"
                let writer = Thread { [self] in
                    FileIO.nameThread("spool-writer")
                    writeLoop(stage)
                    stage.finish()
                }
                writer.name = "spool-writer"
                syncer.start()
                writer.start()
            }
        } onCancel: {
            queue.requestStop()
        }
    }

    /// The body of the writer thread.
    private func writeLoop(_ stage: SyncStage) {
        queue.markRunning()
        rescan()
        let interval = Double(Self.millis(rescanInterval)) / 1000
        var nextRescan = Date().addingTimeInterval(interval)
        var nextPruneSlice: Date?  // set while a pruning has entries left
        while true {
            let deadline = nextPruneSlice.map { min($0, nextRescan) } ?? nextRescan
            let (batch, syncs, stopping) = queue.next(limit: Self.maximumBatch, deadline: deadline)
            if !batch.isEmpty || !syncs.isEmpty { write(batch, syncs: syncs, to: stage) }
            if stopping { break }
            let current = Date()
            if current >= nextRescan {
                rescan()
                nextRescan = Date().addingTimeInterval(interval)
                if nextPruneSlice == nil, pruneDue { nextPruneSlice = current }
            }
            if let slice = nextPruneSlice, current >= slice {
                nextPruneSlice = pruneSlice() ? Date().addingTimeInterval(Self.pruneSlicePause) : nil
            }
        }
        // Shutting down: store what is queued, refuse the rest.
        let rest = queue.close()
        if !rest.batch.isEmpty || !rest.syncs.isEmpty { write(rest.batch, syncs: rest.syncs, to: stage) }
    }

    /// Whether one syncfs makes a batch durable (rather than an fdatasync per file).
    var groupSync: Bool { syncMode == .filesystem && FileIO.hasSyncFS }

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

    private var pruneDue: Bool {
        loop.withLock { now().timeIntervalSince($0.lastPrune) >= Double(Self.millis(pruneInterval)) / 1000 }
    }

    /// One slice of pruning; whether entries are left.
    private func pruneSlice() -> Bool {
        do {
            return try prune(limit: Self.pruneSliceLimit)
        } catch {
            logger.warning("\(error)", metadata: ["spool.dir": "\(directory)"])
            return false
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
            // A name in flight is in new/ before it is durable; it is announced once it is.
            return listed.filter { !state.announced.contains($0) && state.inFlight[String($0.dedupKey)] == nil }
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

    /// The writer's half of a group commit: dedup, then every new entry written to `tmp/` (not
    /// synced) and handed to the syncer. Duplicates are completed at once; a copy of a frame still
    /// on its way (in this batch or an earlier one) waits for the original's outcome, since an ack
    /// of the copy before the original is durable would lose the message if that write failed.
    func write(_ batch: [Pending], syncs: [CommitQueue.SyncRequest], to stage: SyncStage) {
        var duplicates: [Pending] = []
        var writes: [(name: EntryName, pending: Pending)] = []
        loop.withLock { state in
            for pending in batch {
                let name = EntryName(receivedMillis: pending.record.receivedMillis, key: pending.record.key)
                let key = String(name.dedupKey)
                if state.index[key] != nil {
                    duplicates.append(pending)
                } else if state.inFlight[key] != nil {
                    state.inFlight[key]!.append(pending)
                } else {
                    state.inFlight[key] = []
                    writes.append((name, pending))
                }
            }
        }
        for pending in duplicates { pending.completion(.duplicate) }

        var written = SyncStage.Batch(syncs: syncs)
        if !writes.isEmpty {
            do {
                let temporaries = try FileIO.Directory(tmpFolder)
                for item in writes {
                    let file = item.name.fileName
                    do {
                        try temporaries.createFile(file, item.pending.bytes, sync: !groupSync)
                        written.written.append((item.name, file, item.pending))
                    } catch {
                        written.failures.append((item.name, item.pending, error))
                    }
                }
            } catch {
                // tmp/ cannot be opened: nothing of this batch is written.
                written.failures = writes.map { ($0.name, $0.pending, error) }
            }
        }
        if !written.isEmpty { stage.hand(written) }
    }

    /// The body of the syncer thread: one filesystem sync per round makes the round's files
    /// durable, and also the renames of the round before when those were left for it.
    private func syncLoop(_ stage: SyncStage) {
        // Moved into new/ last round; durable once this round's filesystem sync returns.
        var awaitingSync: [(name: EntryName, pending: Pending)] = []
        while let batch = stage.take() {
            var written = batch.written
            var failures = batch.failures
            var syncsCovered = false
            var syncFailure: SpoolError?
            if groupSync, !written.isEmpty || !awaitingSync.isEmpty {
                do {
                    syncsCovered = try FileIO.syncFilesystem(tmpFolder)
                } catch {
                    syncFailure = error
                }
            }
            if !awaitingSync.isEmpty {
                finish(committed: awaitingSync, failures: [], directoryFailure: syncFailure)
                awaitingSync = []
            }
            var committed: [(name: EntryName, pending: Pending)] = []
            var directoryFailure: SpoolError?
            // With a batch queued already, the next round starts at once and its filesystem sync
            // makes this round's renames durable: no directory sync of their own. Only for a
            // large round: a few frames would wait a whole extra round to save one cheap fsync.
            let leaveToNextRound = groupSync && written.count >= Self.smallestRoundLeftToNext && stage.hasQueued
            if !written.isEmpty {
                do {
                    let temporaries = try FileIO.Directory(tmpFolder)
                    if let syncFailure {
                        for item in written {
                            try? temporaries.remove(item.file)
                            failures.append((item.name, item.pending, syncFailure))
                        }
                        written = []
                    }
                    let destination = try FileIO.Directory(folder(.new))
                    for item in written {
                        do {
                            try temporaries.rename(item.file, to: destination)
                            committed.append((item.name, item.pending))
                        } catch {
                            try? temporaries.remove(item.file)
                            failures.append((item.name, item.pending, error))
                        }
                    }
                    if !committed.isEmpty, !leaveToNextRound {
                        do {
                            try destination.sync()
                        } catch {
                            directoryFailure = error
                        }
                    }
                } catch {
                    // tmp/ or new/ cannot be opened: the files stay in tmp/, removed at the next start.
                    failures += written.map { ($0.name, $0.pending, error) }
                }
            }
            if leaveToNextRound {
                awaitingSync = committed
                committed = []
            }
            finish(committed: committed, failures: failures, directoryFailure: directoryFailure)
            finishSyncs(batch.syncs, coveredBySync: syncsCovered)
        }
    }

    /// Indexes and announces `committed` (in `new/`, durable unless `directoryFailure`), completes
    /// every frame concerned and logs a change of the intake's fault state once.
    private func finish(
        committed: [(name: EntryName, pending: Pending)], failures: [SyncStage.Failure],
        directoryFailure: SpoolError?
    ) {
        guard !committed.isEmpty || !failures.isEmpty else { return }
        // Entries in new/ are indexed and announced even if the directory sync failed: they may
        // well survive, and a redelivery must not create a second copy.
        var copiesOfCommitted: [[Pending]] = []
        var copiesOfFailed: [[Pending]] = []
        let (logFailure, logRecovery) = loop.withLock { state -> (SpoolError?, Bool) in
            for item in committed {
                let key = String(item.name.dedupKey)
                state.index[key] = item.name.receivedMillis
                copiesOfCommitted.append(state.inFlight.removeValue(forKey: key) ?? [])
                state.announced.insert(item.name)
                if state.committed.count < Self.committedCacheLimit {
                    state.committed[item.name] = (item.pending.record, item.pending.bytes)
                }
            }
            for item in failures {
                copiesOfFailed.append(state.inFlight.removeValue(forKey: String(item.name.dedupKey)) ?? [])
            }
            let firstFailure = directoryFailure ?? failures.first?.error
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
        for (item, copies) in zip(failures, copiesOfFailed) {
            item.pending.completion(.failed(item.error))
            for copy in copies { copy.completion(.failed(item.error)) }
        }
        for (item, copies) in zip(committed, copiesOfCommitted) {
            item.pending.completion(directoryFailure.map { .failed($0) } ?? .stored(item.name))
            for copy in copies { copy.completion(directoryFailure.map { .failed($0) } ?? .duplicate) }
        }
    }
}

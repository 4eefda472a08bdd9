import Foundation

/// What one durable write costs on a filesystem by itself: an 8 KiB overwrite in a preallocated
/// file and its `fdatasync`, once a millisecond as in the paced phase; no SQLite, no sockets, no
/// threads handing work on. An ack after the WAL's fsync cannot come sooner than this, so it is
/// the floor under the daemon's ack latency on that filesystem.
enum SyncFloor {
    struct Result: Sendable {
        var p50: Double
        var p99: Double
    }

    static func measure(directory: String, samples: Int = 1000) -> Result? {
        let path = directory + "/dingstream-bench-sync-\(UUID().uuidString.prefix(8))"
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return nil }
        defer {
            close(fd)
            unlink(path)
        }
        let fileSize = 4 << 20
        let block = [UInt8](repeating: 0x5a, count: 8192)
        // Written and synced once first, so that the measured writes overwrite allocated blocks
        // as the WAL's do once it has wrapped, without a file size to commit each time.
        for offset in stride(from: 0, to: fileSize, by: block.count) where pwrite(fd, block, block.count, off_t(offset)) != block.count {
            return nil
        }
        guard fsync(fd) == 0 else { return nil }
        var latencies: [Double] = []
        latencies.reserveCapacity(samples)
        for index in 0..<samples {
            guard pwrite(fd, block, block.count, off_t(index * block.count % fileSize)) == block.count else { return nil }
            let start = ContinuousClock.now
            guard fdatasync(fd) == 0 else { return nil }
            latencies.append((ContinuousClock.now - start).inSeconds)
            usleep(1000)
        }
        latencies.sort()
        return Result(p50: Bench.percentile(latencies, 0.50), p99: Bench.percentile(latencies, 0.99))
    }
}

import AsyncHTTPClient
import Foundation
import Handlers
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Replies
import Spool
import StreamProtocol

/// Why one attachment could not be downloaded. `transient` failures (throttling, server errors,
/// timeouts, broken connections) are worth another try later; the others are not.
struct AttachmentError: Error, Sendable, CustomStringConvertible {
    var transient: Bool
    var description: String
}

/// Downloads the files of a bot message into `<spool>/attachments/<entry name>/` before its
/// handlers run (`DINGSTREAM_ATTACHMENTS`).
///
/// Each `downloadCode` is resolved through `messageFiles/download` with the app's token, then the
/// temporary URL is fetched, at most `maxBytes`, into `.<name>.part` and renamed into place, so a
/// file with its final name is always complete. Files already there (an earlier attempt) are
/// kept, which makes retries and restarts cheap.
///
/// Failures: a transient one asks for the whole message to be retried later (the dispatcher's
/// backoff, counted in `max_attempts`); a permanent one (oversize, unknown code, a URL that is
/// gone, or the last attempt) writes `<name>.missing` holding the reason, and the handlers run
/// without that file. A user's message is worth answering even when its picture is lost.
struct AttachmentFetcher: Sendable {
    enum Outcome: Sendable, Equatable {
        /// Run the handlers; `folder` is the attachments folder, nil when the message has none.
        case ready(folder: String?)
        /// Try the whole message again later.
        case retryLater(reason: String)
    }

    var sources: [String: AppClients.Client]
    var maxBytes: Int
    var timeout: Duration = .seconds(120)

    static func folder(spool: Spool, name: EntryName) -> String {
        spool.directory + "/attachments/" + name.value
    }

    /// Downloads what `entry` (a bot message) carries. With `finalAttempt`, transient failures
    /// are treated as permanent so that the handlers run at last.
    func fetch(_ entry: SpoolEntry, spool: Spool, finalAttempt: Bool, logger: Logger) async -> Outcome {
        guard entry.kind == .bot else { return .ready(folder: nil) }
        // Most messages are text: known without parsing the message again.
        if let type = entry.botMessage?.msgtype, !Attachment.messageTypes.contains(type) { return .ready(folder: nil) }
        guard let data = entry.dataObject() else { return .ready(folder: nil) }
        let attachments = Attachment.list(in: data)
        guard !attachments.isEmpty else { return .ready(folder: nil) }
        let folder = Self.folder(spool: spool, name: entry.name)
        do {
            try Self.makeFolder(spool.directory + "/attachments")
            try Self.makeFolder(folder)
        } catch {
            // Without a folder no file can be offered; a full or broken disk is worth a retry.
            logger.error("attachments: cannot create \(folder): \(error)")
            return finalAttempt ? .ready(folder: nil) : .retryLater(reason: "cannot create \(folder): \(error)")
        }
        let robotCode = entry.botMessage?.robotCode
        var transient: [String] = []
        for attachment in attachments {
            let target = folder + "/" + attachment.fileName
            let note = folder + "/" + attachment.missingNoteName
            if FileManager.default.fileExists(atPath: target) { continue }
            unlink(note)
            var fileLog = logger
            fileLog[metadataKey: "attachment.name"] = "\(attachment.fileName)"
            fileLog[metadataKey: "attachment.kind"] = "\(attachment.kind)"
            do {
                guard let source = sources[entry.app] else {
                    throw AttachmentError(transient: false, description: "app \(entry.app) is not configured any more")
                }
                let url: String
                do {
                    url = try await source.openAPI.downloadURL(downloadCode: attachment.downloadCode, robotCode: robotCode)
                } catch {
                    throw AttachmentError(transient: error.isRetryable, description: "messageFiles/download: \(error)")
                }
                let size = try await download(url, to: target, folder: folder, client: source.http)
                fileLog.debug("attachments: downloaded \(size) bytes")
            } catch let error as AttachmentError {
                if error.transient && !finalAttempt {
                    fileLog.warning("attachments: download failed, the message will be tried again later: \(error)")
                    transient.append("\(attachment.fileName): \(error)")
                    continue
                }
                fileLog.error("attachments: \(attachment.fileName) not downloaded: \(error); handlers run without it (note in \(note))")
                try? Self.writeNote(note, "\(attachment.kind) \(attachment.fileName) was not downloaded: \(error)\n")
            } catch {
                fileLog.error("attachments: \(attachment.fileName) not downloaded: \(error)")
                try? Self.writeNote(note, "\(attachment.kind) \(attachment.fileName) was not downloaded: \(error)\n")
            }
        }
        if !transient.isEmpty { return .retryLater(reason: transient.joined(separator: "; ")) }
        return .ready(folder: folder)
    }

    /// Removes the folder once the handlers are through with the message (done or outbox).
    /// Dead letters keep theirs, so `dingstream spool retry` finds the files again.
    static func remove(spool: Spool, name: EntryName) {
        let folder = folder(spool: spool, name: name)
        if FileManager.default.fileExists(atPath: folder) { try? FileManager.default.removeItem(atPath: folder) }
    }

    /// GETs `url` into `target` through a hidden `.part` file; returns the size.
    private func download(_ url: String, to target: String, folder: String, client: HTTPClient) async throws -> Int {
        let partial = folder + "/." + (target as NSString).lastPathComponent + ".part"
        unlink(partial)
        let limit = maxBytes
        let timeout = timeout
        do {
            let size = try await withThrowingTaskGroup(of: Int?.self) { group in
                group.addTask { try await Self.stream(url, into: partial, limit: limit, client: client, timeout: timeout) }
                group.addTask {
                    // The client's deadline covers the head only; this one covers the body too.
                    try await Task.sleep(for: timeout)
                    return nil
                }
                defer { group.cancelAll() }
                guard let first = try await group.next(), let size = first else {
                    throw AttachmentError(transient: true, description: "download took longer than \(timeout)")
                }
                return size
            }
            guard rename(partial, target) == 0 else {
                throw AttachmentError(transient: true, description: "cannot rename into \(target): \(String(cString: strerror(errno)))")
            }
            return size
        } catch {
            unlink(partial)
            throw error
        }
    }

    private static func stream(_ url: String, into path: String, limit: Int, client: HTTPClient, timeout: Duration) async throws -> Int {
        var request = HTTPClientRequest(url: url)
        request.method = .GET
        let response: HTTPClientResponse
        do {
            response = try await client.execute(request, timeout: .seconds(timeout.components.seconds))
        } catch {
            throw AttachmentError(transient: true, description: "GET failed: \(error)")
        }
        let status = Int(response.status.code)
        guard status == 200 else {
            // 408, 429 and 5xx may pass; anything else (404 after the URL expired, 403) will not.
            let transient = status == 408 || status == 429 || status >= 500
            throw AttachmentError(transient: transient, description: "GET answered HTTP \(status)")
        }
        if let length = response.headers.first(name: "content-length").flatMap(Int.init), length > limit {
            throw AttachmentError(transient: false, description: "\(length) bytes is over max_attachment_bytes (\(limit))")
        }
        // Up to max_attachment_bytes written and synced: on NIO's blocking-I/O pool, so that a slow
        // or wedged disk holds none of the cooperative pool's threads.
        let io = NIOThreadPool.singleton
        let fd = try await io.runIfActive {
            // errno belongs to the pool's thread: read it there.
            let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o640)
            guard fd >= 0 else {
                throw AttachmentError(transient: true, description: "cannot create \(path): \(String(cString: strerror(errno)))")
            }
            return fd
        }
        defer { close(fd) }
        var total = 0
        do {
            for try await chunk in response.body {
                total += chunk.readableBytes
                if total > limit {
                    throw AttachmentError(transient: false, description: "over max_attachment_bytes (\(limit)) while downloading")
                }
                try await io.runIfActive { try Self.writeAll(chunk, to: fd, path: path) }
            }
        } catch let error as AttachmentError {
            throw error
        } catch {
            throw AttachmentError(transient: true, description: "download broke off: \(error)")
        }
        // Synced so that a file under its final name is whole even after a power cut.
        let synced = try await io.runIfActive { fsync(fd) == 0 ? nil : String(cString: strerror(errno)) }
        if let synced {
            throw AttachmentError(transient: true, description: "syncing \(path): \(synced)")
        }
        return total
    }

    private static func writeAll(_ chunk: ByteBuffer, to fd: Int32, path: String) throws {
        try chunk.withUnsafeReadableBytes { bytes in
            guard let base = bytes.baseAddress else { return }
            var offset = 0
            while offset < bytes.count {
                let written = write(fd, base + offset, bytes.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    throw AttachmentError(transient: true, description: "writing \(path): \(String(cString: strerror(errno)))")
                }
                offset += written
            }
        }
    }

    private static func makeFolder(_ path: String) throws {
        if mkdir(path, 0o750) != 0 && errno != EEXIST {
            throw AttachmentError(transient: true, description: String(cString: strerror(errno)))
        }
    }

    private static func writeNote(_ path: String, _ text: String) throws {
        try Data(text.utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
    }
}

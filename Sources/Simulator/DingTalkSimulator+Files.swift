import Foundation
import Synchronization

/// The files users send with bot messages: `messageFiles/download` answers a URL on the
/// simulator itself (`/_sim/files/<token>`), which serves the bytes given at injection.
extension DingTalkSimulator {
    /// Makes the download URL of `downloadCode` answer 404 while the code still resolves, as a
    /// temporary URL does once it expired.
    public func expireFileURL(downloadCode: String) {
        core.withLock { c in
            if let token = c.files[downloadCode]?.urlToken { c.fileByURLToken[token] = nil }
        }
    }
}

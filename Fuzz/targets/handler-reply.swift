// libFuzzer target: a handler's stdout (HandlerReply.parse), compiled with
// Sources/Handlers/HandlerReply.swift. Besides crashes it traps on a reply that breaks the
// documented contract: no reply only for blank output, a message only for a JSON object with a
// non-empty string msgtype, text never empty nor with surrounding whitespace.
import Foundation

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHandlerReply(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let stdout = Array(UnsafeBufferPointer(start: start, count: start == nil ? 0 : count))
    let blank = stdout.allSatisfy { [0x20, 0x09, 0x0A, 0x0D, 0x0B, 0x0C].contains($0) }
    switch HandlerReply.parse(stdout: stdout) {
    case nil:
        precondition(blank, "no reply for output that is not blank")
    case .message(let msgtype, let body)?:
        let object = (try? JSONSerialization.jsonObject(with: body)) as? [String: Any]
        precondition(object?["msgtype"] as? String == msgtype && !msgtype.isEmpty, "a message without its msgtype")
    case .text(let text)?:
        precondition(!blank && !text.isEmpty, "an empty text reply")
    }
    return 0
}

// libFuzzer target: the Stream frame reader (and the HTTP date reader beside it), compiled into
// one module with Sources/StreamProtocol.
// Besides crashes it traps when the fast reader and the full parse disagree on a frame the fast
// reader accepts, or when the quick scan of `data` vouches for something the full parse refuses
// or reads differently.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFrame(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = UnsafeBufferPointer(start: start, count: start == nil ? 0 : count)
    if let fast = FastFrameReader.decode(bytes) {
        guard let full = try? StreamFrame.decodeFully(bytes) else {
            fatalError("the fast reader accepted a frame the full parse refuses")
        }
        precondition(fast == full, "fast reader \(fast) != full parse \(full)")
    }
    _ = try? StreamFrame.decode(bytes)

    // The same bytes as the `data` of a frame.
    let frame = StreamFrame(kind: .callback, headers: [:], data: String(decoding: bytes, as: UTF8.self))
    let reference = frame.dataObject()
    if let scanned = frame.dataObjectMember("msgId") {
        precondition(reference != nil, "the scan vouched for data the full parse refuses")
        precondition(scanned == reference?["msgId"] as? String, "msgId differs between scan and parse")
    }
    if let both = frame.dataObjectMembers(["msgId", "conversationId"]) {
        precondition(reference != nil, "the one-pass scan vouched for data the full parse refuses")
        precondition(both[0] == reference?["msgId"] as? String, "msgId differs in the one-pass scan")
        precondition(both[1] == reference?["conversationId"] as? String, "conversationId differs in the one-pass scan")
    }
    _ = BotMessage(data: reference ?? [:])
    // A `Date` header from the network (the doctor's clock check) is read by this module too.
    _ = HTTPDate.parse(String(decoding: bytes, as: UTF8.self))
    return 0
}

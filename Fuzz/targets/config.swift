// libFuzzer target: the TOML reader of the configuration file and the duration grammar, compiled
// into one module with Sources/DingStream/Config/TOMLDocument.swift and DurationText.swift.
// Besides crashes it traps when an error names a line the file does not have.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfig(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: start, count: start == nil ? 0 : count), as: UTF8.self)
    do {
        _ = try TOMLDocument(parsing: text)
    } catch {
        let lines = text.utf8.count { $0 == UInt8(ascii: "\n") } + 1
        precondition((1...lines).contains(error.line), "error on line \(error.line) of a \(lines)-line file: \(error.message)")
    }
    if let duration = DurationText.parse(text) {
        precondition(duration >= .zero && duration <= DurationText.limit, "\(duration) out of range")
    }
    return 0
}

// libFuzzer target: a spool entry as stored (SpoolEntry.parse), compiled into one module with
// Sources/StreamProtocol and the entry's files of Sources/Spool. Entries are read back from the
// database and from 0.1 spool files being imported; a corrupt one must be refused, not crash.
import Foundation

private let name = EntryName(receivedMillis: 1_700_000_000_000, key: MessageKey(app: "fuzz", kind: .bot, id: "m1"))

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSpoolEntry(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let raw = Data(UnsafeBufferPointer(start: start, count: start == nil ? 0 : count))
    guard let entry = try? SpoolEntry.parse(raw, name: name, path: "fuzz.json") else { return 0 }
    _ = entry.dataObject()
    _ = entry.botMessage?.text
    return 0
}

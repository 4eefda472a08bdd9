// libFuzzer target: the `[cluster]` database URL (DatabaseURL), compiled with
// Sources/Spool/Cluster/DatabaseURL.swift. Besides crashes it traps when the description of an
// accepted TCP URL (what the log shows) reads back as another server, user or database.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDatabaseURL(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: start, count: start == nil ? 0 : count), as: UTF8.self)
    guard let url = try? DatabaseURL(parsing: text) else { return 0 }
    guard case .tcp = url.endpoint else { return 0 }
    let again = try? DatabaseURL(parsing: url.description)
    precondition(again?.endpoint == url.endpoint && again?.user == url.user && again?.database == url.database,
                 "\(url) reads back as \(again.map { "\($0)" } ?? "nothing")")
    return 0
}

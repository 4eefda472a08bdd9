import Logging
import Systemd

/// journald when stderr is the journal, readable lines on stderr otherwise. Call once, first.
public func bootstrapLogging(environment: [String: String], level: Logger.Level = .info) -> Logger {
    _ = LoggingSetup.bootstrap(environment: environment, level: .trace)
    var logger = Logger(label: "dingstream")
    logger.logLevel = level
    return logger
}

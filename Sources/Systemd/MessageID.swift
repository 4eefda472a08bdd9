import Logging

/// Stable journald `MESSAGE_ID`s of the events admins search for, e.g.
/// `journalctl -u dingstream MESSAGE_ID=3024d04054d84cee92a3d9eb056b4f65`.
///
/// The values are part of the interface (listed in docs/systemd.md): never change one.
public enum MessageID: String, Sendable, CaseIterable {
    /// A Stream socket of an app is connected and registered.
    case socketUp = "d6a71f500b234bf4a1c42d4cee205577"
    /// A socket was replaced make-before-break (rotation, server `disconnect`, deaf socket).
    case socketReplaced = "cd56990886c54025977de7522ed0c0da"
    /// A socket closed without warning (the server or the network dropped it): nothing replaced
    /// it first, the slot reconnects.
    case socketLost = "e8b95d5c0956475a94b0cd10607b1b8c"
    /// An inbound message was durably written to the spool (and may be acked).
    case messageCommitted = "16027d6b8fb045cd82815e1db6aa7944"
    /// A handler exited non-zero, was killed, or timed out.
    case handlerFailed = "a3c4d6d338884e3ab7364123180b6b4a"
    /// A reply could not be delivered by any path and is a dead letter.
    case replyDeadLettered = "3024d04054d84cee92a3d9eb056b4f65"
    /// A configuration (at start or on reload) was rejected.
    case configRejected = "88063d51de834a139c6622600851c847"
    /// A reload applied a new configuration.
    case reloaded = "5a79b535ce304f93b53423691ce4c0fe"
    /// The watchdog stopped pinging because a progress probe failed.
    case watchdogStalled = "cddfe0f3e2fd4403bc5ba57a3d5d638f"

    /// The id for `name`: a case name (`socketUp`, also `configReloaded` for `reloaded`) or the
    /// hex id itself. Lets modules without this one log `"message.id": "socketUp"`.
    public init?(name: String) {
        if let byValue = MessageID(rawValue: name.lowercased()) {
            self = byValue
        } else if name == "configReloaded" {
            self = .reloaded
        } else if let byName = MessageID.allCases.first(where: { String(describing: $0) == name }) {
            self = byName
        } else {
            return nil
        }
    }

    /// The metadata key whose value becomes the journal's `MESSAGE_ID` field; its value may be a
    /// case name or the hex id.
    public static let metadataKey = "message.id"

    /// `["message.id": id]`, to merge into a log call's metadata.
    public var metadata: Logger.Metadata { [MessageID.metadataKey: .string(rawValue)] }
}

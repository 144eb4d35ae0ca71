/// The `code` of an `error` frame; raw values are the exact wire names of docs/protocol.md.
public enum ErrorCode: String, Sendable, CaseIterable {
    /// Not JSON, not an object, a missing field or a field of the wrong type.
    case invalidMessage = "invalid_message"
    /// `type` names no frame this server knows.
    case unknownType = "unknown_type"
    /// A user or room id that breaks the id rules.
    case invalidID = "invalid_id"
    /// The message is larger than the gateway's message size limit.
    case tooLarge = "too_large"
    /// The connection sends faster than its rate limit allows.
    case rateLimited = "rate_limited"
    /// The user may not join this room.
    case forbidden = "forbidden"
    /// `publish` to a room this connection has not joined.
    case notMember = "not_member"
    /// No gateway hosts the recipient of a direct message.
    case recipientOffline = "recipient_offline"
    /// The backplane cannot take the message now (broker down or stalled). Usually nothing
    /// was sent; a message whose broker connection dropped, or that timed out waiting for
    /// the broker's confirm, may still be delivered.
    case backplaneUnavailable = "backplane_unavailable"
    /// `resume`, or `join` with `since`, on a gateway that keeps no history.
    case historyDisabled = "history_disabled"
    /// A second `resume` on one connection, or a second `join` with `since` for one room.
    case alreadyResumed = "already_resumed"
    /// The history store cannot be reached now: the message was not sent, or the stream
    /// cannot be read; try again.
    case historyUnavailable = "history_unavailable"
    /// `presence`, or `join` with `"presence": true`, on a gateway started with `--presence none`.
    case presenceDisabled = "presence_disabled"
    /// The presence store cannot be reached now; try again.
    case presenceUnavailable = "presence_unavailable"
    /// Anything else that went wrong on the server's side.
    case `internal` = "internal"
}

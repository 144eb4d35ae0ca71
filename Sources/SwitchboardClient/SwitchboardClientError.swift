import SwitchboardProtocol

/// Why a ``GatewayClient`` request, or the connection itself, failed.
///
/// ``code`` is either the gateway's error code from an `error` frame (docs/protocol.md,
/// "Errors") or one of the client's own (``Code/notConnected``, ``Code/timeout``,
/// ``Code/connectionClosed``, …). ``cause`` keeps the underlying error where there is one
/// (a refused handshake, a NIO error, what a token provider threw).
public struct SwitchboardClientError: Error, CustomStringConvertible {
    /// An error code: an open set of strings, so a code a newer gateway sends still reads.
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
        /// The code exactly as it appears on the wire.
        public let rawValue: String

        public init(rawValue: String) { self.rawValue = rawValue }
        public init(stringLiteral value: String) { self.rawValue = value }
        public var description: String { rawValue }

        /// A gateway's code, from SwitchboardProtocol's table (the one the server sends from).
        init(_ code: ErrorCode) { self.rawValue = code.rawValue }

        // The gateway's codes (docs/protocol.md), spelled once, in `ErrorCode`.

        /// The frame was not valid (also raised before sending when `data` is not one JSON value).
        public static let invalidMessage = Code(ErrorCode.invalidMessage)
        /// The gateway knows no frame of that type.
        public static let unknownType = Code(ErrorCode.unknownType)
        /// A user or room id that breaks the id rules.
        public static let invalidID = Code(ErrorCode.invalidID)
        /// The message is over the gateway's size limit.
        public static let tooLarge = Code(ErrorCode.tooLarge)
        /// More messages than the gateway's rate limit allows; the message was dropped.
        public static let rateLimited = Code(ErrorCode.rateLimited)
        /// The token does not allow the room, or the connection is in too many rooms.
        public static let forbidden = Code(ErrorCode.forbidden)
        /// `publish` to a room this connection has not joined.
        public static let notMember = Code(ErrorCode.notMember)
        /// `direct` to a user no gateway hosts.
        public static let recipientOffline = Code(ErrorCode.recipientOffline)
        /// The backplane cannot take the operation now; nothing was sent.
        public static let backplaneUnavailable = Code(ErrorCode.backplaneUnavailable)
        /// Anything else on the gateway's side.
        public static let `internal` = Code(ErrorCode.internal)
        /// `resume` or `join` with `since` on a gateway without history.
        public static let historyDisabled = Code(ErrorCode.historyDisabled)
        /// A second `resume` on one connection (or `since` twice for one room).
        public static let alreadyResumed = Code(ErrorCode.alreadyResumed)
        /// The gateway's history store is down: try again.
        public static let historyUnavailable = Code(ErrorCode.historyUnavailable)
        /// `presence`, or a join with presence events, on a gateway without presence.
        public static let presenceDisabled = Code(ErrorCode.presenceDisabled)
        /// The gateway's presence store is down: try again.
        public static let presenceUnavailable = Code(ErrorCode.presenceUnavailable)

        // The client's own codes.

        /// The request was made while no connection was open; nothing was queued.
        public static let notConnected: Code = "not_connected"
        /// No `ack`/`pong` within the configured ack timeout; the gateway may still have acted.
        public static let timeout: Code = "timeout"
        /// The connection closed before the answer came, or ``GatewayClient/close()`` was
        /// called; the gateway may or may not have acted.
        public static let connectionClosed: Code = "connection_closed"
        /// The token provider threw; ``SwitchboardClientError/cause`` has its error.
        public static let tokenUnavailable: Code = "token_unavailable"
        /// A connection attempt failed: a refused TCP connection, TLS, a handshake refused
        /// with an HTTP status or not answered in time, or no `welcome` within the connect
        /// timeout; ``SwitchboardClientError/cause`` has the underlying error where there is one.
        public static let connectFailed: Code = "connect_failed"
        /// The task waiting in ``GatewayClient/connect()`` was cancelled.
        public static let cancelled: Code = "cancelled"
    }

    /// What went wrong, as a wire or client code.
    public var code: Code
    /// A human-readable explanation (the gateway's `message` for its own codes).
    public var message: String
    /// The room a failed re-join after a reconnect was for; nil otherwise.
    public var room: String?
    /// The underlying error, where there is one.
    public var cause: (any Error)?

    public init(code: Code, message: String, room: String? = nil, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.room = room
        self.cause = cause
    }

    public var description: String {
        var text = "\(code.rawValue): \(message)"
        if let room { text += " (room \(room))" }
        if let cause { text += " [cause: \(cause)]" }
        return text
    }
}

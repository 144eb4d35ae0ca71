import NIOWebSocket

/// Every WebSocket close code the gateway sends, and why (one table, also in docs/protocol.md).
enum CloseCode {
    /// 1000: answer to a client's close frame that had no code (one with a code gets it echoed).
    static let normal = WebSocketErrorCode.normalClosure
    /// 1001: the client was silent past the idle timeout (no frame, no pong).
    static let goingAway = WebSocketErrorCode.goingAway
    /// 1002: the client broke RFC 6455 (unmasked frame, reserved bits or opcode, bad fragmentation).
    static let protocolError = WebSocketErrorCode.protocolError
    /// 1007: a text message that is not valid UTF-8.
    static let invalidUTF8 = WebSocketErrorCode.dataInconsistentWithMessage
    /// 1008: the client stopped reading and its outbound buffer is full (slow consumer).
    static let slowConsumer = WebSocketErrorCode.policyViolation
    /// 1008 too: the token expired, or the client kept sending past its rate limit.
    static let policyViolation = WebSocketErrorCode.policyViolation
    /// 1009: a frame or fragmented message over the hard frame limit.
    static let messageTooBig = WebSocketErrorCode.messageTooLarge
    /// 1011: an unexpected server error.
    static let internalError = WebSocketErrorCode.unexpectedServerError
    /// 1012: the gateway is draining (SIGTERM); reconnect, the load balancer sends you elsewhere.
    static let serviceRestart = WebSocketErrorCode(codeNumber: 1012)
    /// 1013: the backplane could not make the user reachable; reconnect later.
    static let tryAgainLater = WebSocketErrorCode(codeNumber: 1013)
}

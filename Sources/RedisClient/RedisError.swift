/// A Redis failure: what kind, and the server's or the library's own words.
///
/// `message` never holds a password: URLs are redacted before they reach it.
public struct RedisError: Error, Sendable, CustomStringConvertible {
    /// What kind of failure this is.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }

        /// The TCP connection could not be opened.
        public static let connectFailed = Code("connect_failed")
        /// The server refused `AUTH`.
        public static let authenticationFailed = Code("authentication_failed")
        /// The connection was lost, or a command got no reply within the command timeout.
        public static let connectionLost = Code("connection_lost")
        /// The server answered a command with an error reply (`-ERR …`).
        public static let serverError = Code("server_error")
        /// The bytes from the server are not RESP (hiredis's reader said why).
        public static let protocolError = Code("protocol_error")
        /// The connection is not open now; the command was not sent.
        public static let notConnected = Code("not_connected")
        /// Too many commands await their replies (``RedisConfiguration/maximumPendingCommands``):
        /// the server is stalled or slow. The command was not sent; try again later.
        public static let overloaded = Code("overloaded")
        /// The client was shut down.
        public static let shutDown = Code("shut_down")
        /// A URL or setting the client cannot use.
        public static let invalidConfiguration = Code("invalid_configuration")

        public var description: String { name }
    }

    public var code: Code
    /// The explanation: the server's error reply, hiredis's reader error, or ours.
    public var message: String
    /// The lower-level error that caused this one (a socket error, say), when there was one.
    public var cause: (any Error & Sendable)?

    public init(_ code: Code, _ message: String, cause: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    public var description: String {
        var text = "\(code): \(message)"
        if let cause { text += " (\(cause))" }
        return text
    }
}

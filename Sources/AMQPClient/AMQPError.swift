/// An AMQP failure: what kind, the library's or the broker's own words, and where it was noticed.
///
/// `message` is rabbitmq-c's `amqp_error_string2` text for library failures, or the
/// broker's reply text for a channel or connection close. It never holds a password.
public struct AMQPError: Error, Sendable, CustomStringConvertible {
    /// What kind of failure this is.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }

        /// The TCP or TLS connection could not be opened.
        public static let connectFailed = Code("connect_failed")
        /// The broker refused the login (credentials, vhost) or the handshake failed.
        public static let loginFailed = Code("login_failed")
        /// The connection was lost (socket error, heartbeat timeout, EOF).
        public static let connectionLost = Code("connection_lost")
        /// The broker closed a channel (reply code and text say why).
        public static let channelClosed = Code("channel_closed")
        /// The broker closed the connection (reply code and text say why).
        public static let connectionClosed = Code("connection_closed")
        /// A synchronous request got an error reply or none in time.
        public static let requestFailed = Code("request_failed")
        /// The broker rejected a published message (basic.nack).
        public static let nacked = Code("nacked")
        /// The connection is not open now; the operation was not sent.
        public static let notConnected = Code("not_connected")
        /// Too many publishes are pending (``AMQPConnection/PublishLimits``): the broker blocks
        /// publishing or stopped confirming. Nothing was sent; the caller may try again later.
        public static let overloaded = Code("overloaded")
        /// The publish got no confirm within ``AMQPConnection/PublishLimits/timeout``. It may
        /// still reach the broker and be delivered (it may already be in the socket).
        public static let timedOut = Code("timed_out")
        /// The client was shut down.
        public static let shutDown = Code("shut_down")
        /// A configuration or URL the client cannot use.
        public static let invalidConfiguration = Code("invalid_configuration")

        public var description: String { name }
    }

    public var code: Code
    /// The explanation: the library's error string or the broker's reply text.
    public var message: String
    /// rabbitmq-c's status code (`amqp_status_enum`), when the library reported the failure.
    public var libraryStatus: Int32?
    /// The AMQP reply code (e.g. 404, 405, 320), when the broker reported the failure.
    public var replyCode: UInt16?
    /// Where it was noticed.
    public var file: String
    public var line: Int

    public init(
        _ code: Code,
        _ message: String,
        libraryStatus: Int32? = nil,
        replyCode: UInt16? = nil,
        file: String = #fileID,
        line: Int = #line
    ) {
        self.code = code
        self.message = message
        self.libraryStatus = libraryStatus
        self.replyCode = replyCode
        self.file = file
        self.line = line
    }

    public var description: String {
        var text = "\(code): \(message)"
        if let replyCode { text += " (reply \(replyCode))" }
        if let libraryStatus { text += " (status \(libraryStatus))" }
        return text
    }
}

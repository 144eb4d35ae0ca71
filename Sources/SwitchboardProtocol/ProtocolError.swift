/// A client frame that the gateway refuses, with what the `error` frame tells the client.
///
/// The connection stays open after a `ProtocolError`; only WebSocket-level
/// violations (RFC 6455) close it.
public struct ProtocolError: Error, Sendable, Equatable {
    /// The wire code.
    public var code: ErrorCode
    /// A human-readable explanation, safe to show the client (never holds a secret).
    public var message: String
    /// The client's correlation id, when the frame had a usable one.
    public var correlationID: CorrelationID?

    public init(_ code: ErrorCode, _ message: String, correlationID: CorrelationID? = nil) {
        self.code = code
        self.message = message
        self.correlationID = correlationID
    }
}

/// The optional `id` a client puts on a frame, echoed back unchanged in `ack`, `pong` and `error`.
///
/// It is kept as its exact JSON text (a string with its quotes, or a number), so
/// echoing it never re-encodes anything.
public struct CorrelationID: Sendable, Hashable {
    /// The longest accepted `id`, as JSON text.
    public static let maximumJSONLength = 130

    /// The JSON text of the id, e.g. `"c1"` or `42`.
    public let jsonText: String

    /// Wraps JSON text the caller has already validated as a string or number.
    public init(jsonText: String) {
        self.jsonText = jsonText
    }

    /// The id for a plain string, quoted and escaped as JSON.
    public init(_ string: String) {
        var text = ""
        JSONText.appendQuoted(string, to: &text)
        self.jsonText = text
    }
}

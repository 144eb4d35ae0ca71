/// A backplane operation that failed; the gateway turns it into `backplane_unavailable` or `internal`.
public struct BackplaneError: Error, Sendable, CustomStringConvertible {
    /// What kind of failure this is.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }

        /// The backplane has no working connection to its broker now; nothing was sent.
        public static let unavailable = Code("unavailable")
        /// The backplane has been shut down.
        public static let closed = Code("closed")
        /// The broker refused the operation.
        public static let rejected = Code("rejected")
        /// The broker is stalled (it blocks publishing, or stopped answering): the publish was
        /// refused because too many are pending (nothing was sent), or it waited longer than
        /// the publish timeout (it may still be delivered). The gateway answers
        /// `backplane_unavailable`.
        public static let overloaded = Code("overloaded")

        public var description: String { name }
    }

    public var code: Code
    /// What happened, for logs.
    public var reason: String
    /// The underlying error, when there is one.
    public var cause: (any Error & Sendable)?

    public init(_ code: Code, _ reason: String, cause: (any Error & Sendable)? = nil) {
        self.code = code
        self.reason = reason
        self.cause = cause
    }

    public var description: String {
        if let cause { return "\(code): \(reason) (\(cause))" }
        return "\(code): \(reason)"
    }
}

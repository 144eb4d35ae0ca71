public import NIOCore
public import NIOSSL

extension GatewayClient {
    /// Who the client says it is, sent in the handshake's query.
    public enum Identity: Sendable {
        /// A user id sent as `?user=`, for a gateway started with `--auth none` (development).
        case user(String)
        /// The same JWT sent as `?token=` on every attempt. After a close with 1008 (the
        /// token expired, among others) the client stops: the same token would not help.
        case fixedToken(String)
        /// A JWT fetched from this closure before every connection attempt, sent as
        /// `?token=`. Because a fresh token can be had, a close with 1008 is retried.
        case token(@Sendable () async throws -> String)

        /// Whether a close with 1008 (policy) is worth retrying: only with a provider of fresh tokens.
        var canFetchFreshToken: Bool {
            if case .token = self { return true }
            return false
        }
    }

    /// Where and how a ``GatewayClient`` connects; defaults match the JavaScript client.
    public struct Configuration: Sendable {
        /// The gateway's host name or address.
        public var host: String
        /// The gateway's port.
        public var port: Int
        /// The WebSocket endpoint; the identity's query parameter is appended to it.
        public var path: String
        /// Connect with TLS (`wss://`) using this configuration; nil for plain `ws://`.
        public var tls: TLSConfiguration?
        /// Who the client is (`?user=` or `?token=`).
        public var identity: Identity
        /// The delay before each reconnect attempt.
        public var backoff: ReconnectBackoff
        /// How long a request waits for its `ack` or `pong` before failing with `timeout`.
        public var ackTimeout: Duration
        /// How long one connection attempt may take, from the TCP connect to the gateway's
        /// `welcome`; past it the attempt is abandoned like a failed one and retried with backoff.
        public var connectTimeout: Duration
        /// Reconnect after a close that ``GatewayClient/close()`` did not ask for.
        public var reconnects: Bool
        /// The jitter's random source: a uniform number in [0, 1) per call. Tests inject a fixed one.
        public var unitRandom: @Sendable () -> Double
        /// Where the connections run; nil uses NIO's shared singleton group.
        public var eventLoopGroup: (any EventLoopGroup)?
        /// Positions to resume from, as saved from ``GatewayClient/Event/position(stream:position:)``
        /// by an earlier client: the first `welcome` resumes the user stream from its entry,
        /// and ``GatewayClient/join(_:)`` resumes a room from its entry. Empty by default:
        /// only reconnects resume.
        public var resumeFrom: [MessageStream: StreamPosition]

        /// - Parameters:
        ///   - host: The gateway's host; loopback by default.
        ///   - port: The gateway's port.
        ///   - path: The WebSocket endpoint, `/ws` by default.
        ///   - identity: `.user("alice")`, `.fixedToken(jwt)` or `.token { try await fetchToken() }`.
        ///   - tls: A TLS configuration for `wss://`; nil (the default) for plain text.
        ///   - backoff: The reconnect backoff; 0.5 s base and 30 s cap by default.
        ///   - ackTimeout: How long a request waits for its answer; 10 s by default.
        ///   - connectTimeout: How long an attempt may take until `welcome`; 10 s by default.
        ///   - reconnects: Whether to reconnect after an unexpected close; true by default.
        ///   - unitRandom: The jitter's random source; `Double.random(in: 0..<1)` by default.
        ///   - eventLoopGroup: The NIO event loop group; the shared singleton by default.
        ///   - resumeFrom: Saved stream positions to resume from on the first connection; none by default.
        public init(
            host: String = "127.0.0.1",
            port: Int,
            path: String = "/ws",
            identity: Identity,
            tls: TLSConfiguration? = nil,
            backoff: ReconnectBackoff = ReconnectBackoff(),
            ackTimeout: Duration = .seconds(10),
            connectTimeout: Duration = .seconds(10),
            reconnects: Bool = true,
            unitRandom: @escaping @Sendable () -> Double = { Double.random(in: 0..<1) },
            eventLoopGroup: (any EventLoopGroup)? = nil,
            resumeFrom: [MessageStream: StreamPosition] = [:]
        ) {
            self.host = host
            self.port = port
            self.path = path
            self.identity = identity
            self.tls = tls
            self.backoff = backoff
            self.ackTimeout = ackTimeout
            self.connectTimeout = connectTimeout
            self.reconnects = reconnects
            self.unitRandom = unitRandom
            self.eventLoopGroup = eventLoopGroup
            self.resumeFrom = resumeFrom
        }
    }
}

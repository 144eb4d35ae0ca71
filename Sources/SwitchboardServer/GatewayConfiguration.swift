public import NIOSSL
public import SwitchboardBackplane

/// Everything a gateway is told at start-up; defaults are the documented ones.
public struct GatewayConfiguration: Sendable {
    /// Serves `wss://` and `https://` with this context (`--tls-cert`, `--tls-key`); nil serves plain text.
    public var tls: NIOSSLContext?
    /// This gateway's id: shown to clients in `welcome`, names its backplane queue.
    public var gatewayID: String
    /// Address to listen on.
    public var host: String
    /// Port to listen on; 0 picks a free one (tests).
    public var port: Int
    /// How clients prove who they are.
    public var auth: AuthenticationMode
    /// The largest client message, in bytes, that the gateway handles. A larger one gets
    /// `too_large` and the connection stays open.
    public var maximumMessageSize: Int
    /// The largest WebSocket frame or fragmented message read at all. Past it the gateway
    /// stops reading and closes with 1009, so a client cannot make it buffer without bound.
    public var maximumFrameSize: Int
    /// Bytes of frames queued for one client before it counts as a slow consumer and is
    /// closed with 1008.
    public var maximumOutboundBytes: Int
    /// Rooms one connection may be a member of at once.
    public var maximumRoomsPerConnection: Int
    /// Connections one user may hold on this gateway at once; more get HTTP 429.
    public var maximumConnectionsPerUser: Int
    /// WebSocket connections this gateway holds at once; a handshake beyond gets HTTP 503,
    /// and `/readyz` answers 503 while the gateway is full. `Int.max`: no cap.
    public var maximumConnections: Int = .max
    /// WebSocket connections from one client address at once; more get HTTP 429.
    /// The address is the TCP peer, or what a ``trustedProxies`` member says in
    /// `X-Forwarded-For`. `Int.max`: no cap.
    public var maximumConnectionsPerAddress: Int = .max
    /// Peers (IP addresses, as written by the OS) whose `X-Forwarded-For` names the client
    /// address for ``maximumConnectionsPerAddress``; from any other peer the header is ignored.
    public var trustedProxies: Set<String> = []
    /// How long a new connection may wait for the backplane to bind its user before it is
    /// closed with 1013 (the broker is stalled or unreachable).
    public var userBindTimeout: Duration = .seconds(10)
    /// Frames a client may send before `welcome` (while its user is being bound); held
    /// in memory until then, so bounded: past it, or past ``maximumFrameSize`` bytes, the
    /// connection is closed with 1008.
    public var maximumFramesBeforeWelcome: Int = 32
    /// Joins of new rooms one connection may make per second (each can be a broker bind);
    /// more get `rate_limited`.
    public var joinRate: Double = 10
    /// Joins one connection may make in a burst above ``joinRate``.
    public var joinBurst: Double = 20
    /// How long a room's binding outlives its last local member: a leave followed by a
    /// join within it costs no unbind and no bind.
    public var roomUnbindGrace: Duration = .seconds(2)
    /// Messages per second one connection may send (token bucket refill rate).
    public var messageRate: Double
    /// Messages one connection may send in a burst above the rate (bucket size).
    public var messageBurst: Double
    /// `rate_limited` answers in a row (no message accepted in between) after which the
    /// connection is closed with 1008 for sustained abuse.
    public var rateLimitedCloseAfter: Int
    /// Origins allowed to open a WebSocket (browser `Origin` header); empty allows any.
    /// A handshake without `Origin` (not a browser) is allowed.
    public var allowedOrigins: Set<String>
    /// A connection that has not finished its HTTP request or WebSocket handshake by then is closed.
    public var handshakeTimeout: Duration
    /// A client silent this long gets a WebSocket ping.
    public var pingInterval: Duration
    /// A client silent this long (no frame, no pong) is closed with 1001.
    public var idleTimeout: Duration
    /// Pending connections the listening socket queues (connection storms).
    public var listenBacklog: Int
    /// On SIGTERM: how long `/readyz` answers 503 before clients are closed, so that load
    /// balancers stop sending new ones (longer than the balancer's health-check interval × fall).
    public var drainGrace: Duration
    /// On SIGTERM: the window over which clients are closed with 1012, spread evenly so
    /// that they do not all reconnect to the other gateways at once.
    public var drainWindow: Duration
    /// The browser client and demo page served at `/` and `/switchboard.js`; nil serves neither.
    public var webAssets: WebAssets?
    /// Keys that `POST /v1/publish` accepts (`Authorization: Bearer KEY`); empty turns the API off.
    public var apiKeys: [String] = []
    /// The path of the echo endpoint for outside RFC 6455 conformance suites (`--echo-path`,
    /// e.g. `/echo`): the `/ws` WebSocket layer echoing every message, with no identity and no
    /// backplane. nil (the default): no such endpoint.
    public var echoPath: String?
    /// Where client messages are copied for background workers (`--events-exchange`); nil:
    /// the backplane's own ``Backplane/eventSink`` if it offers one (RabbitMQ with an events
    /// exchange), else nowhere.
    public var events: (any EventSink)?
    /// Where every user and room stream keeps its recent messages (`--history`); nil: no
    /// history, no offsets, no `resume` (docs/recovery.md). The gateway runs it as a service.
    public var history: (any HistoryStore)?
    /// The most messages a `resume` or a `join` with `since` replays (`--recovery-limit`);
    /// more missing is answered `recovered: false`.
    public var recoveryLimit: Int = 1_000
    /// How long a message waits for a missing predecessor before the gateway reads the gap
    /// from history (messages from two gateways can arrive out of order).
    public var historyGapWait: Duration = .milliseconds(500)
    /// Who is in which room (`--presence`): `presence` answers and `joined` / `left` events;
    /// nil: neither (`presence_disabled`). The gateway runs it as a service.
    public var presence: (any PresenceStore)?
    /// The most users a `presence` answer (and `GET /v1/presence`) lists; more are counted
    /// and the answer says `"truncated": true`.
    public var presenceListLimit: Int = 1_000
    /// Rooms with more users than this get no `joined` / `left` events (`presence` still answers).
    public var presenceEventLimit: Int = 100

    public init(
        gatewayID: String,
        host: String = "127.0.0.1",
        port: Int = 8080,
        auth: AuthenticationMode,
        maximumMessageSize: Int = 64 * 1024,
        maximumFrameSize: Int? = nil,
        maximumOutboundBytes: Int = 1024 * 1024,
        maximumRoomsPerConnection: Int = 100,
        maximumConnectionsPerUser: Int = 16,
        messageRate: Double = 100,
        messageBurst: Double = 200,
        rateLimitedCloseAfter: Int = 100,
        allowedOrigins: Set<String> = [],
        handshakeTimeout: Duration = .seconds(10),
        pingInterval: Duration = .seconds(30),
        idleTimeout: Duration = .seconds(75),
        listenBacklog: Int = 4096,
        drainGrace: Duration = .seconds(3),
        drainWindow: Duration = .seconds(10),
        webAssets: WebAssets? = nil
    ) {
        self.gatewayID = gatewayID
        self.host = host
        self.port = port
        self.auth = auth
        self.maximumMessageSize = maximumMessageSize
        self.maximumFrameSize = maximumFrameSize ?? max(4 * maximumMessageSize, 1024)
        self.maximumOutboundBytes = maximumOutboundBytes
        self.maximumRoomsPerConnection = maximumRoomsPerConnection
        self.maximumConnectionsPerUser = maximumConnectionsPerUser
        self.messageRate = messageRate
        self.messageBurst = messageBurst
        self.rateLimitedCloseAfter = rateLimitedCloseAfter
        self.allowedOrigins = allowedOrigins
        self.handshakeTimeout = handshakeTimeout
        self.pingInterval = pingInterval
        self.idleTimeout = idleTimeout
        self.listenBacklog = listenBacklog
        self.drainGrace = drainGrace
        self.drainWindow = drainWindow
        self.webAssets = webAssets
    }
}

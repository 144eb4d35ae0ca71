/// Everything a gateway is told at start-up; defaults are the documented ones.
public struct GatewayConfiguration: Sendable {
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
    /// Pending connections the listening socket queues (connection storms).
    public var listenBacklog: Int
    /// On SIGTERM: how long `/readyz` answers 503 before clients are closed, so that load
    /// balancers stop sending new ones (longer than the balancer's health-check interval × fall).
    public var drainGrace: Duration
    /// On SIGTERM: the window over which clients are closed with 1012, spread evenly so
    /// that they do not all reconnect to the other gateways at once.
    public var drainWindow: Duration

    public init(
        gatewayID: String,
        host: String = "127.0.0.1",
        port: Int = 8080,
        auth: AuthenticationMode = .none,
        maximumMessageSize: Int = 64 * 1024,
        maximumFrameSize: Int? = nil,
        maximumOutboundBytes: Int = 1024 * 1024,
        maximumRoomsPerConnection: Int = 100,
        listenBacklog: Int = 4096,
        drainGrace: Duration = .seconds(3),
        drainWindow: Duration = .seconds(10)
    ) {
        self.gatewayID = gatewayID
        self.host = host
        self.port = port
        self.auth = auth
        self.maximumMessageSize = maximumMessageSize
        self.maximumFrameSize = maximumFrameSize ?? max(4 * maximumMessageSize, 1024)
        self.maximumOutboundBytes = maximumOutboundBytes
        self.maximumRoomsPerConnection = maximumRoomsPerConnection
        self.listenBacklog = listenBacklog
        self.drainGrace = drainGrace
        self.drainWindow = drainWindow
    }
}

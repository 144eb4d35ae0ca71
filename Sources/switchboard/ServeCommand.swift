import AMQPClient
public import ArgumentParser
import Foundation
public import Logging
import NIOCore
import NIOSSL
import RedisClient
import ServiceLifecycle
import SwitchboardBackplane
import SwitchboardRabbitMQ
import SwitchboardRedis
import SwitchboardServer
import UnixSignals

#if canImport(Glibc)
import Glibc
#endif

/// `switchboard serve`: flags → ``GatewayConfiguration`` and a backplane → ``buildGateway``.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run a gateway.",
        discussion: """
            Every option can also be set with an environment variable: SWITCHBOARD_ followed by the \
            option name in capitals with - as _ (--max-message-size is SWITCHBOARD_MAX_MESSAGE_SIZE). \
            An option on the command line wins over the environment.
            """
    )

    // Every option can also be set with SWITCHBOARD_<NAME> (EnvironmentOptions in Switchboard.swift).
    @Option(help: "Address to listen on (0.0.0.0 to accept from other hosts).")
    var host = "127.0.0.1"

    @Option(help: "Port to listen on.")
    var port = 8080

    @Option(
        help:
            "Backplane URL: 'memory' (one gateway, the default), amqp://user:pass@host:5672/vhost (amqps:// for TLS; several, comma-separated, for the nodes of a RabbitMQ cluster), or redis://[:pass@]host:6379?mode=channels|broadcast (rediss:// for TLS; redis+sentinel://host1:26379,host2:26379/master-name for a Sentinel-managed master)."
    )
    var backplane = "memory"

    @Option(help: "RabbitMQ exchange the gateways share (amqp backplane only).")
    var exchange = "switchboard"

    @Option(
        help:
            "Type of that exchange: topic (the default) or direct (binds and routes for less than half the broker CPU; every gateway must use the same, and an existing exchange keeps its type, so pick a new --exchange to switch). amqp backplane only."
    )
    var exchangeType = "topic"

    @Option(help: "A separate topic exchange that gets a copy of every client message for background workers (amqp backplane only; docs/workers.md).")
    var eventsExchange: String?

    @Option(help: "Publishes that may wait for a stalled broker (RabbitMQ alarm, stopped Redis); more get backplane_unavailable at once.")
    var maxPendingPublishes = 5000

    @Option(help: "Bytes of message bodies that may wait for a stalled broker; past it, the same.")
    var maxPendingPublishBytes = 32 * 1024 * 1024

    @Option(
        help:
            "Seconds a publish may wait for the broker's confirm before it gets backplane_unavailable (amqp backplane; Redis uses its URL's timeout). It may still be delivered."
    )
    var publishTimeout = 5.0

    @Option(
        help:
            "Key for POST /v1/publish (repeat, or separate with commas); none turns the API off. Prefer SWITCHBOARD_API_KEY: arguments are visible to other users."
    )
    var apiKey: [String] = []

    @Option(
        help:
            "How clients authenticate: 'jwt' (a token in Authorization: Bearer or ?token=), or 'none' (development only: the user id comes from ?user=)."
    )
    var auth: AuthOption = .jwt

    @Option(help: "HS256 secret (at least 32 bytes). Prefer SWITCHBOARD_JWT_SECRET or --jwt-secret-file: arguments are visible to other users.")
    var jwtSecret: String?

    @Option(help: "File holding the HS256 secret.")
    var jwtSecretFile: String?

    @Option(help: "PEM public key file for RS256, ES256 or EdDSA tokens.")
    var jwtPublicKey: String?

    @Option(help: "JWKS: a file (JSON), or an https:// URL fetched at start and refreshed; tokens choose their key by kid.")
    var jwks: String?

    @Option(help: "Seconds between fetches of an https:// --jwks (a token with an unknown kid also triggers one, at most every 10 s).")
    var jwksRefreshInterval = 300.0

    @Option(help: "PEM file of the CAs trusted for an https:// --jwks; default: the system trust store.")
    var jwksCaFile: String?

    @Option(help: "Algorithm for JWKS keys without \"alg\" (e.g. RS256); without it such keys are refused, so that no token can choose one.")
    var jwksDefaultAlg: String?

    @Option(help: "Accepted token audience (repeat, or separate with commas); when given, a token's aud must name one.")
    var jwtAudience: [String] = []

    @Option(help: "Accepted token issuer (repeat, or separate with commas); when given, a token's iss must be one.")
    var jwtIssuer: [String] = []

    @Option(help: "Seconds of clock skew allowed on a token's exp and nbf (0…300).")
    var jwtLeeway = 0.0

    @Flag(help: "Allow --auth none on an address other than loopback (anyone who can reach it may connect as any user).")
    var allowInsecureAuthNone = false

    @Option(
        help:
            "Serve an echo WebSocket endpoint at this path (e.g. /echo) for outside RFC 6455 conformance suites such as Autobahn: the /ws WebSocket layer, echoing every message, with no identity and no backplane. Off by default; loopback --host only, unless --allow-echo-on-any-host."
    )
    var echoPath: String?

    @Flag(help: "Allow --echo-path on an address other than loopback.")
    var allowEchoOnAnyHost = false

    @Option(
        help: "Origin allowed to open a WebSocket (repeat, or separate with commas); none: any. Handshakes without Origin (non-browsers) are allowed."
    )
    var allowedOrigin: [String] = []

    @Option(help: "PEM certificate chain: serve wss:// and https:// (with --tls-key).")
    var tlsCert: String?

    @Option(help: "PEM private key of --tls-cert.")
    var tlsKey: String?

    @Option(help: "Connections one user may hold on this gateway; more get HTTP 429.")
    var maxConnectionsPerUser = 16

    @Option(
        help:
            "WebSocket connections this gateway holds at once; more get HTTP 503 and /readyz answers 503 while full. Default: the open-files limit less a reserve."
    )
    var maxConnections: Int?

    @Option(help: "WebSocket connections from one client address at once; more get HTTP 429. Behind a proxy, see --trusted-proxy. Default: no cap.")
    var maxConnectionsPerIp: Int?

    @Option(help: "Address of a proxy (repeat, or separate with commas) whose X-Forwarded-For names the client address for --max-connections-per-ip.")
    var trustedProxy: [String] = []

    @Option(help: "Joins of new rooms per second one connection may make (each can be a broker bind); more get rate_limited.")
    var joinRate = 10.0

    @Option(help: "Joins one connection may make in a burst above --join-rate.")
    var joinBurst = 20.0

    @Option(help: "Messages per second one connection may send; more get rate_limited.")
    var rateLimit = 100.0

    @Option(help: "Messages one connection may send in a burst above --rate-limit.")
    var rateBurst = 200.0

    @Option(help: "Seconds a connection has to finish its HTTP request or WebSocket handshake.")
    var handshakeTimeout = 10.0

    @Option(help: "Seconds of client silence before the gateway sends a WebSocket ping.")
    var pingInterval = 30.0

    @Option(help: "Seconds of client silence (no frame, no pong) before the connection is closed with 1001.")
    var idleTimeout = 75.0

    @Option(help: "This gateway's id, shown in welcome frames; default: the host name.")
    var gatewayID: String?

    @Option(help: "Largest client message in bytes; larger ones get too_large.")
    var maxMessageSize = 64 * 1024

    @Option(help: "Bytes queued for a client before it is closed as a slow consumer (1008).")
    var maxOutboundBytes = 1024 * 1024

    @Option(help: "Rooms one connection may be in at once.")
    var maxRoomsPerConnection = 100

    @Option(
        help:
            "Folder with index.html and switchboard.js, served at / and /switchboard.js; default: the copy shipped beside the executable. 'off' serves neither."
    )
    var webRoot: String?

    @Option(
        help:
            "SwiftNIO event-loop threads for sockets and the Redis connections; default: one per CPU core. Fewer threads mean fewer cross-thread hops when gateways share a small machine."
    )
    var eventLoops: Int?

    @Option(
        help:
            "History for recovery (docs/recovery.md): 'memory' (this gateway only; the default with the memory backplane), redis://[:pass@]host:6379 (shared by every gateway; with a Redis backplane on the same server one script writes and publishes; rediss:// and redis+sentinel:// as for --backplane), or 'none' (the default with a broker backplane)."
    )
    var history: String?

    @Option(help: "Messages kept per user and per room stream.")
    var historySize = 1_000

    @Option(help: "Seconds a message is kept in history after it was written.")
    var historyTtl = 300.0

    @Option(help: "Seconds a stream's epoch and top offset are kept after its last use (longer than --history-ttl).")
    var historyMetaTtl = 86_400.0

    @Option(help: "The most messages a resume (or a join with since) replays; more missing is answered recovered: false.")
    var recoveryLimit = 1_000

    @Option(
        help:
            "Presence, who is in each room (docs/protocol.md): 'memory' (this gateway only; the default with the memory backplane), redis://[:pass@]host:6379 (shared by every gateway; rediss:// and redis+sentinel:// as for --backplane), or 'none' (the default with a broker backplane)."
    )
    var presence: String?

    @Option(help: "Seconds a user whose last connection went stays present before 'left' is sent: a reconnect within it sends nothing.")
    var presenceGrace = 5.0

    @Option(
        help:
            "Seconds a gateway's presence entries outlive its last refresh (it refreshes every third of this): how long a crashed gateway's members stay listed."
    )
    var presenceTtl = 60.0

    @Option(help: "The most users a presence answer lists; more are counted and marked truncated.")
    var presenceLimit = 1_000

    @Option(help: "Rooms with more users than this get no joined/left events; presence still answers.")
    var presenceEventLimit = 100

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    @Option(
        help: "Seconds /readyz answers 503 after SIGTERM before clients are closed (longer than the load balancer's health checks take to notice)."
    )
    var drainGrace = 3.0

    @Option(help: "Seconds over which clients are closed with 1012 after the grace, spread evenly.")
    var drainWindow = 10.0

    /// `--api-key` values, commas split.
    var apiKeys: [String] { Self.commaSeparated(apiKey).filter { !$0.isEmpty } }

    /// Repeated options whose values may also be comma-separated lists (environment variables hold one).
    static func commaSeparated(_ values: [String]) -> [String] {
        values.flatMap { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } }
    }

    func validate() throws {
        guard (1...65535).contains(port) else { throw ValidationError("--port must be 1…65535") }
        guard maxMessageSize >= 64 else { throw ValidationError("--max-message-size must be at least 64") }
        guard maxOutboundBytes >= 1024 else { throw ValidationError("--max-outbound-bytes must be at least 1024") }
        guard maxRoomsPerConnection >= 1 else { throw ValidationError("--max-rooms-per-connection must be at least 1") }
        guard (tlsCert == nil) == (tlsKey == nil) else { throw ValidationError("--tls-cert and --tls-key go together") }
        guard maxConnectionsPerUser >= 1 else { throw ValidationError("--max-connections-per-user must be at least 1") }
        guard rateLimit > 0, rateBurst >= 1 else { throw ValidationError("--rate-limit must be positive and --rate-burst at least 1") }
        guard joinRate > 0, joinRate <= 10_000, joinBurst >= 1, joinBurst <= 100_000 else {
            throw ValidationError("--join-rate must be 0…10000 (not 0) and --join-burst 1…100000")
        }
        if let maxConnections { guard maxConnections >= 1 else { throw ValidationError("--max-connections must be at least 1") } }
        if let maxConnectionsPerIp { guard maxConnectionsPerIp >= 1 else { throw ValidationError("--max-connections-per-ip must be at least 1") } }
        guard handshakeTimeout > 0, pingInterval > 0, idleTimeout > pingInterval else {
            throw ValidationError("timeouts must be positive, and --idle-timeout longer than --ping-interval")
        }
        if let eventLoops { guard (1...256).contains(eventLoops) else { throw ValidationError("--event-loops must be 1…256") } }
        guard (0...600).contains(drainGrace) else { throw ValidationError("--drain-grace must be 0…600 seconds") }
        guard (0...3600).contains(drainWindow) else { throw ValidationError("--drain-window must be 0…3600 seconds") }
        if let gatewayID {
            do {
                try GatewayConfiguration.validateGatewayID(gatewayID)
            } catch {
                throw ValidationError("--gateway-id must be \(InvalidGatewayID.rule)")
            }
        }
        guard !exchange.isEmpty, exchange.utf8.count <= 127 else { throw ValidationError("--exchange must be 1…127 bytes") }
        _ = try BackplaneFactory.exchangeType(exchangeType)
        if let eventsExchange {
            guard !eventsExchange.isEmpty, eventsExchange.utf8.count <= 127 else { throw ValidationError("--events-exchange must be 1…127 bytes") }
            guard eventsExchange != exchange else {
                throw ValidationError("--events-exchange must differ from --exchange: only gateway queues may bind to the main exchange")
            }
            guard BackplaneURL.kind(of: backplane) == .rabbitMQ else {
                throw ValidationError("--events-exchange needs a RabbitMQ backplane (amqp:// or amqps://)")
            }
        }
        guard maxPendingPublishes >= 1, maxPendingPublishBytes >= 1024, publishTimeout > 0 else {
            throw ValidationError("--max-pending-publishes must be at least 1, --max-pending-publish-bytes at least 1024, --publish-timeout positive")
        }
        guard apiKeys.allSatisfy({ $0.utf8.count >= 16 }) else { throw ValidationError("--api-key: each key must be at least 16 bytes") }
        guard (1...100_000).contains(historySize) else { throw ValidationError("--history-size must be 1…100000") }
        guard historyTtl >= 1, historyTtl <= 86_400 * 30 else { throw ValidationError("--history-ttl must be 1…2592000 seconds") }
        guard historyMetaTtl >= historyTtl, historyMetaTtl <= 86_400 * 365 else {
            throw ValidationError("--history-meta-ttl must be at least --history-ttl and at most 31536000 seconds")
        }
        guard (1...100_000).contains(recoveryLimit) else { throw ValidationError("--recovery-limit must be 1…100000") }
        if let history { _ = try HistoryFactory.kind(of: history) }
        guard (0...300).contains(presenceGrace) else { throw ValidationError("--presence-grace must be 0…300 seconds") }
        guard (3...3600).contains(presenceTtl) else { throw ValidationError("--presence-ttl must be 3…3600 seconds") }
        guard (1...100_000).contains(presenceLimit) else { throw ValidationError("--presence-limit must be 1…100000") }
        guard (0...1_000_000).contains(presenceEventLimit) else { throw ValidationError("--presence-event-limit must be 0…1000000") }
        if let presence { _ = try PresenceFactory.kind(of: presence) }
        guard (0...300).contains(jwtLeeway) else { throw ValidationError("--jwt-leeway must be 0…300 seconds") }
        guard (1...86400).contains(jwksRefreshInterval) else { throw ValidationError("--jwks-refresh-interval must be 1…86400 seconds") }
        if let jwks, jwks.lowercased().hasPrefix("http://") {
            throw ValidationError("--jwks: plain http:// is refused (anyone on the path could replace the keys); use https:// or a file")
        }
        if jwksCaFile != nil, !isJWKSURL {
            throw ValidationError("--jwks-ca-file needs an https:// --jwks")
        }
        if let echoPath {
            guard echoPath.hasPrefix("/"), echoPath != "/ws", !echoPath.contains("?") else {
                throw ValidationError("--echo-path must be a path such as /echo, other than /ws")
            }
            guard allowEchoOnAnyHost || LoopbackHost.contains(host) else {
                throw ValidationError(
                    "--echo-path on --host \(host): the echo endpoint is for conformance suites on this machine; listen on loopback or give --allow-echo-on-any-host"
                )
            }
        }
        if auth == .none, !allowInsecureAuthNone, !LoopbackHost.contains(host) {
            throw ValidationError(
                "--auth none on --host \(host) would let anyone who reaches it connect as any user; listen on 127.0.0.1, ::1 or localhost, use --auth jwt, or give --allow-insecure-auth-none"
            )
        }
    }

    /// Whether `--jwks` names a URL rather than a file.
    var isJWKSURL: Bool { jwks?.lowercased().hasPrefix("https://") == true }

    func run() async throws {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = logLevel
            return handler
        }
        let logger = Logger(label: "switchboard")
        // Before anything touches the singleton group (Hummingbird, the Redis backplane).
        if let eventLoops { NIOSingletons.groupLoopCountSuggestion = eventLoops }
        let raised = FileDescriptorLimit.raiseToHardLimit()
        var configuration = GatewayConfiguration(
            gatewayID: gatewayID ?? FileDescriptorLimit.hostName(),
            host: host,
            port: port,
            auth: try await authenticationMode(logger: logger),
            maximumMessageSize: maxMessageSize,
            maximumOutboundBytes: maxOutboundBytes,
            maximumRoomsPerConnection: maxRoomsPerConnection,
            maximumConnectionsPerUser: maxConnectionsPerUser,
            messageRate: rateLimit,
            messageBurst: rateBurst,
            allowedOrigins: Set(Self.commaSeparated(allowedOrigin)),
            handshakeTimeout: .milliseconds(Int(handshakeTimeout * 1000)),
            pingInterval: .milliseconds(Int(pingInterval * 1000)),
            idleTimeout: .milliseconds(Int(idleTimeout * 1000)),
            drainGrace: .milliseconds(Int(drainGrace * 1000)),
            drainWindow: .milliseconds(Int(drainWindow * 1000))
        )
        configuration.tls = try tlsContext()
        configuration.webAssets = try webAssets(logger: logger)
        configuration.apiKeys = apiKeys
        configuration.echoPath = echoPath
        // Past the open-files limit accept() fails and the listener spins; a 503 is an answer.
        configuration.maximumConnections = maxConnections ?? (raised > 1024 ? Int(clamping: raised) - 256 : .max)
        configuration.maximumConnectionsPerAddress = maxConnectionsPerIp ?? .max
        configuration.trustedProxies = Set(Self.commaSeparated(trustedProxy).filter { !$0.isEmpty })
        configuration.joinRate = joinRate
        configuration.joinBurst = joinBurst
        let backplane = try BackplaneFactory.make(
            self.backplane,
            gatewayID: configuration.gatewayID,
            exchange: exchange,
            exchangeType: exchangeType,
            eventsExchange: eventsExchange,
            publishLimits: AMQPConnection.PublishLimits(
                maximumPending: maxPendingPublishes,
                maximumPendingBytes: maxPendingPublishBytes,
                timeout: .milliseconds(Int(publishTimeout * 1000))
            ),
            logger: logger
        )
        configuration.recoveryLimit = recoveryLimit
        configuration.history = try HistoryFactory.make(
            history,
            backplane: self.backplane,
            retention: HistoryRetention(
                size: historySize,
                ttl: .milliseconds(Int(historyTtl * 1000)),
                metadataTTL: .milliseconds(Int(historyMetaTtl * 1000))
            ),
            gatewayID: configuration.gatewayID,
            logger: logger
        )
        configuration.presence = try PresenceFactory.make(
            presence,
            backplane: self.backplane,
            policy: PresencePolicy(ttl: .milliseconds(Int(presenceTtl * 1000)), grace: .milliseconds(Int(presenceGrace * 1000))),
            gatewayID: configuration.gatewayID,
            logger: logger
        )
        configuration.presenceListLimit = presenceLimit
        configuration.presenceEventLimit = presenceEventLimit
        if auth == .none {
            logger.warning("--auth none: anyone can connect as any user. Use it for development only.")
        }
        if configuration.allowedOrigins.isEmpty {
            logger.notice("no --allowed-origin: pages from any origin may open WebSockets to this gateway")
        }
        let (application, _) = buildGateway(configuration: configuration, backplane: backplane, logger: logger)
        logger.info(
            "starting gateway",
            metadata: [
                LoggingKeys.gatewayID: .string(configuration.gatewayID),
                LoggingKeys.listenAddress: .string("\(host):\(port)"),
                LoggingKeys.backplane: .string(CredentialRedaction.redact(self.backplane)),
                LoggingKeys.history: .string(CredentialRedaction.redact(history ?? HistoryFactory.defaultValue(forBackplane: self.backplane))),
                LoggingKeys.presence: .string(CredentialRedaction.redact(presence ?? HistoryFactory.defaultValue(forBackplane: self.backplane))),
                LoggingKeys.openFilesLimit: .stringConvertible(raised),
            ]
        )
        // The application drains the gateway on SIGTERM before its server and backplane stop.
        let services = ServiceGroup(
            configuration: .init(
                services: [.init(service: application)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        try await services.run()
    }
}

extension ServeCommand {
    /// The authentication mode from `--auth` and the key flags; key files are read here, once.
    func authenticationMode(logger: Logger) async throws -> AuthenticationMode {
        switch auth {
        case .none:
            return .none
        case .jwt:
            var keys: [JWTAuthenticator.Key] = []
            if let jwtSecret { keys.append(.hmacSecret(jwtSecret)) }
            if let jwtSecretFile {
                let secret = try readFile(jwtSecretFile, flag: "--jwt-secret-file").trimmingCharacters(in: .whitespacesAndNewlines)
                keys.append(.hmacSecret(secret))
            }
            if let jwtPublicKey { keys.append(.publicKeyPEM(try readFile(jwtPublicKey, flag: "--jwt-public-key"))) }
            if let jwks {
                if isJWKSURL {
                    guard let url = URL(string: jwks) else { throw ValidationError("--jwks: \(jwks) is not a URL") }
                    keys.append(.jwksURL(JWKSEndpoint(url: url, caFile: jwksCaFile, refreshInterval: .milliseconds(Int(jwksRefreshInterval * 1000)))))
                } else {
                    keys.append(.jwks(try readFile(jwks, flag: "--jwks")))
                }
            }
            guard !keys.isEmpty else {
                throw ValidationError(
                    "--auth jwt needs --jwt-secret (or SWITCHBOARD_JWT_SECRET), --jwt-secret-file, --jwt-public-key or --jwks; --auth none is for development only"
                )
            }
            let policy = JWTAuthenticator.Policy(
                audiences: Set(Self.commaSeparated(jwtAudience).filter { !$0.isEmpty }),
                issuers: Set(Self.commaSeparated(jwtIssuer).filter { !$0.isEmpty }),
                leeway: .milliseconds(Int(jwtLeeway * 1000)),
                defaultJWKSAlgorithm: jwksDefaultAlg
            )
            do {
                return .jwt(try await JWTAuthenticator.make(keys: keys, policy: policy, logger: logger))
            } catch {
                throw ValidationError(error.reason)
            }
        }
    }

    /// The demo page and browser client from `--web-root`, or the copy beside the executable.
    func webAssets(logger: Logger) throws -> WebAssets? {
        if webRoot == "off" { return nil }
        if let webRoot {
            do {
                return try WebAssets.load(from: webRoot)
            } catch {
                throw ValidationError("--web-root: \(error.description)")
            }
        }
        do {
            guard let directory = WebAssets.bundledDirectory else {
                throw WebAssets.LoadError(description: "no web folder beside the executable")
            }
            return try WebAssets.load(from: directory)
        } catch {
            // The gateway works without the demo; say why it is missing and go on.
            logger.notice("/ and /switchboard.js are not served (--web-root sets a folder)", metadata: [LoggingKeys.reason: .string("\(error)")])
            return nil
        }
    }

    /// The TLS context from `--tls-cert` and `--tls-key`, or nil.
    func tlsContext() throws -> NIOSSLContext? {
        guard let tlsCert, let tlsKey else { return nil }
        do {
            let chain = try NIOSSLCertificate.fromPEMFile(tlsCert).map { NIOSSLCertificateSource.certificate($0) }
            let key = try NIOSSLPrivateKey(file: tlsKey, format: .pem)
            return try NIOSSLContext(configuration: .makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key)))
        } catch {
            throw ValidationError("--tls-cert/--tls-key: \(error)")
        }
    }

    private func readFile(_ path: String, flag: String) throws -> String {
        do {
            return try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ValidationError("\(flag): cannot read \(path)")
        }
    }
}

/// Which `--host` values only this machine can reach (where `--auth none` is allowed without the override).
enum LoopbackHost {
    static func contains(_ host: String) -> Bool {
        var host = host.lowercased()
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if host == "localhost" { return true }
        var ipv4 = in_addr()
        if inet_pton(AF_INET, host, &ipv4) == 1 {
            // s_addr is in network order: its first byte in memory is the first octet.
            return withUnsafeBytes(of: &ipv4) { $0[0] } == 127
        }
        var ipv6 = in6_addr()
        if inet_pton(AF_INET6, host, &ipv6) == 1 {
            return withUnsafeBytes(of: &ipv6) { bytes in bytes.prefix(15).allSatisfy { $0 == 0 } && bytes[15] == 1 }
        }
        return false
    }
}

/// The values of `--auth`.
enum AuthOption: String, ExpressibleByArgument, CaseIterable {
    case jwt
    case none
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// Maps a `--backplane` URL (``BackplaneURL``) to its concrete backplane: the one place
/// that knows RabbitMQ and Redis.
enum BackplaneFactory {
    static func exchangeType(_ value: String) throws -> RabbitMQConfiguration.ExchangeType {
        guard let type = RabbitMQConfiguration.ExchangeType(rawValue: value) else {
            throw ValidationError("--exchange-type must be topic or direct, not \(value)")
        }
        return type
    }

    static func make(
        _ value: String,
        gatewayID: String,
        exchange: String,
        exchangeType: String = "topic",
        eventsExchange: String? = nil,
        publishLimits: AMQPConnection.PublishLimits = AMQPConnection.PublishLimits(),
        logger: Logger
    ) throws -> any Backplane {
        let url: BackplaneURL
        do {
            url = try BackplaneURL(parsing: value)
        } catch {
            throw ValidationError(error.description)
        }
        switch url.kind {
        case .memory:
            return InMemoryBackplane()
        case .rabbitMQ:
            let exchangeType = try Self.exchangeType(exchangeType)
            do {
                var brokers: [AMQPConfiguration] = []
                for one in url.urls { brokers.append(try AMQPConfiguration(url: one)) }
                let configuration = RabbitMQConfiguration(
                    brokers: brokers,
                    gatewayID: gatewayID,
                    exchange: exchange,
                    exchangeType: exchangeType,
                    publishLimits: publishLimits,
                    eventsExchange: eventsExchange
                )
                return RabbitMQBackplane(configuration: configuration, logger: logger)
            } catch {
                throw ValidationError(BackplaneURLError.invalid(url.url, reason: error.message).description)
            }
        case .redis:
            do {
                var redis = try RedisBackplaneConfiguration(url: url.url, gatewayID: gatewayID)
                _ = try redis.redis.makeTLSContext()
                redis.pendingLimits = (publishLimits.maximumPending, publishLimits.maximumPendingBytes)
                return RedisBackplane(configuration: redis, logger: logger)
            } catch {
                throw ValidationError(BackplaneURLError.invalid(url.url, reason: String(describing: error)).description)
            }
        }
    }
}

/// Maps `--history` to its store: the one place that knows the Redis one.
enum HistoryFactory {
    enum Kind { case memory, redis, none }

    /// `memory` with the memory backplane (one gateway), `none` with a broker backplane:
    /// a memory history per gateway would give each gateway its own offsets for one stream.
    static func defaultValue(forBackplane backplane: String) -> String {
        BackplaneURL.kind(of: backplane) == .memory ? "memory" : "none"
    }

    static func kind(of value: String) throws -> Kind {
        switch value.lowercased() {
        case "memory": return .memory
        case "none", "off": return .none
        default:
            let lowered = value.lowercased()
            guard ["redis://", "rediss://", "redis+sentinel://", "rediss+sentinel://"].contains(where: { lowered.hasPrefix($0) }) else {
                throw ValidationError("--history must be memory, none, or a redis://, rediss:// or redis+sentinel:// URL")
            }
            return .redis
        }
    }

    static func make(
        _ value: String?,
        backplane: String,
        retention: HistoryRetention,
        gatewayID: String,
        logger: Logger
    ) throws -> (any HistoryStore)? {
        let value = value ?? defaultValue(forBackplane: backplane)
        switch try kind(of: value) {
        case .none:
            return nil
        case .memory:
            if BackplaneURL.kind(of: backplane) != .memory {
                logger.warning(
                    "--history memory with a broker backplane: each gateway keeps its own streams, so offsets differ between gateways; use a redis:// history"
                )
            }
            return MemoryHistory(retention: retention)
        case .redis:
            do {
                if let problem = CredentialRedaction.reservedCharacterProblem(in: value) {
                    throw ValidationError("--history: \(problem)")
                }
                var redis = try RedisConfiguration(url: value)
                let prefix = redis.parameters["prefix"] ?? "switchboard"
                guard redis.parameters.keys.allSatisfy({ $0 == "prefix" }) else {
                    throw ValidationError(
                        "--history: unknown parameter (known: prefix, timeout, and for rediss:// cacertfile, certfile, keyfile, verify)"
                    )
                }
                redis.parameters = [:]
                // Unreadable TLS files stop the start, rather than every reconnect.
                _ = try redis.makeTLSContext()
                // The same Redis as the backplane: one script writes, offsets and publishes.
                var publishing: RedisBackplaneConfiguration?
                if BackplaneURL.kind(of: backplane) == .redis, Self.server(of: backplane) == Self.server(of: value) {
                    publishing = try RedisBackplaneConfiguration(url: backplane, gatewayID: gatewayID)
                }
                return RedisHistory(
                    configuration: redis,
                    prefix: prefix,
                    retention: retention,
                    publishing: publishing,
                    gatewayID: gatewayID,
                    logger: logger
                )
            } catch let error as ValidationError {
                throw error
            } catch {
                throw ValidationError("--history: \(error)")
            }
        }
    }

    /// The URL without its query: which server and database it names.
    private static func server(of url: String) -> Substring {
        url.prefix { $0 != "?" }
    }
}

/// Maps `--presence` to its store: the one place that knows the Redis one. Defaults as
/// `--history` does: memory presence per gateway would list only that gateway's members.
enum PresenceFactory {
    static func kind(of value: String) throws -> HistoryFactory.Kind {
        do {
            return try HistoryFactory.kind(of: value)
        } catch {
            throw ValidationError("--presence must be memory, none, or a redis://, rediss:// or redis+sentinel:// URL")
        }
    }

    static func make(
        _ value: String?,
        backplane: String,
        policy: PresencePolicy,
        gatewayID: String,
        logger: Logger
    ) throws -> (any PresenceStore)? {
        let value = value ?? HistoryFactory.defaultValue(forBackplane: backplane)
        switch try kind(of: value) {
        case .none:
            return nil
        case .memory:
            if BackplaneURL.kind(of: backplane) != .memory {
                logger.warning("--presence memory with a broker backplane: each gateway lists only its own members; use a redis:// presence")
            }
            return MemoryPresence(policy: policy)
        case .redis:
            do {
                if let problem = CredentialRedaction.reservedCharacterProblem(in: value) {
                    throw ValidationError("--presence: \(problem)")
                }
                var redis = try RedisConfiguration(url: value)
                let prefix = redis.parameters["prefix"] ?? "switchboard"
                guard redis.parameters.keys.allSatisfy({ $0 == "prefix" }) else {
                    throw ValidationError(
                        "--presence: unknown parameter (known: prefix, timeout, and for rediss:// cacertfile, certfile, keyfile, verify)"
                    )
                }
                redis.parameters = [:]
                _ = try redis.makeTLSContext()
                return RedisPresence(configuration: redis, prefix: prefix, policy: policy, gatewayID: gatewayID, logger: logger)
            } catch let error as ValidationError {
                throw error
            } catch {
                throw ValidationError("--presence: \(error)")
            }
        }
    }
}

/// Process limits the gateway adjusts at start-up.
enum FileDescriptorLimit {
    /// Raises the soft open-file limit to the hard one (each connection is a file).
    /// - Returns: the soft limit in force afterwards.
    static func raiseToHardLimit() -> UInt64 {
        #if canImport(Glibc)
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
        return UInt64(limit.rlim_cur)
        #else
        return 0
        #endif
    }

    static func hostName() -> String {
        #if canImport(Glibc)
        var name = [CChar](repeating: 0, count: 256)
        guard gethostname(&name, name.count) == 0 else { return "gateway" }
        let host = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return (try? GatewayConfiguration.validateGatewayID(host)) != nil ? host : "gateway"
        #else
        return "gateway"
        #endif
    }
}

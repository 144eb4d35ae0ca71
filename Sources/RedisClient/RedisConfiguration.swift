import Foundation
public import NIOSSL

/// Where and how to connect to a Redis server.
public struct RedisConfiguration: Sendable, Equatable {
    /// TLS settings for `rediss://`, as for the AMQP client: a CA, an optional client
    /// certificate, and verification of the server's chain and name (on by default).
    public struct TLS: Sendable, Equatable {
        /// PEM file of the CA(s) that sign the server's certificate; nil trusts the system's roots.
        public var caCertificatePath: String?
        /// Client certificate and key (PEM), for servers with `tls-auth-clients yes`.
        public var certificatePath: String?
        public var keyPath: String?
        /// Verify the server's certificate chain and host name (the default).
        public var verifyPeer: Bool

        public init(caCertificatePath: String? = nil, certificatePath: String? = nil, keyPath: String? = nil, verifyPeer: Bool = true) {
            self.caCertificatePath = caCertificatePath
            self.certificatePath = certificatePath
            self.keyPath = keyPath
            self.verifyPeer = verifyPeer
        }
    }

    /// A master that Redis Sentinel manages: the sentinels to ask, and the master's name.
    /// The connection asks them for the master's address before every connect, checks
    /// that the server it reached is a master (`ROLE`), and drops a connection that
    /// answers `READONLY` (a demoted master), so that it follows a failover by itself.
    public struct Sentinel: Sendable, Equatable {
        /// A sentinel's address.
        public struct Address: Sendable, Equatable {
            public var host: String
            public var port: Int
            public init(host: String, port: Int = 26379) {
                self.host = host
                self.port = port
            }
        }

        /// Asked in order until one answers (not empty).
        public var addresses: [Address]
        /// The name the sentinels monitor the master under (`sentinel monitor <name> …`).
        public var masterName: String

        public init(addresses: [Address], masterName: String) {
            self.addresses = addresses
            self.masterName = masterName
        }
    }

    /// With Sentinel, `host` and `port` are unused: the master's address comes from the sentinels.
    public var host: String
    public var port: Int
    /// ACL user for `AUTH user password` (Redis 6+); nil sends `AUTH password`.
    public var username: String?
    /// Password for `AUTH`; nil sends no `AUTH`.
    public var password: String?
    /// Limit for the TCP connect and for `AUTH`.
    public var connectTimeout: Duration
    /// A command without a reply for this long means the connection is dead: it is closed
    /// (its pending commands fail) and opened again.
    public var commandTimeout: Duration
    /// An idle connection sends `PING` this often, so that a dead server is noticed
    /// within about `healthCheckInterval + commandTimeout` even when nothing is sent.
    public var healthCheckInterval: Duration
    /// Commands sent and not answered yet, per connection (queued for the event loop, in
    /// NIO's write buffer, or awaiting their reply); past it, `send` fails at once with
    /// `overloaded`. A stopped or stalled server (SIGSTOP, a long `DEBUG SLEEP`) then costs
    /// bounded memory until the command timeout closes the connection.
    public var maximumPendingCommands: Int
    /// Bytes of those commands; past it, the same. One command is always accepted when
    /// none is pending, however large.
    public var maximumPendingBytes: Int
    /// Reconnect delays grow from `reconnectMinimumDelay` to `reconnectMaximumDelay`, jittered.
    public var reconnectMinimumDelay: Duration
    public var reconnectMaximumDelay: Duration
    /// Query parameters of the URL that this type does not use (a backplane's `mode`, say).
    public var parameters: [String: String]
    /// TLS (`rediss://`); nil: plain TCP.
    public var tls: TLS?
    /// Sentinel (`redis+sentinel://`); nil: `host` and `port` are the server.
    public var sentinel: Sentinel?

    public init(
        host: String = "127.0.0.1",
        port: Int = 6379,
        username: String? = nil,
        password: String? = nil,
        connectTimeout: Duration = .seconds(5),
        commandTimeout: Duration = .seconds(5),
        healthCheckInterval: Duration = .seconds(5),
        reconnectMinimumDelay: Duration = .milliseconds(100),
        reconnectMaximumDelay: Duration = .seconds(5),
        maximumPendingCommands: Int = 5000,
        maximumPendingBytes: Int = 32 * 1024 * 1024,
        parameters: [String: String] = [:],
        tls: TLS? = nil
    ) {
        self.tls = tls
        self.maximumPendingCommands = max(1, maximumPendingCommands)
        self.maximumPendingBytes = max(1, maximumPendingBytes)
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.healthCheckInterval = healthCheckInterval
        self.reconnectMinimumDelay = reconnectMinimumDelay
        self.reconnectMaximumDelay = reconnectMaximumDelay
        self.parameters = parameters
    }

    /// Parses `redis://[[user]:password@]host[:port][/db][?name=value…]`, or `rediss://…` for TLS.
    ///
    /// The database number is accepted and ignored: Pub/Sub channels are server-wide.
    /// `timeout` (milliseconds) sets the connect and command timeouts. With `rediss://`:
    /// `cacertfile`, `certfile`, `keyfile` (PEM paths) and `verify` (`verify_peer`, the
    /// default, or `verify_none`), as in AMQP URLs. Every other query parameter lands in
    /// ``parameters``.
    /// - Throws: ``RedisError`` with code `invalidConfiguration`; the message never contains the password.
    public init(url: String) throws(RedisError) {
        if let sentinelScheme = ["redis+sentinel://", "rediss+sentinel://"].first(where: { url.lowercased().hasPrefix($0) }) {
            try self.init(sentinelURL: url, scheme: sentinelScheme)
            return
        }
        guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased() else {
            throw RedisError(.invalidConfiguration, "not a URL: \(Self.redacted(url))")
        }
        guard scheme == "redis" || scheme == "rediss" else {
            throw RedisError(.invalidConfiguration, "unsupported scheme '\(scheme)': use redis:// or rediss:// (TLS)")
        }
        guard let host = components.host, !host.isEmpty else {
            throw RedisError(.invalidConfiguration, "no host in \(Self.redacted(url))")
        }
        self.init(
            host: host.hasPrefix("[") ? String(host.dropFirst().dropLast()) : host,
            port: components.port ?? 6379,
            tls: scheme == "rediss" ? TLS() : nil
        )
        guard (1...65535).contains(port) else { throw RedisError(.invalidConfiguration, "port \(port) out of range") }
        if let password = components.password {
            self.password = password.removingPercentEncoding ?? password
            if let user = components.user, !user.isEmpty { self.username = user.removingPercentEncoding ?? user }
        } else if let user = components.user, !user.isEmpty {
            // redis://secret@host: a lone user part is the password, as redis-cli -u reads it.
            self.password = user.removingPercentEncoding ?? user
        }
        let path = components.path.trimmingCharacters(in: CharacterSet(charactersIn: "/"))
        guard path.isEmpty || Int(path) != nil else {
            // Not quoted: with a raw '/' in a password, the "path" is the password's tail.
            throw RedisError(.invalidConfiguration, "the path must be a database number (percent-encode '/', '?' and '#' in passwords)")
        }
        for item in components.queryItems ?? [] {
            let value = item.value ?? ""
            if item.name == "timeout" {
                guard let milliseconds = Int(value), (1...600_000).contains(milliseconds) else {
                    throw RedisError(.invalidConfiguration, "timeout must be 1…600000 milliseconds")
                }
                connectTimeout = .milliseconds(milliseconds)
                commandTimeout = .milliseconds(milliseconds)
            } else if ["cacertfile", "certfile", "keyfile", "verify"].contains(item.name) {
                guard tls != nil else { throw RedisError(.invalidConfiguration, "\(item.name) needs a rediss:// URL") }
                switch item.name {
                case "cacertfile": tls?.caCertificatePath = value
                case "certfile": tls?.certificatePath = value
                case "keyfile": tls?.keyPath = value
                default:
                    guard value == "verify_peer" || value == "verify_none" else {
                        throw RedisError(.invalidConfiguration, "verify is verify_peer or verify_none")
                    }
                    tls?.verifyPeer = value == "verify_peer"
                }
            } else {
                parameters[item.name] = value
            }
        }
        if let tls, (tls.certificatePath == nil) != (tls.keyPath == nil) {
            throw RedisError(.invalidConfiguration, "certfile and keyfile go together")
        }
    }

    /// `redis+sentinel://[[user]:password@]host1[:port1],host2[:port2],…/master-name[?…]`
    /// (`rediss+sentinel://` for TLS to the master; the sentinels are asked in plain TCP,
    /// without a password). Sentinel ports default to 26379. The query is read as for
    /// `redis://`; the password is the master's.
    private init(sentinelURL url: String, scheme: String) throws(RedisError) {
        let rest = url.dropFirst(scheme.count)
        let beforeQuery = rest.prefix { $0 != "?" }
        let query = rest.dropFirst(beforeQuery.count)
        guard let slash = beforeQuery.firstIndex(of: "/") else {
            throw RedisError(.invalidConfiguration, "a Sentinel URL ends its host list with /<master name>")
        }
        let authority = beforeQuery[..<slash]
        let name = String(beforeQuery[beforeQuery.index(after: slash)...]).removingPercentEncoding ?? ""
        guard !name.isEmpty, name.utf8.count <= 128, !name.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7F || $0 == UInt8(ascii: "/") }) else {
            throw RedisError(.invalidConfiguration, "the master name after the hosts must be 1…128 bytes without spaces, control characters or '/'")
        }
        var userInfo: Substring = ""
        var hosts = authority
        if let at = authority.lastIndex(of: "@") {
            userInfo = authority[...at]
            hosts = authority[authority.index(after: at)...]
        }
        var addresses: [Sentinel.Address] = []
        for piece in hosts.split(separator: ",", omittingEmptySubsequences: false) {
            // Parsed as the authority of a plain URL, which knows [v6]:port.
            guard let parsed = URLComponents(string: "redis://\(piece)"), let host = parsed.host, !host.isEmpty, parsed.path.isEmpty else {
                // Not quoted: with a raw '/' in a password, the "host" is part of the password.
                throw RedisError(.invalidConfiguration, "a sentinel is not host[:port] (percent-encode '/', '?', '#' and ',' in passwords)")
            }
            let port = parsed.port ?? 26379
            guard (1...65535).contains(port) else { throw RedisError(.invalidConfiguration, "sentinel port \(port) out of range") }
            addresses.append(Sentinel.Address(host: host.hasPrefix("[") ? String(host.dropFirst().dropLast()) : host, port: port))
        }
        guard !addresses.isEmpty else { throw RedisError(.invalidConfiguration, "a Sentinel URL needs at least one sentinel") }
        // Everything but the hosts and the name reads as a plain URL would.
        let plainScheme = scheme.hasPrefix("rediss") ? "rediss://" : "redis://"
        try self.init(url: plainScheme + userInfo + "sentinel" + query)
        host = addresses[0].host
        port = addresses[0].port
        sentinel = Sentinel(addresses: addresses, masterName: name)
    }

    /// The NIOSSL context for ``tls``, or nil without TLS.
    /// - Throws: ``RedisError`` `invalidConfiguration` when a file cannot be read or parsed.
    public func makeTLSContext() throws(RedisError) -> NIOSSLContext? {
        guard let tls else { return nil }
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        configuration.certificateVerification = tls.verifyPeer ? .fullVerification : .none
        do {
            if let ca = tls.caCertificatePath {
                configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca))
            }
            if let certificate = tls.certificatePath, let key = tls.keyPath {
                configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) }
                configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
            }
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw RedisError(.invalidConfiguration, "TLS files (cacertfile, certfile, keyfile): \(error)")
        }
    }

    /// `host:port`, or the Sentinel master's name, for logs.
    public var serverDescription: String {
        guard let sentinel else { return "\(host):\(port)" }
        return "sentinel master \(sentinel.masterName) (\(sentinel.addresses.map { "\($0.host):\($0.port)" }.joined(separator: ",")))"
    }

    /// The URL without its user and password, for logs and errors.
    public static func redacted(_ url: String) -> String {
        guard let schemeEnd = url.range(of: "://"), let at = url[schemeEnd.upperBound...].lastIndex(of: "@") else { return url }
        return String(url[..<schemeEnd.upperBound]) + "***" + String(url[at...])
    }
}

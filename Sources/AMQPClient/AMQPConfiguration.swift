/// Where and how to connect to an AMQP 0-9-1 broker.
public struct AMQPConfiguration: Sendable, Equatable {
    /// TLS settings for `amqps://`.
    public struct TLS: Sendable, Equatable {
        /// PEM file of the CA(s) that sign the broker's certificate; nil uses no CA (verification then fails).
        public var caCertificatePath: String?
        /// Client certificate and key (PEM), for brokers that require them.
        public var certificatePath: String?
        public var keyPath: String?
        /// Verify the broker's certificate chain and host name (the default).
        public var verifyPeer: Bool

        public init(caCertificatePath: String? = nil, certificatePath: String? = nil, keyPath: String? = nil, verifyPeer: Bool = true) {
            self.caCertificatePath = caCertificatePath
            self.certificatePath = certificatePath
            self.keyPath = keyPath
            self.verifyPeer = verifyPeer
        }
    }

    public var host: String
    public var port: Int
    public var virtualHost: String
    public var username: String
    public var password: String
    public var tls: TLS?
    /// Heartbeat interval in seconds (0 turns heartbeats off). A dead broker is noticed within about two intervals.
    public var heartbeatSeconds: Int
    /// Limit for the TCP/TLS connect and for the AMQP handshake.
    public var connectTimeout: Duration
    /// Limit for each synchronous request (declare, bind, consume).
    public var requestTimeout: Duration

    public init(
        host: String = "127.0.0.1",
        port: Int? = nil,
        virtualHost: String = "/",
        username: String = "guest",
        password: String = "guest",
        tls: TLS? = nil,
        heartbeatSeconds: Int = 10,
        connectTimeout: Duration = .seconds(5),
        requestTimeout: Duration = .seconds(30)
    ) {
        self.host = host
        self.port = port ?? (tls == nil ? 5672 : 5671)
        self.virtualHost = virtualHost
        self.username = username
        self.password = password
        self.tls = tls
        self.heartbeatSeconds = heartbeatSeconds
        self.connectTimeout = connectTimeout
        self.requestTimeout = requestTimeout
    }

    /// Parses `amqp://user:pass@host:port/vhost` or `amqps://…` (RabbitMQ's URI spec).
    ///
    /// Query parameters: `heartbeat` (seconds), `connection_timeout` (milliseconds),
    /// `cacertfile`, `certfile`, `keyfile`, `verify` (`verify_peer` or `verify_none`).
    /// - Throws: ``AMQPError`` with code `invalidConfiguration`; the message never contains the password.
    public init(url: String) throws(AMQPError) {
        let isTLS: Bool
        let rest: Substring
        if url.hasPrefix("amqp://") {
            isTLS = false
            rest = url.dropFirst("amqp://".count)
        } else if url.hasPrefix("amqps://") {
            isTLS = true
            rest = url.dropFirst("amqps://".count)
        } else {
            throw AMQPError(.invalidConfiguration, "an AMQP URL starts with amqp:// or amqps://")
        }
        let (beforeQuery, query) = Self.split(rest, at: "?")
        let (authority, path) = Self.split(beforeQuery, at: "/")
        var username = "guest"
        var password = "guest"
        var hostPort = authority
        if let at = authority.lastIndex(of: "@") {
            let credentials = authority[..<at]
            hostPort = authority[authority.index(after: at)...]
            let (user, pass) = Self.split(credentials, at: ":")
            username = Self.percentDecode(user)
            if let pass { password = Self.percentDecode(pass) }
        }
        var host = String(hostPort)
        var port: Int?
        if hostPort.hasPrefix("[") {
            guard let close = hostPort.firstIndex(of: "]") else { throw AMQPError(.invalidConfiguration, "unclosed [ in the host") }
            host = String(hostPort[hostPort.index(after: hostPort.startIndex)..<close])
            let after = hostPort[hostPort.index(after: close)...]
            if after.hasPrefix(":") {
                guard let value = Int(after.dropFirst()), (1...65535).contains(value) else {
                    throw AMQPError(.invalidConfiguration, "invalid port")
                }
                port = value
            }
        } else if let colon = hostPort.lastIndex(of: ":") {
            host = String(hostPort[..<colon])
            guard let value = Int(hostPort[hostPort.index(after: colon)...]), (1...65535).contains(value) else {
                throw AMQPError(.invalidConfiguration, "invalid port")
            }
            port = value
        }
        if host.isEmpty { host = "127.0.0.1" }
        let virtualHost = path.map { $0.isEmpty ? "/" : Self.percentDecode($0) } ?? "/"

        var tls: TLS? = isTLS ? TLS() : nil
        var heartbeat = 10
        var connectTimeout = Duration.seconds(5)
        for pair in (query ?? "").split(separator: "&") {
            let (key, value) = Self.split(pair, at: "=")
            let decoded = value.map(Self.percentDecode) ?? ""
            switch key {
            case "heartbeat":
                guard let seconds = Int(decoded), (0...3600).contains(seconds) else {
                    throw AMQPError(.invalidConfiguration, "heartbeat must be 0…3600 seconds")
                }
                heartbeat = seconds
            case "connection_timeout":
                guard let milliseconds = Int(decoded), milliseconds > 0 else {
                    throw AMQPError(.invalidConfiguration, "connection_timeout must be a positive number of milliseconds")
                }
                connectTimeout = .milliseconds(milliseconds)
            case "cacertfile": tls?.caCertificatePath = decoded
            case "certfile": tls?.certificatePath = decoded
            case "keyfile": tls?.keyPath = decoded
            case "verify":
                guard decoded == "verify_peer" || decoded == "verify_none" else {
                    throw AMQPError(.invalidConfiguration, "verify is verify_peer or verify_none")
                }
                tls?.verifyPeer = decoded == "verify_peer"
            default:
                // Quoted only when it looks like a parameter name: with a raw '?' in a password,
                // the "parameter" is the password's tail.
                let looksLikeName =
                    !key.isEmpty && key.utf8.count <= 32
                    && key.utf8.allSatisfy { $0 == UInt8(ascii: "_") || (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) }
                throw AMQPError(
                    .invalidConfiguration,
                    looksLikeName
                        ? "unknown URL parameter '\(key)'" : "unknown URL parameter (not shown; percent-encode '?', '/' and '#' in passwords)"
                )
            }
        }
        self.init(
            host: host,
            port: port,
            virtualHost: virtualHost,
            username: username,
            password: password,
            tls: tls,
            heartbeatSeconds: heartbeat,
            connectTimeout: connectTimeout
        )
    }

    /// The URL without the password, for logs.
    public var redactedDescription: String {
        "\(tls == nil ? "amqp" : "amqps")://\(username):***@\(host):\(port)/\(virtualHost == "/" ? "" : virtualHost)"
    }

    private static func split(_ text: Substring, at separator: Character) -> (Substring, Substring?) {
        guard let index = text.firstIndex(of: separator) else { return (text, nil) }
        return (text[..<index], text[text.index(after: index)...])
    }

    static func percentDecode(_ text: Substring) -> String {
        var bytes: [UInt8] = []
        var index = text.utf8.startIndex
        let utf8 = text.utf8
        while index < utf8.endIndex {
            let byte = utf8[index]
            if byte == UInt8(ascii: "%"),
                let first = utf8.index(index, offsetBy: 1, limitedBy: utf8.endIndex), first < utf8.endIndex,
                let second = utf8.index(index, offsetBy: 2, limitedBy: utf8.endIndex), second < utf8.endIndex,
                let value = UInt8(String(decoding: [utf8[first], utf8[second]], as: UTF8.self), radix: 16)
            {
                bytes.append(value)
                index = utf8.index(after: second)
            } else {
                bytes.append(byte)
                index = utf8.index(after: index)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

import Foundation

/// Where and how to connect to a Redis server.
public struct RedisConfiguration: Sendable, Equatable {
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
        parameters: [String: String] = [:]
    ) {
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

    /// Parses `redis://[[user]:password@]host[:port][/db][?name=value…]`.
    ///
    /// The database number is accepted and ignored: Pub/Sub channels are server-wide.
    /// `timeout` (milliseconds) sets the connect and command timeouts; every other query
    /// parameter lands in ``parameters``. `rediss://` (TLS) is refused with a clear error.
    /// - Throws: ``RedisError`` with code `invalidConfiguration`; the message never contains the password.
    public init(url: String) throws(RedisError) {
        guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased() else {
            throw RedisError(.invalidConfiguration, "not a URL: \(Self.redacted(url))")
        }
        guard scheme == "redis" else {
            let hint = scheme == "rediss" ? " (TLS to Redis is not supported yet: use a TLS tunnel or a private network)" : ""
            throw RedisError(.invalidConfiguration, "unsupported scheme '\(scheme)'\(hint)")
        }
        guard let host = components.host, !host.isEmpty else {
            throw RedisError(.invalidConfiguration, "no host in \(Self.redacted(url))")
        }
        self.init(host: host.hasPrefix("[") ? String(host.dropFirst().dropLast()) : host, port: components.port ?? 6379)
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
            } else {
                parameters[item.name] = value
            }
        }
    }

    /// `host:port`, for logs.
    public var serverDescription: String { "\(host):\(port)" }

    /// The URL without its user and password, for logs and errors.
    public static func redacted(_ url: String) -> String {
        guard let schemeEnd = url.range(of: "://"), let at = url[schemeEnd.upperBound...].lastIndex(of: "@") else { return url }
        return String(url[..<schemeEnd.upperBound]) + "***" + String(url[at...])
    }
}

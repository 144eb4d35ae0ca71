public import RedisClient

/// Settings of the Redis Pub/Sub backplane, from `--backplane redis://…`.
public struct RedisBackplaneConfiguration: Sendable {
    /// How gateways use Redis Pub/Sub.
    public enum Mode: String, Sendable, CaseIterable {
        /// The classic design: one channel for everything. Every gateway subscribes to it,
        /// receives every message and drops those for users and rooms it does not host.
        case broadcast
        /// A channel per user and per room (SignalR's Redis backplane, Socket.IO's sharded
        /// adapter): a gateway subscribes while the user or room is local.
        case channels
    }

    public var redis: RedisConfiguration
    public var mode: Mode
    /// Channel names start with it: `<prefix>` (broadcast) or `<prefix>:user.<word>` (channels).
    public var prefix: String
    /// Names this gateway's connections in logs.
    public var gatewayID: String

    /// Commands each connection may have waiting for Redis, and their bytes
    /// (`--max-pending-publishes`, `--max-pending-publish-bytes`); past them a publish gets
    /// `BackplaneError.overloaded` at once. Stored in ``redis``.
    public var pendingLimits: (commands: Int, bytes: Int) {
        get { (redis.maximumPendingCommands, redis.maximumPendingBytes) }
        set {
            redis.maximumPendingCommands = max(1, newValue.commands)
            redis.maximumPendingBytes = max(1, newValue.bytes)
        }
    }

    public init(redis: RedisConfiguration, mode: Mode = .channels, prefix: String = "switchboard", gatewayID: String) {
        self.redis = redis
        self.mode = mode
        self.prefix = prefix
        self.gatewayID = gatewayID
    }

    /// Parses `redis://[[user]:password@]host[:port][?mode=broadcast|channels][&prefix=NAME][&timeout=MS]`.
    /// The mode is `channels` unless the URL says otherwise.
    /// - Throws: ``RedisError`` `invalidConfiguration` for an unknown mode or parameter.
    public init(url: String, gatewayID: String) throws(RedisError) {
        var redis = try RedisConfiguration(url: url)
        let parameters = redis.parameters
        redis.parameters = [:]
        var mode = Mode.channels
        if let text = parameters["mode"] {
            guard let parsed = Mode(rawValue: text) else {
                throw RedisError(.invalidConfiguration, "mode must be broadcast or channels")
            }
            mode = parsed
        }
        let prefix = parameters["prefix"] ?? "switchboard"
        guard !prefix.isEmpty, prefix.utf8.count <= 64, !prefix.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7F }) else {
            throw RedisError(.invalidConfiguration, "prefix must be 1…64 bytes without spaces or control characters")
        }
        if parameters.keys.contains(where: { $0 != "mode" && $0 != "prefix" }) {
            // Not quoted: with a raw '?' in a password, the "parameter" is the password's tail.
            throw RedisError(
                .invalidConfiguration,
                "unknown parameter (known: mode, prefix, timeout, and for rediss:// cacertfile, certfile, keyfile, verify)"
            )
        }
        self.init(redis: redis, mode: mode, prefix: prefix, gatewayID: gatewayID)
    }
}

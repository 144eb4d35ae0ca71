/// Metadata keys for every log line the Redis client writes, in one place. The client knows
/// nothing of Switchboard.
enum LoggingKeys {
    static let connection = "redis.connection"
    /// The server, without its password.
    static let server = "redis.server"
    /// The address a connection reached (with Sentinel, the master's).
    static let address = "redis.address"
    /// Commands sent and not answered yet.
    static let pending = "redis.pending"
    static let errorType = "error.type"
}

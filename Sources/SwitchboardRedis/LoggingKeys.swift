/// Metadata keys for every log line the Redis backplane writes, in one place.
enum LoggingKeys {
    static let gatewayID = "switchboard.gateway.id"
    static let mode = "redis.mode"
    static let channels = "redis.channels"
    static let channel = "redis.channel"
    /// The server, without its password.
    static let server = "redis.server"
    static let errorType = "error.type"
}

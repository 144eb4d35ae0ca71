/// Metadata keys for every log line the AMQP client writes, in one place. The client knows
/// nothing of Switchboard, so none of them names a gateway, user or room.
enum LoggingKeys {
    /// Which of a backplane's connections (its name, e.g. `consumer`).
    static let connection = "amqp.connection"
    /// The broker, its password redacted.
    static let broker = "amqp.broker"
    static let retryInMilliseconds = "amqp.retry_in_ms"
    static let failedAttempts = "amqp.failed_attempts"
    static let blocked = "amqp.blocked"
    static let unconfirmed = "amqp.unconfirmed"
    static let reason = "amqp.reason"
    static let method = "amqp.method"
    static let channel = "amqp.channel"
    /// Who serves the open connection: `event_loop` or `thread`.
    static let servedBy = "amqp.served_by"
    static let errorType = "error.type"
}

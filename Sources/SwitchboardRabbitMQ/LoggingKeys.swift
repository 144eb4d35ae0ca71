/// Metadata keys for every log line the RabbitMQ backplane writes, in one place.
enum LoggingKeys {
    static let gatewayID = "switchboard.gateway.id"
    static let queue = "amqp.queue"
    static let bindings = "amqp.bindings"
    static let routingKey = "amqp.routing_key"
    /// The broker, its password redacted.
    static let broker = "amqp.broker"
    static let errorType = "error.type"
    /// How long declaring the queue and restoring its bindings took.
    static let setupMilliseconds = "amqp.setup_ms"
    /// How long the backplane was not ready, from the lost connection to both open again.
    static let failoverMilliseconds = "backplane.failover_ms"
}

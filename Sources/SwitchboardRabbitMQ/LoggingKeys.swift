/// Metadata keys for every log line the RabbitMQ backplane writes, in one place.
enum LoggingKeys {
    static let gatewayID = "switchboard.gateway.id"
    static let queue = "amqp.queue"
    static let bindings = "amqp.bindings"
    static let routingKey = "amqp.routing_key"
    /// The broker, its password redacted.
    static let broker = "amqp.broker"
    static let errorType = "error.type"
}

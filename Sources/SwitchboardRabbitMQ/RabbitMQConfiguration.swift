public import AMQPClient

/// Settings of the RabbitMQ backplane; the topology is described in docs/architecture.md.
public struct RabbitMQConfiguration: Sendable {
    /// Broker address and credentials.
    public var amqp: AMQPConfiguration
    /// This gateway's id; its queue is `switchboard.gateway.<gatewayID>`.
    public var gatewayID: String
    /// The topic exchange every gateway publishes to (durable).
    public var exchange: String
    /// Publishes awaiting a broker confirm at once (the sliding confirm window).
    public var maximumUnconfirmed: Int
    /// How many publishes may wait for the broker (count and body bytes) and for how long
    /// (`--max-pending-publishes`, `--publish-timeout`): a broker that blocks publishing
    /// (memory or disk alarm) or stops confirming costs bounded memory, and every publish is
    /// answered within the timeout.
    public var publishLimits: AMQPConnection.PublishLimits
    /// A separate durable topic exchange that gets a copy of every client message for
    /// background workers (`--events-exchange`); nil: none. Never the main exchange.
    public var eventsExchange: String?

    public init(
        amqp: AMQPConfiguration,
        gatewayID: String,
        exchange: String = "switchboard",
        maximumUnconfirmed: Int = 1000,
        publishLimits: AMQPConnection.PublishLimits = AMQPConnection.PublishLimits(),
        eventsExchange: String? = nil
    ) {
        self.amqp = amqp
        self.gatewayID = gatewayID
        self.exchange = exchange
        self.maximumUnconfirmed = maximumUnconfirmed
        self.publishLimits = publishLimits
        self.eventsExchange = eventsExchange
    }

    /// `switchboard.gateway.<gatewayID>`: exclusive and auto-delete, it dies with the gateway's connection.
    public var queueName: String { "switchboard.gateway.\(gatewayID)" }
}

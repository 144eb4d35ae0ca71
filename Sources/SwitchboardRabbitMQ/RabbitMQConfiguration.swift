public import AMQPClient

/// Settings of the RabbitMQ backplane; the topology is described in docs/architecture.md.
public struct RabbitMQConfiguration: Sendable {
    /// Broker address and credentials.
    public var amqp: AMQPConfiguration
    /// This gateway's id; its queue is `switchboard.gateway.<gatewayID>`.
    public var gatewayID: String
    /// The exchange every gateway publishes to (durable).
    public var exchange: String
    /// Its type (`--exchange-type`). Gateways bind exact keys only (`user.<word>`,
    /// `room.<word>`, `broadcast`), so `direct` routes the same messages as `topic`; on
    /// RabbitMQ 3.10 it binds for less than half the broker CPU (no topic trie in Mnesia)
    /// and routes by a hash lookup. An exchange keeps the type it was declared with:
    /// switching an existing deployment needs a new `exchange` name.
    public var exchangeType: ExchangeType
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

    /// The AMQP type of the main exchange.
    public enum ExchangeType: String, Sendable, CaseIterable {
        case topic, direct
    }

    public init(
        amqp: AMQPConfiguration,
        gatewayID: String,
        exchange: String = "switchboard",
        exchangeType: ExchangeType = .topic,
        maximumUnconfirmed: Int = 1000,
        publishLimits: AMQPConnection.PublishLimits = AMQPConnection.PublishLimits(),
        eventsExchange: String? = nil
    ) {
        self.amqp = amqp
        self.gatewayID = gatewayID
        self.exchange = exchange
        self.exchangeType = exchangeType
        self.maximumUnconfirmed = maximumUnconfirmed
        self.publishLimits = publishLimits
        self.eventsExchange = eventsExchange
    }

    /// `switchboard.gateway.<gatewayID>`: exclusive and auto-delete, it dies with the gateway's connection.
    public var queueName: String { "switchboard.gateway.\(gatewayID)" }
}

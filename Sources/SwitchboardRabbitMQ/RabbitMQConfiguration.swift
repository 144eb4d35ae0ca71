public import AMQPClient
public import NIOCore
public import NIOPosix

/// Settings of the RabbitMQ backplane; the topology is described in docs/architecture.md.
public struct RabbitMQConfiguration: Sendable {
    /// Broker addresses and credentials: one, or the nodes of a cluster (not empty). The
    /// gateway starts at ``firstBroker`` and moves on to the next node when its own is lost.
    public var brokers: [AMQPConfiguration]
    /// This gateway's id; its queues are `switchboard.gateway.<gatewayID>.<incarnation>`.
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
    /// Where the two broker connections are served once open: reads, writes, confirms and
    /// deliveries happen on an event loop of this group (the gateway's own, by default
    /// NIO's shared group), so no thread hop is left between a session and the broker.
    /// Logging in, the set-up and reconnecting stay on each connection's thread. nil: each
    /// connection's thread serves it (as over TLS, always).
    public var eventLoopGroup: (any EventLoopGroup)?

    /// The AMQP type of the main exchange.
    public enum ExchangeType: String, Sendable, CaseIterable {
        case topic, direct
    }

    public init(
        brokers: [AMQPConfiguration],
        gatewayID: String,
        exchange: String = "switchboard",
        exchangeType: ExchangeType = .topic,
        maximumUnconfirmed: Int = 1000,
        publishLimits: AMQPConnection.PublishLimits = AMQPConnection.PublishLimits(),
        eventsExchange: String? = nil,
        eventLoopGroup: (any EventLoopGroup)? = MultiThreadedEventLoopGroup.singleton
    ) {
        precondition(!brokers.isEmpty, "the RabbitMQ backplane needs at least one broker")
        self.brokers = brokers
        self.gatewayID = gatewayID
        self.exchange = exchange
        self.exchangeType = exchangeType
        self.maximumUnconfirmed = maximumUnconfirmed
        self.publishLimits = publishLimits
        self.eventsExchange = eventsExchange
        self.eventLoopGroup = eventLoopGroup
    }

    /// The first broker of ``brokers``.
    public var amqp: AMQPConfiguration { brokers[0] }

    /// Where this gateway's connections go first: the gateway id's FNV-1a hash modulo the
    /// broker count, so that the gateways of a deployment spread over the nodes of a cluster
    /// instead of all starting at the first one, and a restarted gateway returns to the same node.
    public var firstBroker: Int {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in gatewayID.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x100_0000_01b3
        }
        return Int(hash % UInt64(brokers.count))
    }

    /// Every queue of this gateway starts with this: `switchboard.gateway.<gatewayID>.`
    public var queuePrefix: String { "switchboard.gateway.\(gatewayID)." }

    /// `switchboard.gateway.<gatewayID>.<incarnation>`: exclusive and auto-delete, it dies with
    /// the gateway's consumer connection. Each connection declares a new name: re-declaring
    /// the old one on another node while the cluster still cleans up the dead node's queue of
    /// that name can get the new queue deleted (rabbitmq/rabbitmq-server#6271, #9798).
    public func queueName(incarnation: String) -> String { queuePrefix + incarnation }

    /// A fresh incarnation: 8 random hex digits, new for every connection.
    public static func newIncarnation() -> String {
        let value = UInt32.random(in: .min ... .max)
        let hex = String(value, radix: 16)
        return String(repeating: "0", count: 8 - hex.count) + hex
    }
}

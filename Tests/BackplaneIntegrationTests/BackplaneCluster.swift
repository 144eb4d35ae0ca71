import AMQPClient
import Logging
import SwitchboardBackplane
import SwitchboardRabbitMQ
import SwitchboardRedis
import SwitchboardServer
import SwitchboardTesting
import Testing

/// The backplanes that every behaviour test runs against, each on its real broker.
enum BackplaneKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case rabbitmq
    case redisChannels = "redis-channels"
    case redisBroadcast = "redis-broadcast"

    var testDescription: String { rawValue }

    /// A message reaches only the gateways that host its address (not Redis `broadcast`).
    var isRouted: Bool { self != .redisBroadcast }

    /// A direct message to a user no gateway hosts comes back as `recipient_offline`.
    /// Redis `broadcast` cannot know: the sender gets an `ack`.
    var reportsOfflineRecipients: Bool { self != .redisBroadcast }
}

/// Gateways on backplanes of one kind that share a namespace of their own (an exchange,
/// a channel prefix), so that tests never see each other's traffic.
struct BackplaneCluster: Sendable {
    let kind: BackplaneKind
    let tag: String
    /// The RabbitMQ exchange, or the Redis channel prefix.
    let namespace: String
    let backplanes: [any Backplane]
    let gatewayIDs: [String]

    init(_ kind: BackplaneKind, gateways: Int, amqp: AMQPConfiguration? = nil) throws {
        self.kind = kind
        let tag = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        self.tag = tag
        namespace = "sbtest.\(tag)"
        var logger = Logger(label: "test.backplane")
        logger.logLevel = .warning
        let ids = (1...gateways).map { "gw\($0)-\(tag)" }
        gatewayIDs = ids
        switch kind {
        case .rabbitmq:
            let amqp = try amqp ?? AMQPConfiguration(url: try Broker.url)
            let exchange = namespace
            backplanes = ids.map { id in
                RabbitMQBackplane(configuration: RabbitMQConfiguration(brokers: [amqp], gatewayID: id, exchange: exchange), logger: logger)
            }
        case .redisChannels, .redisBroadcast:
            let mode = kind == .redisChannels ? "channels" : "broadcast"
            let url = try RedisServer.url + "?mode=\(mode)&prefix=\(namespace)"
            backplanes = try ids.map { id in
                RedisBackplane(configuration: try RedisBackplaneConfiguration(url: url, gatewayID: id), logger: logger)
            }
        }
    }

    /// The RabbitMQ queue of gateway `index` now (`switchboard.gateway.<id>.<incarnation>`).
    func queue(_ index: Int) -> String { (backplanes[index] as? RabbitMQBackplane)?.currentQueueName ?? "none" }

    /// Runs `body` with every gateway up and its backplane ready.
    func run<T: Sendable>(
        configure: (inout GatewayConfiguration) -> Void = { _ in },
        _ body: @Sendable ([RunningGateway]) async throws -> T
    ) async throws -> T {
        let backplanes = self.backplanes
        let ids = gatewayIDs
        return try await withGateways(
            backplanes,
            configure: { configuration, index in
                configuration.gatewayID = ids[index]
                configure(&configuration)
            }
        ) { gateways in
            guard try await eventually(timeout: .seconds(20), { backplanes.allSatisfy(\.isReady) }) else {
                throw TestFailure("the \(kind.rawValue) backplanes did not become ready")
            }
            return try await body(gateways)
        }
    }

    /// How many gateways the broker itself sends `key` (`user.bob`, `room.lobby`) to:
    /// queues bound with it on RabbitMQ, subscribers of its channel on Redis `channels`.
    /// On Redis `broadcast` there are no per-address subscriptions: it counts the
    /// subscribers of the one channel.
    func brokerSubscribers(_ key: String) throws -> Int {
        switch kind {
        case .rabbitmq: try Broker.bindings(exchange: namespace).filter { $0.key == key }.count
        case .redisChannels: try RedisServer.subscribers("\(namespace):\(key)")
        case .redisBroadcast: try RedisServer.subscribers(namespace)
        }
    }

    /// Takes the broker away (every test in the suite runs serialized for this).
    func stopBroker() throws {
        switch kind {
        case .rabbitmq: try Broker.ctl(["stop_app"])
        case .redisChannels, .redisBroadcast: try RedisServer.stop()
        }
    }

    func startBroker() throws {
        switch kind {
        case .rabbitmq: try Broker.ctl(["start_app"])
        case .redisChannels, .redisBroadcast: try RedisServer.start()
        }
    }

    var received: [Int] { backplanes.map(\.statistics.received) }
}

import AMQPClient
import Logging
import NIOCore
import ServiceLifecycle
import SwitchboardBackplane
import SwitchboardProtocol
import SwitchboardRabbitMQ
import SwitchboardRedis
import SwitchboardTesting
import Testing

/// Every backplane, through the `Backplane` API alone: what reaches a bound address, what
/// stops after an unbind, what each publish outcome promises, and what survives a lost
/// broker connection. A case whose broker is not configured is skipped (see
/// ``TestBrokers``); serialized, because the reconnect test cuts connections on the
/// shared broker.
@Suite(
    "Backplane conformance: in-memory, RabbitMQ (topic and direct exchange; served on an event loop and by its thread), Redis channels, Redis broadcast",
    .serialized,
    .timeLimit(.minutes(3))
)
struct BackplaneConformanceTests {
    static let bob = BackplaneAddress.user(try! UserID(validating: "bob"))  // a valid literal: cannot throw
    static let carol = BackplaneAddress.user(try! UserID(validating: "carol"))
    static let lobby = BackplaneAddress.room(try! RoomID(validating: "lobby"))

    @Test("a frame published to a bound user, room or broadcast reaches the bound gateway once, byte for byte", arguments: BackplaneKind.allCases)
    func deliveryToBoundAddresses(kind: BackplaneKind) async throws {
        try await BackplanePair.run(kind) { pair in
            try await pair.receiver.bind(Self.bob)
            try await pair.receiver.bind(Self.lobby)
            for (address, text) in [(Self.bob, "to bob"), (Self.lobby, "to the lobby"), (.broadcast, "to everyone")] {
                try await pair.expectDelivered(text, to: address)
            }
            // Each arrived once: the next thing delivered is the next frame published.
            try await pair.expectDelivered("fence", to: .broadcast)
        }
    }

    @Test(
        "a burst of publishes issued at once, some larger than one AMQP frame, arrives complete, in order, once",
        arguments: BackplaneKind.allCases
    )
    func burst(kind: BackplaneKind) async throws {
        try await BackplanePair.run(kind) { pair in
            try await pair.receiver.bind(Self.bob)
            // RabbitMQ's frame_max is 131,072 bytes: the large bodies span three body frames,
            // and publishes queued together are encoded into one write.
            let sizes = (0..<300).map { $0 % 50 == 7 ? 300_000 + $0 : 40 + $0 }
            let frames = sizes.enumerated().map { index, size in
                var frame = ByteBuffer(string: "#\(index):")
                frame.writeRepeatingByte(UInt8(ascii: "a") + UInt8(index % 26), count: size)
                return frame
            }
            let outcomes = EventInbox<PublishOutcome>()
            for frame in frames {
                pair.publisher.publish(frame, to: Self.bob) { result in
                    if case .success(let outcome) = result { outcomes.append(outcome) }
                }
            }
            for (index, frame) in frames.enumerated() {
                let delivery = try await pair.deliveries.next(timeout: .seconds(10))
                #expect(delivery?.frame == frame, "frame \(index) (\(frame.readableBytes) bytes)")
                #expect(try await outcomes.next(timeout: .seconds(10)) == kind.outcome(publishingTo: Self.bob, bound: true))
            }
            try await pair.expectDelivered("fence", to: Self.bob)
        }
    }

    @Test("after an unbind nothing more arrives, and the outcome says so where the backplane can tell", arguments: BackplaneKind.allCases)
    func nothingAfterUnbind(kind: BackplaneKind) async throws {
        try await BackplanePair.run(kind) { pair in
            for address in [Self.bob, Self.lobby] {
                try await pair.receiver.bind(address)
                try await pair.expectDelivered("before", to: address)
                try await pair.receiver.unbind(address)
                let outcome = try await pair.publisher.publish(ByteBuffer(string: "after"), to: address)
                #expect(outcome == kind.outcome(publishingTo: address, bound: false), "\(address) after unbind")
            }
            // Never bound anywhere.
            #expect(
                try await pair.publisher.publish(ByteBuffer(string: "after"), to: Self.carol) == kind.outcome(publishingTo: Self.carol, bound: false)
            )
            // Publishes from one publisher arrive in order, so had any "after" arrived it would come before this.
            try await pair.expectDelivered("fence", to: .broadcast)
        }
    }

    @Test(
        "a lost broker connection: the backplane reconnects by itself, its bindings are restored, delivery resumes",
        arguments: BackplaneKind.brokered
    )
    func reconnect(kind: BackplaneKind) async throws {
        try await BackplanePair.run(kind) { pair in
            try await pair.receiver.bind(Self.bob)
            try await pair.receiver.bind(Self.lobby)
            try await pair.expectDelivered("before", to: Self.bob)

            let before = try kind.brokerConnections()
            #expect(!before.isEmpty)
            try kind.dropBrokerConnections()
            // Neither reconnecting nor ready has an event of its own: the broker's list of
            // connections and `isReady` are polled until both show new, ready connections.
            let restored = try await eventually(timeout: .seconds(30)) {
                guard let now = try? kind.brokerConnections() else { return false }
                return now.count >= before.count && now.isDisjoint(with: before) && pair.all.allSatisfy(\.isReady)
            }
            #expect(restored, "new broker connections, ready: before \(before), now \((try? kind.brokerConnections()) ?? [])")
            // No bind again: what was bound before the loss is bound after it.
            try await pair.expectDelivered("after, to bob", to: Self.bob)
            try await pair.expectDelivered("after, to the lobby", to: Self.lobby)
        }
    }
}

/// The backplanes under test, with what each one's doc comment promises about outcomes.
enum BackplaneKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case inMemory = "memory"
    case rabbitmq
    /// RabbitMQ with `--exchange-type direct`: the same guarantees through a direct exchange.
    case rabbitmqDirect = "rabbitmq-direct"
    /// RabbitMQ served by each connection's own thread (no event loop), as over TLS.
    case rabbitmqThread = "rabbitmq-thread"
    case redisChannels = "redis-channels"
    case redisBroadcast = "redis-broadcast"

    static let brokered: [BackplaneKind] = [.rabbitmq, .rabbitmqDirect, .rabbitmqThread, .redisChannels, .redisBroadcast]

    var testDescription: String { rawValue }

    /// What `publish` to `address` completes with, when a gateway has it bound or when none has.
    ///
    /// In-memory and RabbitMQ (`mandatory` publishes, confirms) know exactly. Redis
    /// `channels` trusts `PUBLISH`'s receiver count for users only, and reports a room as
    /// routed. Redis `broadcast` cannot know at all.
    func outcome(publishingTo address: BackplaneAddress, bound: Bool) -> PublishOutcome {
        switch (self, address) {
        case (.redisBroadcast, _): .unknown
        case (.redisChannels, .room): .routed
        default: bound ? .routed : .noRecipient
        }
    }

    /// Skips the current case (unless brokers are required) when its broker is not configured.
    func skipUnlessConfigured() throws {
        switch self {
        case .inMemory: break
        case .rabbitmq, .rabbitmqDirect, .rabbitmqThread:
            try TestBrokers.skipUnless(Broker.isConfigured, TestBrokers.rabbitMQMissing)
        case .redisChannels, .redisBroadcast:
            try TestBrokers.skipUnless(RedisServer.isConfigured, TestBrokers.redisMissing)
        }
    }

    /// Two gateways' backplanes on one namespace of their own (an exchange, a channel
    /// prefix); the in-memory one, which serves a single gateway, publishes to itself.
    func makeBackplanes() throws -> (publisher: any Backplane, receiver: any Backplane) {
        let tag = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        var logger = Logger(label: "test.conformance")
        logger.logLevel = .warning
        switch self {
        case .inMemory:
            let backplane = InMemoryBackplane()
            return (backplane, backplane)
        case .rabbitmq, .rabbitmqDirect, .rabbitmqThread:
            let amqp = try AMQPConfiguration(url: try Broker.url)
            let type: RabbitMQConfiguration.ExchangeType = self == .rabbitmqDirect ? .direct : .topic
            let make = { (id: String) in
                var configuration = RabbitMQConfiguration(brokers: [amqp], gatewayID: "\(id)-\(tag)", exchange: "sbconf.\(tag)", exchangeType: type)
                if self == .rabbitmqThread { configuration.eventLoopGroup = nil }
                return RabbitMQBackplane(configuration: configuration, logger: logger)
            }
            return (make("pub"), make("recv"))
        case .redisChannels, .redisBroadcast:
            let mode = self == .redisChannels ? "channels" : "broadcast"
            let url = try RedisServer.url + "?mode=\(mode)&prefix=sbconf.\(tag)"
            let make = { (id: String) throws in
                RedisBackplane(configuration: try RedisBackplaneConfiguration(url: url, gatewayID: "\(id)-\(tag)"), logger: logger)
            }
            return (try make("pub"), try make("recv"))
        }
    }

    /// The broker's own list of client connections (RabbitMQ's names carry the client's
    /// port, Redis's ids are never reused): new ones after a reconnect.
    func brokerConnections() throws -> Set<String> {
        switch self {
        case .inMemory:
            return []
        case .rabbitmq, .rabbitmqDirect, .rabbitmqThread:
            return Set(try Broker.ctl(["list_connections", "name", "--quiet", "--no-table-headers"]).split(separator: "\n").map(String.init))
        case .redisChannels, .redisBroadcast:
            // Every client but redis-cli itself (the one running CLIENT LIST).
            let clients = try RedisServer.cli(["CLIENT", "LIST"]).split(separator: "\n").filter { !$0.contains("cmd=client|list") }
            return Set(clients.compactMap { $0.split(separator: " ").first { $0.hasPrefix("id=") }.map(String.init) })
        }
    }

    /// Cuts every client connection on the broker, as a broker failover or a network cut would.
    func dropBrokerConnections() throws {
        switch self {
        case .inMemory:
            break
        case .rabbitmq, .rabbitmqDirect, .rabbitmqThread:
            try Broker.ctl(["close_all_connections", "backplane conformance test"])
        case .redisChannels, .redisBroadcast:
            try RedisServer.cli(["CLIENT", "KILL", "TYPE", "pubsub"])
            try RedisServer.cli(["CLIENT", "KILL", "TYPE", "normal"])
        }
    }
}

/// A publishing and a receiving backplane, running, and what the receiver was handed.
struct BackplanePair: Sendable {
    let kind: BackplaneKind
    let publisher: any Backplane
    let receiver: any Backplane
    let deliveries: EventInbox<BackplaneDelivery>

    var all: [any Backplane] { [publisher, receiver] }

    /// Runs both backplanes as services until `body` returns.
    static func run(_ kind: BackplaneKind, _ body: @Sendable (BackplanePair) async throws -> Void) async throws {
        try kind.skipUnlessConfigured()
        let (publisher, receiver) = try kind.makeBackplanes()
        let deliveries = EventInbox<BackplaneDelivery>()
        // The in-memory pair is one backplane: its handler is the receiver's.
        if kind != .inMemory { publisher.setDeliveryHandler { _ in } }
        receiver.setDeliveryHandler { batch in batch.forEach(deliveries.append) }
        let pair = BackplanePair(kind: kind, publisher: publisher, receiver: receiver, deliveries: deliveries)
        var logger = Logger(label: "test.conformance")
        logger.logLevel = .warning
        let services: [any Service] = kind == .inMemory ? [receiver] : [publisher, receiver]
        let group = ServiceGroup(configuration: .init(services: services, logger: logger))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            do {
                // Readiness has no event of its own.
                guard try await eventually(timeout: .seconds(20), { pair.all.allSatisfy(\.isReady) }) else {
                    throw TestFailure("the \(kind.rawValue) backplanes did not become ready")
                }
                try await body(pair)
            } catch {
                await group.triggerGracefulShutdown()
                try? await tasks.waitForAll()
                throw error
            }
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
    }

    /// Publishes `text` to the bound `address`: the outcome is what the backplane promises
    /// for a bound address, and the very next delivery is `text`, to `address`.
    func expectDelivered(_ text: String, to address: BackplaneAddress, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let outcome = try await publisher.publish(ByteBuffer(string: text), to: address)
        #expect(outcome == kind.outcome(publishingTo: address, bound: true), "\(address)", sourceLocation: sourceLocation)
        let delivery = try await deliveries.next(timeout: .seconds(10))
        #expect(delivery?.address == address, "delivered to \(address)", sourceLocation: sourceLocation)
        #expect(delivery.map { String(buffer: $0.frame) } == text, sourceLocation: sourceLocation)
    }
}

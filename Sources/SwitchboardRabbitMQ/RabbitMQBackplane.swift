import AMQPClient
public import Logging
public import NIOCore
import ServiceLifecycle
public import SwitchboardBackplane
import SwitchboardProtocol
import Synchronization

/// The RabbitMQ backplane: routed delivery through one topic exchange.
///
/// Topology (docs/architecture.md): a durable topic exchange (`switchboard`); one exclusive,
/// auto-delete queue per gateway connection (`switchboard.gateway.<id>.<incarnation>`),
/// bound to `broadcast` and to exactly the `user.<word>` and `room.<word>` keys the gateway
/// hosts. A direct message therefore reaches only the gateways that host its recipient.
///
/// On a cluster (several ``RabbitMQConfiguration/brokers``) both connections start at the
/// node ``RabbitMQConfiguration/firstBroker`` picks from the gateway id and move to the next
/// node that answers when theirs is lost. There the consumer declares a queue of a new
/// name, binds every address in force from the gateway's own state, and only then is the
/// backplane ready again; ``BackplaneStatistics/failovers`` counts these recoveries.
///
/// Two AMQP connections (see ``AMQPConnection``), each logged in and set up by a thread
/// of its own and, once open, served on an event loop of
/// ``RabbitMQConfiguration/eventLoopGroup`` (the gateway's): the
/// consumer owns the queue, its bindings (channel 2) and the consumer (channel 1, no-ack);
/// the publisher publishes with `mandatory` and publisher confirms, up to
/// `maximumUnconfirmed` in flight.
///
/// Guarantees:
/// - `publish` completes after the broker's confirm: ``PublishOutcome/routed`` when at
///   least one gateway queue took the message, ``PublishOutcome/noRecipient`` when it
///   came back as unroutable. A message on a gateway's queue can still be lost if that
///   gateway dies before writing it to its clients (no-ack delivery: its clients are
///   gone with it anyway).
/// - While either connection is down, `isReady` is false and `publish` and `bind` fail
///   at once with `BackplaneError.unavailable`; publishes that were awaiting a confirm
///   when a connection dropped fail the same way (they may or may not have been routed).
/// - After a reconnect the queue is declared again and every binding in force is
///   restored (no-wait binds with one fence) before the backplane reports ready.
/// - A stalled broker (`connection.blocked` on a memory or disk alarm, or no confirms)
///   costs bounded memory: at most ``RabbitMQConfiguration/publishLimits`` publishes wait;
///   more fail at once with `BackplaneError.overloaded` (not sent), and each waiting one
///   fails the same way after the publish timeout (it may still be delivered once the
///   broker recovers: it may be in the socket or at the broker already). `isReady` is
///   false while publishing is stalled; it all recovers by itself when the alarm clears.
public final class RabbitMQBackplane: Backplane {
    /// What the two connection threads and the callers share; each part has its own lock.
    private final class Shared: Sendable {
        /// Restored after every reconnect.
        let wanted = WantedBindings()
        let counters = BackplaneCounters()
        let consumerOpen = Atomic<Bool>(false)
        let publisherOpen = Atomic<Bool>(false)
        /// The queue of the consumer connection now (nil before the first one).
        let queue = Mutex<String?>(nil)
        let recoveries = Mutex(RecoveryClock())
        /// The keys the last set-up bound: checked against the wanted set once the connection is open.
        let boundAtSetUp = Mutex<[String]>([])
        /// The consumer connection, for what its state handler sends once it is open.
        let consumer = Mutex<AMQPConnection?>(nil)
    }

    public let configuration: RabbitMQConfiguration
    private let logger: Logger
    private let shared = Shared()
    private let consumer: AMQPConnection
    private let publisher: AMQPConnection

    public init(configuration: RabbitMQConfiguration, logger: Logger) {
        self.configuration = configuration
        var gatewayLogger = logger
        gatewayLogger[metadataKey: LoggingKeys.gatewayID] = .string(configuration.gatewayID)
        self.logger = gatewayLogger
        let logger = gatewayLogger
        let exchange = configuration.exchange
        let exchangeType = configuration.exchangeType.rawValue
        let eventsExchange = configuration.eventsExchange
        let shared = self.shared
        let brokers = configuration.brokers
        let firstBroker = configuration.firstBroker
        let configuration = configuration

        consumer = AMQPConnection(
            brokers: brokers,
            firstBroker: firstBroker,
            name: "\(configuration.gatewayID)-consumer",
            logger: logger,
            setUp: { (setup) throws(AMQPError) in
                let started = ContinuousClock.now
                try setup.declareExchange(exchange, type: exchangeType, durable: true)
                let queue = configuration.queueName(incarnation: RabbitMQConfiguration.newIncarnation())
                try setup.declareQueue(queue, durable: false, exclusive: true, autoDelete: true)
                // Everything the gateway hosts now, including what was bound before a reconnect.
                let keys = shared.wanted.withAddresses { addresses, _ in addresses.map(\.routingKey) }
                try setup.bind(queue: queue, exchange: exchange, routingKeys: keys)
                try setup.consume(queue: queue, noAck: true)
                shared.boundAtSetUp.withLock { $0 = keys }
                shared.queue.withLock { $0 = queue }
                shared.recoveries.withLock { $0.consumerBroker = setup.brokerIndex }
                let elapsed = ContinuousClock.now - started
                logger.info(
                    "RabbitMQ queue ready",
                    metadata: [
                        LoggingKeys.queue: .string(queue),
                        LoggingKeys.broker: .string(setup.broker.redactedDescription),
                        LoggingKeys.bindings: .stringConvertible(keys.count),
                        LoggingKeys.setupMilliseconds: .stringConvertible(elapsed.wholeMilliseconds),
                    ]
                )
            },
            onDeliveries: { deliveries in
                let handler = shared.wanted.handler
                var batch: [BackplaneDelivery] = []
                batch.reserveCapacity(deliveries.count)
                for delivery in deliveries {
                    guard let address = BackplaneAddress(routingKey: delivery.routingKey) else {
                        logger.warning(
                            "delivery with an unknown routing key dropped",
                            metadata: [LoggingKeys.routingKey: .string(delivery.routingKey)]
                        )
                        continue
                    }
                    batch.append(BackplaneDelivery(address: address, frame: delivery.body))
                }
                shared.counters.received.add(batch.count, ordering: .relaxed)
                if let handler, !batch.isEmpty { handler(batch) }
            },
            onStateChange: { change in
                shared.consumerOpen.store(change.isOpen, ordering: .releasing)
                if change.isOpen { Self.unbindLeftDuringSetUp(shared: shared, exchange: exchange) }
                Self.track(change, consumer: true, shared: shared, logger: logger)
            },
            eventLoop: configuration.eventLoopGroup?.next()
        )
        publisher = AMQPConnection(
            brokers: brokers,
            firstBroker: firstBroker,
            name: "\(configuration.gatewayID)-publisher",
            logger: logger,
            maximumUnconfirmed: configuration.maximumUnconfirmed,
            publishLimits: configuration.publishLimits,
            setUp: { (setup) throws(AMQPError) in
                try setup.declareExchange(exchange, type: exchangeType, durable: true)
                if let eventsExchange { try setup.declareExchange(eventsExchange, type: "topic", durable: true) }
                try setup.enableConfirms()
                shared.recoveries.withLock { $0.publisherBroker = setup.brokerIndex }
            },
            onStateChange: { change in
                shared.publisherOpen.store(change.isOpen, ordering: .releasing)
                Self.track(change, consumer: false, shared: shared, logger: logger)
            },
            eventLoop: configuration.eventLoopGroup?.next()
        )
        shared.consumer.withLock { $0 = consumer }
    }

    /// An address unbound while the set-up ran had its unbind refused (not connected yet)
    /// and may have been bound on the new queue anyway: unbind it now that commands go
    /// through. Under the wanted set's lock, so that a bind of the same address issued
    /// meanwhile is queued after this unbind and wins.
    private static func unbindLeftDuringSetUp(shared: Shared, exchange: String) {
        let bound = shared.boundAtSetUp.withLock { keys in
            defer { keys = [] }
            return keys
        }
        guard !bound.isEmpty, let consumer = shared.consumer.withLock({ $0 }) else { return }
        shared.wanted.withAddresses { addresses, _ in
            let wanted = Set(addresses.map(\.routingKey))
            for key in bound where !wanted.contains(key) {
                consumer.unbind(queue: nil, exchange: exchange, routingKey: key) { _ in }
            }
        }
    }

    /// Where the two connections are now: indexes into ``RabbitMQConfiguration/brokers``
    /// (nil before their first connection). Both change only when a connection opens elsewhere.
    public var connectedBrokers: (consumer: Int?, publisher: Int?) {
        shared.recoveries.withLock { ($0.consumerBroker, $0.publisherBroker) }
    }

    /// Feeds the recovery clock; logs each recovery with how long the backplane was not ready.
    private static func track(_ change: AMQPConnectionState, consumer: Bool, shared: Shared, logger: Logger) {
        let now = ContinuousClock.now
        let recovery: RecoveryClock.Recovery? = shared.recoveries.withLock { clock in
            switch change {
            case .open: return clock.opened(consumer: consumer, at: now)
            case .disconnected: clock.lost(consumer: consumer, at: now)
            case .connecting, .closed: break
            }
            return nil
        }
        guard let recovery else { return }
        shared.counters.countRecovery(milliseconds: recovery.duration.wholeMilliseconds)
        logger.warning(
            recovery.movedNode ? "RabbitMQ backplane failed over to another node" : "RabbitMQ backplane reconnected",
            metadata: [LoggingKeys.failoverMilliseconds: .stringConvertible(recovery.duration.wholeMilliseconds)]
        )
    }

    /// The consumer's queue now (`switchboard.gateway.<id>.<incarnation>`); nil before the
    /// first connection. It changes with every reconnect.
    public var currentQueueName: String? { shared.queue.withLock { $0 } }

    public var statistics: BackplaneStatistics {
        var statistics = shared.counters.snapshot
        let pressure = publisher.publishPressure
        statistics.pendingPublishes = pressure.pending
        statistics.isBlocked = pressure.isBlocked
        statistics.isStalled = pressure.isStalled
        return statistics
    }

    /// Both connections are open and publishing is not stalled (blocked by an alarm, or
    /// publishes near their timeout): a load balancer should send new clients elsewhere.
    public var isReady: Bool {
        shared.consumerOpen.load(ordering: .acquiring) && shared.publisherOpen.load(ordering: .acquiring)
            && !publisher.publishPressure.isStalled
    }

    public func setDeliveryHandler(_ handler: @escaping BackplaneDeliveryHandler) {
        shared.wanted.setHandler(handler)
    }

    public func run() async throws {
        logger.info("connecting to RabbitMQ", metadata: [LoggingKeys.broker: .string(configuration.amqp.redactedDescription)])
        consumer.start()
        publisher.start()
        try? await gracefulShutdown()
        await publisher.shutdown()
        await consumer.shutdown()
    }

    public func bind(_ address: BackplaneAddress, completion: @escaping @Sendable (Result<Void, BackplaneError>) -> Void) {
        let shared = self.shared
        shared.wanted.insert(address)
        // nil: whichever queue the consumer connection has when the bind is sent.
        consumer.bind(queue: nil, exchange: configuration.exchange, routingKey: address.routingKey) { result in
            switch result {
            case .success:
                shared.counters.binds.add(1, ordering: .relaxed)
                completion(.success(()))
            case .failure(let error):
                shared.counters.bindFailures.add(1, ordering: .relaxed)
                // Not bound: do not restore it after a reconnect either.
                shared.wanted.remove(address)
                completion(.failure(BackplaneError(.unavailable, "bind \(address.routingKey) failed", cause: error)))
            }
        }
    }

    public func unbind(_ address: BackplaneAddress, completion: @escaping @Sendable (Result<Void, BackplaneError>) -> Void) {
        shared.wanted.remove(address)
        shared.counters.unbinds.add(1, ordering: .relaxed)
        let logger = self.logger
        consumer.unbind(queue: nil, exchange: configuration.exchange, routingKey: address.routingKey) { result in
            if case .failure(let error) = result {
                // The queue is exclusive to the consumer connection: if that connection is
                // down, the queue and all its bindings are gone, and a reconnect restores
                // only what is still wanted. Either way the binding no longer holds.
                logger.debug(
                    "unbind did not reach the broker",
                    metadata: [LoggingKeys.routingKey: .string(address.routingKey), LoggingKeys.errorType: .string("\(error)")]
                )
            }
            completion(.success(()))
        }
    }

    public func publish(
        _ frame: ByteBuffer,
        to address: BackplaneAddress,
        completion: @escaping @Sendable (Result<PublishOutcome, BackplaneError>) -> Void
    ) {
        let shared = self.shared
        publisher.publish(exchange: configuration.exchange, routingKey: address.routingKey, body: frame, mandatory: true) { result in
            let outcome: Result<PublishOutcome, BackplaneError>
            switch result {
            case .success(.confirmed), .success(.sent):
                outcome = .success(.routed)
            case .success(.returned):
                outcome = .success(.noRecipient)
            case .failure(let error) where error.code == .nacked:
                outcome = .failure(BackplaneError(.rejected, "the broker rejected the message", cause: error))
            case .failure(let error) where error.code == .overloaded || error.code == .timedOut:
                shared.counters.countStalled(timedOut: error.code == .timedOut)
                outcome = .failure(BackplaneError(.overloaded, "the broker is stalled (blocked or not confirming)", cause: error))
            case .failure(let error):
                outcome = .failure(BackplaneError(.unavailable, "the broker connection is down", cause: error))
            }
            shared.counters.count(outcome)
            completion(outcome)
        }
    }
}

/// When the backplane stopped being ready and on which nodes it was, so that each
/// recovery is counted once, with its duration (loss of the first connection to both open).
struct RecoveryClock {
    struct Recovery {
        var duration: Duration
        /// Either connection is on another node than before the loss.
        var movedNode: Bool
    }

    var consumerBroker: Int?
    var publisherBroker: Int?
    private var consumerOpen = false
    private var publisherOpen = false
    private var downSince: ContinuousClock.Instant?
    private var brokersBeforeLoss: (consumer: Int?, publisher: Int?) = (nil, nil)

    mutating func lost(consumer: Bool, at now: ContinuousClock.Instant) {
        let wasReady = consumerOpen && publisherOpen
        if consumer { consumerOpen = false } else { publisherOpen = false }
        if wasReady {
            downSince = now
            brokersBeforeLoss = (consumerBroker, publisherBroker)
        }
    }

    /// The recovery this opening completes, if any.
    mutating func opened(consumer: Bool, at now: ContinuousClock.Instant) -> Recovery? {
        if consumer { consumerOpen = true } else { publisherOpen = true }
        guard consumerOpen, publisherOpen, let since = downSince else { return nil }
        downSince = nil
        let moved = brokersBeforeLoss.consumer != consumerBroker || brokersBeforeLoss.publisher != publisherBroker
        return Recovery(duration: now - since, movedNode: moved)
    }
}

extension AMQPConnectionState {
    var isOpen: Bool {
        if case .open = self { true } else { false }
    }
}

extension RabbitMQBackplane {
    /// The sink that copies client messages to ``RabbitMQConfiguration/eventsExchange``, or
    /// nil when none is configured. It shares the publisher connection (and its confirms);
    /// events are persistent and not mandatory: no worker queue bound is not an error.
    public var eventSink: (any EventSink)? {
        guard let exchange = configuration.eventsExchange else { return nil }
        return RabbitMQEventSink(publisher: publisher, exchange: exchange, counters: shared.counters, logger: logger)
    }
}

/// Publishes worker events: `user.<word>`, `room.<word>`, `undelivered.user.<word>`.
private struct RabbitMQEventSink: EventSink {
    let publisher: AMQPConnection
    let exchange: String
    let counters: BackplaneCounters
    let logger: Logger

    func clientMessage(_ frame: ByteBuffer, to address: BackplaneAddress) {
        publish(frame, key: address.routingKey)
    }

    func undelivered(_ frame: ByteBuffer, to address: BackplaneAddress) {
        publish(frame, key: "undelivered." + address.routingKey)
    }

    private func publish(_ frame: ByteBuffer, key: String) {
        let counters = counters
        let logger = logger
        publisher.publish(exchange: exchange, routingKey: key, body: frame, mandatory: false, persistent: true) { result in
            switch result {
            case .success:
                counters.eventsPublished.add(1, ordering: .relaxed)
            case .failure(let error):
                counters.eventFailures.add(1, ordering: .relaxed)
                logger.debug("event not published", metadata: [LoggingKeys.routingKey: .string(key), LoggingKeys.errorType: .string("\(error)")])
            }
        }
    }
}

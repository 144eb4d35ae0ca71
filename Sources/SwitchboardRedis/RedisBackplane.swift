public import Logging
public import NIOCore
import NIOPosix
import RedisClient
import ServiceLifecycle
public import SwitchboardBackplane
import Synchronization

/// The Redis Pub/Sub backplane, in the two designs people run today (see
/// ``RedisBackplaneConfiguration/Mode``), for migration and for side-by-side benchmarks.
///
/// Two connections on one event loop (``RedisConnection``): a subscriber and a publisher.
///
/// `channels` mode: the channel of an address is `<prefix>:<routing key>`
/// (`switchboard:user.alice`, `switchboard:room.lobby`, `switchboard:broadcast`). A bind is
/// a `SUBSCRIBE`, complete when Redis confirms it; `PUBLISH` answers with the number of
/// subscribers that got the message, so a direct message to a user no gateway hosts is
/// reported as ``PublishOutcome/noRecipient`` (`recipient_offline`), as on RabbitMQ.
///
/// `broadcast` mode: one channel, `<prefix>`. Each message carries its routing key
/// (`user.alice\n` + frame); every gateway gets every message and keeps those for
/// addresses it binds. Binds cost nothing on Redis, but every gateway pays for every
/// message, and a publish cannot tell whether anyone hosts the recipient: it completes
/// as ``PublishOutcome/unknown`` and the sender gets an `ack`.
///
/// Guarantees: Redis Pub/Sub is at most once. A message published while a gateway's
/// subscriber is reconnecting is lost for that gateway. While either connection is down,
/// `isReady` is false and `bind` and `publish` fail at once with `unavailable`; a publish
/// whose reply was pending when the connection dropped fails the same way (it may or may
/// not have been delivered). After a reconnect every wanted channel is subscribed again
/// before the backplane reports ready.
///
/// A stalled server (stopped with SIGSTOP, or far behind) costs bounded memory: at most
/// ``RedisClient/RedisConfiguration/maximumPendingCommands`` commands wait per connection;
/// more publishes fail at once with `BackplaneError.overloaded` (not sent), and the command
/// timeout answers each waiting one (`unavailable`; it may still be delivered). `isReady`
/// is false while a command has waited more than half the command timeout.
public final class RedisBackplane: Backplane {
    /// What the connections' callbacks and the callers share.
    private final class Shared: Sendable {
        /// Subscribed again after every reconnect.
        let wanted = WantedBindings()
        let counters = BackplaneCounters()
    }

    public let configuration: RedisBackplaneConfiguration
    private let logger: Logger
    private let shared = Shared()
    private let subscriber: RedisConnection
    private let publisher: RedisConnection

    public init(configuration: RedisBackplaneConfiguration, eventLoop: (any EventLoop)? = nil, logger: Logger) {
        let eventLoop = eventLoop ?? MultiThreadedEventLoopGroup.singleton.next()
        self.configuration = configuration
        var gatewayLogger = logger
        gatewayLogger[metadataKey: LoggingKeys.gatewayID] = .string(configuration.gatewayID)
        self.logger = gatewayLogger
        let logger = gatewayLogger
        let shared = self.shared
        let naming = ChannelNaming(mode: configuration.mode, prefix: configuration.prefix)
        let modeName = configuration.mode.rawValue

        subscriber = RedisConnection(
            configuration: configuration.redis,
            name: "\(configuration.gatewayID)-subscriber",
            eventLoop: eventLoop,
            logger: logger,
            isSubscriber: true,
            setUp: { setUp in
                let channels = shared.wanted.withAddresses { addresses, _ in naming.subscriptions(for: addresses) }
                // One SUBSCRIBE per channel, pipelined: one confirmation each, in order.
                let confirmations = channels.map { setUp.send(RedisCommand("SUBSCRIBE", [$0])) }
                return EventLoopFuture.andAllSucceed(confirmations, on: setUp.channel.eventLoop).map {
                    logger.info(
                        "Redis subscriptions ready",
                        metadata: [LoggingKeys.mode: .string(modeName), LoggingKeys.channels: .stringConvertible(channels.count)]
                    )
                }
            },
            onMessages: { messages in
                shared.counters.received.add(messages.count, ordering: .relaxed)
                let (handler, deliveries) = shared.wanted.withAddresses { wanted, handler in
                    (handler, messages.compactMap { naming.delivery(from: $0, wanted: wanted) })
                }
                let dropped = messages.count - deliveries.count
                if dropped > 0 { shared.counters.filtered.add(dropped, ordering: .relaxed) }
                if let handler, !deliveries.isEmpty { handler(deliveries) }
            }
        )
        publisher = RedisConnection(
            configuration: configuration.redis,
            name: "\(configuration.gatewayID)-publisher",
            eventLoop: eventLoop,
            logger: logger
        )
        self.naming = naming
    }

    private let naming: ChannelNaming

    /// Both connections are open and neither has a command waiting past half the command
    /// timeout (a stalled server accepts connections and then answers nothing).
    public var isReady: Bool {
        subscriber.isOpen && publisher.isOpen && !subscriber.isStalled && !publisher.isStalled
    }

    public var statistics: BackplaneStatistics {
        var statistics = shared.counters.snapshot
        statistics.pendingPublishes = publisher.pendingCommands
        statistics.isStalled = subscriber.isStalled || publisher.isStalled
        return statistics
    }

    public func setDeliveryHandler(_ handler: @escaping BackplaneDeliveryHandler) {
        shared.wanted.setHandler(handler)
    }

    public func run() async throws {
        logger.info(
            "connecting to Redis",
            metadata: [LoggingKeys.server: .string(configuration.redis.serverDescription), LoggingKeys.mode: .string(configuration.mode.rawValue)]
        )
        subscriber.start()
        publisher.start()
        try? await gracefulShutdown()
        await publisher.shutdown()
        await subscriber.shutdown()
    }

    public func bind(_ address: BackplaneAddress, completion: @escaping @Sendable (Result<Void, BackplaneError>) -> Void) {
        let shared = self.shared
        switch configuration.mode {
        case .broadcast:
            // Nothing to tell Redis: the gateway already receives everything.
            guard subscriber.isOpen else {
                shared.counters.bindFailures.add(1, ordering: .relaxed)
                return completion(.failure(BackplaneError(.unavailable, "the Redis subscriber connection is down")))
            }
            // Not counted in `binds`: nothing is sent to Redis (the counter is the broker's work).
            shared.wanted.insert(address)
            completion(.success(()))
        case .channels:
            shared.wanted.insert(address)
            subscriber.send(RedisCommand("SUBSCRIBE", [naming.channel(for: address)])) { result in
                switch result {
                case .success:
                    shared.counters.binds.add(1, ordering: .relaxed)
                    completion(.success(()))
                case .failure(let error):
                    shared.counters.bindFailures.add(1, ordering: .relaxed)
                    // Not subscribed: do not restore it after a reconnect either.
                    shared.wanted.remove(address)
                    completion(.failure(BackplaneError(.unavailable, "SUBSCRIBE \(address.routingKey) failed", cause: error)))
                }
            }
        }
    }

    public func unbind(_ address: BackplaneAddress, completion: @escaping @Sendable (Result<Void, BackplaneError>) -> Void) {
        shared.wanted.remove(address)
        guard configuration.mode == .channels else { return completion(.success(())) }
        shared.counters.unbinds.add(1, ordering: .relaxed)
        let logger = self.logger
        subscriber.send(RedisCommand("UNSUBSCRIBE", [naming.channel(for: address)])) { result in
            if case .failure(let error) = result {
                // A subscriber that is down holds no subscriptions, and a reconnect restores
                // only what is still wanted: either way the address is no longer bound.
                logger.debug(
                    "UNSUBSCRIBE did not reach Redis",
                    metadata: [LoggingKeys.channel: .string(address.routingKey), LoggingKeys.errorType: .string("\(error)")]
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
        let counters = shared.counters
        let mode = configuration.mode
        let (channel, payload) = naming.publication(of: frame, to: address)
        publisher.send(RedisCommand("PUBLISH", [channel, payload])) { result in
            let outcome: Result<PublishOutcome, BackplaneError>
            switch result {
            case .success(.integer(let receivers)):
                switch (mode, address) {
                case (.broadcast, _): outcome = .success(.unknown)
                case (.channels, .user): outcome = .success(receivers > 0 ? .routed : .noRecipient)
                case (.channels, _): outcome = .success(.routed)
                }
            case .success(let other):
                outcome = .failure(BackplaneError(.rejected, "PUBLISH answered \(other), not a count"))
            case .failure(let error) where error.code == .overloaded:
                counters.countStalled(timedOut: false)
                outcome = .failure(BackplaneError(.overloaded, "too many publishes await Redis", cause: error))
            case .failure(let error) where error.code == .serverError:
                outcome = .failure(BackplaneError(.rejected, "Redis refused PUBLISH", cause: error))
            case .failure(let error):
                outcome = .failure(BackplaneError(.unavailable, "the Redis publisher connection is down", cause: error))
            }
            counters.count(outcome)
            completion(outcome)
        }
    }
}

/// Channel names and payloads of each mode.
struct ChannelNaming: Sendable {
    let mode: RedisBackplaneConfiguration.Mode
    let prefix: String
    let separator = UInt8(ascii: "\n")

    /// The channel an address is subscribed and published on (channels mode).
    func channel(for address: BackplaneAddress) -> ByteBuffer {
        ByteBuffer(string: "\(prefix):\(address.routingKey)")
    }

    /// The channels to subscribe for `wanted`.
    func subscriptions(for wanted: Set<BackplaneAddress>) -> [ByteBuffer] {
        switch mode {
        case .broadcast: [ByteBuffer(string: prefix)]
        case .channels: wanted.map(channel(for:))
        }
    }

    /// The channel and payload of a publish.
    func publication(of frame: ByteBuffer, to address: BackplaneAddress) -> (channel: ByteBuffer, payload: ByteBuffer) {
        switch mode {
        case .channels:
            return (channel(for: address), frame)
        case .broadcast:
            let key = address.routingKey
            var payload = ByteBuffer()
            payload.reserveCapacity(key.utf8.count + 1 + frame.readableBytes)
            payload.writeString(key)
            payload.writeInteger(separator)
            payload.writeImmutableBuffer(frame)
            return (ByteBuffer(string: prefix), payload)
        }
    }

    /// The delivery a message stands for, or nil when it is not for a wanted address.
    func delivery(from message: RedisMessage, wanted: Set<BackplaneAddress>) -> BackplaneDelivery? {
        switch mode {
        case .channels:
            let name = String(buffer: message.channel)
            guard name.hasPrefix(prefix + ":"), let address = BackplaneAddress(routingKey: String(name.dropFirst(prefix.utf8.count + 1))) else {
                return nil
            }
            return BackplaneDelivery(address: address, frame: message.payload)
        case .broadcast:
            var payload = message.payload
            guard let newline = payload.readableBytesView.firstIndex(of: separator),
                let key = payload.readString(length: newline - payload.readerIndex),
                let address = BackplaneAddress(routingKey: key), wanted.contains(address)
            else { return nil }
            payload.moveReaderIndex(forwardBy: 1)
            return BackplaneDelivery(address: address, frame: payload)
        }
    }
}

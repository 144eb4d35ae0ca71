private import CRabbitMQ
import Foundation
public import Logging
public import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// One AMQP 0-9-1 connection to a broker, owned by a thread of its own, that reconnects
/// with backoff until it is shut down.
///
/// rabbitmq-c connections are not thread-safe and its calls block, so the thread makes
/// every blocking library call: connect, login, the set-up's declarations. Once the
/// connection is open, an `eventLoop` given at init serves it (``AMQPLoopHandler``: the
/// socket in a NIO channel, rabbitmq-c as the codec, the thread asleep until the channel
/// closes); without one, or over TLS, the thread serves it too: a `poll()` loop over the
/// socket and a wake `eventfd`, which drains a locked command queue, reads frames
/// (servicing heartbeats), and calls back. Nothing runs in the Swift concurrency pool,
/// and no method of this type blocks: each enqueues (or hands to the loop) and returns.
///
/// With several brokers (the nodes of a cluster), the first attempt goes to
/// `brokers[firstBroker]`, and each failed attempt or lost connection moves on to the next
/// one in the list: a gateway whose node dies is on another node after one attempt. The
/// backoff applies once a whole round of the list has failed.
///
/// Channels: channel 1 carries publishes and consumers; channel 2 carries bindings, so a
/// failed binding cannot take the consumer down with it.
///
/// After each (re)connect the `setUp` closure runs on the connection thread with an
/// ``AMQPSetup``, where synchronous declarations are allowed. Commands issued while the
/// connection is not open fail at once with `notConnected`; commands in flight when it
/// drops fail with `connectionLost`. Nothing is silently dropped.
///
/// Publishes are bounded (``PublishLimits``): when the broker blocks publishing (a memory
/// or disk alarm, `connection.blocked`) or stops confirming, at most `maximumPending`
/// publishes (and `maximumPendingBytes` of bodies) wait; more fail at once with
/// `overloaded`, and each waiting one fails with `timedOut` after `timeout`. While blocked,
/// and whenever the socket's send buffer is half full, the thread writes no further
/// publish, so it never sits inside a blocking socket write and keeps servicing
/// heartbeats, timeouts and shutdown.
public final class AMQPConnection: Sendable {
    public typealias PublishCompletion = @Sendable (Result<AMQPPublishOutcome, AMQPError>) -> Void
    public typealias Completion = @Sendable (Result<Void, AMQPError>) -> Void

    /// Bounds on publishes that wait for the broker, so that a stalled broker costs bounded
    /// memory and every publish is answered within `timeout`.
    public struct PublishLimits: Sendable, Equatable {
        /// Publishes accepted and not answered yet (queued, or awaiting their confirm); past
        /// it, `publish` fails at once with `overloaded`.
        public var maximumPending: Int
        /// Bytes of bodies of those publishes; past it, the same. One publish is always
        /// accepted when none is pending, however large.
        public var maximumPendingBytes: Int
        /// A publish not confirmed this long after it was accepted fails with `timedOut`
        /// (it may still be delivered: it may be in the socket or at the broker already).
        public var timeout: Duration

        public init(maximumPending: Int = 5000, maximumPendingBytes: Int = 32 * 1024 * 1024, timeout: Duration = .seconds(5)) {
            self.maximumPending = max(1, maximumPending)
            self.maximumPendingBytes = max(1, maximumPendingBytes)
            self.timeout = timeout
        }
    }

    /// The publish backlog now, for metrics and readiness.
    public struct PublishPressure: Sendable, Equatable {
        /// Publishes accepted and not answered yet.
        public var pending: Int
        /// Bytes of their bodies.
        public var pendingBytes: Int
        /// The broker said `connection.blocked` (a resource alarm) and has not unblocked yet.
        public var isBlocked: Bool
        /// Blocked, or the oldest pending publish has waited more than half the timeout:
        /// the broker is not keeping up, and publishes are about to time out.
        public var isStalled: Bool
    }

    /// How the connection backs off between attempts.
    public struct Backoff: Sendable {
        public var initial: Duration
        public var maximum: Duration

        public init(initial: Duration = .milliseconds(100), maximum: Duration = .seconds(5)) {
            self.initial = initial
            self.maximum = maximum
        }
    }

    let shared: AMQPConnectionShared
    private let brokers: [AMQPConfiguration]
    private let firstBroker: Int
    private let name: String
    private let logger: Logger
    private let backoff: Backoff
    private let maximumUnconfirmed: Int
    private let publishLimits: PublishLimits
    private let setUp: @Sendable (AMQPSetup) throws(AMQPError) -> Void
    private let onDeliveries: @Sendable ([AMQPDelivery]) -> Void
    private let onStateChange: @Sendable (AMQPConnectionState) -> Void
    private let eventLoop: (any EventLoop)?

    /// - Parameters:
    ///   - brokers: Broker addresses and credentials, tried in order from `firstBroker`
    ///     (the nodes of one cluster; not empty).
    ///   - firstBroker: Where the first attempt goes (taken modulo the count).
    ///   - name: Names the thread and appears in logs.
    ///   - logger: Where the connection logs (never the password).
    ///   - backoff: Delay between reconnect attempts, doubled up to `maximum`, with jitter.
    ///   - maximumUnconfirmed: Publishes awaiting a confirm before further ones wait (the sliding window).
    ///   - publishLimits: How many publishes may wait at all, and for how long.
    ///   - setUp: Runs on the connection thread after every successful login.
    ///   - onDeliveries: Receives consumed messages in batches, on the connection thread (or
    ///     on `eventLoop`, when it serves the connection). Must not block.
    ///   - onStateChange: Told about every state change, on the connection thread. Must not block.
    ///   - eventLoop: Where the open connection is served (reads, writes, confirms,
    ///     deliveries), with the thread only logging in, setting up and reconnecting; nil:
    ///     the thread serves it too. A TLS connection is always served by its thread
    ///     (rabbitmq-c's OpenSSL layer owns that socket).
    public init(
        brokers: [AMQPConfiguration],
        firstBroker: Int = 0,
        name: String,
        logger: Logger,
        backoff: Backoff = Backoff(),
        maximumUnconfirmed: Int = 1000,
        publishLimits: PublishLimits = PublishLimits(),
        setUp: @escaping @Sendable (AMQPSetup) throws(AMQPError) -> Void,
        onDeliveries: @escaping @Sendable ([AMQPDelivery]) -> Void = { _ in },
        onStateChange: @escaping @Sendable (AMQPConnectionState) -> Void = { _ in },
        eventLoop: (any EventLoop)? = nil
    ) {
        precondition(!brokers.isEmpty, "an AMQP connection needs at least one broker")
        self.shared = AMQPConnectionShared()
        self.brokers = brokers
        self.firstBroker = ((firstBroker % brokers.count) + brokers.count) % brokers.count
        self.name = name
        var logger = logger
        logger[metadataKey: LoggingKeys.connection] = .string(name)
        self.logger = logger
        self.backoff = backoff
        self.maximumUnconfirmed = maximumUnconfirmed
        self.publishLimits = publishLimits
        self.setUp = setUp
        self.onDeliveries = onDeliveries
        self.onStateChange = onStateChange
        self.eventLoop = eventLoop
    }

    /// Whether the connection is open and set up now.
    public var isOpen: Bool { shared.phase == .open }

    /// The publish backlog now (pending publishes, blocked, stalled).
    public var publishPressure: PublishPressure { shared.pressure }

    /// Starts the connection thread; it connects at once. Call once.
    public func start() {
        let context = AMQPConnectionThread.Context(
            brokers: brokers,
            firstBroker: firstBroker,
            logger: logger,
            backoff: backoff,
            maximumUnconfirmed: maximumUnconfirmed,
            publishLimits: publishLimits,
            setUp: setUp,
            onDeliveries: onDeliveries,
            onStateChange: onStateChange,
            shared: shared,
            eventLoop: eventLoop
        )
        let thread = Thread {
            AMQPConnectionThread(context: context).run()
        }
        thread.name = "amqp-\(name)"
        shared.markStarted()
        thread.start()
    }

    /// Closes the connection and waits for its thread to finish; pending operations fail with `shutDown`.
    public func shutdown() async {
        await withCheckedContinuation { continuation in
            shared.requestStop(continuation)
        }
    }

    /// Publishes `body` to `exchange` with `routingKey` on channel 1.
    ///
    /// With confirms on (``AMQPSetup/enableConfirms()``), the completion runs when the
    /// broker confirms: `.confirmed`, or `.returned` when `mandatory` is set and no queue
    /// was bound. Many publishes may await their confirms at once (up to `maximumUnconfirmed`).
    /// `persistent` sets delivery mode 2, so that durable queues keep the message across
    /// a broker restart; gateway traffic is transient (its queues die with the gateway).
    ///
    /// Fails at once with `overloaded` when ``PublishLimits`` are reached, and with
    /// `timedOut` when no confirm came within the limits' timeout.
    public func publish(
        exchange: String,
        routingKey: String,
        body: ByteBuffer,
        mandatory: Bool,
        persistent: Bool = false,
        completion: @escaping PublishCompletion
    ) {
        let size = body.readableBytes
        let shared = self.shared
        let publish = AMQPPublish(
            exchange: exchange,
            routingKey: routingKey,
            body: body,
            mandatory: mandatory,
            persistent: persistent,
            deadline: .now + publishLimits.timeout,
            // Every accepted publish is answered exactly once (confirm, failure or timeout):
            // that answer releases its place in the bound.
            completion: { result in
                shared.publishAnswered(bytes: size)
                completion(result)
            }
        )
        if let error = shared.enqueue(publish, limits: publishLimits) {
            completion(.failure(error))
        }
    }

    /// Binds `queue` to `exchange` with `routingKey` on channel 2. Consecutive binds are sent
    /// no-wait with one synchronous bind as a fence; the completion runs after the fence's reply.
    ///
    /// A nil `queue` is the queue the last `setUp` declared (``AMQPSetup/declareQueue(_:durable:exclusive:autoDelete:)``),
    /// resolved on the connection thread when the bind is sent: a connection that declares a
    /// fresh queue name after each reconnect never binds a name of an earlier connection.
    public func bind(queue: String?, exchange: String, routingKey: String, completion: @escaping Completion) {
        enqueue(.bind(queue: queue, exchange: exchange, routingKey: routingKey, completion: completion)) {
            completion(.failure($0))
        }
    }

    /// Unbinds on channel 2; unbinds are pipelined (sent without waiting for earlier replies).
    /// A nil `queue` is the one `setUp` declared, as for ``bind(queue:exchange:routingKey:completion:)``.
    public func unbind(queue: String?, exchange: String, routingKey: String, completion: @escaping Completion) {
        enqueue(.unbind(queue: queue, exchange: exchange, routingKey: routingKey, completion: completion)) {
            completion(.failure($0))
        }
    }

    private func enqueue(_ command: AMQPCommand, failure: (AMQPError) -> Void) {
        if let error = shared.enqueue(command) {
            failure(error)
        }
    }
}

/// State shared between the public API and the connection thread, behind one lock.
final class AMQPConnectionShared: Sendable {
    enum Phase: Equatable {
        case connecting, open, closed
    }

    private struct State {
        var phase: Phase = .connecting
        var commands: [AMQPCommand] = []
        var pendingPublishes = 0
        var pendingBytes = 0
        var blocked = false
        var stalled = false
        var stopRequested = false
        var stopWaiters: [CheckedContinuation<Void, Never>] = []
        var started = false
        var threadExited = false
        /// The thread is in (or about to enter) `poll()`: the next command must wake it.
        var threadSleeping = false
        /// The handler serving the open connection on an event loop, if it is served there:
        /// commands go to it instead of the thread.
        var server: NIOLoopBound<AMQPLoopHandler>?
        /// Why the loop stopped serving, for the thread to report and reconnect.
        var servingError: AMQPError?

        /// Whether the command just queued must wake the thread: only the first one queued
        /// during a sleep does; the rest of a burst only queue.
        mutating func takeSleeping() -> Bool {
            defer { threadSleeping = false }
            return threadSleeping
        }

        /// Where a command accepted while open goes: the loop's handler when one serves the
        /// connection (handed over outside the lock), else the thread's queue.
        mutating func accept(_ command: AMQPCommand) -> (server: NIOLoopBound<AMQPLoopHandler>?, wakeThread: Bool) {
            if let server { return (server, false) }
            commands.append(command)
            return (nil, takeSleeping())
        }
    }

    private let state = Mutex(State())
    /// An eventfd the thread polls beside the socket; writing to it wakes the thread.
    let wakeDescriptor: Int32

    init() {
        wakeDescriptor = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
    }

    deinit {
        close(wakeDescriptor)
    }

    var phase: Phase { state.withLock { $0.phase } }

    var stopRequested: Bool { state.withLock { $0.stopRequested } }

    func setPhase(_ phase: Phase) {
        state.withLock { $0.phase = phase }
    }

    var pressure: AMQPConnection.PublishPressure {
        state.withLock { state in
            AMQPConnection.PublishPressure(
                pending: state.pendingPublishes,
                pendingBytes: state.pendingBytes,
                isBlocked: state.blocked,
                isStalled: state.stalled
            )
        }
    }

    /// Set by the thread: `connection.blocked` / `unblocked`, and its stall estimate.
    func setPressure(blocked: Bool, stalled: Bool) {
        state.withLock { state in
            state.blocked = blocked
            state.stalled = stalled
        }
    }

    /// Queues a publish, counting it against `limits`, or returns why it cannot be sent now.
    func enqueue(_ publish: AMQPPublish, limits: AMQPConnection.PublishLimits) -> AMQPError? {
        let size = publish.body.readableBytes
        var shouldWake = false
        var server: NIOLoopBound<AMQPLoopHandler>?
        let error: AMQPError? = state.withLock { state in
            switch state.phase {
            case .closed: return AMQPError(.shutDown, "the AMQP connection is shut down")
            case .connecting: return AMQPError(.notConnected, "the AMQP connection is not open")
            case .open:
                if state.pendingPublishes >= limits.maximumPending
                    || (state.pendingPublishes > 0 && state.pendingBytes + size > limits.maximumPendingBytes)
                {
                    return AMQPError(
                        .overloaded,
                        "\(state.pendingPublishes) publishes (\(state.pendingBytes) bytes) await the broker\(state.blocked ? ", which blocks publishing" : "")"
                    )
                }
                state.pendingPublishes += 1
                state.pendingBytes += size
                (server, shouldWake) = state.accept(.publish(publish))
                return nil
            }
        }
        hand(.publish(publish), to: server, wakeThread: shouldWake)
        return error
    }

    func publishAnswered(bytes: Int) {
        state.withLock { state in
            state.pendingPublishes -= 1
            state.pendingBytes -= bytes
        }
    }

    /// Queues `command` for the thread, or returns why it cannot be sent now.
    func enqueue(_ command: AMQPCommand) -> AMQPError? {
        var shouldWake = false
        var server: NIOLoopBound<AMQPLoopHandler>?
        let error: AMQPError? = state.withLock { state in
            switch state.phase {
            case .closed: return AMQPError(.shutDown, "the AMQP connection is shut down")
            case .connecting: return AMQPError(.notConnected, "the AMQP connection is not open")
            case .open:
                (server, shouldWake) = state.accept(command)
                return nil
            }
        }
        hand(command, to: server, wakeThread: shouldWake)
        return error
    }

    /// After ``State/accept(_:)``: a command for the loop goes to it (at once when already
    /// on it); one for the thread wakes it if it sleeps.
    private func hand(_ command: AMQPCommand, to server: NIOLoopBound<AMQPLoopHandler>?, wakeThread: Bool) {
        if let server {
            if server.eventLoop.inEventLoop {
                server.value.submit(command)
            } else {
                server.eventLoop.execute { server.value.submit(command) }
            }
        }
        if wakeThread { wake() }
    }

    /// Called on the loop once it serves the connection: from now on commands go there.
    /// Returns the commands queued for the thread since the phase became open, which the
    /// loop takes first (in order, before anything another thread hands it after this).
    func attach(_ server: NIOLoopBound<AMQPLoopHandler>) -> [AMQPCommand] {
        state.withLock { state in
            state.server = server
            state.servingError = nil
            defer { state.commands.removeAll() }
            return state.commands
        }
    }

    /// Called by the loop's handler when it stops serving: commands fail fast from now on
    /// (they would reach a handler that fails them anyway), and the thread wakes to reconnect.
    func servingEnded(_ error: AMQPError) {
        state.withLock { state in
            state.server = nil
            state.servingError = error
            if state.phase == .open { state.phase = .connecting }
        }
        wake()
    }

    /// The handler serving on a loop, if any, and why serving ended (once it did).
    var loopServing: (server: NIOLoopBound<AMQPLoopHandler>?, error: AMQPError?) {
        state.withLock { ($0.server, $0.servingError) }
    }

    func takeCommands() -> [AMQPCommand] {
        state.withLock { state in
            defer { state.commands.removeAll(keepingCapacity: true) }
            return state.commands
        }
    }

    func markStarted() {
        state.withLock { $0.started = true }
    }

    func requestStop(_ waiter: CheckedContinuation<Void, Never>) {
        let noThread: Bool = state.withLock { state in
            state.stopRequested = true
            if !state.started || state.threadExited {
                state.phase = .closed
                return true
            }
            state.stopWaiters.append(waiter)
            return false
        }
        if noThread {
            waiter.resume()
        } else {
            wake()
        }
    }

    /// Called by the thread as it exits.
    func finished() -> (commands: [AMQPCommand], waiters: [CheckedContinuation<Void, Never>]) {
        state.withLock { state in
            state.phase = .closed
            state.threadExited = true
            defer {
                state.commands = []
                state.stopWaiters = []
            }
            return (state.commands, state.stopWaiters)
        }
    }

    /// Called by the thread before `poll()`: false when commands wait (do not sleep), else
    /// the next command wakes it.
    func prepareToSleep() -> Bool {
        state.withLock { state in
            guard state.commands.isEmpty, !state.stopRequested else { return false }
            state.threadSleeping = true
            return true
        }
    }

    /// Called by the thread when `poll()` returned.
    func awake() {
        state.withLock { $0.threadSleeping = false }
    }

    func wake() {
        var one: UInt64 = 1
        _ = write(wakeDescriptor, &one, MemoryLayout<UInt64>.size)
    }

    func drainWake() {
        var value: UInt64 = 0
        _ = read(wakeDescriptor, &value, MemoryLayout<UInt64>.size)
    }
}

/// A publish on its way to the socket.
struct AMQPPublish: Sendable {
    var exchange: String
    var routingKey: String
    var body: ByteBuffer
    var mandatory: Bool
    var persistent: Bool
    /// When it fails with `timedOut` if not confirmed by then.
    var deadline: ContinuousClock.Instant
    var completion: AMQPConnection.PublishCompletion

    /// About the bytes its frames take in the socket: method, header and body frames.
    var wireSize: Int {
        body.readableBytes + exchange.utf8.count + routingKey.utf8.count + 128 + (body.readableBytes / 131_072 + 1) * 8
    }
}

/// Work for the connection thread, or for the loop that serves the connection.
enum AMQPCommand: Sendable {
    case publish(AMQPPublish)
    /// A nil queue: the one the connection's `setUp` declared.
    case bind(queue: String?, exchange: String, routingKey: String, completion: AMQPConnection.Completion)
    case unbind(queue: String?, exchange: String, routingKey: String, completion: AMQPConnection.Completion)

    func fail(_ error: AMQPError) {
        switch self {
        case .publish(let publish): publish.completion(.failure(error))
        case .bind(_, _, _, let completion), .unbind(_, _, _, let completion): completion(.failure(error))
        }
    }

    /// The command with a nil queue name replaced by `ownQueue`, the queue this connection
    /// declared; nil when it declared none (the command has then failed).
    func resolvingQueue(_ ownQueue: String?) -> AMQPCommand? {
        switch self {
        case .bind(nil, let exchange, let routingKey, let completion):
            guard let ownQueue else {
                completion(.failure(AMQPError(.requestFailed, "queue.bind \(routingKey): this connection declared no queue")))
                return nil
            }
            return .bind(queue: ownQueue, exchange: exchange, routingKey: routingKey, completion: completion)
        case .unbind(nil, let exchange, let routingKey, let completion):
            guard let ownQueue else {
                completion(.failure(AMQPError(.requestFailed, "queue.unbind \(routingKey): this connection declared no queue")))
                return nil
            }
            return .unbind(queue: ownQueue, exchange: exchange, routingKey: routingKey, completion: completion)
        default:
            return self
        }
    }
}

/// Commands not written yet, in the order they were issued (the thread's and the loop's).
extension RangeReplaceableCollection where Element == AMQPCommand {
    /// The deadline of the oldest publish waiting (publishes keep acceptance order).
    var firstPublishDeadline: ContinuousClock.Instant? {
        for command in self {
            if case .publish(let publish) = command { return publish.deadline }
        }
        return nil
    }

    /// Takes out the publishes whose deadline is `now` or earlier, the rest keeping their
    /// order. The caller answers them once this returns: an answer may issue a new
    /// command, which joins the collection at once.
    mutating func removeExpiredPublishes(now: ContinuousClock.Instant) -> [AMQPPublish] {
        guard let first = firstPublishDeadline, first <= now else { return [] }
        var expired: [AMQPPublish] = []
        removeAll { command in
            guard case .publish(let publish) = command, publish.deadline <= now else { return false }
            expired.append(publish)
            return true
        }
        return expired
    }
}

private import CRabbitMQ
import Foundation
import Logging
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// The owner of one rabbitmq-c connection: everything in here runs on that connection's
/// thread, so no state in it is shared (it is deliberately not `Sendable`).
final class AMQPConnectionThread {
    /// What the thread is given when it starts; all of it is `Sendable`.
    struct Context: Sendable {
        let brokers: [AMQPConfiguration]
        let firstBroker: Int
        let logger: Logger
        let backoff: AMQPConnection.Backoff
        let maximumUnconfirmed: Int
        let publishLimits: AMQPConnection.PublishLimits
        let setUp: @Sendable (AMQPSetup) throws(AMQPError) -> Void
        let onDeliveries: @Sendable ([AMQPDelivery]) -> Void
        let onStateChange: @Sendable (AMQPConnectionState) -> Void
        let shared: AMQPConnectionShared
        let eventLoop: (any EventLoop)?
    }

    private let context: Context
    private var logger: Logger { context.logger }
    private var connection: OpaquePointer?
    /// The broker of the current (or next) attempt, an index into `context.brokers`.
    private var brokerIndex: Int
    private var broker: AMQPConfiguration { context.brokers[brokerIndex] }
    /// The queue the last `setUp` declared: where binds without a queue name go.
    private var ownQueue: String?
    private var confirmsEnabled = false
    /// Confirms, bind replies, content being assembled, `connection.blocked`.
    private var inbound = AMQPInboundState()
    /// Publishes encoded and not written yet (see ``AMQPPublishFrames``); sized at connect.
    private var publishFrames = AMQPPublishFrames(frameMax: 131_072)
    /// Commands taken from the shared queue and not sent yet (publishes wait here for room in the confirm window).
    private var backlog: [AMQPCommand] = []
    private var lastReceived = ContinuousClock.now
    /// A publish waits because the socket's send buffer is too full to take it whole.
    private var waitingForSocketRoom = false
    /// A batched write failed part-way: the stream holds a torn frame, so no clean close.
    private var streamBroken = false
    /// The set-up's consumer, when an event loop starts it (``AMQPSetup/consume(queue:noAck:)``).
    private var deferredConsumer: AMQPSetup.Consumer?
    /// The open connection was served on an event loop, which closed it: no clean close here.
    private var servedOnLoop = false

    init(context: Context) {
        self.context = context
        self.brokerIndex = context.firstBroker
    }

    func run() {
        var delay = context.backoff.initial
        var failedAttempts = 0
        // Where the current round through the brokers began: the backoff waits only after a whole round failed.
        var roundStart = brokerIndex
        while !context.shared.stopRequested {
            context.onStateChange(.connecting)
            var wasOpen = false
            var openedAt = ContinuousClock.now
            do throws(AMQPError) {
                try connect()
                context.shared.setPhase(.open)
                context.onStateChange(.open)
                logger.info(
                    "AMQP connection open",
                    metadata: [
                        LoggingKeys.broker: .string(broker.redactedDescription),
                        LoggingKeys.servedBy: .string(servingLoop == nil ? "thread" : "event_loop"),
                    ]
                )
                failedAttempts = 0
                wasOpen = true
                openedAt = .now
                if let loop = servingLoop {
                    try serve(on: loop)
                } else {
                    try serve()
                }
            } catch {
                context.shared.setPhase(.connecting)
                failEverything(error)
                failedAttempts += 1
                let metadata: Logger.Metadata = [
                    LoggingKeys.broker: .string(broker.redactedDescription),
                    LoggingKeys.errorType: .string("\(error)"),
                    LoggingKeys.retryInMilliseconds: .stringConvertible(delay.milliseconds),
                    LoggingKeys.failedAttempts: .stringConvertible(failedAttempts),
                ]
                // Loud when an open connection drops and for the first three failed attempts (a
                // failover's set-up that fails must show); then every 10th attempt.
                if wasOpen || failedAttempts <= 3 || failedAttempts % 10 == 0 {
                    logger.warning(wasOpen ? "AMQP connection lost; reconnecting" : "AMQP connection failed; retrying", metadata: metadata)
                } else {
                    logger.debug("AMQP connection failed; retrying", metadata: metadata)
                }
                context.onStateChange(.disconnected(error))
            }
            closeConnection()
            guard !context.shared.stopRequested else { break }
            // The next attempt goes to the next broker. A connection lost after it had served
            // for a while starts a new round there at once (its node is likely gone, another
            // one likely answers). A failed attempt, or a connection that dropped soon after
            // it opened (a broker that closes every connection, say), counts as a failure: the
            // backoff waits once a round of them has gone by, so nothing spins. With one
            // broker this is the plain backoff.
            brokerIndex = (brokerIndex + 1) % context.brokers.count
            if wasOpen, ContinuousClock.now - openedAt >= context.backoff.maximum {
                delay = context.backoff.initial
                roundStart = brokerIndex
                if context.brokers.count > 1 { continue }
            }
            guard brokerIndex == roundStart else { continue }
            sleepInterruptibly(delay)
            failEverything(AMQPError(.notConnected, "the AMQP connection is reconnecting"))
            delay = min(delay * 2, context.backoff.maximum)
        }
        failEverything(AMQPError(.shutDown, "the AMQP connection was shut down"))
        let (leftover, waiters) = context.shared.finished()
        for command in leftover { command.fail(AMQPError(.shutDown, "the AMQP connection was shut down")) }
        context.onStateChange(.closed)
        logger.debug("AMQP connection thread finished")
        for waiter in waiters { waiter.resume() }
    }

    // MARK: Connecting

    private func connect() throws(AMQPError) {
        let configuration = broker
        ownQueue = nil
        guard let connection = amqp_new_connection() else {
            throw AMQPError(.connectFailed, "amqp_new_connection failed (out of memory)")
        }
        self.connection = connection
        confirmsEnabled = false
        // A new connection starts unblocked; what waited on the old one has failed already.
        inbound = AMQPInboundState()
        streamBroken = false
        waitingForSocketRoom = false
        context.shared.setPressure(blocked: false, stalled: false)

        let socket: OpaquePointer?
        if let tls = configuration.tls {
            socket = amqp_ssl_socket_new(connection)
            guard let socket else { throw AMQPError(.connectFailed, "amqp_ssl_socket_new failed") }
            if let ca = tls.caCertificatePath {
                let status = amqp_ssl_socket_set_cacert(socket, ca)
                guard status == AMQP_STATUS_OK.rawValue else {
                    throw AMQPError(.invalidConfiguration, "CA file \(ca): \(amqpErrorText(status))", libraryStatus: status)
                }
            }
            if let certificate = tls.certificatePath, let key = tls.keyPath {
                let status = amqp_ssl_socket_set_key(socket, certificate, key)
                guard status == AMQP_STATUS_OK.rawValue else {
                    throw AMQPError(.invalidConfiguration, "client certificate \(certificate): \(amqpErrorText(status))", libraryStatus: status)
                }
            }
            amqp_ssl_socket_set_verify_peer(socket, tls.verifyPeer ? 1 : 0)
            amqp_ssl_socket_set_verify_hostname(socket, tls.verifyPeer ? 1 : 0)
        } else {
            socket = amqp_tcp_socket_new(connection)
            guard socket != nil else { throw AMQPError(.connectFailed, "amqp_tcp_socket_new failed") }
        }

        var connectTimeout = timeval(configuration.connectTimeout)
        let openStatus = amqp_socket_open_noblock(socket, configuration.host, Int32(configuration.port), &connectTimeout)
        guard openStatus == AMQP_STATUS_OK.rawValue else {
            throw AMQPError(.connectFailed, "\(configuration.host):\(configuration.port): \(amqpErrorText(openStatus))", libraryStatus: openStatus)
        }
        // Against a broker that accepts TCP but hangs, login would otherwise block for long.
        _ = amqp_set_handshake_timeout(connection, &connectTimeout)
        var requestTimeout = timeval(configuration.requestTimeout)
        _ = amqp_set_rpc_timeout(connection, &requestTimeout)

        let reply = crmq_login_plain(
            connection,
            configuration.virtualHost,
            0,
            131_072,
            Int32(configuration.heartbeatSeconds),
            configuration.username,
            configuration.password
        )
        if let error = AMQPWire.error(from: reply, code: .loginFailed, context: "login to \(configuration.host):\(configuration.port)") {
            throw error
        }
        for channel: UInt16 in [1, 2] {
            _ = amqp_channel_open(connection, channel)
            if let error = AMQPWire.error(from: amqp_get_rpc_reply(connection), code: .requestFailed, context: "channel.open \(channel)") {
                throw error
            }
        }
        publishFrames = AMQPPublishFrames(frameMax: Int(amqp_get_frame_max(connection)))
        let setup = AMQPSetup(connection: connection, broker: configuration, brokerIndex: brokerIndex, defersConsume: servingLoop != nil)
        try context.setUp(setup)
        confirmsEnabled = setup.confirmsEnabled
        ownQueue = setup.declaredQueue
        deferredConsumer = setup.deferredConsumer
        lastReceived = .now
    }

    private func closeConnection() {
        guard let connection else { return }
        defer { servedOnLoop = false }
        // A broker that blocks publishing does not read the close either: do not wait for it.
        if context.shared.stopRequested, !inbound.blocked, !inbound.confirms.holdsTimedOut, !streamBroken, !servedOnLoop {
            // A clean close; bounded by the request timeout.
            _ = amqp_connection_close(connection, crmq_reply_success)
        }
        amqp_destroy_connection(connection)
        self.connection = nil
    }

    // MARK: Serving

    /// The loop that serves the connection once it is open, if one does (never over TLS).
    private var servingLoop: (any EventLoop)? {
        broker.tls == nil ? context.eventLoop : nil
    }

    /// Hands the open connection to a NIO channel on `loop` (over a duplicate of its socket;
    /// the original stays with rabbitmq-c until ``closeConnection()``), and sleeps until that
    /// channel stops serving or a shutdown is requested.
    private func serve(on loop: any EventLoop) throws(AMQPError) {
        guard let connection else { return }
        // Nothing may be left in rabbitmq-c's buffers: the loop reads from the socket on.
        // Frames rabbitmq-c queued while it waited for the set-up's replies (a
        // `connection.blocked`, say) are whole and handled here; the socket is not read
        // again, so no frame is left half in rabbitmq-c. The consumer starts on the loop.
        var frame = amqp_frame_t()
        var immediately = timeval(tv_sec: 0, tv_usec: 0)
        while amqp_frames_enqueued(connection) != 0 {
            guard amqp_simple_wait_frame_noblock(connection, &frame, &immediately) == AMQP_STATUS_OK.rawValue else { break }
            try handle(frame, connection)
        }
        guard amqp_frames_enqueued(connection) == 0, amqp_data_in_buffer(connection) == 0 else {
            // Bytes of a frame rabbitmq-c read and did not hand out: the loop cannot resume
            // in the middle of a frame, so this connection starts over.
            throw AMQPError(.connectionLost, "unexpected data from the broker during the set-up")
        }
        let descriptor = dup(amqp_get_sockfd(connection))
        guard descriptor >= 0 else {
            throw AMQPError(.connectionLost, "dup of the AMQP socket: \(String(cString: strerror(errno)))")
        }
        servedOnLoop = true
        let settings = AMQPLoopHandler.Settings(
            frameMax: Int(amqp_get_frame_max(connection)),
            heartbeatSeconds: Int(amqp_get_heartbeat(connection)),
            requestTimeout: broker.requestTimeout,
            blocked: inbound.blocked,
            confirmsEnabled: confirmsEnabled,
            maximumUnconfirmed: context.maximumUnconfirmed,
            publishLimits: context.publishLimits,
            ownQueue: ownQueue,
            consume: deferredConsumer,
            logger: logger,
            onDeliveries: context.onDeliveries,
            shared: context.shared
        )
        let shared = context.shared
        guard let bootstrap = ClientBootstrap(validatingGroup: loop) else {
            close(descriptor)
            throw AMQPError(.invalidConfiguration, "the event loop for AMQP is not one of NIO's POSIX event loops")
        }
        let channel: any Channel
        do {
            channel =
                try bootstrap
                .channelOption(.writeBufferWaterMark, value: .init(low: 128 * 1024, high: 512 * 1024))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let handler = AMQPLoopHandler(settings: settings)
                        try channel.pipeline.syncOperations.addHandler(handler)
                        for command in shared.attach(NIOLoopBound(handler, eventLoop: channel.eventLoop)) {
                            handler.submit(command)
                        }
                    }
                }
                .withConnectedSocket(descriptor)
                .wait()
        } catch {
            throw AMQPError(.connectionLost, "serving the AMQP socket on an event loop: \(error)")
        }
        channel.closeFuture.whenComplete { _ in shared.wake() }
        defer {
            // Closed already when serving ended by itself; the wait is bounded by the clean close's limit.
            if let server = shared.loopServing.server {
                server.eventLoop.execute { server.value.closeGracefully() }
            } else {
                channel.close(promise: nil)
            }
            try? channel.closeFuture.wait()
        }
        while !shared.stopRequested {
            if let error = shared.loopServing.error { throw error }
            var descriptor = pollfd(fd: shared.wakeDescriptor, events: Int16(POLLIN), revents: 0)
            if poll(&descriptor, 1, 1000) > 0 { shared.drainWake() }
        }
    }

    private func serve() throws(AMQPError) {
        guard let connection else { return }
        let heartbeat = broker.heartbeatSeconds
        let pollMilliseconds = Int32(heartbeat > 0 ? min(1000, heartbeat * 250) : 1000)
        while !context.shared.stopRequested {
            for command in context.shared.takeCommands() {
                if let command = command.resolvingQueue(ownQueue) { backlog.append(command) }
            }
            try sendBacklog(connection)
            try readFrames(connection)
            let nextDeadline = expirePublishes()
            if !inbound.deliveries.isEmpty { context.onDeliveries(inbound.takeDeliveries()) }
            amqp_maybe_release_buffers(connection)
            if amqp_frames_enqueued(connection) != 0 || amqp_data_in_buffer(connection) != 0 {
                continue
            }
            // From here on, a new command writes the wake eventfd; before, it only queues (the
            // loop comes round to it anyway), which spares the callers a system call each.
            guard context.shared.prepareToSleep() else { continue }
            if heartbeat > 0, ContinuousClock.now - lastReceived > .seconds(2 * heartbeat + 1) {
                throw AMQPError(.connectionLost, "no data or heartbeat from the broker for \(2 * heartbeat + 1) s")
            }
            // Wake for the next publish timeout, and soon while a publish waits for socket room
            // (POLLOUT would fire before half the buffer is free, so it cannot be the signal).
            var milliseconds = pollMilliseconds
            if let nextDeadline {
                milliseconds = min(milliseconds, Int32(clamping: max(1, (nextDeadline - .now).milliseconds + 1)))
            }
            if waitingForSocketRoom, !inbound.blocked { milliseconds = min(milliseconds, 10) }
            try waitForActivity(connection, milliseconds: milliseconds)
        }
    }

    /// Answers the publishes whose timeout passed (queued or awaiting a confirm), updates the
    /// shared blocked and stalled flags, and returns the earliest deadline still pending.
    private func expirePublishes() -> ContinuousClock.Instant? {
        let now = ContinuousClock.now
        let timeout = context.publishLimits.timeout
        let expired = backlog.removeExpiredPublishes(now: now)
        if !expired.isEmpty {
            let error = inbound.notSentInTime(timeout)
            for publish in expired { publish.completion(.failure(error)) }
        }
        return inbound.expire(now: now, timeout: timeout, firstQueued: backlog.firstPublishDeadline, shared: context.shared, logger: logger)
    }

    /// Whether the socket's send buffer can take `bytes` more without a blocking write.
    ///
    /// rabbitmq-c writes a publish whole, waiting in `poll()` as long as the broker keeps
    /// sending heartbeats; a broker that blocks publishing stops reading, so that write would
    /// hold this thread until the alarm clears (no timeouts, no shutdown). Writing only while
    /// the kernel's send buffer is at most half full (after the write) keeps every write
    /// non-blocking: Linux accepts data while its accounted size is below SO_SNDBUF.
    private func hasSocketRoom(_ connection: OpaquePointer, batched: Int, bytes: Int) -> Bool {
        let descriptor = amqp_get_sockfd(connection)
        let unsent = crmq_unsent_bytes(descriptor)
        // An unknown buffer takes anything; an empty one takes one publish however large (it
        // may then wait for the broker to read, as any write would). Publishes encoded and
        // not written yet count as if they were in the kernel's buffer already: the whole
        // batch is one write and must fit.
        guard unsent >= 0 else { return true }
        guard unsent > 0 || batched > 0 else { return true }
        let size = crmq_send_buffer_size(descriptor)
        guard size > 0 else { return true }
        return Int(unsent) + batched + bytes <= Int(size) / 2
    }

    /// Sleeps in `poll()` until the socket is readable, the thread is woken, or the timeout passes.
    private func waitForActivity(_ connection: OpaquePointer, milliseconds: Int32) throws(AMQPError) {
        var descriptors = [
            pollfd(fd: amqp_get_sockfd(connection), events: Int16(POLLIN), revents: 0),
            pollfd(fd: context.shared.wakeDescriptor, events: Int16(POLLIN), revents: 0),
        ]
        let ready = poll(&descriptors, 2, milliseconds)
        context.shared.awake()
        if ready < 0, errno != EINTR {
            throw AMQPError(.connectionLost, "poll: \(String(cString: strerror(errno)))")
        }
        if descriptors[0].revents != 0 { lastReceived = .now }
        if descriptors[1].revents != 0 { context.shared.drainWake() }
    }

    private func sleepInterruptibly(_ duration: Duration) {
        // Jitter spreads the reconnects of many gateways after a broker restart.
        let milliseconds = Int32(Double(duration.milliseconds) * Double.random(in: 0.5...1.0))
        var descriptor = pollfd(fd: context.shared.wakeDescriptor, events: Int16(POLLIN), revents: 0)
        if poll(&descriptor, 1, milliseconds) > 0 { context.shared.drainWake() }
    }

    // MARK: Commands

    private func sendBacklog(_ connection: OpaquePointer) throws(AMQPError) {
        var index = 0
        defer { backlog.removeFirst(index) }
        waitingForSocketRoom = false
        // Publishes in a row are encoded together and written at once (a plain TCP socket;
        // over TLS rabbitmq-c's own writes are the only way to the socket).
        var batched: [AMQPPublish] = []
        defer {
            // Reached only when the batch could not be written: the connection is being
            // torn down, and these publishes fail with it.
            for publish in batched {
                publish.completion(.failure(AMQPError(.connectionLost, "the AMQP connection was lost before the publish was written")))
            }
        }
        func flushBatch() throws(AMQPError) {
            guard !batched.isEmpty else { return }
            do throws(AMQPError) {
                try publishFrames.send(to: amqp_get_sockfd(connection), timeout: broker.requestTimeout)
            } catch {
                streamBroken = true
                throw error
            }
            publishFrames.removeAll()
            for publish in batched { published(publish) }
            batched.removeAll(keepingCapacity: true)
        }
        while index < backlog.count {
            switch backlog[index] {
            case .publish(let publish):
                // Held (in order) while the broker blocks publishing, the window is full, or
                // the socket could not take the publish without blocking; timeouts answer them.
                if inbound.blocked { return try flushBatch() }
                if confirmsEnabled, inbound.confirms.count + batched.count >= context.maximumUnconfirmed { return try flushBatch() }
                guard hasSocketRoom(connection, batched: publishFrames.byteCount, bytes: publish.wireSize) else {
                    waitingForSocketRoom = true
                    return try flushBatch()
                }
                index += 1
                if broker.tls == nil {
                    do throws(AMQPError) {
                        try publishFrames.append(publish, tag: inbound.confirms.nextTag + UInt64(batched.count))
                    } catch {
                        // This one cannot be encoded (a name too long for AMQP); the others go on.
                        publish.completion(.failure(error))
                        continue
                    }
                    batched.append(publish)
                    // A large burst goes out in pieces of about 256 KiB.
                    if publishFrames.byteCount >= 256 * 1024 { try flushBatch() }
                } else {
                    try self.publish(connection, publish)
                }

            case .bind:
                try flushBatch()
                // Consecutive binds: all no-wait but the last, whose reply fences them all.
                var batch: [AMQPConnection.Completion] = []
                while index < backlog.count, case .bind(let queue, let exchange, let routingKey, let completion) = backlog[index] {
                    let isLast: Bool
                    if index + 1 < backlog.count, case .bind = backlog[index + 1] { isLast = false } else { isLast = true }
                    index += 1
                    // Resolved when taken from the queue (``AMQPCommand/resolvingQueue(_:)``).
                    let queue = queue ?? ""
                    batch.append(completion)
                    do throws(AMQPError) {
                        try AMQPWire.sendBind(connection, queue: queue, exchange: exchange, routingKey: routingKey, noWait: !isLast)
                    } catch {
                        for completion in batch { completion(.failure(error)) }
                        throw error
                    }
                }
                inbound.bindReplies.append(batch)

            case .unbind(let queue, let exchange, let routingKey, let completion):
                try flushBatch()
                index += 1
                do throws(AMQPError) {
                    try AMQPWire.sendUnbind(connection, queue: queue ?? "", exchange: exchange, routingKey: routingKey)
                } catch {
                    completion(.failure(error))
                    throw error
                }
                inbound.bindReplies.append([completion])
            }
        }
        try flushBatch()
    }

    private func publish(_ connection: OpaquePointer, _ publish: AMQPPublish) throws(AMQPError) {
        let (exchange, routingKey, body, mandatory, persistent, completion) = (
            publish.exchange, publish.routingKey, publish.body, publish.mandatory, publish.persistent, publish.completion
        )
        // Over TLS: rabbitmq-c writes the three frames (method, header, body) itself.
        let tag = inbound.confirms.nextTag
        // The delivery tag rides in message-id so that a basic.return (which carries no
        // tag) can be matched to its publish.
        let status: Int32 = withAMQPBytes(exchange) { exchangeBytes in
            withAMQPBytes(routingKey) { keyBytes in
                withAMQPBytes(String(tag)) { tagBytes in
                    withAMQPBytes(body) { bodyBytes in
                        var properties = amqp_basic_properties_t()
                        properties._flags = crmq_message_id_flag | crmq_delivery_mode_flag
                        properties.message_id = tagBytes
                        // Gateway traffic is transient (its queues die with the gateway); worker events are not.
                        properties.delivery_mode = persistent ? 2 : 1
                        return amqp_basic_publish(connection, 1, exchangeBytes, keyBytes, mandatory ? 1 : 0, 0, &properties, bodyBytes)
                    }
                }
            }
        }
        guard status == AMQP_STATUS_OK.rawValue else {
            let error = AMQPError(.connectionLost, "basic.publish: \(amqpErrorText(status))", libraryStatus: status)
            completion(.failure(error))
            throw error
        }
        published(publish)
    }

    /// A publish is in the socket: it awaits its confirm (its tag is the next one), or is done.
    private func published(_ publish: AMQPPublish) {
        if confirmsEnabled {
            inbound.confirms.add(deadline: publish.deadline, publish.completion)
        } else {
            publish.completion(.success(.sent))
        }
    }

    // MARK: Frames

    private func readFrames(_ connection: OpaquePointer) throws(AMQPError) {
        var frame = amqp_frame_t()
        var immediately = timeval(tv_sec: 0, tv_usec: 0)
        // Bounded so that a flood of deliveries cannot starve the command queue.
        for _ in 0..<4096 {
            let status = amqp_simple_wait_frame_noblock(connection, &frame, &immediately)
            if status == AMQP_STATUS_TIMEOUT.rawValue { return }
            guard status == AMQP_STATUS_OK.rawValue else {
                throw AMQPError(.connectionLost, amqpErrorText(status), libraryStatus: status)
            }
            lastReceived = .now
            try handle(frame, connection)
        }
    }

    private func handle(_ frame: amqp_frame_t, _ connection: OpaquePointer) throws(AMQPError) {
        guard let frame = AMQPInboundFrame(frame) else { return }
        switch try inbound.handle(frame, logger: logger) {
        case .none, .closed:
            break
        case .answerClose(let error):
            var ok = amqp_connection_close_ok_t(dummy: 0)
            _ = amqp_send_method(connection, 0, crmq_connection_close_ok, &ok)
            throw error
        }
    }

    // MARK: Failure

    /// Fails every command and confirm that is waiting, so that no caller waits forever.
    private func failEverything(_ error: AMQPError) {
        inbound.failWaiting(error)
        for command in backlog { command.fail(error) }
        backlog = []
        for command in context.shared.takeCommands() { command.fail(error) }
    }
}

extension timeval {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self.init(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
    }
}

extension Duration {
    var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}

internal import CRabbitMQ
import Logging
import NIOCore

/// Serves an open AMQP connection on a NIO event loop: the socket rabbitmq-c logged in on
/// (duplicated) belongs to a NIO channel, and this handler reads, writes and answers on
/// that channel's loop.
///
/// rabbitmq-c stays the codec (``AMQPFrameDecoder``, ``AMQPPublishFrames``). What the
/// owner thread did per burst — a wake-up, a `send()`, a `poll()`, a hop back to the
/// caller's loop for every confirm and delivery — is gone: publishes issued during one
/// loop tick go out in one write, and confirms and deliveries are handled on the loop that
/// read them, which is the sessions' loop when the gateway shares its event loops.
///
/// The guarantees are the thread's: the confirm window, `mandatory` returns, the publish
/// limits and timeouts, `connection.blocked`, heartbeats both ways, and every command
/// answered exactly once. When serving ends (an error, or a shutdown), everything waiting
/// fails and the owner thread reconnects.
final class AMQPLoopHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// What the owner thread hands over after the login and the set-up.
    struct Settings: Sendable {
        var frameMax: Int
        var heartbeatSeconds: Int
        var requestTimeout: Duration
        /// The broker had said `connection.blocked` before the hand-over.
        var blocked: Bool
        var confirmsEnabled: Bool
        var maximumUnconfirmed: Int
        var publishLimits: AMQPConnection.PublishLimits
        var ownQueue: String?
        /// The consumer the set-up asked for, started once the channel is active (so that no
        /// delivery can arrive while rabbitmq-c still owns the socket).
        var consume: AMQPSetup.Consumer?
        var logger: Logger
        var onDeliveries: @Sendable ([AMQPDelivery]) -> Void
        var shared: AMQPConnectionShared
    }

    private let settings: Settings
    private var logger: Logger { settings.logger }
    private let decoder: AMQPFrameDecoder
    private var encoder: AMQPPublishFrames
    private var context: ChannelHandlerContext?
    /// Bytes of a frame that has not all arrived yet.
    private var cumulation: ByteBuffer?
    /// Confirms, bind replies, content being assembled, `connection.blocked`.
    private var inbound: AMQPInboundState
    /// Commands not written yet, in the order they were issued.
    private var backlog = CircularBuffer<AMQPCommand>()
    private var lastReceived = NIODeadline.now()
    private var lastSent = NIODeadline.now()
    private var writeScheduled = false
    private var ticker: Scheduled<Void>?
    /// Set once serving ended: why. Commands that reach the handler afterwards fail with it.
    private(set) var endError: AMQPError?
    private var closeRequested = false

    init(settings: Settings) {
        self.settings = settings
        decoder = AMQPFrameDecoder(frameMax: settings.frameMax)
        inbound = AMQPInboundState(blocked: settings.blocked)
        encoder = AMQPPublishFrames(frameMax: settings.frameMax)
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        end(AMQPError(.connectionLost, "the AMQP channel was removed"))
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        if let consume = settings.consume {
            do throws(AMQPError) {
                try withAMQPBytes(consume.queue) { (queue) throws(AMQPError) in
                    var method = amqp_basic_consume_t(
                        ticket: 0,
                        queue: queue,
                        consumer_tag: amqp_empty_bytes,
                        no_local: 0,
                        no_ack: consume.noAck ? 1 : 0,
                        exclusive: 1,
                        nowait: 0,
                        arguments: amqp_empty_table
                    )
                    try encoder.appendMethod(channel: 1, number: crmq_basic_consume, &method)
                }
            } catch {
                return fail(error)
            }
        }
        scheduleTick(context.eventLoop)
        // Commands handed over before the channel was active are written now.
        writeBacklog()
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        end(
            closeRequested
                ? AMQPError(.shutDown, "the AMQP connection was shut down") : AMQPError(.connectionLost, "the broker closed the connection")
        )
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(AMQPError(.connectionLost, "AMQP socket: \(error)"))
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, !backlog.isEmpty { writeBacklog() }
        context.fireChannelWritabilityChanged()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard endError == nil else { return }
        lastReceived = .now()
        var input = unwrapInboundIn(data)
        if var pending = cumulation.take() {
            // Appended in place (the only reference), so a large frame costs no repeated copies.
            pending.writeBuffer(&input)
            input = pending
        }
        do throws(AMQPError) {
            while let frame = try decoder.next(from: &input, wantsProperties: inbound.wantsProperties) {
                switch try inbound.handle(frame, logger: logger) {
                case .none:
                    break
                case .answerClose(let error):
                    var ok = amqp_connection_close_ok_t(dummy: 0)
                    try? encoder.appendMethod(channel: 0, number: crmq_connection_close_ok, &ok)
                    writeEncoded(flush: true)
                    return fail(error)
                case .closed:
                    return close(context)
                }
            }
        } catch {
            return fail(error)
        }
        if input.readableBytes > 0 {
            // A frame split across reads waits for the rest; what was consumed is dropped
            // once it is a sizeable part of the buffer.
            if input.readerIndex >= 64 * 1024 { input.discardReadBytes() }
            cumulation = input
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if !inbound.deliveries.isEmpty { settings.onDeliveries(inbound.takeDeliveries()) }
        // Acks read here may have opened the confirm window for what waits.
        if !backlog.isEmpty { writeBacklog() }
        context.fireChannelReadComplete()
    }

    // MARK: Commands

    /// Takes a command issued on any thread (it hopped here): written at the end of this loop
    /// tick, together with every other command of the tick.
    func submit(_ command: AMQPCommand) {
        if let endError { return command.fail(endError) }
        if let error = Self.invalidNames(command) { return command.fail(error) }
        guard let command = command.resolvingQueue(settings.ownQueue) else { return }
        backlog.append(command)
        scheduleWrite()
    }

    /// A name AMQP cannot carry (a short string is at most 255 bytes), checked before the
    /// command is queued: once a run of no-wait binds is written, its fence must be too.
    private static func invalidNames(_ command: AMQPCommand) -> AMQPError? {
        // No array of the names: this runs for every publish.
        func tooLong(_ name: String) -> AMQPError? {
            name.utf8.count > 255 ? AMQPError(.requestFailed, "an AMQP name of \(name.utf8.count) bytes (at most 255)") : nil
        }
        switch command {
        case .publish(let publish):
            return tooLong(publish.exchange) ?? tooLong(publish.routingKey)
        case .bind(let queue, let exchange, let routingKey, _), .unbind(let queue, let exchange, let routingKey, _):
            return tooLong(queue ?? "") ?? tooLong(exchange) ?? tooLong(routingKey)
        }
    }

    /// A shutdown: what waits fails with `shutDown`, a `connection.close` is sent when the
    /// broker still reads (not blocked, confirming), and the channel closes on its
    /// `close-ok` or after the request timeout.
    func closeGracefully() {
        guard endError == nil, let context else { return }
        let clean = !inbound.blocked && !inbound.confirms.holdsTimedOut
        closeRequested = true
        failWaiting(AMQPError(.shutDown, "the AMQP connection was shut down"))
        guard clean else { return close(context) }
        withAMQPBytes("shutdown") { text in
            var method = amqp_connection_close_t(reply_code: UInt16(crmq_reply_success), reply_text: text, class_id: 0, method_id: 0)
            try? encoder.appendMethod(channel: 0, number: crmq_connection_close, &method)
        }
        writeEncoded(flush: true)
        let limit = TimeAmount.milliseconds(max(1, min(settings.requestTimeout.milliseconds, 5000)))
        context.eventLoop.assumeIsolated().scheduleTask(in: limit) { [self] in
            if let context = self.context { close(context) }
        }
    }

    private func scheduleWrite() {
        guard !writeScheduled, let context else { return }
        writeScheduled = true
        // After the loop's current batch of I/O events: every publish of the tick goes together.
        context.eventLoop.assumeIsolated().execute { [self] in
            writeScheduled = false
            writeBacklog()
        }
    }

    /// Encodes what waits, in order, until a publish has to wait (blocked, the confirm
    /// window full, the socket's buffer full), and writes it in one flush.
    private func writeBacklog() {
        guard endError == nil, !closeRequested, let context, context.channel.isActive else { return }
        while let command = backlog.first {
            switch command {
            case .publish(let publish):
                if inbound.blocked || !context.channel.isWritable { return writeEncoded(flush: true) }
                if settings.confirmsEnabled, inbound.confirms.count >= settings.maximumUnconfirmed { return writeEncoded(flush: true) }
                backlog.removeFirst()
                do throws(AMQPError) {
                    try encoder.append(publish, tag: inbound.confirms.nextTag)
                } catch {
                    // This one cannot be encoded (a name too long for AMQP); the others go on.
                    publish.completion(.failure(error))
                    continue
                }
                if settings.confirmsEnabled {
                    inbound.confirms.add(deadline: publish.deadline, publish.completion)
                } else {
                    publish.completion(.success(.sent))
                }
                // A large burst goes to the channel in pieces of about 256 KiB, so that its
                // writability reflects it.
                if encoder.byteCount >= 256 * 1024 { writeEncoded(flush: false) }

            case .bind:
                // Consecutive binds: all no-wait but the last, whose reply fences them all.
                var batch: [AMQPConnection.Completion] = []
                while case .bind(let queue, let exchange, let routingKey, let completion) = backlog.first {
                    backlog.removeFirst()
                    var isLast = true
                    if case .bind = backlog.first { isLast = false }
                    batch.append(completion)
                    do throws(AMQPError) {
                        try encodeBind(queue: queue ?? "", exchange: exchange, routingKey: routingKey, noWait: !isLast)
                    } catch {
                        // Names were checked when queued: this is not the command's fault.
                        inbound.bindReplies.append(batch)
                        return fail(error)
                    }
                }
                inbound.bindReplies.append(batch)

            case .unbind(let queue, let exchange, let routingKey, let completion):
                backlog.removeFirst()
                inbound.bindReplies.append([completion])
                do throws(AMQPError) {
                    try encodeUnbind(queue: queue ?? "", exchange: exchange, routingKey: routingKey)
                } catch {
                    return fail(error)
                }
            }
        }
        writeEncoded(flush: true)
    }

    private func writeEncoded(flush: Bool) {
        guard let context else { return }
        if encoder.byteCount > 0 {
            context.write(wrapOutboundOut(encoder.take()), promise: nil)
            lastSent = .now()
        }
        if flush { context.flush() }
    }

    private func encodeBind(queue: String, exchange: String, routingKey: String, noWait: Bool) throws(AMQPError) {
        try AMQPWire.withBindMethod(queue: queue, exchange: exchange, routingKey: routingKey, noWait: noWait) { (method) throws(AMQPError) in
            try encoder.appendMethod(channel: 2, number: crmq_queue_bind, &method)
        }
    }

    private func encodeUnbind(queue: String, exchange: String, routingKey: String) throws(AMQPError) {
        try AMQPWire.withUnbindMethod(queue: queue, exchange: exchange, routingKey: routingKey) { (method) throws(AMQPError) in
            try encoder.appendMethod(channel: 2, number: crmq_queue_unbind, &method)
        }
    }

    // MARK: Time

    private func scheduleTick(_ loop: any EventLoop) {
        ticker = loop.assumeIsolated().scheduleTask(in: .milliseconds(50)) { [self] in tick() }
    }

    /// Every 50 ms: publishes past their timeout are answered, the pressure is reported, a
    /// heartbeat goes out when nothing else did for half the interval, and a broker silent
    /// for two intervals is given up on.
    private func tick() {
        guard endError == nil, let context else { return }
        scheduleTick(context.eventLoop)
        let now = NIODeadline.now()
        let heartbeat = settings.heartbeatSeconds
        if heartbeat > 0 {
            if now - lastReceived > .seconds(Int64(2 * heartbeat + 1)) {
                return fail(AMQPError(.connectionLost, "no data or heartbeat from the broker for \(2 * heartbeat + 1) s"))
            }
            if now - lastSent >= .milliseconds(Int64(heartbeat) * 500) {
                encoder.appendHeartbeat()
                writeEncoded(flush: true)
            }
        }
        expirePublishes()
    }

    /// Answers the publishes whose timeout passed (queued or awaiting a confirm) and updates
    /// the shared blocked and stalled flags.
    private func expirePublishes() {
        let now = ContinuousClock.now
        let timeout = settings.publishLimits.timeout
        let expired = backlog.removeExpiredPublishes(now: now)
        if !expired.isEmpty {
            let error = inbound.notSentInTime(timeout)
            for publish in expired { publish.completion(.failure(error)) }
        }
        _ = inbound.expire(now: now, timeout: timeout, firstQueued: backlog.firstPublishDeadline, shared: settings.shared, logger: logger)
    }

    // MARK: Ending

    private func fail(_ error: AMQPError) {
        guard endError == nil else { return }
        end(error)
        if let context { close(context) }
    }

    private func close(_ context: ChannelHandlerContext) {
        context.close(promise: nil)
    }

    /// Serving is over: no command is taken any more, and everything waiting fails.
    private func end(_ error: AMQPError) {
        guard endError == nil else { return }
        endError = error
        ticker?.cancel()
        ticker = nil
        settings.shared.servingEnded(error)
        failWaiting(error)
    }

    private func failWaiting(_ error: AMQPError) {
        inbound.failWaiting(error)
        let commands = backlog
        backlog.removeAll()
        for command in commands { command.fail(error) }
    }
}

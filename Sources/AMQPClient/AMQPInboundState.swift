internal import CRabbitMQ
import Logging
import NIOCore

/// What an open connection does with the broker's frames, whoever reads them (the loop's
/// ``AMQPLoopHandler`` or the connection thread): content assembled into deliveries and
/// returns, confirms applied to the window, bind replies matched, `connection.blocked`
/// followed, closes turned into errors. No I/O: what needs the socket comes back as an
/// ``Action``.
struct AMQPInboundState {
    /// What the reader must do after a frame.
    enum Action {
        case none
        /// The broker closed the connection: answer `connection.close-ok`, then fail.
        case answerClose(AMQPError)
        /// The broker answered our `connection.close`.
        case closed
    }

    private struct PendingContent {
        var kind: Kind
        var bodySize: Int?
        var messageID: String?
        var body = ByteBuffer()

        enum Kind {
            case delivery(exchange: String, routingKey: String)
            case returned(replyCode: UInt16, replyText: String)
        }
    }

    var confirms = AMQPConfirmWindow()
    /// Replies expected on channel 2, in order: each completes the commands listed with it.
    var bindReplies = CircularBuffer<[AMQPConnection.Completion]>()
    /// The broker sent `connection.blocked` (a resource alarm) and no `connection.unblocked` yet.
    private(set) var blocked = false
    private var contents: [UInt16: PendingContent] = [:]
    /// Deliveries complete and not handed on yet.
    private(set) var deliveries: [AMQPDelivery] = []
    private var lastReportedPressure: (blocked: Bool, stalled: Bool) = (false, false)

    /// A fresh connection's state; `blocked` carries a `connection.blocked` read before a hand-over.
    init(blocked: Bool = false) {
        // The shared flags start clear: the first expiry check reports a carried-over block.
        self.blocked = blocked
    }

    /// Whether a content header on `channel` needs its properties (a return's message-id).
    func wantsProperties(_ channel: UInt16) -> Bool {
        if case .returned = contents[channel]?.kind { return true }
        return false
    }

    mutating func takeDeliveries() -> [AMQPDelivery] {
        defer { deliveries.removeAll(keepingCapacity: true) }
        return deliveries
    }

    mutating func handle(_ frame: AMQPInboundFrame, logger: Logger) throws(AMQPError) -> Action {
        switch frame {
        case .method(let channel, let method):
            return try handle(method, channel: channel, logger: logger)
        case .header(let channel, let bodySize, let messageID):
            guard contents[channel] != nil else { return .none }
            contents[channel]!.bodySize = bodySize
            contents[channel]!.messageID = messageID
            // The size is the broker's word: what is reserved up front is bounded, the rest grows as it comes.
            contents[channel]!.body.reserveCapacity(min(bodySize, 1 << 20))
            completeContentIfDone(channel: channel)
        case .body(let channel, var fragment):
            guard contents[channel] != nil else { return .none }
            contents[channel]!.body.writeBuffer(&fragment)
            completeContentIfDone(channel: channel)
        case .heartbeat:
            break
        }
        return .none
    }

    private mutating func handle(_ method: AMQPInboundMethod, channel: UInt16, logger: Logger) throws(AMQPError) -> Action {
        switch method {
        case .deliver(let exchange, let routingKey):
            contents[channel] = PendingContent(kind: .delivery(exchange: exchange, routingKey: routingKey))
        case .returned(let replyCode, let replyText):
            contents[channel] = PendingContent(kind: .returned(replyCode: replyCode, replyText: replyText))
        case .ack(let tag, let multiple):
            confirms.acknowledge(tag: tag, multiple: multiple)
        case .nack(let tag, let multiple):
            confirms.reject(tag: tag, multiple: multiple)
        case .bindOK, .unbindOK:
            guard let replies = bindReplies.popFirst() else { return .none }
            for completion in replies { completion(.success(())) }
        case .channelClose(let replyCode, let replyText):
            // A channel the broker closed is dead; reconnecting restores a known state.
            throw AMQPError(.channelClosed, "channel \(channel): \(replyText)", replyCode: replyCode)
        case .connectionClose(let replyCode, let replyText):
            return .answerClose(AMQPError(.connectionClosed, replyText, replyCode: replyCode))
        case .connectionCloseOK:
            return .closed
        case .blocked(let reason):
            blocked = true
            logger.warning(
                "the broker blocked publishing (resource alarm); publishes wait, then time out",
                metadata: [LoggingKeys.reason: .string(reason)]
            )
        case .unblocked:
            blocked = false
            logger.info("the broker unblocked publishing")
        case .other(let number):
            logger.trace(
                "ignored AMQP method",
                metadata: [LoggingKeys.method: .stringConvertible(number), LoggingKeys.channel: .stringConvertible(channel)]
            )
        }
        return .none
    }

    private mutating func completeContentIfDone(channel: UInt16) {
        guard let content = contents[channel], let size = content.bodySize, content.body.readableBytes >= size else { return }
        contents[channel] = nil
        switch content.kind {
        case .delivery(let exchange, let routingKey):
            deliveries.append(AMQPDelivery(exchange: exchange, routingKey: routingKey, body: content.body))
        case .returned(let replyCode, let replyText):
            if let id = content.messageID, let tag = UInt64(id) {
                confirms.markReturned(tag: tag, replyCode: replyCode, replyText: replyText)
            }
        }
    }

    /// The answer to a publish that waited `timeout` without being written.
    func notSentInTime(_ timeout: Duration) -> AMQPError {
        AMQPError(.timedOut, "not sent within \(timeout): the broker \(blocked ? "blocks publishing" : "is not keeping up")")
    }

    /// Answers the confirms whose timeout passed, and reports blocked and stalled to
    /// `shared` when either changed. `firstQueued` is the deadline of the oldest publish not
    /// written yet. Returns the earliest deadline still pending.
    mutating func expire(
        now: ContinuousClock.Instant,
        timeout: Duration,
        firstQueued: ContinuousClock.Instant?,
        shared: AMQPConnectionShared,
        logger: Logger
    ) -> ContinuousClock.Instant? {
        confirms.expire(now: now, timeout: timeout)
        let next = [firstQueued, confirms.firstDeadline].compactMap { $0 }.min()
        // Stalled: blocked, publishes that timed out are still unconfirmed, or the oldest
        // waiting publish is past half its timeout.
        let stalled = blocked || confirms.holdsTimedOut || (next.map { $0 - now < timeout / 2 } ?? false)
        if lastReportedPressure.blocked != blocked || lastReportedPressure.stalled != stalled {
            if stalled != lastReportedPressure.stalled {
                logger.log(
                    level: stalled ? .warning : .info,
                    stalled ? "AMQP publishing stalled" : "AMQP publishing flows again",
                    metadata: [LoggingKeys.blocked: .stringConvertible(blocked), LoggingKeys.unconfirmed: .stringConvertible(confirms.count)]
                )
            }
            lastReportedPressure = (blocked, stalled)
            shared.setPressure(blocked: blocked, stalled: stalled)
        }
        return next
    }

    /// Fails every confirm and bind reply that waits, so that no caller waits forever.
    mutating func failWaiting(_ error: AMQPError) {
        confirms.failAll(error)
        let replies = bindReplies
        bindReplies.removeAll()
        for batch in replies {
            for completion in batch { completion(.failure(error)) }
        }
        contents = [:]
        deliveries = []
    }
}

extension AMQPInboundMethod {
    /// The method `number` that rabbitmq-c decoded into `decoded`; strings are copied out.
    init(number: amqp_method_number_t, decoded: UnsafeMutableRawPointer) {
        switch number {
        case crmq_basic_deliver:
            let deliver = decoded.assumingMemoryBound(to: amqp_basic_deliver_t.self).pointee
            self = .deliver(exchange: deliver.exchange.string, routingKey: deliver.routing_key.string)
        case crmq_basic_return:
            let returned = decoded.assumingMemoryBound(to: amqp_basic_return_t.self).pointee
            self = .returned(replyCode: returned.reply_code, replyText: returned.reply_text.string)
        case crmq_basic_ack:
            let ack = decoded.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
            self = .ack(tag: ack.delivery_tag, multiple: ack.multiple != 0)
        case crmq_basic_nack:
            let nack = decoded.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
            self = .nack(tag: nack.delivery_tag, multiple: nack.multiple != 0)
        case crmq_queue_bind_ok:
            self = .bindOK
        case crmq_queue_unbind_ok:
            self = .unbindOK
        case crmq_channel_close:
            let close = decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
            self = .channelClose(replyCode: close.reply_code, replyText: close.reply_text.string)
        case crmq_connection_close:
            let close = decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            self = .connectionClose(replyCode: close.reply_code, replyText: close.reply_text.string)
        case crmq_connection_close_ok:
            self = .connectionCloseOK
        case crmq_connection_blocked:
            self = .blocked(reason: decoded.assumingMemoryBound(to: amqp_connection_blocked_t.self).pointee.reason.string)
        case crmq_connection_unblocked:
            self = .unblocked
        default:
            self = .other(number)
        }
    }
}

extension AMQPInboundFrame {
    /// A frame rabbitmq-c read and decoded itself (the thread's reads), copied out of its pool.
    init?(_ frame: amqp_frame_t) {
        switch frame.frame_type {
        case crmq_frame_method:
            guard let decoded = frame.payload.method.decoded else { return nil }
            self = .method(channel: frame.channel, AMQPInboundMethod(number: frame.payload.method.id, decoded: decoded))
        case crmq_frame_header:
            var messageID: String?
            if let decoded = frame.payload.properties.decoded {
                let properties = decoded.assumingMemoryBound(to: amqp_basic_properties_t.self).pointee
                if properties._flags & crmq_message_id_flag != 0 { messageID = properties.message_id.string }
            }
            self = .header(channel: frame.channel, bodySize: Int(frame.payload.properties.body_size), messageID: messageID)
        case crmq_frame_body:
            var body = ByteBuffer()
            frame.payload.body_fragment.append(to: &body)
            self = .body(channel: frame.channel, body)
        case 8:
            self = .heartbeat
        default:
            return nil
        }
    }
}

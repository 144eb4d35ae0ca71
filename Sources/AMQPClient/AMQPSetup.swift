internal import CRabbitMQ

/// Synchronous declarations for a freshly opened connection, valid only inside the
/// `setUp` closure of ``AMQPConnection`` and only on its thread.
///
/// Channels 1 and 2 are open already. Each call waits for the broker's reply (bounded by
/// the configuration's request timeout) and throws ``AMQPError`` with the broker's reply
/// code and text when it refuses.
public final class AMQPSetup {
    let connection: OpaquePointer
    private(set) var confirmsEnabled = false
    /// The last queue declared here: what binds with a nil queue name go to.
    private(set) var declaredQueue: String?
    /// The broker this connection reached (one of the connection's brokers).
    public let broker: AMQPConfiguration
    /// Its position in the connection's list of brokers.
    public let brokerIndex: Int
    /// The connection is served on an event loop afterwards: ``consume(queue:noAck:)`` is
    /// sent from there, so that no delivery arrives while rabbitmq-c still reads the socket.
    let defersConsume: Bool
    /// The consumer asked for and not started yet (when deferred).
    private(set) var deferredConsumer: Consumer?

    /// A `basic.consume` to send once the connection is served.
    struct Consumer: Sendable {
        var queue: String
        var noAck: Bool
    }

    init(connection: OpaquePointer, broker: AMQPConfiguration, brokerIndex: Int, defersConsume: Bool) {
        self.connection = connection
        self.broker = broker
        self.brokerIndex = brokerIndex
        self.defersConsume = defersConsume
    }

    /// Declares an exchange (`type` is `topic`, `direct`, `fanout` or `headers`).
    public func declareExchange(_ name: String, type: String, durable: Bool) throws(AMQPError) {
        try withAMQPBytes(name) { (exchange) throws(AMQPError) in
            try withAMQPBytes(type) { (kind) throws(AMQPError) in
                _ = amqp_exchange_declare(connection, 1, exchange, kind, 0, durable ? 1 : 0, 0, 0, amqp_empty_table)
                try checkReply("exchange.declare \(name)")
            }
        }
    }

    /// Declares a queue. An exclusive queue belongs to this connection: bind and consume on it here.
    public func declareQueue(_ name: String, durable: Bool, exclusive: Bool, autoDelete: Bool) throws(AMQPError) {
        try withAMQPBytes(name) { (queue) throws(AMQPError) in
            _ = amqp_queue_declare(connection, 1, queue, 0, durable ? 1 : 0, exclusive ? 1 : 0, autoDelete ? 1 : 0, amqp_empty_table)
            try checkReply("queue.declare \(name)")
        }
        declaredQueue = name
    }

    /// Binds `queue` to `exchange` once per routing key, on channel 2: all but the last
    /// no-wait, the last synchronous, so one round trip covers any number of keys.
    ///
    /// The fence's reply comes after the broker has done every bind, so it waits for the
    /// request timeout or 10 ms per key, whichever is longer: a cluster that binds at
    /// a few hundred per second (RabbitMQ 3.x after a node loss, while it deletes the dead
    /// node's queues) must not time out a big rebinding, whose retry would redo it all.
    public func bind(queue: String, exchange: String, routingKeys: [String]) throws(AMQPError) {
        guard let last = routingKeys.last else { return }
        let budget = max(broker.requestTimeout, .milliseconds(10 * routingKeys.count))
        var fenceTimeout = timeval(budget)
        _ = amqp_set_rpc_timeout(connection, &fenceTimeout)
        defer {
            var requestTimeout = timeval(broker.requestTimeout)
            _ = amqp_set_rpc_timeout(connection, &requestTimeout)
        }
        for key in routingKeys.dropLast() {
            try AMQPWire.sendBind(connection, queue: queue, exchange: exchange, routingKey: key, noWait: true)
        }
        // The broker handles a channel's methods in order: this reply means every bind above is done.
        try withAMQPBytes(queue) { (queueBytes) throws(AMQPError) in
            try withAMQPBytes(exchange) { (exchangeBytes) throws(AMQPError) in
                try withAMQPBytes(last) { (keyBytes) throws(AMQPError) in
                    _ = amqp_queue_bind(connection, 2, queueBytes, exchangeBytes, keyBytes, amqp_empty_table)
                    try checkReply("queue.bind \(last)")
                }
            }
        }
    }

    /// Unbinds `queue` from `exchange` for each routing key, on channel 2, waiting for each reply.
    public func unbind(queue: String, exchange: String, routingKeys: [String]) throws(AMQPError) {
        for key in routingKeys {
            try withAMQPBytes(queue) { (queueBytes) throws(AMQPError) in
                try withAMQPBytes(exchange) { (exchangeBytes) throws(AMQPError) in
                    try withAMQPBytes(key) { (keyBytes) throws(AMQPError) in
                        _ = amqp_queue_unbind(connection, 2, queueBytes, exchangeBytes, keyBytes, amqp_empty_table)
                        try checkReply("queue.unbind \(key)")
                    }
                }
            }
        }
    }

    /// Starts a consumer on channel 1; deliveries then go to the connection's delivery handler.
    ///
    /// On a connection served on an event loop the `basic.consume` goes out as the loop
    /// takes the connection over (a refusal then closes the channel, and the connection
    /// reconnects); messages routed to the queue meanwhile wait in it.
    public func consume(queue: String, noAck: Bool) throws(AMQPError) {
        guard !defersConsume else {
            guard queue.utf8.count <= 255 else { throw AMQPError(.requestFailed, "basic.consume: a queue name over 255 bytes") }
            deferredConsumer = Consumer(queue: queue, noAck: noAck)
            return
        }
        try withAMQPBytes(queue) { (name) throws(AMQPError) in
            _ = amqp_basic_consume(connection, 1, name, amqp_empty_bytes, 0, noAck ? 1 : 0, 1, amqp_empty_table)
            try checkReply("basic.consume \(queue)")
        }
    }

    /// Turns on publisher confirms for channel 1.
    public func enableConfirms() throws(AMQPError) {
        _ = amqp_confirm_select(connection, 1)
        try checkReply("confirm.select")
        confirmsEnabled = true
    }

    private func checkReply(_ what: String) throws(AMQPError) {
        if let error = AMQPWire.error(from: amqp_get_rpc_reply(connection), code: .requestFailed, context: what) {
            throw error
        }
    }
}

/// Wire helpers shared by the setup and the connection thread.
enum AMQPWire {
    /// Sends `queue.bind` on channel 2. With `noWait` the broker sends no reply; a failure
    /// arrives later as `channel.close`.
    static func sendBind(_ connection: OpaquePointer, queue: String, exchange: String, routingKey: String, noWait: Bool) throws(AMQPError) {
        let status = withBindMethod(queue: queue, exchange: exchange, routingKey: routingKey, noWait: noWait) { method in
            amqp_send_method(connection, 2, crmq_queue_bind, &method)
        }
        guard status == AMQP_STATUS_OK.rawValue else {
            throw AMQPError(.connectionLost, "queue.bind: \(amqpErrorText(status))", libraryStatus: status)
        }
    }

    /// Sends `queue.unbind` on channel 2 (it has no no-wait form; its reply is read later).
    static func sendUnbind(_ connection: OpaquePointer, queue: String, exchange: String, routingKey: String) throws(AMQPError) {
        let status = withUnbindMethod(queue: queue, exchange: exchange, routingKey: routingKey) { method in
            amqp_send_method(connection, 2, crmq_queue_unbind, &method)
        }
        guard status == AMQP_STATUS_OK.rawValue else {
            throw AMQPError(.connectionLost, "queue.unbind: \(amqpErrorText(status))", libraryStatus: status)
        }
    }

    /// Calls `body` with a `queue.bind` whose strings are valid only inside it.
    static func withBindMethod<T, E: Error>(
        queue: String,
        exchange: String,
        routingKey: String,
        noWait: Bool,
        _ body: (inout amqp_queue_bind_t) throws(E) -> T
    ) throws(E) -> T {
        try withAMQPBytes(queue) { (queueBytes) throws(E) in
            try withAMQPBytes(exchange) { (exchangeBytes) throws(E) in
                try withAMQPBytes(routingKey) { (keyBytes) throws(E) in
                    var method = amqp_queue_bind_t(
                        ticket: 0,
                        queue: queueBytes,
                        exchange: exchangeBytes,
                        routing_key: keyBytes,
                        nowait: noWait ? 1 : 0,
                        arguments: amqp_empty_table
                    )
                    return try body(&method)
                }
            }
        }
    }

    /// Calls `body` with a `queue.unbind` whose strings are valid only inside it.
    static func withUnbindMethod<T, E: Error>(
        queue: String,
        exchange: String,
        routingKey: String,
        _ body: (inout amqp_queue_unbind_t) throws(E) -> T
    ) throws(E) -> T {
        try withAMQPBytes(queue) { (queueBytes) throws(E) in
            try withAMQPBytes(exchange) { (exchangeBytes) throws(E) in
                try withAMQPBytes(routingKey) { (keyBytes) throws(E) in
                    var method = amqp_queue_unbind_t(
                        ticket: 0,
                        queue: queueBytes,
                        exchange: exchangeBytes,
                        routing_key: keyBytes,
                        arguments: amqp_empty_table
                    )
                    return try body(&method)
                }
            }
        }
    }

    /// Turns an RPC reply into an error, or nil when it is a normal reply.
    static func error(from reply: amqp_rpc_reply_t, code: AMQPError.Code, context: String) -> AMQPError? {
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL:
            return nil
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            return AMQPError(code, "\(context): \(amqpErrorText(reply.library_error))", libraryStatus: reply.library_error)
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            if reply.reply.id == crmq_connection_close, let decoded = reply.reply.decoded {
                let close = decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                return AMQPError(.connectionClosed, "\(context): \(close.reply_text.string)", replyCode: close.reply_code)
            }
            if reply.reply.id == crmq_channel_close, let decoded = reply.reply.decoded {
                let close = decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                return AMQPError(.channelClosed, "\(context): \(close.reply_text.string)", replyCode: close.reply_code)
            }
            return AMQPError(code, "\(context): unexpected server reply \(reply.reply.id)")
        default:
            return AMQPError(code, "\(context): no reply")
        }
    }
}

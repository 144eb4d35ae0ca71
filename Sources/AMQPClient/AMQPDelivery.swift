public import NIOCore

/// A message consumed from a queue, with its body copied out of rabbitmq-c's buffers.
public struct AMQPDelivery: Sendable {
    /// The exchange it was published to.
    public var exchange: String
    /// The routing key it was published with.
    public var routingKey: String
    /// The message body (owned Swift memory).
    public var body: ByteBuffer

    public init(exchange: String, routingKey: String, body: ByteBuffer) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.body = body
    }
}

/// What became of a published message.
public enum AMQPPublishOutcome: Sendable, Equatable {
    /// Written to the socket; the channel has no publisher confirms, so nothing more is known.
    case sent
    /// The broker confirmed it (basic.ack) and routed it to at least one queue.
    case confirmed
    /// The broker returned it as unroutable (mandatory, basic.return) and then confirmed it.
    case returned(replyCode: UInt16, replyText: String)
}

/// The state of an ``AMQPConnection``, reported to its state handler.
public enum AMQPConnectionState: Sendable {
    /// (Re)connecting: not open yet.
    case connecting
    /// Connected, logged in, and set up.
    case open
    /// The connection failed or was lost; it will reconnect after a backoff.
    case disconnected(AMQPError)
    /// Shut down for good.
    case closed
}

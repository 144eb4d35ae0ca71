internal import CRabbitMQ
import NIOCore

/// A frame from the broker, with what the connection needs copied out of rabbitmq-c's pool.
enum AMQPInboundFrame {
    case method(channel: UInt16, AMQPInboundMethod)
    /// A content header: the body that follows has `bodySize` bytes.
    case header(channel: UInt16, bodySize: Int, messageID: String?)
    case body(channel: UInt16, ByteBuffer)
    case heartbeat
}

/// The methods an open connection acts on; the rest are `other`.
enum AMQPInboundMethod {
    case deliver(exchange: String, routingKey: String)
    case returned(replyCode: UInt16, replyText: String)
    case ack(tag: UInt64, multiple: Bool)
    case nack(tag: UInt64, multiple: Bool)
    case bindOK
    case unbindOK
    case channelClose(replyCode: UInt16, replyText: String)
    case connectionClose(replyCode: UInt16, replyText: String)
    case connectionCloseOK
    case blocked(reason: String)
    case unblocked
    case other(UInt32)
}

/// Splits bytes read from the broker into AMQP frames, and has rabbitmq-c decode each
/// method's arguments (`amqp_decode_method`) and each content header's properties
/// (`amqp_decode_properties`) into its own pool, recycled after every frame.
///
/// This type adds only the frame envelope (type, channel, size, frame end), as
/// ``AMQPPublishFrames`` does on the way out. It belongs to one event loop.
final class AMQPFrameDecoder {
    private static let frameEnd: UInt8 = 0xCE
    private let pool: UnsafeMutablePointer<amqp_pool_t>
    /// The negotiated `frame_max`: a larger frame is a protocol error.
    private let frameMax: Int

    init(frameMax: Int) {
        self.frameMax = frameMax >= 4096 ? frameMax : 131_072
        pool = .allocate(capacity: 1)
        init_amqp_pool(pool, 4096)
    }

    deinit {
        empty_amqp_pool(pool)
        pool.deallocate()
    }

    /// The next whole frame at the front of `buffer` (consumed), or nil when it has not all
    /// arrived yet. `wantsProperties` says whether a content header on that channel needs
    /// its properties decoded (a returned message's message-id); deliveries need none.
    func next(from buffer: inout ByteBuffer, wantsProperties: (UInt16) -> Bool) throws(AMQPError) -> AMQPInboundFrame? {
        let start = buffer.readerIndex
        guard
            let type = buffer.getInteger(at: start, as: UInt8.self),
            let channel = buffer.getInteger(at: start + 1, as: UInt16.self),
            let size32 = buffer.getInteger(at: start + 3, as: UInt32.self)
        else { return nil }
        let size = Int(size32)
        guard size + 8 <= frameMax else {
            throw AMQPError(.connectionLost, "the broker sent a frame of \(size) bytes, over the negotiated frame_max \(frameMax)")
        }
        guard buffer.readableBytes >= size + 8 else { return nil }
        guard buffer.getInteger(at: start + 7 + size, as: UInt8.self) == Self.frameEnd else {
            throw AMQPError(.connectionLost, "malformed AMQP frame (no frame-end octet)")
        }
        buffer.moveReaderIndex(forwardBy: 7)
        let payload = buffer.readSlice(length: size)!
        buffer.moveReaderIndex(forwardBy: 1)
        defer { recycle_amqp_pool(pool) }
        switch type {
        case crmq_frame_method:
            return .method(channel: channel, try decodeMethod(payload))
        case crmq_frame_header:
            return try decodeHeader(payload, channel: channel, wantsProperties: wantsProperties(channel))
        case crmq_frame_body:
            return .body(channel: channel, payload)
        case 8:
            return .heartbeat
        default:
            throw AMQPError(.connectionLost, "unknown AMQP frame type \(type)")
        }
    }

    private func decodeMethod(_ payload: ByteBuffer) throws(AMQPError) -> AMQPInboundMethod {
        guard let number = payload.getInteger(at: payload.readerIndex, as: UInt32.self) else {
            throw AMQPError(.connectionLost, "a method frame without a method id")
        }
        let pool = self.pool
        // The decoded strings point into `payload` or the pool: copied out while both live.
        let result: Result<AMQPInboundMethod, AMQPError> = payload.withUnsafeReadableBytes { raw in
            let arguments = amqp_bytes_t(len: raw.count - 4, bytes: UnsafeMutableRawPointer(mutating: raw.baseAddress! + 4))
            var decoded: UnsafeMutableRawPointer?
            let status = amqp_decode_method(number, pool, arguments, &decoded)
            // Methods rabbitmq-c does not know stay `other`, and the connection ignores them; a
            // known one it cannot decode is a broken stream (an ack lost would leave a publish
            // unanswered until its timeout).
            if status == AMQP_STATUS_UNKNOWN_METHOD.rawValue { return .success(.other(number)) }
            guard status == AMQP_STATUS_OK.rawValue, let decoded else {
                return .failure(
                    AMQPError(.connectionLost, "AMQP method \(number) cannot be decoded: \(amqpErrorText(status))", libraryStatus: status)
                )
            }
            return .success(AMQPInboundMethod(number: number, decoded: decoded))
        }
        return try result.get()
    }

    private func decodeHeader(_ payload: ByteBuffer, channel: UInt16, wantsProperties: Bool) throws(AMQPError) -> AMQPInboundFrame {
        // class-id (2), weight (2), body size (8), then the property flags and list.
        guard
            let classID = payload.getInteger(at: payload.readerIndex, as: UInt16.self),
            let bodySize = payload.getInteger(at: payload.readerIndex + 4, as: UInt64.self),
            bodySize <= UInt64(Int.max)
        else {
            throw AMQPError(.connectionLost, "a malformed content header")
        }
        guard wantsProperties else { return .header(channel: channel, bodySize: Int(bodySize), messageID: nil) }
        let pool = self.pool
        let result: Result<String?, AMQPError> = payload.withUnsafeReadableBytes { raw in
            let encoded = amqp_bytes_t(len: raw.count - 12, bytes: UnsafeMutableRawPointer(mutating: raw.baseAddress! + 12))
            var decoded: UnsafeMutableRawPointer?
            let status = amqp_decode_properties(classID, pool, encoded, &decoded)
            guard status == AMQP_STATUS_OK.rawValue, let decoded else {
                return .failure(
                    AMQPError(.connectionLost, "a content header rabbitmq-c cannot decode: \(amqpErrorText(status))", libraryStatus: status)
                )
            }
            let properties = decoded.assumingMemoryBound(to: amqp_basic_properties_t.self).pointee
            return .success(properties._flags & crmq_message_id_flag != 0 ? properties.message_id.string : nil)
        }
        let messageID = try result.get()
        return .header(channel: channel, bodySize: Int(bodySize), messageID: messageID)
    }
}

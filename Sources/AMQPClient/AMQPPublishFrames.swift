internal import CRabbitMQ
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// A burst of `basic.publish` messages encoded into one buffer, so the burst reaches the
/// socket in one `send()` instead of three per message.
///
/// rabbitmq-c stays the codec: `amqp_encode_method` writes the method's arguments and
/// `amqp_encode_properties` the content header's properties; this type adds only the
/// frame envelope (type, channel, size, frame end) that `amqp_send_frame` would add, and
/// splits bodies at the negotiated frame size. Fewer, larger writes cost the gateway fewer
/// system calls and let the broker read many frames per wake-up.
struct AMQPPublishFrames {
    private static let frameHeaderSize = 7
    private static let frameEnd: UInt8 = 0xCE
    private static let methodFrame: UInt8 = 1
    private static let headerFrame: UInt8 = 2
    private static let bodyFrame: UInt8 = 3
    private static let basicClass: UInt16 = 60
    /// `basic.publish`: class 60, method 40.
    private static let basicPublish: UInt32 = 0x003C_0028

    private(set) var buffer: ByteBuffer
    /// The negotiated `frame_max` (bytes of a whole frame); bodies are split to fit it.
    let frameMax: Int
    /// Messages in the buffer.
    private(set) var count = 0

    init(frameMax: Int) {
        // 4096 is the protocol's minimum; 0 means "no limit" in the tune, which brokers do not offer.
        self.frameMax = frameMax >= 4096 ? frameMax : 131_072
        buffer = ByteBufferAllocator().buffer(capacity: 64 * 1024)
    }

    var isEmpty: Bool { count == 0 }
    var byteCount: Int { buffer.readableBytes }

    mutating func removeAll() {
        buffer.clear()
        count = 0
    }

    /// Appends `publish` on channel 1 with `tag`, its confirm's delivery tag, in message-id
    /// (a `basic.return` carries no tag: this matches it to its publish).
    mutating func append(_ publish: AMQPPublish, tag: UInt64) throws(AMQPError) {
        try append(
            channel: 1,
            exchange: publish.exchange,
            routingKey: publish.routingKey,
            mandatory: publish.mandatory,
            messageID: String(tag),
            persistent: publish.persistent,
            body: publish.body
        )
    }

    /// Appends the method, content header and body frames of one publish on `channel`.
    private mutating func append(
        channel: UInt16,
        exchange: String,
        routingKey: String,
        mandatory: Bool,
        messageID: String,
        persistent: Bool,
        body: ByteBuffer
    ) throws(AMQPError) {
        let mark = buffer.writerIndex
        do throws(AMQPError) {
            try withAMQPBytes(exchange) { (exchangeBytes) throws(AMQPError) in
                try withAMQPBytes(routingKey) { (keyBytes) throws(AMQPError) in
                    var method = amqp_basic_publish_t(
                        ticket: 0,
                        exchange: exchangeBytes,
                        routing_key: keyBytes,
                        mandatory: mandatory ? 1 : 0,
                        immediate: 0
                    )
                    try writeFrame(type: Self.methodFrame, channel: channel, capacity: 32 + exchangeBytes.len + keyBytes.len) {
                        (payload) throws(AMQPError) -> Int in
                        payload.writeInteger(Self.basicPublish)
                        return try payload.encode { bytes in amqp_encode_method(crmq_basic_publish, &method, bytes) }
                    }
                }
            }
            try withAMQPBytes(messageID) { (idBytes) throws(AMQPError) in
                var properties = amqp_basic_properties_t()
                properties._flags = crmq_message_id_flag | crmq_delivery_mode_flag
                properties.message_id = idBytes
                properties.delivery_mode = persistent ? 2 : 1
                try writeFrame(type: Self.headerFrame, channel: channel, capacity: 32 + idBytes.len) { (payload) throws(AMQPError) -> Int in
                    payload.writeInteger(Self.basicClass)
                    payload.writeInteger(UInt16(0))  // weight
                    payload.writeInteger(UInt64(body.readableBytes))
                    return try payload.encode { bytes in amqp_encode_properties(Self.basicClass, &properties, bytes) }
                }
            }
        } catch {
            buffer.moveWriterIndex(to: mark)
            throw error
        }
        var remaining = body
        let chunk = frameMax - Self.frameHeaderSize - 1
        while remaining.readableBytes > 0 {
            var slice = remaining.readSlice(length: min(chunk, remaining.readableBytes))!
            buffer.writeInteger(Self.bodyFrame)
            buffer.writeInteger(channel)
            buffer.writeInteger(UInt32(slice.readableBytes))
            buffer.writeBuffer(&slice)
            buffer.writeInteger(Self.frameEnd)
        }
        count += 1
    }

    /// Appends one method frame: `method` is a rabbitmq-c method struct (an
    /// `amqp_queue_bind_t`, say) for `number`, encoded by `amqp_encode_method`.
    mutating func appendMethod<Method>(channel: UInt16, number: amqp_method_number_t, _ method: inout Method) throws(AMQPError) {
        let mark = buffer.writerIndex
        do throws(AMQPError) {
            try writeFrame(type: Self.methodFrame, channel: channel, capacity: 64) { (payload) throws(AMQPError) -> Int in
                payload.writeInteger(UInt32(number))
                return try withUnsafeMutablePointer(to: &method) { (pointer) throws(AMQPError) -> Int in
                    try payload.encode { bytes in amqp_encode_method(number, pointer, bytes) }
                }
            }
        } catch {
            buffer.moveWriterIndex(to: mark)
            throw error
        }
    }

    /// Appends a heartbeat frame (type 8, channel 0, no payload).
    mutating func appendHeartbeat() {
        buffer.writeInteger(UInt8(8))
        buffer.writeInteger(UInt16(0))
        buffer.writeInteger(UInt32(0))
        buffer.writeInteger(Self.frameEnd)
    }

    /// The encoded frames, for a caller that writes them itself (a NIO channel); the
    /// encoder starts over empty.
    mutating func take() -> ByteBuffer {
        let taken = buffer
        buffer = ByteBufferAllocator().buffer(capacity: max(4096, min(taken.readableBytes, 64 * 1024)))
        count = 0
        return taken
    }

    /// Writes a frame whose payload `body` writes; the size field is filled in afterwards.
    private mutating func writeFrame(
        type: UInt8,
        channel: UInt16,
        capacity: Int,
        _ body: (inout ByteBuffer) throws(AMQPError) -> Int
    ) throws(AMQPError) {
        buffer.reserveCapacity(minimumWritableBytes: capacity + Self.frameHeaderSize + 1)
        buffer.writeInteger(type)
        buffer.writeInteger(channel)
        let sizeIndex = buffer.writerIndex
        buffer.writeInteger(UInt32(0))
        let start = buffer.writerIndex
        _ = try body(&buffer)
        buffer.setInteger(UInt32(buffer.writerIndex - start), at: sizeIndex)
        buffer.writeInteger(Self.frameEnd)
    }

    /// Writes the whole buffer to the socket `descriptor` (non-blocking, as rabbitmq-c opens
    /// it), waiting for room at most `timeout` in all. A partial write must not be left
    /// behind: rabbitmq-c's next frame (a heartbeat) would land inside it.
    func send(to descriptor: Int32, timeout: Duration) throws(AMQPError) {
        let deadline = ContinuousClock.now + timeout
        var offset = 0
        let total = buffer.readableBytes
        while offset < total {
            let written = buffer.withUnsafeReadableBytes { raw in
                Glibc.send(descriptor, raw.baseAddress! + offset, total - offset, Int32(MSG_NOSIGNAL))
            }
            if written > 0 {
                offset += written
                continue
            }
            let error = errno
            guard written < 0, error == EAGAIN || error == EWOULDBLOCK || error == EINTR else {
                throw AMQPError(.connectionLost, "send: \(String(cString: strerror(error)))")
            }
            let left = deadline - .now
            guard left > .zero else { throw AMQPError(.connectionLost, "the broker did not read \(total - offset) bytes within \(timeout)") }
            var descriptor = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
            _ = poll(&descriptor, 1, Int32(clamping: max(1, left.milliseconds)))
        }
    }
}

extension ByteBuffer {
    /// Lets a rabbitmq-c encoder write into the writable bytes (at least 4 KiB are made
    /// available, more than any method or property list here needs); moves the writer index
    /// by what it returns, or throws its error.
    fileprivate mutating func encode(_ encoder: (amqp_bytes_t) -> Int32) throws(AMQPError) -> Int {
        reserveCapacity(minimumWritableBytes: 4096)
        let written = withUnsafeMutableWritableBytes { raw in
            encoder(amqp_bytes_t(len: raw.count, bytes: raw.baseAddress))
        }
        guard written >= 0 else { throw AMQPError(.requestFailed, "encoding a publish: \(amqpErrorText(written))", libraryStatus: written) }
        moveWriterIndex(forwardBy: Int(written))
        return Int(written)
    }
}

import CHiredis
import NIOCore

/// hiredis's RESP parser (`redisReader`): bytes in, ``RedisValue``s out.
///
/// This file is the only place in RedisClient with unsafe pointers. hiredis builds each
/// reply as a tree of `redisReply` structs; ``next()`` copies it into Swift values and
/// frees it at once, so nothing of hiredis outlives a call.
///
/// Not thread-safe: one reader belongs to one channel handler, on its event loop.
final class RESPReader {
    private let reader: UnsafeMutablePointer<redisReader>

    init() {
        // redisReaderCreate only fails when malloc does.
        guard let reader = redisReaderCreate() else { fatalError("hiredis: out of memory creating a reader") }
        self.reader = reader
    }

    deinit {
        redisReaderFree(reader)
    }

    /// Hands the reader bytes read from the socket; they are copied into its buffer.
    func feed(_ buffer: ByteBuffer) throws(RedisError) {
        let status = buffer.withUnsafeReadableBytes { bytes -> Int32 in
            guard let base = bytes.baseAddress, !bytes.isEmpty else { return REDIS_OK }
            return redisReaderFeed(reader, base.assumingMemoryBound(to: CChar.self), bytes.count)
        }
        guard status == REDIS_OK else { throw protocolError() }
    }

    /// The next complete value, or nil when the bytes fed so far end mid-value.
    func next() throws(RedisError) -> RedisValue? {
        var reply: UnsafeMutableRawPointer?
        guard redisReaderGetReply(reader, &reply) == REDIS_OK else { throw protocolError() }
        guard let reply else { return nil }
        let typed = reply.assumingMemoryBound(to: redisReply.self)
        defer { freeReplyObject(reply) }
        return Self.value(of: typed)
    }

    private static func value(of reply: UnsafeMutablePointer<redisReply>) -> RedisValue {
        let node = reply.pointee
        switch node.type {
        case REDIS_REPLY_STRING:
            return .bulkString(bytes(node.str, node.len))
        case REDIS_REPLY_STATUS:
            return .simpleString(String(buffer: bytes(node.str, node.len)))
        case REDIS_REPLY_ERROR:
            return .error(String(buffer: bytes(node.str, node.len)))
        case REDIS_REPLY_INTEGER:
            return .integer(Int64(node.integer))
        case REDIS_REPLY_ARRAY:
            var elements: [RedisValue] = []
            elements.reserveCapacity(node.elements)
            for index in 0..<node.elements {
                if let element = node.element[index] { elements.append(value(of: element)) }
            }
            return .array(elements)
        default:
            return .null
        }
    }

    private static func bytes(_ pointer: UnsafeMutablePointer<CChar>?, _ count: Int) -> ByteBuffer {
        guard let pointer, count > 0 else { return ByteBuffer() }
        return ByteBuffer(bytes: UnsafeRawBufferPointer(start: pointer, count: count))
    }

    private func protocolError() -> RedisError {
        let message = withUnsafeBytes(of: reader.pointee.errstr) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        return RedisError(.protocolError, message.isEmpty ? "hiredis could not parse the reply" : message)
    }
}

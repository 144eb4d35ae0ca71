import NIOCore
import Testing

@testable import AMQPClient

/// The frame envelope around rabbitmq-c's decoders, fed bytes as a socket would deliver
/// them: whole, split at every offset, and malformed.
@Suite("Decoding AMQP frames from the broker")
struct AMQPFrameDecoderTests {
    /// A frame of `type` on `channel` with `payload`, as the broker writes it.
    static func frame(type: UInt8, channel: UInt16, _ payload: [UInt8]) -> [UInt8] {
        var bytes: [UInt8] = [type, UInt8(channel >> 8), UInt8(channel & 0xFF)]
        let size = UInt32(payload.count)
        bytes += [UInt8(size >> 24), UInt8((size >> 16) & 0xFF), UInt8((size >> 8) & 0xFF), UInt8(size & 0xFF)]
        return bytes + payload + [0xCE]
    }

    static func shortString(_ text: String) -> [UInt8] { [UInt8(text.utf8.count)] + Array(text.utf8) }

    static func bigEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        (0..<(T.bitWidth / 8)).reversed().map { UInt8(truncatingIfNeeded: value >> ($0 * 8)) }
    }

    /// basic.deliver (60, 60): consumer tag, delivery tag, redelivered, exchange, routing key.
    static let deliver = frame(
        type: 1,
        channel: 1,
        bigEndian(UInt32(0x003C_003C)) + shortString("ctag") + bigEndian(UInt64(7)) + [0] + shortString("switchboard")
            + shortString("user.bob")
    )
    /// A content header (class 60) for a 5-byte body, with message-id "42" (flag bit 7).
    static let header = frame(
        type: 2,
        channel: 1,
        bigEndian(UInt16(60)) + [0, 0] + bigEndian(UInt64(5)) + bigEndian(UInt16(0x0080)) + shortString("42")
    )
    static let body = frame(type: 3, channel: 1, Array("hello".utf8))
    /// basic.ack (60, 80): delivery tag 9, multiple.
    static let ack = frame(type: 1, channel: 1, bigEndian(UInt32(0x003C_0050)) + bigEndian(UInt64(9)) + [1])
    static let heartbeat = frame(type: 8, channel: 0, [])

    static func decodeAll(_ chunks: [[UInt8]], frameMax: Int = 131_072) throws -> [AMQPInboundFrame] {
        let decoder = AMQPFrameDecoder(frameMax: frameMax)
        var pending = ByteBuffer()
        var frames: [AMQPInboundFrame] = []
        for chunk in chunks {
            pending.writeBytes(chunk)
            while let frame = try decoder.next(from: &pending, wantsProperties: { _ in true }) { frames.append(frame) }
        }
        #expect(pending.readableBytes == 0, "bytes left over: \(pending.readableBytes)")
        return frames
    }

    static func describe(_ frames: [AMQPInboundFrame]) -> [String] {
        frames.map { frame in
            switch frame {
            case .method(let channel, .deliver(let exchange, let key)): "\(channel) deliver \(exchange) \(key)"
            case .method(let channel, .ack(let tag, let multiple)): "\(channel) ack \(tag) \(multiple)"
            case .method(let channel, let other): "\(channel) \(other)"
            case .header(let channel, let size, let id): "\(channel) header \(size) \(id ?? "-")"
            case .body(let channel, let bytes): "\(channel) body \(String(buffer: bytes))"
            case .heartbeat: "heartbeat"
            }
        }
    }

    static let expected = ["1 deliver switchboard user.bob", "1 header 5 42", "1 body hello", "1 ack 9 true", "heartbeat"]

    @Test("a delivery, its header and body, an ack and a heartbeat decode the same whole and split at every byte")
    func decodesWholeAndSplit() throws {
        let stream = Self.deliver + Self.header + Self.body + Self.ack + Self.heartbeat
        #expect(Self.describe(try Self.decodeAll([stream])) == Self.expected)
        for cut in 1..<stream.count {
            let frames = try Self.decodeAll([Array(stream[..<cut]), Array(stream[cut...])])
            #expect(Self.describe(frames) == Self.expected, "split at \(cut)")
        }
        // One byte at a time, as a slow socket might.
        #expect(Self.describe(try Self.decodeAll(stream.map { [$0] })) == Self.expected)
    }

    @Test("a missing frame-end octet, an unknown frame type and a frame over frame_max are errors, not guesses")
    func rejectsMalformedFrames() throws {
        var noEnd = Self.ack
        noEnd[noEnd.count - 1] = 0x00
        #expect(throws: AMQPError.self) { try Self.decodeAll([noEnd]) }
        #expect(throws: AMQPError.self) { try Self.decodeAll([Self.frame(type: 9, channel: 0, [])]) }
        let large = Self.frame(type: 3, channel: 1, [UInt8](repeating: 0x41, count: 5000))
        #expect(throws: AMQPError.self) { try Self.decodeAll([large], frameMax: 4096) }
        #expect(try Self.decodeAll([large], frameMax: 8192).count == 1)
    }

    @Test("a known method with truncated arguments is an error; a method rabbitmq-c does not know is other, and decoding goes on")
    func truncatedAndUnknownMethods() throws {
        let truncated = Self.frame(type: 1, channel: 1, Self.bigEndian(UInt32(0x003C_0050)) + [0, 0])
        #expect(throws: AMQPError.self) { try Self.decodeAll([truncated]) }
        let unknown = Self.frame(type: 1, channel: 1, Self.bigEndian(UInt32(0x00FF_0001)))
        #expect(Self.describe(try Self.decodeAll([unknown, Self.heartbeat])) == ["1 other(16711681)", "heartbeat"])
    }
}

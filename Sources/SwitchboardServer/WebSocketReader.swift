import NIOCore
import NIOWebSocket

/// The server's half of RFC 6455 for one connection, as a value: which frames a client
/// may send, how fragments become a message, the size limits, UTF-8, and what a peer's
/// close frame asks for. It decides and returns an ``Event``; it writes nothing.
///
/// `/ws` sessions and the `/echo` conformance endpoint run the same reader, so what an
/// outside conformance suite (Autobahn) reports about `/echo` holds for `/ws`.
struct WebSocketReader {
    /// What a frame meant.
    enum Event: Equatable {
        /// A fragment was taken in; the message is not complete yet.
        case needMore
        /// A complete text message, valid UTF-8.
        case text(ByteBuffer)
        /// A complete binary message: its bytes when the reader keeps them
        /// (``keepsBinary``), else an empty buffer.
        case binary(ByteBuffer)
        /// A complete message over ``maximumMessageSize``, discarded; the connection may go on.
        case tooLarge
        /// Answer with a pong carrying this payload (RFC 6455 5.5.2).
        case ping(ByteBuffer)
        case pong
        /// The peer's close frame: answer with `code` (its own code echoed, 1000 when it
        /// sent none) and close (RFC 6455 5.5.1).
        case close(answer: WebSocketErrorCode)
        /// The peer broke the protocol: close with this code.
        case fail(WebSocketErrorCode)
    }

    /// The largest message handed on; a larger one is discarded and reported ``Event/tooLarge``.
    let maximumMessageSize: Int
    /// The largest frame or fragmented message read at all; past it the reader fails with 1009.
    let maximumFrameSize: Int
    /// Whether binary messages are collected (`/echo`) or only measured (`/ws` refuses them).
    let keepsBinary: Bool

    private enum Fragments {
        case none
        case text(ByteBuffer)
        case binary(ByteBuffer, size: Int)
        /// Past the message size limit: discarded until the final fragment.
        case discarding(size: Int)
    }

    private var fragments: Fragments = .none
    /// Validates a text message fragment by fragment, so that invalid UTF-8 fails at the
    /// fragment that carries it, not when the message is complete (Autobahn section 6).
    private var utf8 = UTF8Validator()

    init(maximumMessageSize: Int, maximumFrameSize: Int, keepsBinary: Bool) {
        self.maximumMessageSize = maximumMessageSize
        self.maximumFrameSize = maximumFrameSize
        self.keepsBinary = keepsBinary
    }

    mutating func read(_ frame: WebSocketFrame) -> Event {
        // 5.1 and 5.2: client frames are masked; no extension is negotiated, so RSV bits are 0.
        guard frame.maskKey != nil, !frame.rsv1, !frame.rsv2, !frame.rsv3 else { return .fail(CloseCode.protocolError) }
        switch frame.opcode {
        case .text, .binary:
            guard case .none = fragments else { return .fail(CloseCode.protocolError) }
            return start(frame)
        case .continuation:
            return `continue`(frame)
        case .ping, .pong, .connectionClose:
            // 5.5: control frames are not fragmented and carry at most 125 bytes.
            guard frame.fin, frame.length <= 125 else { return .fail(CloseCode.protocolError) }
            switch frame.opcode {
            case .ping: return .ping(frame.unmaskedData)
            case .pong: return .pong
            default: return Self.answer(toClose: frame.unmaskedData)
            }
        default:
            return .fail(CloseCode.protocolError)
        }
    }

    private mutating func start(_ frame: WebSocketFrame) -> Event {
        let isText = frame.opcode == .text
        if frame.length > maximumMessageSize {
            if frame.length > maximumFrameSize { return .fail(CloseCode.messageTooBig) }
            if frame.fin { return .tooLarge }
            fragments = .discarding(size: frame.length)
            return .needMore
        }
        let data = frame.unmaskedData
        if isText {
            utf8 = UTF8Validator()
            guard utf8.take(data) else { return .fail(CloseCode.invalidUTF8) }
            if frame.fin {
                return utf8.isAtBoundary ? .text(data) : .fail(CloseCode.invalidUTF8)
            }
            fragments = .text(data)
        } else {
            let kept = keepsBinary ? data : ByteBuffer()
            if frame.fin { return .binary(kept) }
            fragments = .binary(kept, size: frame.length)
        }
        return .needMore
    }

    private mutating func `continue`(_ frame: WebSocketFrame) -> Event {
        let total: Int
        switch fragments {
        case .none:
            return .fail(CloseCode.protocolError)
        case .text(var buffer):
            total = buffer.readableBytes + frame.length
            if total > maximumMessageSize {
                fragments = .discarding(size: total)
            } else {
                var data = frame.unmaskedData
                guard utf8.take(data) else { return .fail(CloseCode.invalidUTF8) }
                // Not appended in place: `fragments` would still share the buffer and the write would copy it.
                fragments = .none
                buffer.writeBuffer(&data)
                fragments = .text(buffer)
            }
        case .binary(var buffer, let size):
            total = size + frame.length
            if total > maximumMessageSize {
                fragments = .discarding(size: total)
            } else {
                fragments = .none
                if keepsBinary {
                    var data = frame.unmaskedData
                    buffer.writeBuffer(&data)
                }
                fragments = .binary(buffer, size: total)
            }
        case .discarding(let size):
            total = size + frame.length
            fragments = .discarding(size: total)
        }
        if total > maximumFrameSize { return .fail(CloseCode.messageTooBig) }
        guard frame.fin else { return .needMore }
        let completed = fragments
        fragments = .none
        switch completed {
        case .text(let buffer): return utf8.isAtBoundary ? .text(buffer) : .fail(CloseCode.invalidUTF8)
        case .binary(let buffer, _): return .binary(buffer)
        case .discarding: return .tooLarge
        case .none: return .needMore
        }
    }

    /// The answer to a peer's close frame: its code echoed, 1000 for none, 1002 for a
    /// one-byte payload or a code a peer may not send, 1007 for a reason that is not UTF-8.
    static func answer(toClose payload: ByteBuffer) -> Event {
        var payload = payload
        guard payload.readableBytes != 1 else { return .fail(CloseCode.protocolError) }
        guard let code = payload.readInteger(as: UInt16.self) else { return .close(answer: CloseCode.normal) }
        guard isValidCloseCode(code) else { return .fail(CloseCode.protocolError) }
        var reason = UTF8Validator()
        guard reason.take(payload), reason.isAtBoundary else { return .fail(CloseCode.invalidUTF8) }
        return .close(answer: WebSocketErrorCode(codeNumber: Int(code)))
    }

    /// Close codes a peer may send (RFC 6455 7.4).
    static func isValidCloseCode(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1014: true
        case 3000...4999: true
        default: false
        }
    }
}

/// A UTF-8 validator that takes its input in pieces (RFC 3629: no overlong forms, no
/// surrogates, nothing past U+10FFFF), remembering a code point split between pieces.
struct UTF8Validator {
    /// Continuation bytes the current code point still needs.
    private var needed = 0
    /// The range the next continuation byte must fall in (narrower after E0, ED, F0, F4).
    private var lower: UInt8 = 0x80
    private var upper: UInt8 = 0xBF

    /// True when no code point is left half-read.
    var isAtBoundary: Bool { needed == 0 }

    /// Takes the next bytes; false at the first byte that cannot be valid UTF-8.
    mutating func take(_ buffer: ByteBuffer) -> Bool {
        buffer.withUnsafeReadableBytes { take($0) }
    }

    /// Takes the next bytes; false at the first byte that cannot be valid UTF-8.
    mutating func take(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var index = 0
        let count = bytes.count
        while index < count {
            // ASCII runs, eight bytes at a time: most JSON is ASCII.
            if needed == 0, count - index >= 8,
                bytes.loadUnaligned(fromByteOffset: index, as: UInt64.self) & 0x8080_8080_8080_8080 == 0
            {
                index += 8
                continue
            }
            let byte = bytes[index]
            index += 1
            if needed > 0 {
                guard byte >= lower, byte <= upper else { return false }
                needed -= 1
                lower = 0x80
                upper = 0xBF
                continue
            }
            switch byte {
            case 0x00...0x7F: continue
            case 0xC2...0xDF: needed = 1
            case 0xE0:
                needed = 2
                lower = 0xA0
            case 0xE1...0xEC, 0xEE...0xEF: needed = 2
            case 0xED:
                needed = 2
                upper = 0x9F
            case 0xF0:
                needed = 3
                lower = 0x90
            case 0xF1...0xF3: needed = 3
            case 0xF4:
                needed = 3
                upper = 0x8F
            default: return false
            }
        }
        return true
    }
}

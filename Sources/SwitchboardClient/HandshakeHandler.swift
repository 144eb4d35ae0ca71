import NIOCore
import NIOWebSocket

/// Writes the opening handshake, reads the response, and on 101 swaps itself for the
/// WebSocket frame codec. Bytes that follow the response in the same read are passed on.
final class HandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let host: String
    private let path: String
    private let headers: [(String, String)]
    private let key: WebSocketKey
    private let answerPings: Bool
    private let events: AsyncStream<WebSocketConnection.Event>.Continuation
    private let done: EventLoopPromise<[(name: String, value: String)]>
    private var received = ByteBuffer()
    private var finished = false

    init(
        host: String,
        path: String,
        headers: [(String, String)],
        key: WebSocketKey,
        answerPings: Bool,
        events: AsyncStream<WebSocketConnection.Event>.Continuation,
        done: EventLoopPromise<[(name: String, value: String)]>
    ) {
        self.host = host
        self.path = path
        self.headers = headers
        self.key = key
        self.answerPings = answerPings
        self.events = events
        self.done = done
    }

    func channelActive(context: ChannelHandlerContext) {
        var request = "GET \(path) HTTP/1.1\r\nHost: \(host)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        request += "Sec-WebSocket-Key: \(key.value)\r\nSec-WebSocket-Version: 13\r\n"
        for (name, value) in headers { request += "\(name): \(value)\r\n" }
        request += "\r\n"
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: request)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        received.writeBuffer(&buffer)
        guard let headEnd = received.readableBytesView.firstRange(of: Array("\r\n\r\n".utf8)) else {
            if received.readableBytes > 16 * 1024 { fail(context: context, .invalidResponse("response head too long")) }
            return
        }
        let headLength = headEnd.upperBound - received.readerIndex
        let head = received.readString(length: headLength) ?? ""
        let lines = head.split(separator: "\r\n")
        let statusParts = lines.first?.split(separator: " ") ?? []
        guard statusParts.count >= 2, let status = Int(statusParts[1]) else {
            return fail(context: context, .invalidResponse("bad status line"))
        }
        guard status == 101 else {
            // Read the body that came with the refusal, if any, for the caller.
            let body = received.readString(length: received.readableBytes) ?? ""
            return fail(context: context, .refused(status: status, body: body))
        }
        let headers: [(name: String, value: String)] = lines.dropFirst().compactMap { line in
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2 else { return nil }
            return (String(parts[0]), parts[1].trimmingSpaces())
        }
        let accept = headers.first { $0.name.lowercased() == "sec-websocket-accept" }?.value
        guard accept == key.expectedAccept else {
            return fail(context: context, .invalidResponse("wrong Sec-WebSocket-Accept"))
        }
        finished = true
        let leftover = received
        do {
            try context.pipeline.syncOperations.addHandlers(
                [
                    ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: 1 << 24)),
                    WebSocketFrameEncoder(),
                    ClientFrameHandler(events: events, answerPings: answerPings),
                ],
                position: .after(self)
            )
        } catch {
            return fail(context: context, .invalidResponse("pipeline: \(error)"))
        }
        // Pass on frames that came in the same read as the response, before leaving the pipeline.
        if leftover.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(leftover)) }
        received = ByteBuffer()
        context.pipeline.syncOperations.removeHandler(self, promise: nil)
        done.succeed(headers)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !finished {
            finished = true
            done.fail(HandshakeError.connectionClosed)
            events.finish()
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !finished {
            finished = true
            done.fail(error)
            events.finish()
        }
        context.close(promise: nil)
    }

    /// Ends the handshake with `error` (once) and closes the connection.
    func fail(context: ChannelHandlerContext, _ error: HandshakeError) {
        guard !finished else { return }
        finished = true
        done.fail(error)
        events.finish()
        context.close(promise: nil)
    }
}

/// Hands received frames to the connection's event stream, answers pings, and answers
/// the server's close frame with one of its own (RFC 6455 5.5.1) unless this side closed first.
final class ClientFrameHandler: ChannelDuplexHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    /// This side sent a close frame: the server's close is the answer, not to be answered.
    private var sentClose = false

    private let events: AsyncStream<WebSocketConnection.Event>.Continuation
    private let answerPings: Bool

    init(events: AsyncStream<WebSocketConnection.Event>.Continuation, answerPings: Bool) {
        self.events = events
        self.answerPings = answerPings
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text:
            var data = frame.unmaskedData
            events.yield(.text(data.readString(length: data.readableBytes) ?? ""))
        case .binary:
            events.yield(.binary(frame.unmaskedData))
        case .ping:
            events.yield(.ping(frame.unmaskedData))
            if answerPings {
                let pong = WebSocketFrame(fin: true, opcode: .pong, maskKey: .random(), data: frame.unmaskedData)
                context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
            }
        case .pong:
            events.yield(.pong(frame.unmaskedData))
        case .connectionClose:
            var data = frame.unmaskedData
            let code = data.readInteger(as: UInt16.self)
            events.yield(.close(code: code))
            if answerPings, !sentClose {
                sentClose = true
                var payload = ByteBuffer()
                if let code { payload.writeInteger(code) }
                let answer = WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: payload)
                context.writeAndFlush(wrapOutboundOut(answer), promise: nil)
            }
        default:
            break
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if unwrapOutboundIn(data).opcode == .connectionClose { sentClose = true }
        context.write(data, promise: promise)
    }

    func channelInactive(context: ChannelHandlerContext) {
        events.finish()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

extension Substring {
    func trimmingSpaces() -> String {
        String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}

import NIOCore
import NIOWebSocket

/// The `--echo-path` endpoint, for conformance suites run from outside (the Autobahn
/// fuzzing client and the like): the same RFC 6455 reader as `/ws` sessions, with every
/// text and binary message echoed unchanged. No identity, no registry, no backplane.
///
/// Its close handshake is the session's: a peer's close is echoed and the socket closed
/// once that is written; a close the endpoint starts waits up to
/// ``closeHandshakeTimeout`` for the peer's close frame. A peer that sends without reading
/// is read no further while its echoes fill the outbound buffer.
final class EchoHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    static let closeHandshakeTimeout = TimeAmount.seconds(2)

    private var reader: WebSocketReader
    /// Set once this side sent a close frame: only the peer's close frame matters then.
    private var isClosing = false

    init(maximumMessageSize: Int) {
        reader = WebSocketReader(maximumMessageSize: maximumMessageSize, maximumFrameSize: maximumMessageSize, keepsBinary: true)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        guard !isClosing else {
            if frame.opcode == .connectionClose { context.close(promise: nil) }
            return
        }
        switch reader.read(frame) {
        case .needMore, .pong:
            break
        case .text(let message):
            context.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .text, data: message)), promise: nil)
        case .binary(let message):
            context.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .binary, data: message)), promise: nil)
        case .tooLarge:
            // Unreachable: the message limit is the frame limit here, which fails first.
            startClose(CloseCode.messageTooBig, context: context)
        case .ping(let payload):
            context.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: payload)), promise: nil)
        case .close(let answer):
            isClosing = true
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(Self.closeFrame(answer, allocator: channel.allocator))).whenComplete { _ in
                channel.close(promise: nil)
            }
            context.eventLoop.scheduleTask(in: Self.closeHandshakeTimeout) { channel.close(promise: nil) }
        case .fail(let code):
            startClose(code, context: context)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
        // Echoes pile up for a peer that does not read: stop reading until they drain.
        if !context.channel.isWritable { try? context.channel.syncOptions?.setOption(ChannelOptions.autoRead, value: false) }
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            try? context.channel.syncOptions?.setOption(ChannelOptions.autoRead, value: true)
        }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    private func startClose(_ code: WebSocketErrorCode, context: ChannelHandlerContext) {
        isClosing = true
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(Self.closeFrame(code, allocator: channel.allocator)), promise: nil)
        context.eventLoop.scheduleTask(in: Self.closeHandshakeTimeout) { channel.close(promise: nil) }
    }

    private static func closeFrame(_ code: WebSocketErrorCode, allocator: ByteBufferAllocator) -> WebSocketFrame {
        var payload = allocator.buffer(capacity: 2)
        payload.write(webSocketErrorCode: code)
        return WebSocketFrame(fin: true, opcode: .connectionClose, data: payload)
    }
}

@available(*, unavailable)
extension EchoHandler: Sendable {}

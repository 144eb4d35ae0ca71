import NIOCore

/// A command on its way to the socket, with what to call when its reply arrives.
struct RedisOutbound {
    var command: RedisCommand
    var completion: RedisConnection.Completion
}

/// Encodes commands, parses replies with hiredis, and matches them to commands in order.
///
/// Owned by one channel; everything runs on its event loop.
final class RedisChannelHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = RedisOutbound
    typealias OutboundOut = ByteBuffer

    private struct Pending {
        var completion: RedisConnection.Completion
        var since: NIODeadline
        var name: String
    }

    private let reader = RESPReader()
    private var pending = CircularBuffer<Pending>(initialCapacity: 64)
    private let isSubscriber: Bool
    /// Set once the channel failed or closed: a command written after that (the connection
    /// still looked open to its sender) fails at once instead of waiting for a reply forever.
    private var closedError: RedisError?
    private let onMessages: @Sendable ([RedisMessage]) -> Void

    init(isSubscriber: Bool, onMessages: @escaping @Sendable ([RedisMessage]) -> Void) {
        self.isSubscriber = isSubscriber
        self.onMessages = onMessages
    }

    var pendingCount: Int { pending.count }
    var oldestPendingSince: NIODeadline? { pending.first?.since }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let outbound = unwrapOutboundIn(data)
        if let closedError {
            outbound.completion(.failure(closedError))
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        pending.append(Pending(completion: outbound.completion, since: .now(), name: outbound.command.name))
        context.write(wrapOutboundOut(outbound.command.bytes), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var messages: [RedisMessage] = []
        do {
            try reader.feed(unwrapInboundIn(data))
            while let value = try reader.next() {
                if isSubscriber, let message = Self.message(value) {
                    messages.append(message)
                    continue
                }
                guard let next = pending.popFirst() else {
                    throw RedisError(.protocolError, "a reply arrived with no command waiting for it")
                }
                if case .error(let text) = value {
                    next.completion(.failure(RedisError(.serverError, "\(next.name): \(text)")))
                } else {
                    next.completion(.success(value))
                }
            }
        } catch {
            if !messages.isEmpty { onMessages(messages) }
            context.fireErrorCaught(error)
            context.close(promise: nil)
            return
        }
        if !messages.isEmpty { onMessages(messages) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        failPending(RedisError(.connectionLost, "the connection to Redis closed"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let cause = error as? RedisError ?? RedisError(.connectionLost, "socket error", cause: IOErrorDescription(error))
        failPending(cause)
        context.close(promise: nil)
    }

    private func failPending(_ error: RedisError) {
        if closedError == nil { closedError = error }
        while let next = pending.popFirst() {
            next.completion(.failure(error))
        }
    }

    /// `["message", channel, payload]`, the only push a subscriber gets (no pattern subscriptions).
    private static func message(_ value: RedisValue) -> RedisMessage? {
        guard case .array(let parts) = value, parts.count == 3,
            case .bulkString(let kind) = parts[0], kind.readableBytesView.elementsEqual("message".utf8),
            case .bulkString(let channel) = parts[1], case .bulkString(let payload) = parts[2]
        else { return nil }
        return RedisMessage(channel: channel, payload: payload)
    }
}

/// A socket error as text, so that it can travel in a Sendable ``RedisError``.
struct IOErrorDescription: Error, Sendable, CustomStringConvertible {
    let description: String
    init(_ error: any Error) { description = "\(error)" }
}

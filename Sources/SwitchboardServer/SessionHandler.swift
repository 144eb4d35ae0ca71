import Foundation
import Logging
import NIOCore
import NIOWebSocket
import SwitchboardBackplane
import SwitchboardProtocol
import SwitchboardRegistry

/// One client WebSocket after the upgrade (centrifuge's Client): feeds what NIO reports
/// into a ``SessionStateMachine`` and performs the actions it returns: writes, backplane
/// calls, registry changes, timers. Every decision is the state machine's.
///
/// A plain NIO channel handler rather than an async task per connection: an idle
/// connection then costs only its channel, its pipeline and this object (see
/// docs/benchmarks.md). Everything runs on the channel's event loop; other threads
/// reach it through ``SessionHandle``.
final class SessionHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    let connectionID: ConnectionID
    var user: UserID { machine.user }
    private let gateway: Gateway
    private var machine: SessionStateMachine
    private var context: ChannelHandlerContext?
    private var isReading = false
    private var needsFlush = false
    private var bindTimeout: Scheduled<Void>?
    /// Fires at the token's `exp` (or re-arms, for a far-away one); cancelled when the session ends.
    private var expiry: Scheduled<Void>?

    init(connectionID: ConnectionID, identity: Identity, gateway: Gateway) {
        self.connectionID = connectionID
        self.gateway = gateway
        self.machine = SessionStateMachine(
            identity: identity,
            gatewayID: gateway.configuration.gatewayID,
            limits: .init(gateway.configuration),
            now: .now()
        )
    }

    private var handle: SessionHandle? {
        context.map { SessionHandle(connectionID: connectionID, session: self, eventLoop: $0.eventLoop) }
    }

    // MARK: Inputs from NIO and the gateway

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        gateway.metrics.connectionOpened()
        let handle = SessionHandle(connectionID: connectionID, session: self, eventLoop: context.eventLoop)
        let change = gateway.registry.add(connectionID, user: user, handle: handle)
        if !change.becameLocal.isEmpty {
            gateway.logger.trace("user became local", metadata: [LoggingKeys.userID: "\(user)"])
        }
        perform(machine.started(wallClock: Date().timeIntervalSince1970))
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        perform(machine.channelClosed())
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        perform(machine.channelClosed())
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Hummingbird allows half-closure; a WebSocket client that sent FIN is gone.
        if let event = event as? ChannelEvent, event == .inputClosed {
            perform(machine.inputClosed())
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        gateway.logger.debug("connection error", metadata: metadata([LoggingKeys.errorType: "\(error)"]))
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        isReading = true
        perform(machine.frameReceived(unwrapInboundIn(data), now: .now()))
        isReading = false
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if needsFlush {
            needsFlush = false
            context.flush()
        }
        context.fireChannelReadComplete()
    }

    /// Called by the gateway's keepalive sweep on this session's loop.
    func keepalive(now: NIODeadline) {
        perform(machine.keepaliveTick(now: now))
    }

    /// Writes a frame delivered by the gateway (another session's message).
    func send(_ frame: ByteBuffer) {
        syncWritability()
        perform(machine.deliver(frame))
    }

    /// Closes the session with `code` (a drain's 1012), with the close handshake.
    func close(code: WebSocketErrorCode, reason: GatewayMetrics.CloseReason, message: String? = nil) {
        perform(machine.closeRequested(code: code, reason: reason, message: message))
    }

    // MARK: Performing actions

    private func perform(_ actions: [SessionStateMachine.Action]) {
        guard !actions.isEmpty, let context else { return }
        defer { syncWritability() }
        var wrote = false
        for action in actions {
            switch action {
            case .writeText(let text, let kind):
                if let kind { gateway.metrics.sent(kind) }
                context.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .text, data: text)), promise: nil)
                wrote = true
            case .writeControl(let frame):
                context.write(wrapOutboundOut(frame), promise: nil)
                wrote = true
            case .received(let kind):
                gateway.metrics.received(kind)
            case .bindUser:
                guard let handle else { return }
                gateway.bindings.ensureBound(.user(user)) { result in
                    handle.withSession { $0.perform($0.machine.userBindCompleted(result)) }
                }
            case .scheduleBindTimeout(let delay):
                bindTimeout = schedule(in: delay) { $0.machine.userBindTimedOut() }
            case .cancelBindTimeout:
                bindTimeout?.cancel()
                bindTimeout = nil
            case .scheduleExpiryCheck(let delay):
                expiry = schedule(in: delay) { $0.machine.expiryCheck(wallClock: Date().timeIntervalSince1970) }
            case .register(let room, let correlationID):
                let result = gateway.registry.join(connectionID, room: room, maximumRooms: gateway.configuration.maximumRoomsPerConnection)
                perform(machine.joinRegistered(room, correlationID: correlationID, result: result))
            case .bindRoom(let room, let correlationID):
                guard let handle else { return }
                gateway.bindings.ensureBound(.room(room)) { result in
                    handle.withSession { $0.perform($0.machine.roomBindCompleted(room, correlationID: correlationID, result: result)) }
                }
            case .leave(let room):
                gateway.apply(gateway.registry.leave(connectionID, room: room))
            case .publish(let request):
                publish(request)
            case .reportUndelivered(let frame, let address):
                gateway.configuration.events?.undelivered(frame, to: address)
            case .logPublishFailure(let failure):
                gateway.logger.error("publish failed", metadata: metadata([LoggingKeys.errorType: "\(failure)"]))
            case .sendClose(let code, let message, let closeWhenWritten):
                sendClose(code: code, message: message, closeWhenWritten: closeWhenWritten, context: context)
                wrote = false
            case .scheduleCloseTimeout(let delay):
                _ = schedule(in: delay) { $0.machine.closeHandshakeTimedOut() }
            case .closeSocket:
                context.close(promise: nil)
            case .end(let reason):
                ended(reason)
            }
        }
        if wrote {
            if isReading { needsFlush = true } else { context.flush() }
        }
    }

    /// The state machine decides on a full buffer; it learns of one here, after every batch
    /// of writes and before each delivery (the channel's flag is what NIO maintains).
    private func syncWritability() {
        if let context { machine.writabilityChanged(isWritable: context.channel.isWritable) }
    }

    private func schedule(in delay: TimeAmount, _ input: @escaping @Sendable (SessionHandler) -> [SessionStateMachine.Action]) -> Scheduled<Void>? {
        guard let context, let handle else { return nil }
        return context.eventLoop.scheduleTask(in: delay) {
            handle.withSession { $0.perform(input($0)) }
        }
    }

    private func publish(_ request: SessionStateMachine.PublishRequest) {
        guard let handle else { return }
        gateway.configuration.events?.clientMessage(request.frame, to: request.address)
        let metrics = gateway.metrics
        let started = ContinuousClock.now
        gateway.backplane.publish(request.frame, to: request.address) { result in
            metrics.publishCompleted(after: ContinuousClock.now - started)
            handle.withSession { $0.perform($0.machine.publishCompleted(result, request: request)) }
        }
    }

    private func sendClose(code: WebSocketErrorCode, message: String?, closeWhenWritten: Bool, context: ChannelHandlerContext) {
        var payload = context.channel.allocator.buffer(capacity: 2)
        payload.write(webSocketErrorCode: code)
        // RFC 6455 5.5: a control frame's payload is at most 125 bytes, 2 of them the code.
        if let message { payload.writeString(String(decoding: message.utf8.prefix(123), as: UTF8.self)) }
        let written = context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: payload)))
        if closeWhenWritten {
            let channel = context.channel
            written.whenComplete { _ in channel.close(promise: nil) }
        }
    }

    /// Leaves every room and the registry, exactly once (the state machine says when).
    private func ended(_ reason: GatewayMetrics.CloseReason) {
        bindTimeout?.cancel()
        bindTimeout = nil
        expiry?.cancel()
        expiry = nil
        switch reason {
        case .client, .disconnected, .drain, .protocolError:
            break
        case .slowConsumer:
            gateway.logger.info("slow consumer: outbound buffer full, closing", metadata: metadata())
            gateway.metrics.slowConsumerClosed()
        case .idle, .policy, .backplane, .serverError:
            gateway.logger.info("closing", metadata: metadata([LoggingKeys.closeReason: "\(reason.rawValue)"]))
        }
        gateway.apply(gateway.registry.remove(connectionID))
        gateway.metrics.connectionClosed(reason)
    }

    private func metadata(_ extra: Logger.Metadata = [:]) -> Logger.Metadata {
        extra.merging([LoggingKeys.connectionID: "\(connectionID)", LoggingKeys.userID: "\(user)"]) { new, _ in new }
    }
}

@available(*, unavailable)
extension SessionHandler: Sendable {}

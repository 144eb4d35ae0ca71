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
    /// Writes are being made for a batch of deliveries: whoever runs the batch flushes once
    /// at its end (``flushDeferred()``), so frames for this client in one batch share a write.
    private var isDeliveringBatch = false
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
        feed { $0.started(wallClock: Date().timeIntervalSince1970) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        feed { $0.channelClosed() }
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        feed { $0.channelClosed() }
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        machine.writabilityChanged(isWritable: context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Hummingbird allows half-closure; a WebSocket client that sent FIN is gone.
        if let event = event as? ChannelEvent, event == .inputClosed {
            feed { $0.inputClosed() }
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
        let frame = unwrapInboundIn(data)
        feed { $0.frameReceived(frame, now: .now()) }
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
        feed { $0.keepaliveTick(now: now) }
    }

    /// Writes a frame delivered by the gateway (another session's message), one of a batch:
    /// returns true when it left a flush for the batch's end
    /// (``flushDeferred()``); false when nothing was written, or a flush is due anyway (the
    /// session is reading, and flushes when the read completes).
    func sendInBatch(_ frame: ByteBuffer, address: BackplaneAddress, position: StreamPosition?, isPresenceEvent: Bool) -> Bool {
        let flushWasDue = needsFlush
        isDeliveringBatch = true
        feed { $0.deliver(frame, address: address, position: position, isPresenceEvent: isPresenceEvent) }
        isDeliveringBatch = false
        return needsFlush && !flushWasDue
    }

    /// Flushes what a batch of deliveries wrote.
    func flushDeferred() {
        guard needsFlush, !isReading else { return }
        needsFlush = false
        context?.flush()
    }

    /// Closes the session with `code` (a drain's 1012), with the close handshake.
    func close(code: WebSocketErrorCode, reason: GatewayMetrics.CloseReason, message: String? = nil) {
        feed { $0.closeRequested(code: code, reason: reason, message: message) }
    }

    // MARK: Performing actions

    /// Gives the state machine one input and performs what it returns. The channel's
    /// writability is read first: the machine decides on a full buffer, and NIO's flag,
    /// not an event that may lag it, is the truth.
    private func feed(_ input: (inout SessionStateMachine) -> [SessionStateMachine.Action]) {
        syncWritability()
        perform(input(&machine))
    }

    private func perform(_ actions: [SessionStateMachine.Action]) {
        guard !actions.isEmpty, let context else { return }
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
                guard let handle else { continue }
                gateway.bindings.ensureBound(.user(user)) { result in
                    handle.withSession { $0.feed { $0.userBindCompleted(result) } }
                }
            case .scheduleBindTimeout(let delay):
                guard machine.endReason == nil else { continue }
                bindTimeout = schedule(in: delay) { $0.userBindTimedOut() }
            case .cancelBindTimeout:
                bindTimeout?.cancel()
                bindTimeout = nil
            case .scheduleExpiryCheck(let delay):
                // Never armed for a session that ended meanwhile: it would hold the handler for up to a week.
                guard machine.endReason == nil else { continue }
                expiry = schedule(in: delay) { $0.expiryCheck(wallClock: Date().timeIntervalSince1970) }
            case .register(let room, let correlationID, let wasMember):
                let result = gateway.registry.join(connectionID, room: room, maximumRooms: gateway.configuration.maximumRoomsPerConnection)
                if case .joined = result { gateway.presence?.memberJoined(room, user: user) }
                feed { $0.joinRegistered(room, correlationID: correlationID, wasMember: wasMember, result: result) }
            case .bindRoom(let room, let correlationID):
                guard let handle else { continue }
                gateway.bindings.ensureBound(.room(room)) { result in
                    handle.withSession { $0.feed { $0.roomBindCompleted(room, correlationID: correlationID, result: result) } }
                }
            case .presenceEvents(let room, let wanted):
                gateway.registry.setPresenceEvents(connectionID, room: room, wanted: wanted)
            case .leave(let room):
                gateway.apply(gateway.registry.leave(connectionID, room: room), user: user)
            case .publish(let request):
                publish(request)
            case .reportUndelivered(let frame, let address):
                gateway.configuration.events?.undelivered(frame, to: address)
            case .readHistory(let request):
                readHistory(request)
            case .readPresence(let room, let correlationID):
                readPresence(room, correlationID: correlationID)
            case .scheduleGapCheck(let address, let delay):
                _ = schedule(in: delay) { $0.gapCheck(address) }
            case .countRecovery(let outcome, let replayed):
                gateway.metrics.recovery(outcome, replayed: replayed)
            case .log(let event):
                log(event)
            case .sendClose(let code, let message, let closeWhenWritten):
                sendClose(code: code, message: message, closeWhenWritten: closeWhenWritten, context: context)
                wrote = false
            case .scheduleCloseTimeout(let delay):
                _ = schedule(in: delay) { $0.closeHandshakeTimedOut() }
            case .closeSocket:
                context.close(promise: nil)
            case .end(let reason):
                ended(reason)
            }
        }
        if wrote {
            if isReading || isDeliveringBatch { needsFlush = true } else { context.flush() }
        }
    }

    /// The state machine decides on a full buffer; it reads NIO's flag before every input.
    private func syncWritability() {
        if let context { machine.writabilityChanged(isWritable: context.channel.isWritable) }
    }

    private func schedule(
        in delay: TimeAmount,
        _ input: @escaping @Sendable (inout SessionStateMachine) -> [SessionStateMachine.Action]
    ) -> Scheduled<Void>? {
        guard let context, let handle else { return nil }
        return context.eventLoop.scheduleTask(in: delay) {
            handle.withSession { $0.feed(input) }
        }
    }

    private func readHistory(_ request: SessionStateMachine.HistoryRead) {
        guard let handle, let history = gateway.history else { return }
        let limit = request.partialLimit ?? gateway.configuration.recoveryLimit
        history.read(request.address, after: request.after, limit: limit, partial: request.partialLimit != nil) { result in
            handle.withSession { $0.feed { $0.historyRead(request, result: result) } }
        }
    }

    private func readPresence(_ room: RoomID, correlationID: CorrelationID?) {
        guard let handle, let presence = gateway.presence else { return }
        presence.read(room, limit: gateway.configuration.presenceListLimit) { result in
            handle.withSession { $0.feed { $0.presenceRead(room, correlationID: correlationID, result: result) } }
        }
    }

    /// With history, the store gives the message its offset first (and, on Redis with the
    /// Redis backplane, publishes it in the same script); then the backplane publishes the
    /// completed frame.
    private func publish(_ request: SessionStateMachine.PublishRequest) {
        guard let handle else { return }
        let gateway = self.gateway
        guard let history = gateway.history else {
            Self.publish(HistoryFrame.complete(request.head), position: nil, request: request, handle: handle, gateway: gateway)
            return
        }
        let started = ContinuousClock.now
        history.append(request.head, to: request.address) { result in
            gateway.metrics.historyWritten(after: ContinuousClock.now - started, succeeded: (try? result.get()) != nil)
            switch result {
            case .success(let appended):
                if let outcome = appended.published {
                    gateway.configuration.events?.clientMessage(appended.frame, to: request.address)
                    handle.withSession {
                        $0.feed { $0.publishCompleted(.success(outcome), request: request, frame: appended.frame, position: appended.position) }
                    }
                } else {
                    SessionHandler.publish(appended.frame, position: appended.position, request: request, handle: handle, gateway: gateway)
                }
            case .failure(let error):
                handle.withSession { $0.feed { $0.historyWriteFailed(error, request: request) } }
            }
        }
    }

    private static func publish(
        _ frame: ByteBuffer,
        position: StreamPosition?,
        request: SessionStateMachine.PublishRequest,
        handle: SessionHandle,
        gateway: Gateway
    ) {
        gateway.configuration.events?.clientMessage(frame, to: request.address)
        let metrics = gateway.metrics
        let started = ContinuousClock.now
        gateway.backplane.publish(frame, to: request.address) { result in
            metrics.publishCompleted(after: ContinuousClock.now - started)
            handle.withSession { $0.feed { $0.publishCompleted(result, request: request, frame: frame, position: position) } }
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
            // A client that sent its close and stopped reading may never take the answer.
            context.eventLoop.scheduleTask(in: TimeAmount(machine.limits.closeHandshakeTimeout)) { channel.close(promise: nil) }
        }
    }

    /// Leaves every room and the registry, exactly once (the state machine says when).
    private func ended(_ reason: GatewayMetrics.CloseReason) {
        bindTimeout?.cancel()
        bindTimeout = nil
        expiry?.cancel()
        expiry = nil
        if reason == .slowConsumer { gateway.metrics.slowConsumerClosed() }
        gateway.apply(gateway.registry.remove(connectionID), user: user)
        gateway.metrics.connectionClosed(reason)
    }

    private func log(_ event: SessionStateMachine.LogEvent) {
        switch event {
        case .tokenExpired:
            gateway.logger.info("token expired; closing", metadata: metadata())
        case .idleTimeout:
            gateway.logger.info("idle timeout; closing", metadata: metadata())
        case .tooMuchBeforeWelcome:
            gateway.logger.info("too much sent before welcome; closing", metadata: metadata())
        case .rateLimitAbuse:
            gateway.logger.info("sustained rate-limit abuse; closing", metadata: metadata())
        case .userBindTimedOut:
            gateway.logger.warning("the backplane did not bind the user in time; closing", metadata: metadata())
        case .userBindFailed(let error):
            gateway.logger.warning("could not bind user on the backplane; closing", metadata: metadata([LoggingKeys.errorType: "\(error)"]))
        case .slowConsumer:
            gateway.logger.info("slow consumer: outbound buffer full, closing", metadata: metadata())
        case .publishFailed(let error):
            gateway.logger.error("publish failed", metadata: metadata([LoggingKeys.errorType: "\(error)"]))
        case .historyReadFailed(let address, let error):
            gateway.logger.warning(
                "history read failed",
                metadata: metadata([LoggingKeys.address: "\(address)", LoggingKeys.errorType: "\(error)"])
            )
        case .historyWriteFailed(let address, let error):
            gateway.logger.warning(
                "history write failed; message not sent",
                metadata: metadata([LoggingKeys.address: "\(address)", LoggingKeys.errorType: "\(error)"])
            )
        case .presenceReadFailed(let room, let error):
            gateway.logger.warning(
                "presence read failed",
                metadata: metadata([LoggingKeys.roomID: "\(room)", LoggingKeys.errorType: "\(error)"])
            )
        case .insufficientState(let address):
            gateway.logger.info(
                "stream cannot continue in order (gap not in history, or a new epoch); closing so the client resumes",
                metadata: metadata([LoggingKeys.address: "\(address)"])
            )
        }
    }

    private func metadata(_ extra: Logger.Metadata = [:]) -> Logger.Metadata {
        extra.merging([LoggingKeys.connectionID: "\(connectionID)", LoggingKeys.userID: "\(user)"]) { new, _ in new }
    }
}

@available(*, unavailable)
extension SessionHandler: Sendable {}

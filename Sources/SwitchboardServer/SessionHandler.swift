import Foundation
import Logging
import NIOCore
import NIOWebSocket
import SwitchboardBackplane
import SwitchboardProtocol
import SwitchboardRegistry

/// One client WebSocket after the upgrade: reads frames, speaks wire protocol v1, and
/// writes what the gateway delivers (centrifuge's Client).
///
/// A plain NIO channel handler rather than an async task per connection: an idle
/// connection then costs only its channel, its pipeline and this object (see
/// docs/benchmarks.md). Everything runs on the channel's event loop; other threads
/// reach it through ``SessionHandle``.
final class SessionHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private enum Phase {
        /// Waiting for the user's binding; frames are held (``heldFrames``) until `welcome` is out.
        case connecting
        case open
        /// A close frame was sent or the channel closed; nothing more is written.
        case closed
    }

    /// A message being received in several frames.
    private enum Fragments {
        case none
        case text(ByteBuffer)
        case binary(size: Int)
        /// Past the message size limit: discard until the final fragment, then answer `too_large`.
        case discarding(size: Int)
    }

    let connectionID: ConnectionID
    let identity: Identity
    var user: UserID { identity.user }
    private let gateway: Gateway
    private var context: ChannelHandlerContext?
    private var phase: Phase = .connecting
    /// Frames that arrived before `welcome`, handled once the user is bound. Kept outside
    /// ``Phase`` so that appending does not copy them, and bounded by
    /// ``GatewayConfiguration/maximumFramesBeforeWelcome`` and the frame size limit.
    private var heldFrames: [WebSocketFrame] = []
    private var heldBytes = 0
    /// Closes the connection if the user's binding does not complete in time.
    private var bindTimeout: Scheduled<Void>?
    private var fragments: Fragments = .none
    private var isReading = false
    private var needsFlush = false
    /// The last time anything arrived from the client (frames, pongs), for the idle timeout.
    private var lastHeard = NIODeadline.now()
    private var rateLimiter: RateLimiter
    /// Joins of new rooms: each may be a broker bind, and the broker takes only a few thousand a second.
    private var joinLimiter: RateLimiter
    /// Closes the connection when the token expires; cancelled when the session ends.
    private var expiry: Scheduled<Void>?
    /// Why the session ended, for `switchboard_connections_closed_total`; nil: the socket just closed.
    private var closeReason: GatewayMetrics.CloseReason?

    init(connectionID: ConnectionID, identity: Identity, gateway: Gateway) {
        self.connectionID = connectionID
        self.identity = identity
        self.gateway = gateway
        self.rateLimiter = RateLimiter(rate: gateway.configuration.messageRate, burst: gateway.configuration.messageBurst)
        self.joinLimiter = RateLimiter(rate: gateway.configuration.joinRate, burst: gateway.configuration.joinBurst)
    }

    private var handle: SessionHandle? {
        context.map { SessionHandle(connectionID: connectionID, session: self, eventLoop: $0.eventLoop) }
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        gateway.metrics.connectionOpened()
        let handle = SessionHandle(connectionID: connectionID, session: self, eventLoop: context.eventLoop)
        let change = gateway.registry.add(connectionID, user: user, handle: handle)
        if !change.becameLocal.isEmpty {
            gateway.logger.trace("user became local", metadata: [LoggingKeys.userID: "\(user)"])
        }
        bindTimeout = context.eventLoop.scheduleTask(in: TimeAmount(gateway.configuration.userBindTimeout)) {
            handle.withSession { $0.userBindingTimedOut() }
        }
        gateway.bindings.ensureBound(.user(user)) { result in
            handle.withSession { $0.userBindingCompleted(result) }
        }
        armExpiry()
    }

    /// Schedules the close at the token's `exp`; a far-away `exp` re-arms in steps
    /// (``TokenLifetime``), since no claim value may become an out-of-range timer.
    private func armExpiry() {
        guard let expiresAt = identity.expiresAt, let context else { return }
        switch TokenLifetime.decide(expiresAt: expiresAt.timeIntervalSince1970, now: Date().timeIntervalSince1970) {
        case .expired:
            tokenExpired()
        case .checkAfter(let delay):
            let handle = SessionHandle(connectionID: connectionID, session: self, eventLoop: context.eventLoop)
            expiry = context.eventLoop.scheduleTask(in: TimeAmount(delay)) {
                handle.withSession { $0.armExpiry() }
            }
        }
    }

    private func tokenExpired() {
        gateway.logger.info("token expired; closing", metadata: [LoggingKeys.connectionID: "\(connectionID)", LoggingKeys.userID: "\(user)"])
        close(code: CloseCode.policyViolation, reason: .policy, message: "token expired")
    }

    /// Called by the gateway's keepalive sweep on this session's loop: ping a quiet client,
    /// close one that stayed silent past the idle timeout.
    func keepalive(now: NIODeadline) {
        guard case .open = phase else { return }
        let silent = now - lastHeard
        if silent >= TimeAmount(gateway.configuration.idleTimeout) {
            gateway.logger.info("idle timeout; closing", metadata: [LoggingKeys.connectionID: "\(connectionID)"])
            close(code: CloseCode.goingAway)
        } else if silent >= TimeAmount(gateway.configuration.pingInterval) {
            writeFrame(WebSocketFrame(fin: true, opcode: .ping, data: ByteBuffer()))
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        sessionEnded()
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        sessionEnded()
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Hummingbird allows half-closure; a WebSocket client that sent FIN is gone.
        if let event = event as? ChannelEvent, event == .inputClosed {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        gateway.logger.debug(
            "connection error",
            metadata: [LoggingKeys.connectionID: "\(connectionID)", LoggingKeys.errorType: "\(error)"]
        )
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        lastHeard = .now()
        switch phase {
        case .connecting:
            heldFrames.append(frame)
            heldBytes += frame.length
            if heldFrames.count > gateway.configuration.maximumFramesBeforeWelcome || heldBytes > gateway.configuration.maximumFrameSize {
                gateway.logger.info(
                    "too much sent before welcome; closing",
                    metadata: [LoggingKeys.connectionID: "\(connectionID)", LoggingKeys.userID: "\(user)"]
                )
                heldFrames = []
                close(code: CloseCode.policyViolation, reason: .policy, message: "too many messages before welcome")
            }
        case .open:
            isReading = true
            handle(frame)
            isReading = false
        case .closed:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if needsFlush {
            needsFlush = false
            context.flush()
        }
        context.fireChannelReadComplete()
    }

    private var hasEnded = false

    /// Leaves every room and the registry exactly once, whichever event comes first.
    private func sessionEnded() {
        guard !hasEnded else { return }
        hasEnded = true
        phase = .closed
        expiry?.cancel()
        expiry = nil
        bindTimeout?.cancel()
        bindTimeout = nil
        heldFrames = []
        let change = gateway.registry.remove(connectionID)
        gateway.apply(change)
        gateway.metrics.connectionClosed(closeReason ?? .disconnected)
    }

    private func userBindingTimedOut() {
        guard case .connecting = phase else { return }
        gateway.logger.warning(
            "the backplane did not bind the user in time; closing",
            metadata: [LoggingKeys.connectionID: "\(connectionID)", LoggingKeys.userID: "\(user)"]
        )
        phase = .open
        heldFrames = []
        write(ServerFrame.error(ProtocolError(.backplaneUnavailable, "the backplane did not make this user reachable in time")))
        close(code: CloseCode.tryAgainLater, reason: .backplane, message: "backplane unavailable")
    }

    private func userBindingCompleted(_ result: Result<Void, BackplaneError>) {
        guard case .connecting = phase, let context else { return }
        bindTimeout?.cancel()
        bindTimeout = nil
        switch result {
        case .success:
            phase = .open
            write(ServerFrame.welcome(user: user, gateway: gateway.configuration.gatewayID), counted: .welcome)
            let held = heldFrames
            heldFrames = []
            heldBytes = 0
            isReading = true
            for frame in held { handle(frame) }
            isReading = false
            if needsFlush {
                needsFlush = false
                context.flush()
            }
        case .failure(let error):
            gateway.logger.warning(
                "could not bind user on the backplane; closing",
                metadata: [LoggingKeys.connectionID: "\(connectionID)", LoggingKeys.userID: "\(user)", LoggingKeys.errorType: "\(error)"]
            )
            phase = .open
            heldFrames = []
            write(ServerFrame.error(ProtocolError(.backplaneUnavailable, "the backplane cannot reach this user now")))
            close(code: CloseCode.tryAgainLater, reason: .backplane, message: "backplane unavailable")
        }
    }

    // MARK: WebSocket frames (RFC 6455)

    private func handle(_ frame: WebSocketFrame) {
        guard case .open = phase else { return }
        // RFC 6455 5.1 and 5.2: client frames are masked; no extension is negotiated, so RSV bits are 0.
        guard frame.maskKey != nil else { return close(code: CloseCode.protocolError) }
        guard !frame.rsv1, !frame.rsv2, !frame.rsv3 else { return close(code: CloseCode.protocolError) }
        let configuration = gateway.configuration

        switch frame.opcode {
        case .text, .binary:
            guard case .none = fragments else { return close(code: CloseCode.protocolError) }
            let isText = frame.opcode == .text
            if frame.fin {
                if frame.length > configuration.maximumMessageSize {
                    reject(ProtocolError(.tooLarge, tooLargeMessage))
                } else if isText {
                    handleText(frame.unmaskedData)
                } else {
                    rejectBinary()
                }
            } else if frame.length > configuration.maximumMessageSize {
                fragments = .discarding(size: frame.length)
            } else {
                fragments = isText ? .text(frame.unmaskedData) : .binary(size: frame.length)
            }

        case .continuation:
            let total: Int
            switch fragments {
            case .none: return close(code: CloseCode.protocolError)
            case .text(var buffer):
                total = buffer.readableBytes + frame.length
                if total > configuration.maximumMessageSize {
                    fragments = .discarding(size: total)
                } else {
                    var data = frame.unmaskedData
                    buffer.writeBuffer(&data)
                    fragments = .text(buffer)
                }
            case .binary(let size):
                total = size + frame.length
                fragments = total > configuration.maximumMessageSize ? .discarding(size: total) : .binary(size: total)
            case .discarding(let size):
                total = size + frame.length
                fragments = .discarding(size: total)
            }
            if total > configuration.maximumFrameSize { return close(code: CloseCode.messageTooBig) }
            guard frame.fin else { return }
            let completed = fragments
            fragments = .none
            switch completed {
            case .text(let buffer): handleText(buffer)
            case .binary: rejectBinary()
            case .discarding: reject(ProtocolError(.tooLarge, tooLargeMessage))
            case .none: break
            }

        case .ping:
            writeFrame(WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData))

        case .pong:
            break

        case .connectionClose:
            answerClose(frame.unmaskedData)

        default:
            close(code: CloseCode.protocolError)
        }
    }

    private var tooLargeMessage: String {
        "messages are limited to \(gateway.configuration.maximumMessageSize) bytes"
    }

    private func rejectBinary() {
        gateway.metrics.received(.binary)
        reject(ProtocolError(.invalidMessage, "binary frames are not supported; send JSON text frames"))
    }

    /// Answers the client's close frame by echoing its code (RFC 6455 5.5.1) and closes.
    private func answerClose(_ payload: ByteBuffer) {
        var payload = payload
        guard payload.readableBytes != 1 else { return close(code: CloseCode.protocolError) }
        guard let code = payload.readInteger(as: UInt16.self) else { return close(code: CloseCode.normal, reason: .client) }
        guard Self.isValidCloseCode(code),
            String(validating: payload.readableBytesView, as: UTF8.self) != nil
        else { return close(code: CloseCode.protocolError) }
        close(code: WebSocketErrorCode(codeNumber: Int(code)), reason: .client)
    }

    /// Close codes a peer may send (RFC 6455 7.4).
    static func isValidCloseCode(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1011, 1012...1014: true
        case 3000...4999: true
        default: false
        }
    }

    // MARK: Wire protocol v1

    private func handleText(_ message: ByteBuffer) {
        let bytes = Array(message.readableBytesView)
        guard String(validating: bytes, as: UTF8.self) != nil else {
            return close(code: CloseCode.invalidUTF8)
        }
        switch rateLimiter.take(now: .now(), closeAfter: gateway.configuration.rateLimitedCloseAfter) {
        case .allowed:
            break
        case .limited:
            gateway.metrics.received(.rateLimited)
            return reject(ProtocolError(.rateLimited, "slow down: at most \(Int(gateway.configuration.messageRate)) messages per second"))
        case .abusive:
            gateway.logger.info("sustained rate-limit abuse; closing", metadata: [LoggingKeys.connectionID: "\(connectionID)", LoggingKeys.userID: "\(user)"])
            return close(code: CloseCode.policyViolation, reason: .policy, message: "rate limit exceeded")
        }
        switch ClientFrame.decode(message) {
        case .failure(let error):
            gateway.metrics.received(.invalid)
            reject(error)
        case .success(let frame):
            handle(frame)
        }
    }

    private func handle(_ frame: ClientFrame) {
        switch frame {
        case .ping(let id):
            gateway.metrics.received(.ping)
            write(ServerFrame.pong(correlationID: id), counted: .pong)

        case .direct(let recipient, let data, let id):
            gateway.metrics.received(.direct)
            let encoded = ServerFrame.direct(from: user, to: recipient, data: data)
            gateway.configuration.events?.clientMessage(encoded, to: .user(recipient))
            publish(encoded, to: .user(recipient), correlationID: id, noRecipient: .recipientOffline)

        case .publish(let room, let data, let id):
            gateway.metrics.received(.publish)
            guard gateway.registry.isMember(connectionID, of: room) else {
                return reject(ProtocolError(.notMember, "join the room before publishing to it", correlationID: id))
            }
            let encoded = ServerFrame.room(room, from: user, data: data)
            gateway.configuration.events?.clientMessage(encoded, to: .room(room))
            publish(encoded, to: .room(room), correlationID: id, noRecipient: nil)

        case .join(let room, let id):
            gateway.metrics.received(.join)
            join(room, correlationID: id)

        case .leave(let room, let id):
            gateway.metrics.received(.leave)
            gateway.apply(gateway.registry.leave(connectionID, room: room))
            write(ServerFrame.ack(correlationID: id), counted: .ack)
        }
    }

    private func join(_ room: RoomID, correlationID: CorrelationID?) {
        guard identity.rooms.allows(room) else {
            return reject(ProtocolError(.forbidden, "the token does not allow this room", correlationID: correlationID))
        }
        if !gateway.registry.isMember(connectionID, of: room) {
            // Only a new membership can cost a broker bind; re-joining a room is free.
            switch joinLimiter.take(now: .now(), closeAfter: .max) {
            case .allowed:
                break
            case .limited, .abusive:
                gateway.metrics.received(.rateLimited)
                return reject(
                    ProtocolError(.rateLimited, "slow down: at most \(Int(gateway.configuration.joinRate)) joins per second", correlationID: correlationID)
                )
            }
        }
        let maximum = gateway.configuration.maximumRoomsPerConnection
        switch gateway.registry.join(connectionID, room: room, maximumRooms: maximum) {
        case .tooManyRooms:
            return reject(ProtocolError(.forbidden, "a connection may be in at most \(maximum) rooms", correlationID: correlationID))
        case .unknownConnection:
            return
        case .connectionLeaving:
            return reject(ProtocolError(.backplaneUnavailable, "this gateway is shutting down; reconnect", correlationID: correlationID))
        case .joined, .alreadyMember:
            break
        }
        guard let handle else { return }
        let connectionID = self.connectionID
        let gateway = self.gateway
        gateway.bindings.ensureBound(.room(room)) { result in
            handle.withSession { session in
                switch result {
                case .success:
                    session.write(ServerFrame.ack(correlationID: correlationID), counted: .ack)
                case .failure:
                    // Undo the membership: the room is not reachable through this gateway.
                    gateway.apply(gateway.registry.leave(connectionID, room: room))
                    session.reject(ProtocolError(.backplaneUnavailable, "the backplane cannot bind the room now", correlationID: correlationID))
                }
            }
        }
    }

    private func publish(_ frame: ByteBuffer, to address: BackplaneAddress, correlationID: CorrelationID?, noRecipient: ErrorCode?) {
        guard let handle else { return }
        let logger = gateway.logger
        let connectionID = self.connectionID
        let metrics = gateway.metrics
        let events = gateway.configuration.events
        let started = ContinuousClock.now
        gateway.backplane.publish(frame, to: address) { result in
            metrics.publishCompleted(after: ContinuousClock.now - started)
            let error: ProtocolError
            switch result {
            case .success(.noRecipient) where noRecipient != nil:
                events?.undelivered(frame, to: address)
                error = ProtocolError(.recipientOffline, "no gateway hosts the recipient", correlationID: correlationID)
            case .success:
                handle.withSession { $0.write(ServerFrame.ack(correlationID: correlationID), counted: .ack) }
                return
            case .failure(let failure) where failure.code == .overloaded:
                error = ProtocolError(.backplaneUnavailable, "the backplane is stalled; the message may not have been sent, try again later", correlationID: correlationID)
            case .failure(let failure) where failure.code == .unavailable || failure.code == .closed:
                error = ProtocolError(.backplaneUnavailable, "the backplane is unavailable; the message was not sent", correlationID: correlationID)
            case .failure(let failure):
                logger.error("publish failed", metadata: [LoggingKeys.connectionID: "\(connectionID)", LoggingKeys.errorType: "\(failure)"])
                error = ProtocolError(.internal, "the message could not be sent", correlationID: correlationID)
            }
            handle.withSession { $0.reject(error) }
        }
    }

    private func reject(_ error: ProtocolError) {
        write(ServerFrame.error(error), counted: .error)
    }

    // MARK: Writing

    /// Writes a frame delivered by the gateway (another session's message).
    func send(_ frame: ByteBuffer) {
        write(frame)
    }

    private func write(_ text: ByteBuffer) {
        writeFrame(WebSocketFrame(fin: true, opcode: .text, data: text))
    }

    /// Writes a frame of the gateway's own (ack, error, pong, welcome) and counts it.
    private func write(_ text: ByteBuffer, counted kind: GatewayMetrics.OutboundKind) {
        gateway.metrics.sent(kind)
        write(text)
    }

    private func writeFrame(_ frame: WebSocketFrame) {
        guard let context, case .open = phase else { return }
        guard context.channel.isWritable else {
            gateway.logger.info(
                "slow consumer: outbound buffer full, closing",
                metadata: [LoggingKeys.connectionID: "\(connectionID)", LoggingKeys.userID: "\(user)"]
            )
            gateway.metrics.slowConsumerClosed()
            return close(code: CloseCode.slowConsumer, reason: .slowConsumer)
        }
        context.write(wrapOutboundOut(frame), promise: nil)
        if isReading {
            needsFlush = true
        } else {
            context.flush()
        }
    }

    /// How long a close frame may take to reach a client before the socket is closed anyway.
    static let closeFrameTimeout = TimeAmount.seconds(2)

    /// Sends a close frame with `code` (and `message` as its reason text), then closes
    /// the connection once it is written (or after ``closeFrameTimeout``, for a client
    /// that does not read). A slow consumer is closed at once: it does not read, so the
    /// close frame cannot get through behind its full buffer.
    ///
    /// Works before `welcome` too (a drain, a stalled bind): the session never opens then.
    func close(code: WebSocketErrorCode, reason: GatewayMetrics.CloseReason? = nil, message: String? = nil) {
        guard let context else { return }
        if case .closed = phase { return }
        phase = .closed
        let reason = reason ?? Self.closeReason(for: code)
        closeReason = reason
        var payload = context.channel.allocator.buffer(capacity: 2)
        payload.write(webSocketErrorCode: code)
        // RFC 6455 5.5: a control frame's payload is at most 125 bytes, 2 of them the code.
        if let message { payload.writeString(String(decoding: message.utf8.prefix(123), as: UTF8.self)) }
        let channel = context.channel
        let frame = WebSocketFrame(fin: true, opcode: .connectionClose, data: payload)
        context.writeAndFlush(wrapOutboundOut(frame)).whenComplete { _ in
            channel.close(promise: nil)
        }
        if reason == .slowConsumer {
            // Decided by the reason, not the number: 1008 is also token expiry and rate abuse,
            // which do get the close handshake.
            channel.close(promise: nil)
        } else {
            context.eventLoop.scheduleTask(in: Self.closeFrameTimeout) { channel.close(promise: nil) }
        }
        sessionEnded()
    }
}

extension SessionHandler {
    /// The metrics reason of a close the gateway starts.
    static func closeReason(for code: WebSocketErrorCode) -> GatewayMetrics.CloseReason {
        switch code {
        case CloseCode.goingAway: .idle
        case CloseCode.policyViolation: .policy
        case CloseCode.protocolError, CloseCode.invalidUTF8, CloseCode.messageTooBig: .protocolError
        case CloseCode.serviceRestart: .drain
        case CloseCode.tryAgainLater: .backplane
        default: .serverError
        }
    }
}

@available(*, unavailable)
extension SessionHandler: Sendable {}

/// A token bucket: `burst` messages at once, refilled at `rate` per second.
struct RateLimiter {
    enum Decision {
        case allowed
        case limited
        /// Limited `closeAfter` times in a row: the client does not slow down.
        case abusive
    }

    private let rate: Double
    private let burst: Double
    private var tokens: Double
    private var refilledAt = NIODeadline.now()
    private var limitedInARow = 0

    init(rate: Double, burst: Double) {
        self.rate = rate
        self.burst = max(1, burst)
        self.tokens = max(1, burst)
    }

    mutating func take(now: NIODeadline, closeAfter: Int) -> Decision {
        let elapsed = Double((now - refilledAt).nanoseconds) / 1e9
        tokens = min(burst, tokens + elapsed * rate)
        refilledAt = now
        if tokens >= 1 {
            tokens -= 1
            limitedInARow = 0
            return .allowed
        }
        limitedInARow += 1
        return limitedInARow >= closeAfter ? .abusive : .limited
    }
}

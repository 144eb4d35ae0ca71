import Foundation
import NIOCore
import NIOWebSocket
import SwitchboardBackplane
import SwitchboardProtocol
import SwitchboardRegistry

/// Every decision one client session makes, as a value: the phase, RFC 6455 reassembly,
/// the rate limiters, what is held before `welcome`, the rooms joined, and the close
/// handshake. Each input returns the actions to perform; ``SessionHandler`` feeds the
/// inputs from NIO and performs the actions, and decides nothing itself.
///
/// Time comes in with the inputs (`now`), so tests drive the limiter, the idle timeout
/// and token expiry with made-up instants and no sockets.
struct SessionStateMachine {
    /// What the session handler does next, in order.
    enum Action {
        /// Write a text frame (a frame of the gateway's own is counted by `kind`).
        case writeText(ByteBuffer, counted: GatewayMetrics.OutboundKind?)
        /// Write a ping or pong.
        case writeControl(WebSocketFrame)
        /// Count a frame the client sent.
        case received(GatewayMetrics.InboundKind)
        /// Bind the user's address on the backplane; feed ``userBindCompleted(_:)``.
        case bindUser
        /// Feed ``userBindTimedOut()`` after this long.
        case scheduleBindTimeout(TimeAmount)
        /// The user's bind completed: its timeout is moot.
        case cancelBindTimeout
        /// Feed ``expiryCheck(wallClock:)`` after this long.
        case scheduleExpiryCheck(TimeAmount)
        /// Add the membership in the registry; feed ``joinRegistered(_:correlationID:wasMember:result:)``.
        /// The machine counts the room as joined from here on (a publish that follows is
        /// allowed), and takes that back if the registry refuses.
        case register(join: RoomID, correlationID: CorrelationID?, wasMember: Bool)
        /// Bind the room on the backplane; feed ``roomBindCompleted(_:correlationID:result:)``.
        case bindRoom(RoomID, correlationID: CorrelationID?)
        /// Remove the membership from the registry (and release the room's binding).
        case leave(RoomID)
        /// Hand a message to the backplane; feed ``publishCompleted(_:request:)``.
        case publish(PublishRequest)
        /// Tell the event sink that a direct message reached no one.
        case reportUndelivered(ByteBuffer, to: BackplaneAddress)
        /// Log something that happened to the session.
        case log(LogEvent)
        /// Write a close frame with `code` and `message`, then close the socket: at once
        /// when `closeWhenWritten` (the peer's close was answered), else when the peer
        /// answers (``frameReceived(_:now:)``) or ``closeHandshakeTimedOut()`` fires.
        case sendClose(code: WebSocketErrorCode, message: String?, closeWhenWritten: Bool)
        /// Feed ``closeHandshakeTimedOut()`` after this long.
        case scheduleCloseTimeout(TimeAmount)
        /// Close the socket now, without (more of) a close handshake.
        case closeSocket
        /// The session is over: leave the registry, cancel timers, count the close.
        /// Exactly once per session.
        case end(GatewayMetrics.CloseReason)
    }

    /// What the session logs: the handler picks the level and words.
    enum LogEvent {
        case tokenExpired
        case idleTimeout
        case tooMuchBeforeWelcome
        case rateLimitAbuse
        case userBindTimedOut
        case userBindFailed(BackplaneError)
        case slowConsumer
        /// A publish that failed for a reason the client is not told in detail.
        case publishFailed(BackplaneError)
    }

    /// A message handed to the backplane, and what its outcome needs.
    struct PublishRequest {
        var frame: ByteBuffer
        var address: BackplaneAddress
        var correlationID: CorrelationID?
        /// The error for `.noRecipient`: `recipient_offline` for a direct, nil (an ack) for a room.
        var noRecipient: ErrorCode?
    }

    enum Phase: Equatable {
        /// Waiting for the user's binding; frames are held until `welcome` is out.
        case connecting
        case open
        /// The gateway sent a close frame and waits for the client's.
        case closing
        /// Nothing more is read or written.
        case closed
    }

    /// The limits a session enforces (from ``GatewayConfiguration``).
    struct Limits {
        var maximumMessageSize: Int
        var maximumFrameSize: Int
        var maximumOutboundBytes: Int
        var maximumRoomsPerConnection: Int
        var maximumFramesBeforeWelcome: Int
        var messageRate: Double
        var messageBurst: Double
        var rateLimitedCloseAfter: Int
        var joinRate: Double
        var joinBurst: Double
        var userBindTimeout: Duration
        var pingInterval: Duration
        var idleTimeout: Duration
        /// How long the gateway waits for the client's close frame after sending its own.
        var closeHandshakeTimeout: Duration = .seconds(2)

        init(_ configuration: GatewayConfiguration) {
            maximumMessageSize = configuration.maximumMessageSize
            maximumFrameSize = configuration.maximumFrameSize
            maximumOutboundBytes = configuration.maximumOutboundBytes
            maximumRoomsPerConnection = configuration.maximumRoomsPerConnection
            maximumFramesBeforeWelcome = configuration.maximumFramesBeforeWelcome
            messageRate = configuration.messageRate
            messageBurst = configuration.messageBurst
            rateLimitedCloseAfter = configuration.rateLimitedCloseAfter
            joinRate = configuration.joinRate
            joinBurst = configuration.joinBurst
            userBindTimeout = configuration.userBindTimeout
            pingInterval = configuration.pingInterval
            idleTimeout = configuration.idleTimeout
        }
    }

    let identity: Identity
    let gatewayID: String
    let limits: Limits
    private(set) var phase: Phase = .connecting
    private var reader: WebSocketReader
    private var rateLimiter: RateLimiter
    /// Joins of new rooms: each may be a broker bind, and the broker takes only a few thousand a second.
    private var joinLimiter: RateLimiter
    /// Frames that arrived before `welcome`, handled once the user is bound. Outside
    /// ``Phase`` so that appending does not copy them.
    private var heldFrames: [WebSocketFrame] = []
    private var heldFrameBytes = 0
    /// Messages delivered to the user before its `welcome` is out, written right after it.
    private var heldDeliveries: [ByteBuffer] = []
    private var heldDeliveryBytes = 0
    /// The rooms this connection is a member of (as the registry has them).
    private(set) var rooms: Set<RoomID> = []
    /// The last time anything arrived from the client (frames, pongs), for the idle timeout.
    private var lastHeard: NIODeadline
    private var isWritable = true
    /// Set once ``Action/end(_:)`` was returned.
    private(set) var endReason: GatewayMetrics.CloseReason?

    init(identity: Identity, gatewayID: String, limits: Limits, now: NIODeadline) {
        self.identity = identity
        self.gatewayID = gatewayID
        self.limits = limits
        self.reader = WebSocketReader(
            maximumMessageSize: limits.maximumMessageSize,
            maximumFrameSize: limits.maximumFrameSize,
            keepsBinary: false
        )
        self.rateLimiter = RateLimiter(rate: limits.messageRate, burst: limits.messageBurst, now: now)
        self.joinLimiter = RateLimiter(rate: limits.joinRate, burst: limits.joinBurst, now: now)
        self.lastHeard = now
    }

    var user: UserID { identity.user }

    // MARK: Inputs

    /// The session is in the pipeline: bind the user, bound the wait, arm token expiry.
    mutating func started(wallClock: Double) -> [Action] {
        // The timers first: a backplane may complete (or fail) the bind inline, ending the session.
        var actions: [Action] = [.scheduleBindTimeout(TimeAmount(limits.userBindTimeout))]
        actions += expiryCheck(wallClock: wallClock)
        // An expired token closed the session already: no broker bind for it.
        if phase == .connecting { actions.append(.bindUser) }
        return actions
    }

    /// The token's expiry timer fired (or the session started): close if `exp` passed,
    /// else check again later; a far-away `exp` re-arms in steps (``TokenLifetime``).
    mutating func expiryCheck(wallClock: Double) -> [Action] {
        guard let expiresAt = identity.expiresAt, phase == .connecting || phase == .open else { return [] }
        switch TokenLifetime.decide(expiresAt: expiresAt.timeIntervalSince1970, now: wallClock) {
        case .expired:
            return [.log(.tokenExpired)] + close(CloseCode.policyViolation, reason: .policy, message: "token expired")
        case .checkAfter(let delay):
            return [.scheduleExpiryCheck(TimeAmount(delay))]
        }
    }

    mutating func userBindCompleted(_ result: Result<Void, BackplaneError>) -> [Action] {
        guard phase == .connecting else { return [] }
        switch result {
        case .success:
            phase = .open
            var actions: [Action] = [.cancelBindTimeout, .writeText(ServerFrame.welcome(user: user, gateway: gatewayID), counted: .welcome)]
            for delivery in heldDeliveries { actions.append(.writeText(delivery, counted: nil)) }
            heldDeliveries = []
            heldDeliveryBytes = 0
            let held = heldFrames
            heldFrames = []
            heldFrameBytes = 0
            for frame in held where phase == .open {
                actions += read(frame)
            }
            return actions
        case .failure(let error):
            return [.cancelBindTimeout, .log(.userBindFailed(error))] + refuseUnreachableUser("the backplane cannot reach this user now")
        }
    }

    mutating func userBindTimedOut() -> [Action] {
        guard phase == .connecting else { return [] }
        return [.log(.userBindTimedOut)] + refuseUnreachableUser("the backplane did not make this user reachable in time")
    }

    private mutating func refuseUnreachableUser(_ message: String) -> [Action] {
        heldFrames = []
        heldDeliveries = []
        phase = .open
        var actions = [Action.writeText(ServerFrame.error(ProtocolError(.backplaneUnavailable, message)), counted: .error)]
        actions += close(CloseCode.tryAgainLater, reason: .backplane, message: "backplane unavailable")
        return actions
    }

    /// A frame from the client.
    mutating func frameReceived(_ frame: WebSocketFrame, now: NIODeadline) -> [Action] {
        lastHeard = now
        switch phase {
        case .connecting:
            heldFrames.append(frame)
            heldFrameBytes += frame.length
            if heldFrames.count > limits.maximumFramesBeforeWelcome || heldFrameBytes > limits.maximumFrameSize {
                heldFrames = []
                return [.log(.tooMuchBeforeWelcome)] + close(CloseCode.policyViolation, reason: .policy, message: "too many messages before welcome")
            }
            return []
        case .open:
            return read(frame, now: now)
        case .closing:
            // Only the client's close frame matters now: it completes the handshake.
            return frame.opcode == .connectionClose ? finish() : []
        case .closed:
            return []
        }
    }

    /// The client closed its half of the TCP connection: it is gone.
    mutating func inputClosed() -> [Action] {
        guard phase != .closed else { return [] }
        return finish(reason: .disconnected)
    }

    /// The socket closed (by either side).
    mutating func channelClosed() -> [Action] {
        phase = .closed
        return ended(.disconnected)
    }

    /// The channel's outbound buffer crossed a watermark.
    mutating func writabilityChanged(isWritable: Bool) {
        self.isWritable = isWritable
    }

    /// A message the gateway delivers to this client (another session's).
    mutating func deliver(_ frame: ByteBuffer) -> [Action] {
        switch phase {
        case .connecting:
            heldDeliveries.append(frame)
            heldDeliveryBytes += frame.readableBytes
            return heldDeliveryBytes > limits.maximumOutboundBytes ? slowConsumer() : []
        case .open:
            return write(frame, counted: nil)
        case .closing, .closed:
            return []
        }
    }

    /// The keepalive sweep: ping a quiet client, close one silent past the idle timeout.
    mutating func keepaliveTick(now: NIODeadline) -> [Action] {
        guard phase == .open else { return [] }
        let silent = now - lastHeard
        if silent >= TimeAmount(limits.idleTimeout) {
            return [.log(.idleTimeout)] + close(CloseCode.goingAway, reason: .idle, message: nil)
        }
        if silent >= TimeAmount(limits.pingInterval) {
            return writeControl(WebSocketFrame(fin: true, opcode: .ping, data: ByteBuffer()))
        }
        return []
    }

    mutating func joinRegistered(_ room: RoomID, correlationID: CorrelationID?, wasMember: Bool, result: JoinResult) -> [Action] {
        guard phase == .open else { return [] }
        switch result {
        case .tooManyRooms, .unknownConnection, .connectionLeaving:
            if !wasMember { rooms.remove(room) }
        case .joined, .alreadyMember:
            break
        }
        switch result {
        case .tooManyRooms:
            return reject(
                ProtocolError(.forbidden, "a connection may be in at most \(limits.maximumRoomsPerConnection) rooms", correlationID: correlationID)
            )
        case .unknownConnection:
            return []
        case .connectionLeaving:
            return reject(ProtocolError(.backplaneUnavailable, "this gateway is shutting down; reconnect", correlationID: correlationID))
        case .joined, .alreadyMember:
            return [.bindRoom(room, correlationID: correlationID)]
        }
    }

    mutating func roomBindCompleted(_ room: RoomID, correlationID: CorrelationID?, result: Result<Void, BackplaneError>) -> [Action] {
        guard phase == .open else { return [] }
        switch result {
        case .success:
            return write(ServerFrame.ack(correlationID: correlationID), counted: .ack)
        case .failure:
            // Undo the membership: the room is not reachable through this gateway.
            rooms.remove(room)
            return [.leave(room)]
                + reject(ProtocolError(.backplaneUnavailable, "the backplane cannot bind the room now", correlationID: correlationID))
        }
    }

    mutating func publishCompleted(_ result: Result<PublishOutcome, BackplaneError>, request: PublishRequest) -> [Action] {
        let correlationID = request.correlationID
        var actions: [Action] = []
        let error: ProtocolError
        switch result {
        case .success(.noRecipient) where request.noRecipient != nil:
            actions.append(.reportUndelivered(request.frame, to: request.address))
            error = ProtocolError(.recipientOffline, "no gateway hosts the recipient", correlationID: correlationID)
        case .success:
            return write(ServerFrame.ack(correlationID: correlationID), counted: .ack)
        case .failure(let failure) where failure.code == .overloaded:
            error = ProtocolError(
                .backplaneUnavailable,
                "the backplane is stalled; the message may not have been sent, try again later",
                correlationID: correlationID
            )
        case .failure(let failure) where failure.code == .unavailable || failure.code == .closed:
            error = ProtocolError(.backplaneUnavailable, "the backplane is unavailable; the message was not sent", correlationID: correlationID)
        case .failure(let failure):
            actions.append(.log(.publishFailed(failure)))
            error = ProtocolError(.internal, "the message could not be sent", correlationID: correlationID)
        }
        return actions + reject(error)
    }

    /// The gateway closes the session (drain, or any close decided outside the session).
    /// Works before `welcome` too: such a session never opens.
    mutating func closeRequested(code: WebSocketErrorCode, reason: GatewayMetrics.CloseReason, message: String? = nil) -> [Action] {
        close(code, reason: reason, message: message)
    }

    /// The client did not answer the gateway's close frame in time.
    mutating func closeHandshakeTimedOut() -> [Action] {
        phase == .closing ? finish() : []
    }

    // MARK: RFC 6455

    private mutating func read(_ frame: WebSocketFrame) -> [Action] {
        read(frame, now: lastHeard)
    }

    private mutating func read(_ frame: WebSocketFrame, now: NIODeadline) -> [Action] {
        switch reader.read(frame) {
        case .needMore, .pong:
            return []
        case .text(let message):
            return handleText(message, now: now)
        case .binary:
            return [.received(.binary)] + reject(ProtocolError(.invalidMessage, "binary frames are not supported; send JSON text frames"))
        case .tooLarge:
            return reject(ProtocolError(.tooLarge, "messages are limited to \(limits.maximumMessageSize) bytes"))
        case .ping(let payload):
            return writeControl(WebSocketFrame(fin: true, opcode: .pong, data: payload))
        case .close(let answer):
            return answerClose(answer)
        case .fail(let code):
            return close(code, reason: .protocolError, message: nil)
        }
    }

    /// Echoes the client's close (RFC 6455 5.5.1) and closes the socket once it is written:
    /// the server closes TCP first (7.1.1).
    private mutating func answerClose(_ code: WebSocketErrorCode) -> [Action] {
        phase = .closed
        return [.sendClose(code: code, message: nil, closeWhenWritten: true)] + ended(.client)
    }

    // MARK: Wire protocol v1

    private mutating func handleText(_ message: ByteBuffer, now: NIODeadline) -> [Action] {
        switch rateLimiter.take(now: now, closeAfter: limits.rateLimitedCloseAfter) {
        case .allowed:
            break
        case .limited:
            return [.received(.rateLimited)]
                + reject(ProtocolError(.rateLimited, "slow down: at most \(Int(limits.messageRate)) messages per second"))
        case .abusive:
            return [.log(.rateLimitAbuse)] + close(CloseCode.policyViolation, reason: .policy, message: "rate limit exceeded")
        }
        switch ClientFrame.decode(message) {
        case .failure(let error):
            return [.received(.invalid)] + reject(error)
        case .success(let frame):
            return handle(frame, now: now)
        }
    }

    private mutating func handle(_ frame: ClientFrame, now: NIODeadline) -> [Action] {
        switch frame {
        case .ping(let id):
            return [.received(.ping)] + write(ServerFrame.pong(correlationID: id), counted: .pong)

        case .direct(let recipient, let data, let id):
            let encoded = ServerFrame.direct(from: user, to: recipient, data: data)
            let request = PublishRequest(frame: encoded, address: .user(recipient), correlationID: id, noRecipient: .recipientOffline)
            return [.received(.direct), .publish(request)]

        case .publish(let room, let data, let id):
            guard rooms.contains(room) else {
                return [.received(.publish)] + reject(ProtocolError(.notMember, "join the room before publishing to it", correlationID: id))
            }
            let encoded = ServerFrame.room(room, from: user, data: data)
            return [.received(.publish), .publish(PublishRequest(frame: encoded, address: .room(room), correlationID: id, noRecipient: nil))]

        case .join(let room, let id):
            return [.received(.join)] + join(room, correlationID: id, now: now)

        case .leave(let room, let id):
            rooms.remove(room)
            return [.received(.leave), .leave(room)] + write(ServerFrame.ack(correlationID: id), counted: .ack)
        }
    }

    private mutating func join(_ room: RoomID, correlationID: CorrelationID?, now: NIODeadline) -> [Action] {
        guard identity.rooms.allows(room) else {
            return reject(ProtocolError(.forbidden, "the token does not allow this room", correlationID: correlationID))
        }
        let wasMember = rooms.contains(room)
        if !wasMember {
            // Only a new membership can cost a broker bind; re-joining a room is free.
            switch joinLimiter.take(now: now, closeAfter: .max) {
            case .allowed:
                break
            case .limited, .abusive:
                return [.received(.rateLimited)]
                    + reject(ProtocolError(.rateLimited, "slow down: at most \(Int(limits.joinRate)) joins per second", correlationID: correlationID))
            }
        }
        // Counted as joined at once, so that frames handled in the same batch (those held
        // before welcome) see the membership: a publish right after the join is allowed.
        rooms.insert(room)
        return [.register(join: room, correlationID: correlationID, wasMember: wasMember)]
    }

    // MARK: Writing and closing

    private mutating func reject(_ error: ProtocolError) -> [Action] {
        write(ServerFrame.error(error), counted: .error)
    }

    private mutating func write(_ text: ByteBuffer, counted kind: GatewayMetrics.OutboundKind?) -> [Action] {
        guard phase == .open else { return [] }
        guard isWritable else { return slowConsumer() }
        return [.writeText(text, counted: kind)]
    }

    private mutating func writeControl(_ frame: WebSocketFrame) -> [Action] {
        guard phase == .open else { return [] }
        guard isWritable else { return slowConsumer() }
        return [.writeControl(frame)]
    }

    /// The client does not read and its buffer is full: closed at once, since a close frame
    /// could not get through behind the full buffer.
    private mutating func slowConsumer() -> [Action] {
        phase = .closed
        heldDeliveries = []
        return [.log(.slowConsumer), .closeSocket] + ended(.slowConsumer)
    }

    /// Starts the close handshake: a close frame, then the client's answer or a timeout.
    /// Decided by the reason, not the number: 1008 is a slow consumer (no handshake, see
    /// ``slowConsumer()``) and also token expiry and rate abuse (with one).
    private mutating func close(_ code: WebSocketErrorCode, reason: GatewayMetrics.CloseReason, message: String?) -> [Action] {
        guard phase == .connecting || phase == .open else { return [] }
        if reason == .slowConsumer { return slowConsumer() }
        phase = .closing
        heldFrames = []
        heldDeliveries = []
        return [
            .sendClose(code: code, message: message, closeWhenWritten: false),
            .scheduleCloseTimeout(TimeAmount(limits.closeHandshakeTimeout)),
        ] + ended(reason)
    }

    private mutating func finish(reason: GatewayMetrics.CloseReason = .disconnected) -> [Action] {
        phase = .closed
        return [.closeSocket] + ended(reason)
    }

    private mutating func ended(_ reason: GatewayMetrics.CloseReason) -> [Action] {
        guard endReason == nil else { return [] }
        endReason = reason
        return [.end(reason)]
    }
}

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
    private var refilledAt: NIODeadline
    private var limitedInARow = 0

    init(rate: Double, burst: Double, now: NIODeadline) {
        self.rate = rate
        self.burst = max(1, burst)
        self.tokens = max(1, burst)
        self.refilledAt = now
    }

    mutating func take(now: NIODeadline, closeAfter: Int) -> Decision {
        let elapsed = Double(max(0, (now - refilledAt).nanoseconds)) / 1e9
        tokens = min(burst, tokens + elapsed * rate)
        refilledAt = max(refilledAt, now)
        if tokens >= 1 {
            tokens -= 1
            limitedInARow = 0
            return .allowed
        }
        limitedInARow += 1
        return limitedInARow >= closeAfter ? .abusive : .limited
    }
}

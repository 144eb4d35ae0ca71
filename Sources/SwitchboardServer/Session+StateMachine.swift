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
        /// Tell the registry whether this member connection gets the room's presence events.
        case presenceEvents(RoomID, wanted: Bool)
        /// Hand a message to the backplane; feed ``publishCompleted(_:request:)``.
        case publish(PublishRequest)
        /// Tell the event sink that a direct message reached no one.
        case reportUndelivered(ByteBuffer, to: BackplaneAddress)
        /// Read a stream; feed ``historyRead(_:result:)`` with the request.
        case readHistory(HistoryRead)
        /// Ask the presence store who is in the room; feed ``presenceRead(_:correlationID:result:)``.
        case readPresence(RoomID, correlationID: CorrelationID?)
        /// Feed ``gapCheck(_:)`` after this long.
        case scheduleGapCheck(BackplaneAddress, TimeAmount)
        /// Count a `resume` / `join` with `since` by outcome ("recovered" or a
        /// ``RecoveryDecision/NotRecovered`` reason), and the messages it replayed.
        case countRecovery(outcome: String, replayed: Int)
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
        case historyReadFailed(BackplaneAddress, HistoryError)
        case historyWriteFailed(BackplaneAddress, HistoryError)
        case presenceReadFailed(RoomID, PresenceError)
        /// A stream cannot be continued on this connection (a gap history cannot fill, or a
        /// new epoch): the client reconnects and resumes.
        case insufficientState(BackplaneAddress)
    }

    /// A history read and what its result is for. `token` ties the result to the cursor
    /// that asked: a result for a cursor that was replaced (leave, join again) or moved on
    /// (a resume took over a gap fill) is dropped.
    struct HistoryRead: Equatable {
        var address: BackplaneAddress
        /// The messages after this offset; nil: only the top.
        var after: UInt64?
        var purpose: StreamCursor.Purpose
        var token: Int
        /// A gap fill reads only the missing offsets: at most this many, even if more are
        /// missing up to the top. nil: all or nothing, up to the recovery limit.
        var partialLimit: Int?
    }

    /// A message handed to the backplane, and what its outcome needs.
    struct PublishRequest {
        /// The frame without its closing brace: the history store, or the handler with
        /// history off, completes it.
        var head: ByteBuffer
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
        /// Streams carry offsets, and `resume` / `since` work.
        var history: Bool
        /// The most messages a `resume` or a `join` with `since` replays.
        var recoveryLimit: Int
        /// How long a message waits for a missing predecessor before history is read.
        var gapWait: Duration
        /// The most bytes of messages waiting per stream (out of order, or behind a resume).
        var maximumPendingBytes: Int
        /// `presence` answers and `"presence": true` joins are served.
        var presence: Bool

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
            history = configuration.history != nil
            recoveryLimit = configuration.recoveryLimit
            gapWait = configuration.historyGapWait
            maximumPendingBytes = configuration.maximumOutboundBytes
            presence = configuration.presence != nil
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
    private var heldDeliveries: [(frame: ByteBuffer, address: BackplaneAddress, position: StreamPosition?)] = []
    private var heldDeliveryBytes = 0
    /// The rooms this connection is a member of (as the registry has them).
    private(set) var rooms: Set<RoomID> = []
    /// The rooms whose `joined` / `left` events this connection gets (joined with `"presence": true`).
    private(set) var presenceRooms: Set<RoomID> = []
    /// With history on: the user's stream and each joined room's.
    private(set) var streams: [BackplaneAddress: StreamCursor] = [:]
    /// The token of the next history read (``HistoryRead/token``).
    private var nextReadToken = 1
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
        case .success where limits.history:
            // The welcome carries the stream's top: read it first (live messages wait in `heldDeliveries`).
            streams[.user(user)] = StreamCursor(mode: .opening(.welcome))
            return [.cancelBindTimeout] + read(.user(user), after: nil, purpose: .welcome)
        case .success:
            return [.cancelBindTimeout] + welcome(position: nil)
        case .failure(let error):
            return [.cancelBindTimeout, .log(.userBindFailed(error))] + refuseUnreachableUser("the backplane cannot reach this user now")
        }
    }

    /// Opens the session: `welcome`, then what was delivered and sent before it.
    private mutating func welcome(position: StreamPosition?) -> [Action] {
        phase = .open
        var actions: [Action] = [.writeText(ServerFrame.welcome(user: user, gateway: gatewayID, position: position), counted: .welcome)]
        let deliveries = heldDeliveries
        heldDeliveries = []
        heldDeliveryBytes = 0
        for delivery in deliveries where phase == .open {
            actions += deliverOpen(delivery.frame, address: delivery.address, position: delivery.position)
        }
        let held = heldFrames
        heldFrames = []
        heldFrameBytes = 0
        for frame in held where phase == .open {
            actions += read(frame)
        }
        return actions
    }

    mutating func userBindTimedOut() -> [Action] {
        guard phase == .connecting else { return [] }
        return [.log(.userBindTimedOut)] + refuseUnreachableUser("the backplane did not make this user reachable in time")
    }

    private mutating func refuseUnreachableUser(
        _ message: String,
        code: ErrorCode = .backplaneUnavailable,
        reason: GatewayMetrics.CloseReason = .backplane
    ) -> [Action] {
        heldFrames = []
        heldDeliveries = []
        phase = .open
        var actions = [Action.writeText(ServerFrame.error(ProtocolError(code, message)), counted: .error)]
        actions += close(CloseCode.tryAgainLater, reason: reason, message: reason == .history ? "history unavailable" : "backplane unavailable")
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

    /// A message the gateway delivers to this client (another session's), published to
    /// `address`, at `position` in its stream when it has one.
    mutating func deliver(
        _ frame: ByteBuffer,
        address: BackplaneAddress = .broadcast,
        position: StreamPosition? = nil,
        isPresenceEvent: Bool = false
    ) -> [Action] {
        if isPresenceEvent {
            // Not part of the room's stream: no offset, no order to keep, only for those who asked.
            guard phase == .open, case .room(let room) = address, presenceRooms.contains(room) else { return [] }
            // Not about the connection's own user (it knows it joined, from the ack): whether
            // its own `joined` would arrive would depend on the room's bind racing the event.
            guard !ServerFrame.isPresenceEvent(frame, about: user) else { return [] }
            return write(frame, counted: .presenceEvent)
        }
        switch phase {
        case .connecting:
            heldDeliveries.append((frame, address, position))
            heldDeliveryBytes += frame.readableBytes
            return heldDeliveryBytes > limits.maximumOutboundBytes ? slowConsumer() : []
        case .open:
            return deliverOpen(frame, address: address, position: position)
        case .closing, .closed:
            return []
        }
    }

    /// Writes a message in its stream's order (history on), or as it comes.
    private mutating func deliverOpen(_ frame: ByteBuffer, address: BackplaneAddress, position: StreamPosition?) -> [Action] {
        guard let position, var cursor = streams[address] else { return write(frame, counted: nil) }
        defer { if streams[address] != nil { streams[address] = cursor } }
        switch cursor.mode {
        case .opening, .recovering:
            // Sorted out when the read returns: at or below the top it is in the replay (or
            // before the client's position), above it is written after.
            guard cursor.hold(frame, offset: position.offset) else { return [] }
            return cursor.pendingBytes > limits.maximumPendingBytes ? slowConsumer() : []
        case .live, .fillingGap:
            guard position.epoch == cursor.epoch else {
                // The store lost the stream and began another: offsets no longer continue.
                streams[address] = nil
                return insufficientState(address)
            }
            guard position.offset > cursor.delivered else { return [] }
            if position.offset == cursor.delivered + 1, cursor.mode == .live {
                cursor.delivered += 1
                var actions = write(frame, counted: nil)
                for next in cursor.takeInOrder() { actions += write(next, counted: nil) }
                return actions
            }
            guard cursor.hold(frame, offset: position.offset) else { return [] }
            if cursor.pendingBytes > limits.maximumPendingBytes { return slowConsumer() }
            // Reordered or lost: wait a little for the predecessor before reading history.
            guard !cursor.gapCheckArmed, cursor.mode == .live else { return [] }
            cursor.gapCheckArmed = true
            return [.scheduleGapCheck(address, TimeAmount(limits.gapWait))]
        }
    }

    /// The gap wait of `address` passed: if the predecessor still has not come, read it.
    mutating func gapCheck(_ address: BackplaneAddress) -> [Action] {
        guard phase == .open, var cursor = streams[address] else { return [] }
        cursor.gapCheckArmed = false
        guard cursor.mode == .live, cursor.hasGap, let next = cursor.pending.keys.min() else {
            streams[address] = cursor
            return []
        }
        cursor.mode = .fillingGap
        // Only what is missing before the first waiting message: on a busy stream the top
        // may be far ahead, and what lies past the gap is already here or on its way.
        let missing = Int(clamping: next - cursor.delivered - 1)
        cursor.gapTarget = next - 1
        streams[address] = cursor
        return read(address, after: cursor.delivered, purpose: .gap, partialLimit: min(missing, limits.recoveryLimit))
    }

    /// Asks for a read on behalf of the cursor at `address`, which then waits for that one.
    private mutating func read(_ address: BackplaneAddress, after: UInt64?, purpose: StreamCursor.Purpose, partialLimit: Int? = nil) -> [Action] {
        let token = nextReadToken
        nextReadToken += 1
        streams[address]?.awaitedRead = token
        return [.readHistory(HistoryRead(address: address, after: after, purpose: purpose, token: token, partialLimit: partialLimit))]
    }

    /// A history read returned.
    mutating func historyRead(_ request: HistoryRead, result: Result<HistoryRange, HistoryError>) -> [Action] {
        let address = request.address
        let purpose = request.purpose
        guard var awaiting = streams[address], awaiting.awaitedRead == request.token else { return [] }
        awaiting.awaitedRead = nil
        streams[address] = awaiting
        if purpose == .welcome {
            guard phase == .connecting, var cursor = streams[address] else { return [] }
            switch result {
            case .success(let range):
                cursor.open(at: range.top)
                streams[address] = cursor
                var actions = welcome(position: range.top)
                // Held before welcome: those above the top, in order.
                actions += flushPending(address)
                return actions
            case .failure(let error):
                return [.log(.historyReadFailed(address, error))]
                    + refuseUnreachableUser("the history store cannot be reached now", code: .historyUnavailable, reason: .history)
            }
        }
        guard phase == .open, var cursor = streams[address] else { return [] }
        switch (purpose, result) {
        case (.welcome, _):
            return []

        case (.gap, .success(let range)):
            guard range.top.epoch == cursor.epoch else {
                streams[address] = nil
                return insufficientState(address)
            }
            for entry in range.entries where entry.offset > cursor.delivered && cursor.pending[entry.offset] == nil {
                cursor.pending[entry.offset] = entry.frame
                cursor.pendingBytes += entry.frame.readableBytes
            }
            cursor.mode = .live
            cursor.gapRetried = false
            let frames = cursor.takeInOrder()
            guard cursor.delivered >= cursor.gapTarget else {
                // History no longer holds what was missing: this connection cannot go on in order.
                streams[address] = nil
                return insufficientState(address)
            }
            streams[address] = cursor
            // A gap further on (a newer reorder) gets its own wait.
            return frames.flatMap { write($0, counted: nil) } + flushPending(address)

        case (.gap, .failure(let error)):
            guard !cursor.gapRetried else {
                streams[address] = nil
                return [.log(.historyReadFailed(address, error))] + insufficientState(address)
            }
            // One more wait and read before giving up on the connection: a blip of the store.
            cursor.gapRetried = true
            cursor.mode = .live
            streams[address] = cursor
            return [.log(.historyReadFailed(address, error))] + flushPending(address)

        case (.join(let correlationID, let since), .success(let range)):
            if case .opening = cursor.mode { cursor.open(at: range.top) }
            guard let since else {
                cursor.mode = .live
                streams[address] = cursor
                return write(ServerFrame.ack(correlationID: correlationID, position: cursor.position), counted: .ack) + flushPending(address)
            }
            streams[address] = cursor
            return recover(address, since: since, range: range, correlationID: correlationID)

        case (.resume(let correlationID, let since), .success(let range)):
            return recover(address, since: since, range: range, correlationID: correlationID)

        case (.join(let correlationID, _), .failure(let error)) where cursor.mode != .opening(purpose):
            // A member's join with `since`: it stays a member, followed live as before.
            cursor.mode = .live
            cursor.resumed = false
            streams[address] = cursor
            return [.log(.historyReadFailed(address, error)), .countRecovery(outcome: "failed", replayed: 0)]
                + reject(ProtocolError(.historyUnavailable, "the history store cannot be reached now; join again", correlationID: correlationID))
                + flushPending(address)

        case (.join(let correlationID, let since), .failure(let error)):
            guard case .room(let room) = address else { return [] }
            // Undo the membership: without a position the room cannot be followed in order.
            streams[address] = nil
            rooms.remove(room)
            presenceRooms.remove(room)
            return [.log(.historyReadFailed(address, error)), .leave(room)] + (since == nil ? [] : [.countRecovery(outcome: "failed", replayed: 0)])
                + reject(ProtocolError(.historyUnavailable, "the history store cannot be reached now; join again", correlationID: correlationID))

        case (.resume(let correlationID, _), .failure(let error)):
            cursor.mode = .live
            cursor.resumed = false
            streams[address] = cursor
            return [.log(.historyReadFailed(address, error)), .countRecovery(outcome: "failed", replayed: 0)]
                + reject(ProtocolError(.historyUnavailable, "the history store cannot be reached now; resume again", correlationID: correlationID))
                + flushPending(address)
        }
    }

    /// Serves a `resume` or a `join` with `since` from a read: every message after `since`
    /// that this connection has not had, in order, then the ack; or, when that is not
    /// possible, nothing and an ack that says so, with the top to carry on from.
    private mutating func recover(_ address: BackplaneAddress, since: StreamPosition, range: HistoryRange, correlationID: CorrelationID?) -> [Action]
    {
        guard var cursor = streams[address] else { return [] }
        var actions: [Action] = []
        let ack: ByteBuffer
        if range.top.epoch != cursor.epoch {
            // The stream was re-created since this connection opened it: start over at its top.
            cursor.open(at: range.top)
            cursor.pending = [:]
            cursor.pendingBytes = 0
        }
        switch RecoveryDecision.decide(since: since, range: range, limit: limits.recoveryLimit) {
        case .recovered(let entries)
        where entries.reduce(0, { $0 + $1.frame.readableBytes }) > limits.maximumOutboundBytes:
            // More than a client's outbound buffer takes: it would be cut off as a slow consumer
            // halfway through. Not recovered, as for too many messages.
            cursor.delivered = max(cursor.delivered, range.top.offset)
            actions.append(.countRecovery(outcome: RecoveryDecision.NotRecovered.limitExceeded.rawValue, replayed: 0))
            ack = ServerFrame.ack(
                correlationID: correlationID,
                position: range.top,
                recovered: false,
                reason: RecoveryDecision.NotRecovered.limitExceeded.rawValue
            )
        case .recovered(let entries):
            // Offsets up to `base` were never written here; those after `delivered` not yet.
            let replay = entries.filter { $0.offset <= cursor.base || $0.offset > cursor.delivered }
            for entry in replay { actions += write(entry.frame, counted: nil) }
            cursor.delivered = max(cursor.delivered, range.top.offset)
            actions.append(.countRecovery(outcome: "recovered", replayed: replay.count))
            ack = ServerFrame.ack(correlationID: correlationID, position: range.top, recovered: true)
        case .notRecovered(let reason):
            cursor.delivered = max(cursor.delivered, range.top.offset)
            actions.append(.countRecovery(outcome: reason.rawValue, replayed: 0))
            ack = ServerFrame.ack(correlationID: correlationID, position: range.top, recovered: false, reason: reason.rawValue)
        }
        cursor.mode = .live
        streams[address] = cursor
        return actions + write(ack, counted: .ack) + flushPending(address)
    }

    /// Writes the waiting messages that now follow in order; arms the gap wait for the rest.
    private mutating func flushPending(_ address: BackplaneAddress) -> [Action] {
        guard var cursor = streams[address], cursor.mode == .live else { return [] }
        var actions = cursor.takeInOrder().flatMap { write($0, counted: nil) }
        if cursor.hasGap, !cursor.gapCheckArmed {
            cursor.gapCheckArmed = true
            actions.append(.scheduleGapCheck(address, TimeAmount(limits.gapWait)))
        }
        streams[address] = cursor
        return actions
    }

    /// Closes a connection whose stream cannot go on in order: the client reconnects, resumes,
    /// and is told whether that recovered it.
    private mutating func insufficientState(_ address: BackplaneAddress) -> [Action] {
        [.log(.insufficientState(address))] + close(CloseCode.tryAgainLater, reason: .history, message: "insufficient state; reconnect and resume")
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
            if !wasMember {
                rooms.remove(room)
                presenceRooms.remove(room)
                streams[.room(room)] = nil
            }
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
            guard let cursor = streams[.room(room)] else { return write(ServerFrame.ack(correlationID: correlationID), counted: .ack) }
            guard case .opening(let purpose) = cursor.mode else {
                // Already followed: a join without `since` is answered with where the room stands.
                return write(ServerFrame.ack(correlationID: correlationID, position: cursor.position), counted: .ack)
            }
            guard !cursor.readIssued else {
                // A second join while the first still waits for its position: that one answers with it.
                return write(ServerFrame.ack(correlationID: correlationID), counted: .ack)
            }
            streams[.room(room)]?.readIssued = true
            return read(.room(room), after: Self.readAfter(purpose), purpose: purpose)
        case .failure:
            // Undo the membership: the room is not reachable through this gateway.
            streams[.room(room)] = nil
            rooms.remove(room)
            presenceRooms.remove(room)
            return [.leave(room)]
                + reject(ProtocolError(.backplaneUnavailable, "the backplane cannot bind the room now", correlationID: correlationID))
        }
    }

    /// - Parameters:
    ///   - frame: the complete frame that was published.
    ///   - position: where the history store put it (history on).
    mutating func publishCompleted(
        _ result: Result<PublishOutcome, BackplaneError>,
        request: PublishRequest,
        frame: ByteBuffer,
        position: StreamPosition? = nil
    ) -> [Action] {
        let correlationID = request.correlationID
        var actions: [Action] = []
        let error: ProtocolError
        switch result {
        case .success(.noRecipient) where request.noRecipient != nil && position != nil:
            // Kept in the recipient's stream: it gets the message when it resumes.
            actions.append(.reportUndelivered(frame, to: request.address))
            return actions + write(ServerFrame.ackRecipientOffline(correlationID: correlationID, offset: position!.offset), counted: .ack)
        case .success(.noRecipient) where request.noRecipient != nil:
            actions.append(.reportUndelivered(frame, to: request.address))
            error = ProtocolError(.recipientOffline, "no gateway hosts the recipient", correlationID: correlationID)
        case .success:
            return write(ServerFrame.ack(correlationID: correlationID), counted: .ack)
        case .failure(let failure) where position != nil:
            // Kept in history already: sending it again would store a second copy with a new offset.
            actions.append(.log(.publishFailed(failure)))
            error = ProtocolError(
                .backplaneUnavailable,
                "the backplane did not take the message, but it is kept in history at offset \(position!.offset): recipients get it when they resume, or when their next message shows the gap; do not send it again",
                correlationID: correlationID
            )
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

    /// The presence store answered a `presence` query.
    mutating func presenceRead(_ room: RoomID, correlationID: CorrelationID?, result: Result<PresenceSnapshot, PresenceError>) -> [Action] {
        guard phase == .open else { return [] }
        switch result {
        case .success(let snapshot):
            let users = snapshot.users.map { (user: $0.user, connections: $0.connections) }
            return write(ServerFrame.presence(room: room, correlationID: correlationID, users: users, count: snapshot.count), counted: .presence)
        case .failure(let error):
            return [.log(.presenceReadFailed(room, error))]
                + reject(ProtocolError(.presenceUnavailable, "the presence store cannot be reached now; ask again", correlationID: correlationID))
        }
    }

    /// The history store did not take a message: nothing was published.
    mutating func historyWriteFailed(_ error: HistoryError, request: PublishRequest) -> [Action] {
        [.log(.historyWriteFailed(request.address, error))]
            + reject(
                ProtocolError(
                    .historyUnavailable,
                    "the history store cannot be reached now; the message was not sent",
                    correlationID: request.correlationID
                )
            )
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
            let encoded = ServerFrame.directHead(from: user, to: recipient, data: data)
            let request = PublishRequest(head: encoded, address: .user(recipient), correlationID: id, noRecipient: .recipientOffline)
            return [.received(.direct), .publish(request)]

        case .publish(let room, let data, let id):
            guard rooms.contains(room) else {
                return [.received(.publish)] + reject(ProtocolError(.notMember, "join the room before publishing to it", correlationID: id))
            }
            let encoded = ServerFrame.roomHead(room, from: user, data: data)
            return [.received(.publish), .publish(PublishRequest(head: encoded, address: .room(room), correlationID: id, noRecipient: nil))]

        case .join(let room, let since, let presence, let id):
            return [.received(.join)] + join(room, since: since, presence: presence, correlationID: id, now: now)

        case .presence(let room, let id):
            guard limits.presence else {
                return [.received(.presence)]
                    + reject(ProtocolError(.presenceDisabled, "this gateway keeps no presence (--presence none)", correlationID: id))
            }
            guard rooms.contains(room) else {
                return [.received(.presence)] + reject(ProtocolError(.notMember, "join the room before asking who is in it", correlationID: id))
            }
            return [.received(.presence), .readPresence(room, correlationID: id)]

        case .resume(let since, let id):
            return [.received(.resume)] + resume(since: since, correlationID: id)

        case .leave(let room, let id):
            rooms.remove(room)
            presenceRooms.remove(room)
            var answered: [Action] = []
            if case .opening(.join(let joinID, _))? = streams[.room(room)]?.mode, joinID != id {
                // The join still waited for its position: it is answered, and overtaken by the leave.
                answered = write(ServerFrame.ack(correlationID: joinID), counted: .ack)
            }
            streams[.room(room)] = nil
            return [.received(.leave), .leave(room)] + answered + write(ServerFrame.ack(correlationID: id), counted: .ack)
        }
    }

    private mutating func resume(since: StreamPosition, correlationID: CorrelationID?) -> [Action] {
        guard limits.history else {
            return reject(ProtocolError(.historyDisabled, "this gateway keeps no history: nothing to resume", correlationID: correlationID))
        }
        // Also while a gap is being filled: the resume's read takes over (its result wins,
        // the gap read's is dropped), and what waits in `pending` is merged after it.
        guard var cursor = streams[.user(user)], cursor.mode == .live || cursor.mode == .fillingGap, !cursor.resumed else {
            return reject(ProtocolError(.alreadyResumed, "this connection has resumed its stream already", correlationID: correlationID))
        }
        cursor.resumed = true
        let purpose = StreamCursor.Purpose.resume(correlationID: correlationID, since: since)
        cursor.mode = .recovering(purpose)
        streams[.user(user)] = cursor
        return read(.user(user), after: Self.readAfter(purpose), purpose: purpose)
    }

    /// What to read for a purpose: the messages after `since` when its epoch could match, else the top.
    private static func readAfter(_ purpose: StreamCursor.Purpose) -> UInt64? {
        switch purpose {
        case .resume(_, let since), .join(_, let since?): since.offset
        case .join(_, nil), .welcome, .gap: nil
        }
    }

    private mutating func join(_ room: RoomID, since: StreamPosition?, presence: Bool, correlationID: CorrelationID?, now: NIODeadline) -> [Action] {
        guard identity.rooms.allows(room) else {
            return reject(ProtocolError(.forbidden, "the token does not allow this room", correlationID: correlationID))
        }
        if presence, !limits.presence {
            return reject(
                ProtocolError(
                    .presenceDisabled,
                    "this gateway keeps no presence (--presence none): join without \"presence\"",
                    correlationID: correlationID
                )
            )
        }
        if since != nil, !limits.history {
            return reject(ProtocolError(.historyDisabled, "this gateway keeps no history: join without \"since\"", correlationID: correlationID))
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
        if limits.history {
            let purpose = StreamCursor.Purpose.join(correlationID: correlationID, since: since)
            if var cursor = streams[.room(room)] {
                if let since {
                    guard cursor.mode == .live || cursor.mode == .fillingGap, !cursor.resumed else {
                        return reject(ProtocolError(.alreadyResumed, "this connection has resumed this room already", correlationID: correlationID))
                    }
                    // A member resuming its room: served like a `resume`, once the registry confirms.
                    cursor.resumed = true
                    cursor.mode = .recovering(purpose)
                    streams[.room(room)] = cursor
                    return setPresenceEvents(room, presence) + read(.room(room), after: since.offset, purpose: purpose)
                }
            } else {
                var cursor = StreamCursor(mode: .opening(purpose))
                cursor.resumed = since != nil
                streams[.room(room)] = cursor
            }
        }
        // Counted as joined at once, so that frames handled in the same batch (those held
        // before welcome) see the membership: a publish right after the join is allowed.
        rooms.insert(room)
        return [.register(join: room, correlationID: correlationID, wasMember: wasMember)] + setPresenceEvents(room, presence)
    }

    /// Each accepted join says whether the connection wants the room's events (a client
    /// re-joining after a reconnect repeats what it asked for); the registry is told, after
    /// the membership, since only it can pick the subscribers of an event.
    private mutating func setPresenceEvents(_ room: RoomID, _ wanted: Bool) -> [Action] {
        guard limits.presence else { return [] }
        if wanted { presenceRooms.insert(room) } else { presenceRooms.remove(room) }
        return [.presenceEvents(room, wanted: wanted)]
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
        streams = [:]
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

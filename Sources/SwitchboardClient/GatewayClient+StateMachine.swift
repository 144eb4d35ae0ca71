extension GatewayClient {
    /// Every decision ``GatewayClient`` makes, as a value: what to do when the application
    /// asks for something, when the connection reports something, or when a deadline passes.
    ///
    /// Each input is a `mutating` method that returns the actions to perform, in order; the
    /// actor performs them and feeds back what happens. Nothing here does I/O, sleeps or
    /// reads the clock: instants come in with the inputs, so tests drive the machine with
    /// made-up times and no sockets.
    ///
    /// - Every connection attempt gets a new generation, and so does ``close()``. Inputs
    ///   from an attempt that is no longer current (a connect that finished after
    ///   ``close()``, a frame read from a replaced connection) are ignored; a stale
    ///   connection that opens is closed.
    /// - Time has one timer. The machine keeps each pending request's deadline, the
    ///   current attempt's `welcome` deadline and the reconnect instant, and asks for the
    ///   timer to be armed (``Action/armTimer(at:)``) only when a deadline earlier than the
    ///   armed one appears. When it fires (``deadlineReached(armedAt:now:)``) everything
    ///   due is handled and the timer is armed for the next deadline. A timer left armed
    ///   for a request that was answered in the meantime fires for nothing, which costs
    ///   less than re-arming on every answer: requests share one ack timeout, so the
    ///   earliest deadline changes with almost every answer.
    ///
    /// - Recovery (docs/clients.md, "Stream recovery"): with a gateway that keeps history, a
    ///   ``StreamTracker`` keeps each stream's last position handed to the application and
    ///   drops duplicates. After a `welcome` the machine writes `resume` for the user stream
    ///   and `join` with `since` for each room it holds a position for, and holds that
    ///   stream's frames until the answer, when the tracker hands them over in offset order.
    ///
    /// Generic over what the actor uses for a connection, a request's reply and a
    /// `connect()` caller, so that tests can use plain values.
    struct StateMachine<Connection: Sendable, Reply: Sendable, Waiter: Sendable>: Sendable {
        typealias Instant = ContinuousClock.Instant

        /// A request frame the application asked for; the machine gives it its `id`.
        enum Request: Sendable, Hashable {
            case direct(to: String, data: String)
            /// With `since`, the room's messages after that position are asked for too.
            case join(room: String, since: StreamPosition? = nil)
            case leave(room: String)
            case publish(room: String, data: String)
            case ping
            /// The user stream's messages after `since`; the machine makes it after a `welcome`.
            case resume(since: StreamPosition)
            /// Who is in a room the connection is in.
            case presence(room: String)

            /// Asks for history: a `resume`, or a `join` with `since`.
            var asksForHistory: Bool {
                switch self {
                case .resume, .join(_, _?): true
                case .direct, .join, .leave, .publish, .ping, .presence: false
                }
            }

            /// The frame's `type`, for error messages.
            var type: String {
                switch self {
                case .direct: "direct"
                case .join: "join"
                case .leave: "leave"
                case .publish: "publish"
                case .ping: "ping"
                case .resume: "resume"
                case .presence: "presence"
                }
            }

            /// - Parameter presenceRooms: rooms whose joins ask for `joined` / `left` events.
            func frame(id: String, presenceRooms: Set<String>) -> String {
                switch self {
                case .direct(let user, let data): OutgoingFrame.direct(to: user, data: data, id: id)
                case .join(let room, let since):
                    OutgoingFrame.join(room: room, since: since, presence: presenceRooms.contains(room), id: id)
                case .presence(let room): OutgoingFrame.presence(room: room, id: id)
                case .leave(let room): OutgoingFrame.leave(room: room, id: id)
                case .publish(let room, let data): OutgoingFrame.publish(room: room, data: data, id: id)
                case .ping: OutgoingFrame.ping(id: id)
                case .resume(let since): OutgoingFrame.resume(since: since, id: id)
                }
            }
        }

        /// What the owner of the machine must do, in the order given.
        enum Action {
            /// Call the identity's token provider, then feed ``tokenFetched(generation:token:now:)``
            /// or ``tokenFailed(generation:error:now:)``.
            case fetchToken(generation: Int)
            /// Stop the token provider call under way (its answer would be ignored anyway).
            case cancelTokenFetch
            /// Open a WebSocket to `path` (TCP, TLS, handshake, bounded by the connect
            /// timeout), then feed ``connectionOpened(generation:connection:now:)`` or
            /// ``connectFailed(generation:error:now:)``, every frame it reads, and
            /// ``connectionClosed(generation:code:now:)`` when it ends.
            case openConnection(generation: Int, path: String)
            /// Write one text frame; a write that fails means the socket is broken, so close it.
            case write(String, to: Connection)
            /// Send a close frame (1000) and close the socket.
            case close(Connection)
            /// Close the socket without a close frame.
            case abort(Connection)
            /// Return from the request's call with what its `ack` said.
            case completeRequest(Reply, Result<Acknowledgement, SwitchboardClientError>)
            /// Return from these `connect()` calls.
            case resumeWaiters([Waiter], Result<Welcome, SwitchboardClientError>)
            /// Put an event in ``GatewayClient/events``.
            case emit(Event)
            /// Arm the one timer for `instant`, replacing any armed one; when it fires, feed
            /// ``deadlineReached(armedAt:now:)`` with the same instant.
            case armTimer(at: Instant)
            case cancelTimer
        }

        private enum Phase {
            /// Never connected, or closed with close().
            case idle
            case fetchingToken(generation: Int)
            /// The WebSocket is being opened; `welcomeDeadline` applies once it is.
            case connecting(generation: Int, welcomeDeadline: Instant)
            /// Open, waiting for `welcome`; the deadline is nil once the attempt was abandoned
            /// (the socket is being closed, its end is still to come).
            case open(generation: Int, connection: Connection, welcomeDeadline: Instant?)
            case ready(generation: Int, connection: Connection)
            /// The next attempt starts at `retryAt`.
            case reconnecting(retryAt: Instant)
            /// Closed with 1008 and no way to get a fresh token.
            case stopped
        }

        private struct Pending {
            var request: Request
            /// Nil for a re-join or a resume, which the machine makes itself.
            var reply: Reply?
            var deadline: Instant
            /// Orders requests that expire together.
            var sequence: Int
            /// The room's position in ``Rejoin/rooms`` for a re-join.
            var rejoinIndex: Int?
            /// Its answer ends its stream's recovery: a `resume`, a `join` with `since`, or
            /// the `join` re-sent without `since` after a refusal. Another `join` of the
            /// room made meanwhile does not.
            var recovers: Bool
        }

        /// The re-joins written after one `welcome`, reported together once all are answered.
        private struct Rejoin {
            enum Outcome {
                case joined
                case failed(SwitchboardClientError)
            }

            var rooms: [String]
            /// Nil while the room's `join` is unanswered.
            var outcomes: [Outcome?]
        }

        /// A close for a reason of policy (an expired token among others).
        static var policyClose: UInt16 { 1008 }

        let configuration: Configuration
        private var phase: Phase = .idle
        /// Bumped by every attempt and by close().
        private var generation = 0
        /// The last `welcome`, kept after the connection closes.
        private(set) var welcome: Welcome?
        /// Rooms whose `join` was acked (and not left since).
        private(set) var rooms: [String] = []
        /// Rooms joined with presence events (``GatewayClient/join(_:presence:)``); every join
        /// of them, re-joins included, asks for the events again.
        private(set) var presenceRooms: Set<String> = []
        private var pending: [String: Pending] = [:]
        private var requestCount = 0
        /// Attempts since the last `welcome`: the backoff's exponent.
        private var retriesSinceWelcome = 0
        private var hasBeenWelcomed = false
        private var waiters: [(id: Int, waiter: Waiter)] = []
        private var waiterCount = 0
        private var rejoin: Rejoin?
        /// What the one timer is armed for; nil when it is not.
        private var timerDeadline: Instant?
        /// Stream positions, duplicates, and the frames held during a recovery.
        private var tracker: StreamTracker
        /// The last `welcome` had a `position`: the gateway keeps history.
        private var hasHistory = false

        init(configuration: Configuration) {
            self.configuration = configuration
            tracker = StreamTracker(positions: configuration.resumeFrom)
        }

        /// The last position handed to the application, per stream (tests).
        var positions: [MessageStream: StreamPosition] { tracker.positions }

        var state: State {
            switch phase {
            case .idle: .idle
            case .fetchingToken, .connecting: .connecting
            case .open: .open
            case .ready: .ready
            case .reconnecting: .reconnecting
            case .stopped: .stopped
            }
        }

        /// Requests in flight (tests).
        var pendingCount: Int { pending.count }

        // MARK: Inputs from the application

        /// `connect()` was called; `waiter` gets the next `welcome` (at once when ready).
        /// - Returns: The waiter's id for ``forgetWaiter(_:)``, and the actions.
        mutating func connect(waiter: Waiter, now: Instant) -> (waiterID: Int, actions: [Action]) {
            waiterCount += 1
            if case .ready = phase, let welcome { return (waiterCount, [.resumeWaiters([waiter], .success(welcome))]) }
            waiters.append((waiterCount, waiter))
            switch phase {
            case .idle, .stopped:
                retriesSinceWelcome = 0
                return (waiterCount, startAttempt(now: now))
            case .fetchingToken, .connecting, .open, .ready, .reconnecting:
                return (waiterCount, [])
            }
        }

        /// A `connect()` caller stopped waiting (it was resumed, or its task was cancelled).
        mutating func forgetWaiter(_ id: Int) {
            waiters.removeAll { $0.id == id }
        }

        /// close() was called: no reconnect; pending requests and waiters fail.
        mutating func close() -> [Action] {
            let previous = phase
            generation += 1
            phase = .idle
            let closed = SwitchboardClientError(code: .connectionClosed, message: "close() was called")
            var actions: [Action] = []
            switch previous {
            case .open(_, let connection, _), .ready(_, let connection):
                actions.append(.emit(.disconnected(closeCode: 1000, willReconnect: false)))
                actions.append(.close(connection))
            case .fetchingToken:
                actions.append(.cancelTokenFetch)
            case .idle, .connecting, .reconnecting, .stopped:
                break
            }
            actions += failAllPending(closed)
            tracker.connectionEnded()
            actions += resumeAllWaiters(.failure(closed))
            actions += cancelTimer()
            return actions
        }

        /// A request was made; `reply` gets its answer. While no connection is open it fails
        /// at once with `not_connected` (a `leave` succeeds: the room is forgotten regardless).
        /// Whether joins of `room` ask for its presence events from now on.
        mutating func setPresenceEvents(_ room: String, _ wanted: Bool) {
            if wanted { presenceRooms.insert(room) } else { presenceRooms.remove(room) }
        }

        mutating func request(_ request: Request, reply: Reply, now: Instant) -> [Action] {
            var request = request
            switch request {
            case .leave(let room):
                rooms.removeAll { $0 == room }
                presenceRooms.remove(room)
                tracker.forget(.room(room))
            case .join(let room, nil) where !rooms.contains(room) && !isJoining(room) && hasHistory:
                // A room not joined with a position held came from `resumeFrom`: resume it.
                if let since = tracker.positions[.room(room)] { request = .join(room: room, since: since) }
            default:
                break
            }
            guard let connection = openConnection else {
                if case .leave = request { return [.completeRequest(reply, .success(Acknowledgement()))] }
                let error = SwitchboardClientError(code: .notConnected, message: "not connected to a gateway (state \(state.rawValue))")
                return [.completeRequest(reply, .failure(error))]
            }
            if case .join(let room, _?) = request { tracker.beginRecovery(.room(room)) }
            return send(request, reply: reply, rejoinIndex: nil, on: connection, now: now)
        }

        // MARK: Inputs from the connection

        mutating func tokenFetched(generation: Int, token: String, now: Instant) -> [Action] {
            guard case .fetchingToken(generation) = phase else { return [] }
            return openConnection(token: token, now: now)
        }

        mutating func tokenFailed(generation: Int, error cause: any Error, now: Instant) -> [Action] {
            guard case .fetchingToken(generation) = phase else { return [] }
            let error = SwitchboardClientError(code: .tokenUnavailable, message: "the token provider failed", cause: cause)
            guard configuration.reconnects else { return [.emit(.error(error))] + stop(in: .idle, error) }
            return [.emit(.error(error))] + scheduleRetry(now: now)
        }

        /// The TCP connect, TLS or handshake failed (or timed out): reported, then handled as a close with 1006.
        mutating func connectFailed(generation: Int, error cause: any Error, now: Instant) -> [Action] {
            guard case .connecting(generation, _) = phase else { return [] }
            let target = "\(configuration.host):\(configuration.port)\(configuration.path)"
            let error = SwitchboardClientError(code: .connectFailed, message: "could not open a WebSocket to \(target)", cause: cause)
            return [.emit(.error(error))] + connectionEnded(closeCode: 1006, cause: cause, now: now)
        }

        mutating func connectionOpened(generation: Int, connection: Connection, now: Instant) -> [Action] {
            guard case .connecting(generation, let welcomeDeadline) = phase else { return [.close(connection)] }
            phase = .open(generation: generation, connection: connection, welcomeDeadline: welcomeDeadline)
            return arm(welcomeDeadline)
        }

        mutating func frameReceived(_ frame: IncomingFrame, generation: Int, now: Instant) -> [Action] {
            switch phase {
            case .open(generation, _, _), .ready(generation, _): break
            default: return []
            }
            switch frame {
            case .welcome(let user, let gateway, let position):
                return welcomed(Welcome(user: user, gateway: gateway), position: position, now: now)
            case .reply(let id, let ack):
                guard let id, let request = pending.removeValue(forKey: id) else { return [] }  // late or unknown
                return complete(request, with: .success(ack))
            case .error(let id, let code, let message):
                let error = SwitchboardClientError(code: .init(rawValue: code), message: message)
                guard let id, let request = pending.removeValue(forKey: id) else { return [.emit(.error(error))] }
                if request.recovers, case .join(let room, _?) = request.request, Self.joinsWithoutSince(after: error.code),
                    tracker.isRecovering(.room(room)),
                    let connection = openConnection
                {
                    // The gateway would not resume the room, but may well let us in: join
                    // without `since`, so the room is still joined, and report it as not
                    // recovered once that join is answered.
                    tracker.fallBack(.room(room), reason: error.code.rawValue)
                    return send(.join(room: room), reply: request.reply, rejoinIndex: request.rejoinIndex, recovers: true, on: connection, now: now)
                }
                return complete(request, with: .failure(error))
            case .direct(let from, let to, let data, let position):
                return tracker.received(.direct(from: from, to: to, data: data), in: .user, at: position).map { .emit($0) }
            case .room(let room, let from, let data, let position):
                let event = Event.room(room: room, from: from, data: data)
                let tracked = rooms.contains(room) || isJoining(room)
                return tracker.received(event, in: .room(room), at: position, track: tracked).map { .emit($0) }
            case .broadcast(let from, let data):
                return [.emit(.broadcast(from: from, data: data))]
            case .presenceEvent(let isJoin, let room, let user):
                return [.emit(isJoin ? .joined(room: room, user: user) : .left(room: room, user: user))]
            case .unknown:
                return []
            }
        }

        /// The connection ended: a close frame's code, 1005 for one without a code, 1006 without one.
        mutating func connectionClosed(generation: Int, code: UInt16, now: Instant) -> [Action] {
            switch phase {
            case .open(generation, _, _), .ready(generation, _):
                return connectionEnded(closeCode: code, cause: nil, now: now)
            default:
                return []
            }
        }

        // MARK: Time

        /// The timer armed for `armedAt` fired at `now`: expires the requests past their
        /// deadline (earliest first), abandons an attempt without `welcome`, starts a due
        /// reconnect, and arms the timer for what is next. A timer that was replaced is ignored.
        mutating func deadlineReached(armedAt: Instant, now: Instant) -> [Action] {
            guard timerDeadline == armedAt else { return [] }
            timerDeadline = nil
            // A sleep may end a little early; the armed instant has passed by definition.
            let now = max(now, armedAt)
            var actions: [Action] = []
            let expired = pending.filter { $0.value.deadline <= now }.sorted {
                ($0.value.deadline, $0.value.sequence) < ($1.value.deadline, $1.value.sequence)
            }
            for (id, request) in expired {
                pending[id] = nil
                let error = SwitchboardClientError(code: .timeout, message: "no answer to \(request.request.type) within \(configuration.ackTimeout)")
                actions += complete(request, with: .failure(error))
            }
            switch phase {
            case .open(let generation, let connection, let welcomeDeadline?) where welcomeDeadline <= now:
                // A gateway that upgrades but never sends `welcome` must not hold the client
                // forever: the close that follows is handled as any other (1006, backoff).
                phase = .open(generation: generation, connection: connection, welcomeDeadline: nil)
                let message = "no welcome from \(configuration.host):\(configuration.port) within \(configuration.connectTimeout)"
                actions.append(.emit(.error(SwitchboardClientError(code: .connectFailed, message: message))))
                actions.append(.abort(connection))
            case .reconnecting(let retryAt) where retryAt <= now:
                actions += startAttempt(now: now)
            default:
                break
            }
            if let next = nextDeadline { actions += arm(next) }
            return actions
        }

        // MARK: Transitions

        private var openConnection: Connection? {
            switch phase {
            case .open(_, let connection, _), .ready(_, let connection): connection
            default: nil
            }
        }

        private mutating func startAttempt(now: Instant) -> [Action] {
            generation += 1
            if case .token = configuration.identity {
                phase = .fetchingToken(generation: generation)
                return [.fetchToken(generation: generation)]
            }
            return openConnection(token: nil, now: now)
        }

        /// The attempt's clock starts here, before the TCP connect, as the connect timeout's does.
        private mutating func openConnection(token: String?, now: Instant) -> [Action] {
            phase = .connecting(generation: generation, welcomeDeadline: now + configuration.connectTimeout)
            return [.openConnection(generation: generation, path: path(token: token))]
        }

        private func path(token: String?) -> String {
            let query: String
            switch configuration.identity {
            case .user(let user): query = "user=" + OutgoingFrame.percentEncoded(user)
            case .fixedToken(let token): query = "token=" + OutgoingFrame.percentEncoded(token)
            case .token: query = "token=" + OutgoingFrame.percentEncoded(token ?? "")
            }
            return configuration.path + (configuration.path.contains("?") ? "&" : "?") + query
        }

        /// - Parameter position: The user stream's top; nil when the gateway keeps no history.
        private mutating func welcomed(_ welcome: Welcome, position: StreamPosition?, now: Instant) -> [Action] {
            // After an abandoned attempt's deadline the socket is on its way down: too late.
            guard case .open(let generation, let connection, _?) = phase else { return [] }
            let reconnected = hasBeenWelcomed
            hasBeenWelcomed = true
            retriesSinceWelcome = 0
            phase = .ready(generation: generation, connection: connection)
            self.welcome = welcome
            hasHistory = position != nil
            var actions: [Action] = []
            var streamEvents: [Event] = []
            // Resume and re-join before anything else is written: the gateway handles one
            // connection's frames in order, so a request made after `welcome` follows them.
            // Without history on this gateway a position means nothing: asking would only
            // be refused with history_disabled.
            if !hasHistory {
                streamEvents = tracker.historyOff()
            } else if let since = tracker.positions[.user] {
                tracker.beginRecovery(.user)
                actions += send(.resume(since: since), reply: nil, rejoinIndex: nil, on: connection, now: now)
            } else {
                streamEvents = tracker.adopt(position, for: .user)
            }
            if !rooms.isEmpty {
                rejoin = Rejoin(rooms: rooms, outcomes: Array(repeating: nil, count: rooms.count))
                for (index, room) in rooms.enumerated() {
                    let since = tracker.positions[.room(room)]
                    if since != nil { tracker.beginRecovery(.room(room)) }
                    actions += send(.join(room: room, since: since), reply: nil, rejoinIndex: index, on: connection, now: now)
                }
            }
            actions += resumeAllWaiters(.success(welcome))
            actions.append(.emit(.welcome(user: welcome.user, gateway: welcome.gateway)))
            actions += streamEvents.map { .emit($0) }
            if rooms.isEmpty && reconnected { actions.append(.emit(.rejoined(rooms: [], failed: []))) }
            return actions
        }

        /// After a close that close() did not ask for: reports it, fails what was pending,
        /// and reconnects or stops.
        private mutating func connectionEnded(closeCode: UInt16, cause: (any Error)?, now: Instant) -> [Action] {
            let willReconnect = configuration.reconnects && (closeCode != Self.policyClose || configuration.identity.canFetchFreshToken)
            var actions: [Action] = [.emit(.disconnected(closeCode: closeCode, willReconnect: willReconnect))]
            actions += failAllPending(SwitchboardClientError(code: .connectionClosed, message: "the connection closed (\(closeCode))", cause: cause))
            tracker.connectionEnded()
            if willReconnect { return actions + scheduleRetry(now: now) }
            let error = SwitchboardClientError(
                code: .connectionClosed,
                message: "the connection closed (\(closeCode)) and will not be reopened",
                cause: cause
            )
            return actions + stop(in: closeCode == Self.policyClose ? .stopped : .idle, error)
        }

        private mutating func scheduleRetry(now: Instant) -> [Action] {
            let delay = configuration.backoff.delay(forRetry: retriesSinceWelcome, unitRandom: configuration.unitRandom())
            retriesSinceWelcome += 1
            let retryAt = now + delay
            phase = .reconnecting(retryAt: retryAt)
            return [.emit(.reconnecting(attempt: retriesSinceWelcome, delay: delay))] + arm(retryAt)
        }

        /// Gives up connecting: connect() callers get `error`.
        private mutating func stop(in phase: Phase, _ error: SwitchboardClientError) -> [Action] {
            self.phase = phase
            return resumeAllWaiters(.failure(error)) + cancelTimer()
        }

        // MARK: Requests

        /// - Parameter recovers: The answer ends a recovery although the request has no `since`.
        private mutating func send(
            _ request: Request,
            reply: Reply?,
            rejoinIndex: Int?,
            recovers: Bool = false,
            on connection: Connection,
            now: Instant
        ) -> [Action] {
            requestCount += 1
            let id = "c\(requestCount)"
            let deadline = now + configuration.ackTimeout
            let recovers = recovers || request.asksForHistory
            pending[id] = Pending(
                request: request,
                reply: reply,
                deadline: deadline,
                sequence: requestCount,
                rejoinIndex: rejoinIndex,
                recovers: recovers
            )
            return [.write(request.frame(id: id, presenceRooms: presenceRooms), to: connection)] + arm(deadline)
        }

        private mutating func complete(_ request: Pending, with result: Result<Acknowledgement, SwitchboardClientError>) -> [Action] {
            var actions: [Action] = []
            switch request.request {
            case .resume:
                return streamAnswered(.user, result, recovers: true, followed: true).map { .emit($0) }
            case .join(let room, _):
                // A re-join answered after a `leave` is for a room no longer followed.
                let followed = request.rejoinIndex == nil || rooms.contains(room)
                actions += streamAnswered(.room(room), result, recovers: request.recovers, followed: followed).map { .emit($0) }
            case .direct, .leave, .publish, .ping, .presence:
                break
            }
            if let index = request.rejoinIndex {
                actions += rejoinAnswered(index, result)
            } else if case .join(let room, _) = request.request, case .success = result, !rooms.contains(room) {
                rooms.append(room)
            }
            if let reply = request.reply { actions.append(.completeRequest(reply, result)) }
            return actions
        }

        /// A `resume` or a `join` was answered: what it means for the stream's position.
        /// - Parameters:
        ///   - recovers: The request is the one the stream's recovery waits for.
        ///   - followed: The stream is still followed (a re-join's room was not left meanwhile).
        private mutating func streamAnswered(
            _ stream: MessageStream,
            _ result: Result<Acknowledgement, SwitchboardClientError>,
            recovers: Bool,
            followed: Bool
        ) -> [Event] {
            guard recovers && tracker.isRecovering(stream) else {
                // A plain join: the room is followed from its top.
                guard case .room = stream, case .success(let ack) = result, followed else { return [] }
                return tracker.adopt(ack.position, for: stream)
            }
            switch result {
            case .success(let ack):
                let outcome: StreamTracker.Outcome =
                    ack.recovered == true ? .recovered(top: ack.position) : .notRecovered(reason: ack.reason, top: ack.position)
                return tracker.finishRecovery(stream, outcome)
            case .failure(let error) where error.code == .connectionClosed:
                // The next connection asks again from the same position.
                return tracker.abandonRecovery(stream, deliverHeld: false)
            case .failure(let error) where stream == .user:
                // Not retried on this connection, so a refusal cannot loop; a position the
                // gateway cannot use is dropped, so the next connection does not ask again.
                let forget = error.code == .historyDisabled || error.code == .invalidMessage
                return tracker.finishRecovery(stream, .refused(reason: error.code.rawValue, forget: forget))
            case .failure(let error):
                // The room's join failed: `rejoined`, or the caller's error, reports it.
                let events = tracker.abandonRecovery(stream, deliverHeld: true)
                if error.code == .forbidden || error.code == .invalidID { tracker.forget(stream) }
                return events
            }
        }

        /// The `join` refusals that say nothing against the room itself, only against `since`.
        static func joinsWithoutSince(after code: SwitchboardClientError.Code) -> Bool {
            code == .historyDisabled || code == .historyUnavailable || code == .alreadyResumed || code == .invalidMessage
        }

        /// Whether a `join` of `room` is waiting for its answer.
        private func isJoining(_ room: String) -> Bool {
            pending.values.contains { pending in
                if case .join(room, _) = pending.request { true } else { false }
            }
        }

        private mutating func rejoinAnswered(_ index: Int, _ result: Result<Acknowledgement, SwitchboardClientError>) -> [Action] {
            guard var rejoin else { return [] }
            var actions: [Action] = []
            let room = rejoin.rooms[index]
            switch result {
            case .success:
                rejoin.outcomes[index] = .joined
            case .failure(var error):
                // A permanent refusal forgets the room; a passing one keeps it for the next reconnect.
                if error.code == .forbidden || error.code == .invalidID {
                    rooms.removeAll { $0 == room }
                    presenceRooms.remove(room)
                }
                error.room = room
                rejoin.outcomes[index] = .failed(error)
                actions.append(.emit(.error(error)))
            }
            guard rejoin.outcomes.allSatisfy({ $0 != nil }) else {
                self.rejoin = rejoin
                return actions
            }
            self.rejoin = nil
            let joined = zip(rejoin.rooms, rejoin.outcomes).compactMap { room, outcome in
                if case .joined = outcome { room } else { nil }
            }
            let failed = rejoin.outcomes.compactMap { outcome in
                if case .failed(let error) = outcome { error } else { nil }
            }
            actions.append(.emit(.rejoined(rooms: joined, failed: failed)))
            return actions
        }

        private mutating func failAllPending(_ error: SwitchboardClientError) -> [Action] {
            let requests = pending.values.sorted { $0.sequence < $1.sequence }
            pending.removeAll()
            return requests.flatMap { complete($0, with: .failure(error)) }
        }

        private mutating func resumeAllWaiters(_ result: Result<Welcome, SwitchboardClientError>) -> [Action] {
            guard !waiters.isEmpty else { return [] }
            defer { waiters.removeAll() }
            return [.resumeWaiters(waiters.map(\.waiter), result)]
        }

        // MARK: The timer

        /// The earliest instant something is due.
        private var nextDeadline: Instant? {
            var next = pending.values.lazy.map(\.deadline).min()
            switch phase {
            case .open(_, _, let welcomeDeadline?): next = min(next ?? welcomeDeadline, welcomeDeadline)
            case .reconnecting(let retryAt): next = min(next ?? retryAt, retryAt)
            default: break
            }
            return next
        }

        /// Arms the timer for `deadline` unless it already fires no later.
        private mutating func arm(_ deadline: Instant) -> [Action] {
            if let armed = timerDeadline, armed <= deadline { return [] }
            timerDeadline = deadline
            return [.armTimer(at: deadline)]
        }

        private mutating func cancelTimer() -> [Action] {
            guard timerDeadline != nil else { return [] }
            timerDeadline = nil
            return [.cancelTimer]
        }
    }
}

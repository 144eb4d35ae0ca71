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
    /// Generic over what the actor uses for a connection, a request's reply and a
    /// `connect()` caller, so that tests can use plain values.
    struct StateMachine<Connection: Sendable, Reply: Sendable, Waiter: Sendable>: Sendable {
        typealias Instant = ContinuousClock.Instant

        /// A request frame the application asked for; the machine gives it its `id`.
        enum Request: Sendable, Hashable {
            case direct(to: String, data: String)
            case join(room: String)
            case leave(room: String)
            case publish(room: String, data: String)
            case ping

            /// The frame's `type`, for error messages.
            var type: String {
                switch self {
                case .direct: "direct"
                case .join: "join"
                case .leave: "leave"
                case .publish: "publish"
                case .ping: "ping"
                }
            }

            func frame(id: String) -> String {
                switch self {
                case .direct(let user, let data): OutgoingFrame.direct(to: user, data: data, id: id)
                case .join(let room): OutgoingFrame.join(room: room, id: id)
                case .leave(let room): OutgoingFrame.leave(room: room, id: id)
                case .publish(let room, let data): OutgoingFrame.publish(room: room, data: data, id: id)
                case .ping: OutgoingFrame.ping(id: id)
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
            /// Return from the request's call.
            case completeRequest(Reply, Result<Void, SwitchboardClientError>)
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
            /// Nil for a re-join, which the machine makes itself.
            var reply: Reply?
            var deadline: Instant
            /// Orders requests that expire together.
            var sequence: Int
            /// The room's position in ``Rejoin/rooms`` for a re-join.
            var rejoinIndex: Int?
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

        init(configuration: Configuration) {
            self.configuration = configuration
        }

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
            actions += resumeAllWaiters(.failure(closed))
            actions += cancelTimer()
            return actions
        }

        /// A request was made; `reply` gets its answer. While no connection is open it fails
        /// at once with `not_connected` (a `leave` succeeds: the room is forgotten regardless).
        mutating func request(_ request: Request, reply: Reply, now: Instant) -> [Action] {
            if case .leave(let room) = request { rooms.removeAll { $0 == room } }
            guard let connection = openConnection else {
                if case .leave = request { return [.completeRequest(reply, .success(()))] }
                let error = SwitchboardClientError(code: .notConnected, message: "not connected to a gateway (state \(state.rawValue))")
                return [.completeRequest(reply, .failure(error))]
            }
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
            case .welcome(let user, let gateway):
                return welcomed(Welcome(user: user, gateway: gateway), now: now)
            case .reply(let id):
                guard let id, let request = pending.removeValue(forKey: id) else { return [] }  // late or unknown
                return complete(request, with: .success(()))
            case .error(let id, let code, let message):
                let error = SwitchboardClientError(code: .init(rawValue: code), message: message)
                if let id, let request = pending.removeValue(forKey: id) { return complete(request, with: .failure(error)) }
                return [.emit(.error(error))]
            case .direct(let from, let to, let data):
                return [.emit(.direct(from: from, to: to, data: data))]
            case .room(let room, let from, let data):
                return [.emit(.room(room: room, from: from, data: data))]
            case .broadcast(let from, let data):
                return [.emit(.broadcast(from: from, data: data))]
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

        private mutating func welcomed(_ welcome: Welcome, now: Instant) -> [Action] {
            // After an abandoned attempt's deadline the socket is on its way down: too late.
            guard case .open(let generation, let connection, _?) = phase else { return [] }
            let reconnected = hasBeenWelcomed
            hasBeenWelcomed = true
            retriesSinceWelcome = 0
            phase = .ready(generation: generation, connection: connection)
            self.welcome = welcome
            var actions: [Action] = []
            // Re-join before anything else is written: the gateway handles one connection's
            // frames in order, so a request made after `welcome` follows the joins.
            if !rooms.isEmpty {
                rejoin = Rejoin(rooms: rooms, outcomes: Array(repeating: nil, count: rooms.count))
                for (index, room) in rooms.enumerated() {
                    actions += send(.join(room: room), reply: nil, rejoinIndex: index, on: connection, now: now)
                }
            }
            actions += resumeAllWaiters(.success(welcome))
            actions.append(.emit(.welcome(user: welcome.user, gateway: welcome.gateway)))
            if rooms.isEmpty && reconnected { actions.append(.emit(.rejoined(rooms: [], failed: []))) }
            return actions
        }

        /// After a close that close() did not ask for: reports it, fails what was pending,
        /// and reconnects or stops.
        private mutating func connectionEnded(closeCode: UInt16, cause: (any Error)?, now: Instant) -> [Action] {
            let willReconnect = configuration.reconnects && (closeCode != Self.policyClose || configuration.identity.canFetchFreshToken)
            var actions: [Action] = [.emit(.disconnected(closeCode: closeCode, willReconnect: willReconnect))]
            actions += failAllPending(SwitchboardClientError(code: .connectionClosed, message: "the connection closed (\(closeCode))", cause: cause))
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

        private mutating func send(_ request: Request, reply: Reply?, rejoinIndex: Int?, on connection: Connection, now: Instant) -> [Action] {
            requestCount += 1
            let id = "c\(requestCount)"
            let deadline = now + configuration.ackTimeout
            pending[id] = Pending(request: request, reply: reply, deadline: deadline, sequence: requestCount, rejoinIndex: rejoinIndex)
            return [.write(request.frame(id: id), to: connection)] + arm(deadline)
        }

        private mutating func complete(_ request: Pending, with result: Result<Void, SwitchboardClientError>) -> [Action] {
            var actions: [Action] = []
            if let index = request.rejoinIndex {
                actions += rejoinAnswered(index, result)
            } else if case .join(let room) = request.request, case .success = result, !rooms.contains(room) {
                rooms.append(room)
            }
            if let reply = request.reply { actions.append(.completeRequest(reply, result)) }
            return actions
        }

        private mutating func rejoinAnswered(_ index: Int, _ result: Result<Void, SwitchboardClientError>) -> [Action] {
            guard var rejoin else { return [] }
            var actions: [Action] = []
            let room = rejoin.rooms[index]
            switch result {
            case .success:
                rejoin.outcomes[index] = .joined
            case .failure(var error):
                // A permanent refusal forgets the room; a passing one keeps it for the next reconnect.
                if error.code == .forbidden || error.code == .invalidID { rooms.removeAll { $0 == room } }
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

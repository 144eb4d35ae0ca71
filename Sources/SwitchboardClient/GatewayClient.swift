import NIOCore
import NIOWebSocket

/// A connection to a Switchboard gateway that reconnects by itself: the Swift counterpart
/// of the JavaScript client (`switchboard.js`), with the same reconnect, re-join and ack
/// behaviour (docs/clients.md, "Swift").
///
/// ```swift
/// let client = GatewayClient(configuration: .init(port: 8080, identity: .user("alice")))
/// Task { for await event in client.events { print(event) } }
/// let welcome = try await client.connect()
/// try await client.join("lobby")
/// try await client.publish(room: "lobby", data: ["text": "hello"])
/// await client.close()
/// ```
///
/// - Requests (``sendDirect(to:json:)``, ``join(_:)``, ``leave(_:)``,
///   ``publish(room:json:)``, ``ping()``) send a frame with a fresh `id` and return when
///   the gateway's matching `ack`/`pong` arrives; an `error` frame with that `id`, a close,
///   or the ack timeout throws a ``SwitchboardClientError``. A request while no connection
///   is open fails at once with ``SwitchboardClientError/Code/notConnected``: nothing is queued.
/// - After any close that ``close()`` did not ask for, the client reconnects after a
///   full-jitter exponential backoff (``ReconnectBackoff``), and after the new `welcome`
///   joins every room whose `join` was acked before it sends anything else.
/// - Everything the gateway pushes arrives in ``events``.
///
/// The client is an actor: all its state is isolated to it, and frames are written to the
/// NIO channel without blocking its event loop.
public actor GatewayClient {
    /// Where the client is in its life.
    public enum State: String, Sendable {
        /// Never connected, or closed with ``GatewayClient/close()``.
        case idle
        /// A connection attempt (token, TCP, TLS, handshake) is under way.
        case connecting
        /// The WebSocket is open; the gateway's `welcome` has not come yet.
        case open
        /// `welcome` arrived: the client is reachable and requests may be sent.
        case ready
        /// A reconnect attempt is scheduled.
        case reconnecting
        /// The gateway closed with 1008 and no token provider can fetch a fresh token; no reconnect.
        case stopped
    }

    /// The gateway's `welcome`: who the client is, and which gateway it landed on.
    public struct Welcome: Sendable, Hashable {
        /// The user id the gateway took from the identity.
        public let user: String
        /// The id of the gateway the connection landed on.
        public let gateway: String
    }

    /// What happens to the client, and what the gateway pushes to it.
    ///
    /// `data` is always the exact JSON text of the frame's `data` member, byte for byte as
    /// the sender wrote it; decode it with `JSONDecoder` if you want a value.
    public enum Event: Sendable {
        /// The gateway accepted the user: the client is ready and reachable.
        case welcome(user: String, gateway: String)
        /// A direct message to this user.
        case direct(from: String, to: String, data: String)
        /// A message in a room this connection is in (the client's own included).
        case room(room: String, from: String, data: String)
        /// A message to every connected user.
        case broadcast(from: String, data: String)
        /// An `error` frame that answers no pending request (`rate_limited`,
        /// `unknown_type`, …), a room that could not be re-joined (``SwitchboardClientError/room``),
        /// a token provider that threw (`token_unavailable`), or a failed connection attempt
        /// (`connect_failed`, with the refused handshake's HTTP status in its cause).
        case error(SwitchboardClientError)
        /// The connection closed (1006 when it ended without a close frame, or an attempt
        /// failed; 1005 for a close frame without a code). `willReconnect` tells whether
        /// the client will try again.
        case disconnected(closeCode: UInt16, willReconnect: Bool)
        /// Connection attempt `attempt` (1, 2, …) starts after `delay`.
        case reconnecting(attempt: Int, delay: Duration)
        /// After a reconnect's `welcome`, every remembered room was joined again:
        /// `rooms` succeeded, `failed` did not (each error names its room).
        case rejoined(rooms: [String], failed: [SwitchboardClientError])
    }

    /// The configuration the client was made with.
    public nonisolated let configuration: Configuration
    /// Everything that happens, in order. One consumer; events are buffered until read, so
    /// read them (or drop the client) rather than let them pile up. Finishes when the
    /// client is deallocated.
    public nonisolated let events: AsyncStream<Event>
    private nonisolated let eventSink: AsyncStream<Event>.Continuation

    /// Where the client is in its life.
    public private(set) var state: State = .idle
    /// The user id from the last `welcome`.
    public private(set) var user: String?
    /// The gateway id from the last `welcome`.
    public private(set) var gateway: String?
    /// Rooms whose `join` was acked (and not left): re-joined after every reconnect.
    public private(set) var rooms: [String] = []

    private var connection: WebSocketConnection?
    private var pending: [String: PendingRequest] = [:]
    private var requestCount = 0
    /// Connection attempts since the last `welcome`: the backoff's exponent.
    private var retriesSinceWelcome = 0
    /// connect() was called and neither close() nor a final close came since.
    private var wantsConnection = false
    /// Bumped by every connect() that starts a loop and by close(): an attempt of an older
    /// generation stops at its next step.
    private var generation = 0
    private var connectionLoop: Task<Void, Never>?
    private var welcomeWaiters: [Int: CheckedContinuation<Welcome, any Error>] = [:]
    private var welcomeWaiterCount = 0
    private var hasBeenWelcomed = false

    /// A request waiting for its `ack`/`pong`.
    private struct PendingRequest: Sendable {
        let reply: EventLoopPromise<Void>
        let timeout: Task<Void, Never>
    }

    /// What ended one connection attempt.
    private enum AttemptOutcome {
        case closed(code: UInt16, cause: (any Error)?)
        case tokenUnavailable(any Error)
        /// close() or a newer connect() took over; nothing to report.
        case superseded
    }

    /// Makes a client; nothing connects until ``connect()``.
    public init(configuration: Configuration) {
        self.configuration = configuration
        (events, eventSink) = AsyncStream<Event>.makeStream()
    }

    deinit {
        connectionLoop?.cancel()
        let closed = SwitchboardClientError(code: .connectionClosed, message: "the client was deallocated")
        for request in pending.values {
            request.timeout.cancel()
            request.reply.fail(closed)
        }
        eventSink.finish()
    }

    // MARK: Connecting

    /// Starts connecting (and reconnecting, until ``close()``) and returns the next `welcome`.
    ///
    /// Like the JavaScript client's `connect()`, a failed attempt does not end it: it keeps
    /// trying with backoff (see ``events`` for `.disconnected`, `.reconnecting` and
    /// `.error(connect_failed)`) until a `welcome` comes. Already connected, it returns the
    /// current `welcome` at once.
    /// - Throws: ``SwitchboardClientError`` with `connection_closed` when ``close()`` comes
    ///   first, when the gateway closes with 1008 and no token provider is set, or when an
    ///   attempt fails and ``Configuration/reconnects`` is false (the error's `cause` says
    ///   why); `token_unavailable` when the token provider throws and reconnects are off;
    ///   `cancelled` when the waiting task is cancelled (the client goes on connecting;
    ///   call ``close()`` to stop it).
    @discardableResult
    public func connect() async throws(SwitchboardClientError) -> Welcome {
        if state == .ready, let user, let gateway { return Welcome(user: user, gateway: gateway) }
        if !wantsConnection {
            wantsConnection = true
            retriesSinceWelcome = 0
            generation += 1
            let generation = self.generation
            connectionLoop = Task { await self.runConnectionLoop(generation: generation) }
        }
        welcomeWaiterCount += 1
        let waiterID = welcomeWaiterCount
        do {
            return try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Welcome, any Error>) in
                    if Task.isCancelled {
                        continuation.resume(throwing: Self.cancelledError)
                    } else {
                        welcomeWaiters[waiterID] = continuation
                    }
                }
            } onCancel: {
                Task { await self.cancelWelcomeWaiter(waiterID) }
            }
        } catch let error as SwitchboardClientError {
            throw error
        } catch {
            throw SwitchboardClientError(code: .connectionClosed, message: "connect() failed", cause: error)
        }
    }

    /// Closes the connection for good: no reconnect. Pending requests fail with
    /// `connection_closed`; remembered rooms are kept, so a later ``connect()`` re-joins them.
    public func close() async {
        let connection = self.connection
        wantsConnection = false
        generation += 1
        connectionLoop?.cancel()
        connectionLoop = nil
        self.connection = nil
        state = .idle
        let closed = SwitchboardClientError(code: .connectionClosed, message: "close() was called")
        failPendingRequests(closed)
        rejectWelcomeWaiters(closed)
        if let connection {
            eventSink.yield(.disconnected(closeCode: 1000, willReconnect: false))
            await connection.close()
        }
    }

    // MARK: Requests

    /// Sends a direct message to every connection of user `recipient`, and returns when
    /// the gateway acked it (the backplane took it).
    /// - Parameters:
    ///   - recipient: The user id.
    ///   - json: The message: the exact JSON text of any JSON value (`{"text":"hi"}`,
    ///     `"psst"`, `42`); recipients get these bytes unchanged.
    /// - Throws: ``SwitchboardClientError``: `recipient_offline` when no gateway hosts the
    ///   user, `invalid_message` (before sending) when `json` is not one JSON value, or
    ///   `invalid_id`, `backplane_unavailable`, `not_connected`, `timeout`, `connection_closed`, …
    public func sendDirect(to recipient: String, json: String) async throws(SwitchboardClientError) {
        let data = try OutgoingFrame.validated(json: json)
        try await awaitReply(try startRequest("direct") { OutgoingFrame.direct(to: recipient, data: data, id: $0) })
    }

    /// Sends a direct message whose `data` is `value` encoded with `JSONEncoder`; otherwise
    /// as ``sendDirect(to:json:)``.
    public nonisolated func sendDirect(to recipient: String, data value: some Encodable) async throws(SwitchboardClientError) {
        try await sendDirect(to: recipient, json: OutgoingFrame.encoded(value))
    }

    /// Joins a room and returns once the gateway acked it; the room is then remembered
    /// and re-joined after every reconnect.
    /// - Throws: ``SwitchboardClientError``: `forbidden`, `invalid_id`,
    ///   `backplane_unavailable`, `not_connected`, `timeout`, `connection_closed`, …
    public func join(_ room: String) async throws(SwitchboardClientError) {
        try await awaitReply(try startRequest("join") { OutgoingFrame.join(room: room, id: $0) })
        if !rooms.contains(room) { rooms.append(room) }
    }

    /// Leaves a room and forgets it. While no connection is open it returns at once: the
    /// next connection will not join the room.
    /// - Throws: ``SwitchboardClientError`` (`timeout`, `connection_closed`) when the
    ///   gateway did not ack; the room is forgotten regardless.
    public func leave(_ room: String) async throws(SwitchboardClientError) {
        rooms.removeAll { $0 == room }
        guard isOpen else { return }
        try await awaitReply(try startRequest("leave") { OutgoingFrame.leave(room: room, id: $0) })
    }

    /// Publishes to a room this connection has joined (the client gets its own copy too),
    /// and returns when the gateway acked it.
    /// - Parameters:
    ///   - room: The room id.
    ///   - json: The exact JSON text of any JSON value; members get these bytes unchanged.
    /// - Throws: ``SwitchboardClientError``: `not_member` when the room was not joined,
    ///   `invalid_message` (before sending) when `json` is not one JSON value, or
    ///   `backplane_unavailable`, `not_connected`, `timeout`, `connection_closed`, …
    public func publish(room: String, json: String) async throws(SwitchboardClientError) {
        let data = try OutgoingFrame.validated(json: json)
        try await awaitReply(try startRequest("publish") { OutgoingFrame.publish(room: room, data: data, id: $0) })
    }

    /// Publishes `value` encoded with `JSONEncoder`; otherwise as ``publish(room:json:)``.
    public nonisolated func publish(room: String, data value: some Encodable) async throws(SwitchboardClientError) {
        try await publish(room: room, json: OutgoingFrame.encoded(value))
    }

    /// Sends a protocol `ping` and returns the round trip once the `pong` arrives.
    /// - Throws: ``SwitchboardClientError``: `not_connected`, `timeout`, `connection_closed`.
    @discardableResult
    public func ping() async throws(SwitchboardClientError) -> Duration {
        let started = ContinuousClock.now
        try await awaitReply(try startRequest("ping") { OutgoingFrame.ping(id: $0) })
        return ContinuousClock.now - started
    }

    // MARK: Internals

    private static let cancelledError = SwitchboardClientError(code: .cancelled, message: "the task waiting for welcome was cancelled")

    /// The socket is open (before or after `welcome`), as the JavaScript client's readyState OPEN.
    private var isOpen: Bool {
        connection != nil && (state == .open || state == .ready)
    }

    private func isCurrent(_ generation: Int) -> Bool {
        wantsConnection && self.generation == generation
    }

    /// Registers a request and writes its frame, without suspending: frames are written
    /// in the order requests are made (re-joins first after a `welcome`).
    private func startRequest(
        _ type: String,
        frame makeFrame: (_ id: String) -> String
    ) throws(SwitchboardClientError) -> EventLoopFuture<Void> {
        guard isOpen, let connection else {
            throw SwitchboardClientError(code: .notConnected, message: "not connected to a gateway (state \(state.rawValue))")
        }
        requestCount += 1
        let id = "c\(requestCount)"
        let reply = connection.channel.eventLoop.makePromise(of: Void.self)
        let ackTimeout = configuration.ackTimeout
        let timeout = Task { [weak self] in
            guard (try? await Task.sleep(for: ackTimeout)) != nil else { return }
            let error = SwitchboardClientError(code: .timeout, message: "no answer to \(type) within \(ackTimeout)")
            await self?.settle(id, with: .failure(error))
        }
        pending[id] = PendingRequest(reply: reply, timeout: timeout)
        connection.write(text: makeFrame(id)).whenFailure { [weak self] error in
            let failed = SwitchboardClientError(code: .connectionClosed, message: "the \(type) frame could not be written", cause: error)
            Task { await self?.settle(id, with: .failure(failed)) }
        }
        return reply.futureResult
    }

    private func awaitReply(_ reply: EventLoopFuture<Void>) async throws(SwitchboardClientError) {
        do {
            try await reply.get()
        } catch let error as SwitchboardClientError {
            throw error
        } catch {
            throw SwitchboardClientError(code: .internal, message: "unexpected failure", cause: error)
        }
    }

    /// Completes request `id`; false when no such request is pending (a late answer).
    @discardableResult
    private func settle(_ id: String, with result: Result<Void, SwitchboardClientError>) -> Bool {
        guard let request = pending.removeValue(forKey: id) else { return false }
        request.timeout.cancel()
        request.reply.completeWith(result.mapError { $0 as any Error })
        return true
    }

    private func failPendingRequests(_ error: SwitchboardClientError) {
        let requests = pending
        pending.removeAll()
        for request in requests.values {
            request.timeout.cancel()
            request.reply.fail(error)
        }
    }

    private func rejectWelcomeWaiters(_ error: SwitchboardClientError) {
        let waiters = welcomeWaiters
        welcomeWaiters.removeAll()
        for waiter in waiters.values { waiter.resume(throwing: error) }
    }

    private func cancelWelcomeWaiter(_ waiterID: Int) {
        welcomeWaiters.removeValue(forKey: waiterID)?.resume(throwing: Self.cancelledError)
    }

    /// Connects, reads until the connection ends, and backs off before the next attempt,
    /// until close(), a final close, or a newer generation.
    private func runConnectionLoop(generation: Int) async {
        while isCurrent(generation) {
            let outcome = await runOneConnection(generation: generation)
            guard isCurrent(generation) else { return }
            switch outcome {
            case .superseded:
                return
            case .tokenUnavailable(let cause):
                let error = SwitchboardClientError(code: .tokenUnavailable, message: "the token provider failed", cause: cause)
                eventSink.yield(.error(error))
                guard configuration.reconnects else { return stop(state: .idle, error: error) }
            case .closed(let code, let cause):
                guard connectionEnded(closeCode: code, cause: cause) else { return }
            }
            let delay = configuration.backoff.delay(forRetry: retriesSinceWelcome, unitRandom: configuration.unitRandom())
            retriesSinceWelcome += 1
            state = .reconnecting
            eventSink.yield(.reconnecting(attempt: retriesSinceWelcome, delay: delay))
            do {
                try await Task.sleep(for: delay)
            } catch {
                return  // close() cancelled the loop
            }
        }
    }

    /// One attempt: fetch the identity, open the WebSocket, read frames until it closes.
    private func runOneConnection(generation: Int) async -> AttemptOutcome {
        state = .connecting
        let path: String
        do {
            path = try await connectPath()
        } catch {
            return isCurrent(generation) ? .tokenUnavailable(error) : .superseded
        }
        guard isCurrent(generation) else { return .superseded }
        let attemptStarted = ContinuousClock.now
        let connection: WebSocketConnection
        do {
            connection = try await WebSocketConnection.connect(
                host: configuration.host,
                port: configuration.port,
                path: path,
                tls: configuration.tls,
                handshakeTimeout: configuration.connectTimeout,
                eventLoopGroup: configuration.eventLoopGroup
            )
        } catch {
            guard isCurrent(generation) else { return .superseded }
            let target = "\(configuration.host):\(configuration.port)\(configuration.path)"
            eventSink.yield(.error(SwitchboardClientError(code: .connectFailed, message: "could not open a WebSocket to \(target)", cause: error)))
            return .closed(code: 1006, cause: error)
        }
        guard isCurrent(generation) else {
            await connection.close()
            return .superseded
        }
        self.connection = connection
        state = .open
        // A gateway that upgrades but never sends `welcome` must not hold the client forever.
        let welcomeDeadline = attemptStarted + configuration.connectTimeout
        let welcomeTimer = Task { [weak self] in
            guard (try? await Task.sleep(until: welcomeDeadline)) != nil else { return }
            await self?.abandonIfNotWelcomed(connection)
        }
        defer { welcomeTimer.cancel() }
        var closeCode: UInt16?
        for await event in connection.events {
            guard isCurrent(generation) else { break }
            switch event {
            case .text(let text):
                handleFrame(text)
            case .close(let code):
                closeCode = code ?? 1005
                connection.answerClose(code: code)
            case .binary, .ping, .pong:
                break
            }
        }
        if self.connection === connection { self.connection = nil }
        return isCurrent(generation) ? .closed(code: closeCode ?? 1006, cause: nil) : .superseded
    }

    /// Ends an attempt that is still waiting for `welcome`: the close that follows is
    /// handled as any other (1006, reconnect with backoff).
    private func abandonIfNotWelcomed(_ connection: WebSocketConnection) async {
        guard self.connection === connection, state == .open else { return }
        let message = "no welcome from \(configuration.host):\(configuration.port) within \(configuration.connectTimeout)"
        eventSink.yield(.error(SwitchboardClientError(code: .connectFailed, message: message)))
        await connection.abort()
    }

    /// After a close that close() did not ask for: fails what was pending, reports the
    /// close, and tells whether to reconnect.
    private func connectionEnded(closeCode: UInt16, cause: (any Error)?) -> Bool {
        failPendingRequests(SwitchboardClientError(code: .connectionClosed, message: "the connection closed (\(closeCode))", cause: cause))
        let policyClose: UInt16 = 1008
        let willReconnect = configuration.reconnects && (closeCode != policyClose || configuration.identity.canFetchFreshToken)
        if willReconnect { state = .reconnecting }
        eventSink.yield(.disconnected(closeCode: closeCode, willReconnect: willReconnect))
        if !willReconnect {
            let error = SwitchboardClientError(code: .connectionClosed, message: "the connection closed (\(closeCode)) and will not be reopened", cause: cause)
            stop(state: closeCode == policyClose ? .stopped : .idle, error: error)
        }
        return willReconnect
    }

    /// Gives up connecting: connect() callers get `error`.
    private func stop(state: State, error: SwitchboardClientError) {
        wantsConnection = false
        connectionLoop = nil
        self.state = state
        rejectWelcomeWaiters(error)
    }

    private func connectPath() async throws -> String {
        let query: String
        switch configuration.identity {
        case .user(let user): query = "user=" + OutgoingFrame.percentEncoded(user)
        case .fixedToken(let token): query = "token=" + OutgoingFrame.percentEncoded(token)
        case .token(let fetch): query = "token=" + OutgoingFrame.percentEncoded(try await fetch())
        }
        return configuration.path + (configuration.path.contains("?") ? "&" : "?") + query
    }

    private func handleFrame(_ text: String) {
        guard let frame = IncomingFrame(text: text) else { return }  // the gateway only sends JSON objects
        switch frame {
        case .welcome(let user, let gateway):
            handleWelcome(user: user, gateway: gateway)
        case .reply(let id):
            if let id { settle(id, with: .success(())) }
        case .error(let id, let code, let message):
            let error = SwitchboardClientError(code: .init(rawValue: code), message: message)
            if let id, settle(id, with: .failure(error)) { return }
            eventSink.yield(.error(error))
        case .direct(let from, let to, let data):
            eventSink.yield(.direct(from: from, to: to, data: data))
        case .room(let room, let from, let data):
            eventSink.yield(.room(room: room, from: from, data: data))
        case .broadcast(let from, let data):
            eventSink.yield(.broadcast(from: from, data: data))
        case .unknown:
            break
        }
    }

    private func handleWelcome(user: String, gateway: String) {
        let reconnected = hasBeenWelcomed
        hasBeenWelcomed = true
        retriesSinceWelcome = 0
        state = .ready
        self.user = user
        self.gateway = gateway
        // Re-join before anything else is written: the gateway handles one connection's
        // frames in order, so a request made after `welcome` follows the joins.
        let rejoins = rooms.map { room in
            (room: room, reply: Result { () throws(SwitchboardClientError) in
                try startRequest("join") { OutgoingFrame.join(room: room, id: $0) }
            })
        }
        let welcome = Welcome(user: user, gateway: gateway)
        let waiters = welcomeWaiters
        welcomeWaiters.removeAll()
        for waiter in waiters.values { waiter.resume(returning: welcome) }
        eventSink.yield(.welcome(user: user, gateway: gateway))
        if !rejoins.isEmpty || reconnected {
            Task { await self.reportRejoins(rejoins) }
        }
    }

    private func reportRejoins(_ rejoins: [(room: String, reply: Result<EventLoopFuture<Void>, SwitchboardClientError>)]) async {
        var joined: [String] = []
        var failed: [SwitchboardClientError] = []
        for (room, reply) in rejoins {
            do throws(SwitchboardClientError) {
                try await awaitReply(try reply.get())
                joined.append(room)
            } catch {
                // A permanent refusal forgets the room; a passing one keeps it for the next reconnect.
                if error.code == .forbidden || error.code == .invalidID { rooms.removeAll { $0 == room } }
                var roomError = error
                roomError.room = room
                eventSink.yield(.error(roomError))
                failed.append(roomError)
            }
        }
        eventSink.yield(.rejoined(rooms: joined, failed: failed))
    }
}

extension WebSocketConnection {
    /// Writes one masked text frame without waiting; the future completes once it is written.
    func write(text: String) -> EventLoopFuture<Void> {
        channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: ByteBuffer(string: text)))
    }

    /// Answers the server's close frame with the same code (RFC 6455 5.5.1), then closes the socket.
    func answerClose(code: UInt16?) {
        var payload = ByteBuffer()
        if let code { payload.writeInteger(code) }
        let channel = self.channel
        channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: payload))
            .whenComplete { _ in channel.close(promise: nil) }
    }
}

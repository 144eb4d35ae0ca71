import NIOCore
import NIOWebSocket
import Synchronization

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
/// - With a gateway that keeps history, each reconnect also resumes the user stream and
///   every room from the last message the client handed over: missed messages are
///   replayed, duplicates are dropped, and ``Event/recovered(stream:recovered:reason:)``
///   says per stream whether nothing was lost (docs/clients.md, "Stream recovery").
/// - Everything the gateway pushes arrives in ``events``.
///
/// The client is an actor, and its state is one value: a state machine
/// (`GatewayClient.StateMachine`) takes every input (a call, a frame, a close, a deadline)
/// and returns what to do; the actor does it. One timer serves every deadline: request
/// ack timeouts, the wait for `welcome` and the reconnect backoff. Frames are written to
/// the NIO channel without blocking its event loop.
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
    ///
    /// With a gateway that keeps history, each `.direct` and `.room` is handed over once
    /// per client (a copy already handed over before a reconnect is dropped), and is
    /// followed at once by ``position(stream:position:)`` with its offset and epoch.
    public enum Event: Sendable {
        /// The gateway accepted the user: the client is ready and reachable.
        case welcome(user: String, gateway: String)
        /// A direct message to this user (its position follows in ``position(stream:position:)``
        /// for ``MessageStream/user``, with history on).
        case direct(from: String, to: String, data: String)
        /// A message in a room this connection is in, the client's own included (its position
        /// follows in ``position(stream:position:)`` for ``MessageStream/room(_:)``, with history on).
        case room(room: String, from: String, data: String)
        /// A message to every connected user.
        case broadcast(from: String, data: String)
        /// In a room joined with `presence: true`: `user`'s first connection in the room
        /// appeared, on any gateway.
        case joined(room: String, user: String)
        /// In a room joined with `presence: true`: `user`'s last connection in the room is
        /// gone everywhere, and the gateway's grace passed without them coming back.
        case left(room: String, user: String)
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
        /// The client's position in `stream` moved (history on): right after each `.direct`
        /// or `.room` with that message's offset and epoch, and when a `welcome`, a `join`'s
        /// ack or a recovery set it. Keep the latest per stream and pass them as
        /// ``Configuration/resumeFrom`` to continue after a restart.
        case position(stream: MessageStream, position: StreamPosition)
        /// A `resume` (``MessageStream/user``) or `join` with `since` (a room) was answered,
        /// after a reconnect or a start from ``Configuration/resumeFrom``. `recovered`: the
        /// messages after the client's position were replayed, and emitted before this
        /// event, each once. Otherwise nothing was replayed and messages may be missing:
        /// reload the stream from your own backend; live ones keep coming. `reason` is the
        /// gateway's (`epoch_changed`, `expired`, `limit_exceeded`, `ahead`) or the code that
        /// refused the request (`history_disabled`, `history_unavailable`, `already_resumed`,
        /// `invalid_message`, `timeout`).
        case recovered(stream: MessageStream, recovered: Bool, reason: String?)
    }

    /// The configuration the client was made with.
    public nonisolated let configuration: Configuration
    /// Everything that happens, in order. One consumer; events are buffered until read, so
    /// read them (or drop the client) rather than let them pile up. Finishes when the
    /// client is deallocated.
    public nonisolated let events: AsyncStream<Event>
    private nonisolated let eventSink: AsyncStream<Event>.Continuation

    /// Where the client is in its life.
    public var state: State { machine.state }
    /// The user id from the last `welcome`.
    public var user: String? { machine.welcome?.user }
    /// The gateway id from the last `welcome`.
    public var gateway: String? { machine.welcome?.gateway }
    /// Rooms whose `join` was acked (and not left): re-joined after every reconnect.
    public var rooms: [String] { machine.rooms }

    typealias RequestReply = CheckedContinuation<Result<Acknowledgement, SwitchboardClientError>, Never>
    typealias Machine = StateMachine<WebSocketConnection, RequestReply, WelcomeWaiter>

    /// Every decision; this actor feeds it inputs and performs the actions it returns.
    private var machine: Machine
    /// The one timer: request deadlines, the `welcome` deadline and the reconnect backoff.
    private var timer: Task<Void, Never>?
    private var tokenFetch: Task<Void, Never>?

    /// Makes a client; nothing connects until ``connect()``.
    public init(configuration: Configuration) {
        self.configuration = configuration
        machine = Machine(configuration: configuration)
        (events, eventSink) = AsyncStream<Event>.makeStream()
    }

    deinit {
        // A connection keeps the client alive (its reader is the actor's), and so does a
        // waiting call: what is left is a timer or a token fetch, which hold it weakly.
        timer?.cancel()
        tokenFetch?.cancel()
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
        let waiter = WelcomeWaiter()
        let (waiterID, actions) = machine.connect(waiter: waiter, now: .now)
        perform(actions)
        let result = await withTaskCancellationHandler {
            await waiter.result()
        } onCancel: {
            waiter.resume(with: .failure(Self.cancelledError))
        }
        machine.forgetWaiter(waiterID)
        return try result.get()
    }

    /// Closes the connection for good: no reconnect. Pending requests fail with
    /// `connection_closed`; remembered rooms are kept, so a later ``connect()`` re-joins them.
    public func close() async {
        for closing in perform(machine.close()) {
            try? await closing.get()
        }
    }

    // MARK: Requests

    /// Sends a direct message to every connection of user `recipient`, and returns when
    /// the gateway acked it (the backplane took it).
    /// - Parameters:
    ///   - recipient: The user id.
    ///   - json: The message: the exact JSON text of any JSON value (`{"text":"hi"}`,
    ///     `"psst"`, `42`); recipients get these bytes unchanged.
    /// - Returns: What the ack said: with history on, a recipient connected nowhere is not
    ///   an error; the message is kept for it (``DirectReceipt/recipientOffline``).
    /// - Throws: ``SwitchboardClientError``: `recipient_offline` when no gateway hosts the
    ///   user and the gateway keeps no history, `invalid_message` (before sending) when
    ///   `json` is not one JSON value, or `invalid_id`, `backplane_unavailable`,
    ///   `not_connected`, `timeout`, `connection_closed`, …
    @discardableResult
    public func sendDirect(to recipient: String, json: String) async throws(SwitchboardClientError) -> DirectReceipt {
        let ack = try await send(.direct(to: recipient, data: try OutgoingFrame.validated(json: json)))
        return DirectReceipt(offset: ack.offset, recipientOffline: ack.recipientOffline)
    }

    /// Sends a direct message whose `data` is `value` encoded with `JSONEncoder`; otherwise
    /// as ``sendDirect(to:json:)``.
    @discardableResult
    public nonisolated func sendDirect(to recipient: String, data value: some Encodable) async throws(SwitchboardClientError) -> DirectReceipt {
        try await sendDirect(to: recipient, json: OutgoingFrame.encoded(value))
    }

    /// Joins a room and returns once the gateway acked it; the room is then remembered
    /// and re-joined after every reconnect. For a room with a position in
    /// ``Configuration/resumeFrom`` (and a gateway with history), the `join` carries
    /// `since`, and ``Event/recovered(stream:recovered:reason:)`` follows.
    /// - Throws: ``SwitchboardClientError``: `forbidden`, `invalid_id`,
    ///   `backplane_unavailable`, `not_connected`, `timeout`, `connection_closed`, …
    ///
    /// With `presence`, this connection (and every re-join after a reconnect) also gets the
    /// room's ``Event/joined(room:user:)`` and ``Event/left(room:user:)``.
    public func join(_ room: String, presence: Bool = false) async throws(SwitchboardClientError) {
        machine.setPresenceEvents(room, presence)
        try await send(.join(room: room))
    }

    /// Who is in a room this connection has joined, across all gateways.
    /// - Throws: ``SwitchboardClientError``: `not_member`, `presence_disabled`,
    ///   `presence_unavailable`, `not_connected`, `timeout`, …
    public func presence(_ room: String) async throws(SwitchboardClientError) -> Presence {
        let answer = try await send(.presence(room: room))
        guard let presence = answer.presence else {
            throw SwitchboardClientError(code: .internal, message: "the gateway's presence answer had no users and count")
        }
        return presence
    }

    /// Leaves a room and forgets it. While no connection is open it returns at once: the
    /// next connection will not join the room.
    /// - Throws: ``SwitchboardClientError`` (`timeout`, `connection_closed`) when the
    ///   gateway did not ack; the room is forgotten regardless.
    public func leave(_ room: String) async throws(SwitchboardClientError) {
        try await send(.leave(room: room))
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
        try await send(.publish(room: room, data: try OutgoingFrame.validated(json: json)))
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
        try await send(.ping)
        return ContinuousClock.now - started
    }

    // MARK: Internals

    private static let cancelledError = SwitchboardClientError(code: .cancelled, message: "the task waiting for welcome was cancelled")

    /// Hands a request to the machine and waits for its answer. The frame is written before
    /// this suspends, so frames go out in the order requests are made (re-joins first
    /// after a `welcome`).
    @discardableResult
    private func send(_ request: Machine.Request) async throws(SwitchboardClientError) -> Acknowledgement {
        let result = await withCheckedContinuation { (reply: RequestReply) in
            perform(machine.request(request, reply: reply, now: .now))
        }
        return try result.get()
    }

    /// Feeds an input that arrives from outside the actor (a timer, a token provider).
    private func feed(_ input: @Sendable (inout Machine) -> [Machine.Action]) {
        perform(input(&machine))
    }

    /// Performs the machine's actions in order.
    /// - Returns: The closes started, for close() to wait on.
    @discardableResult
    private func perform(_ actions: [Machine.Action]) -> [EventLoopFuture<Void>] {
        var closing: [EventLoopFuture<Void>] = []
        for action in actions {
            switch action {
            case .fetchToken(let generation):
                fetchToken(generation: generation)
            case .cancelTokenFetch:
                tokenFetch?.cancel()
                tokenFetch = nil
            case .openConnection(let generation, let path):
                Task { await self.runConnection(generation: generation, path: path) }
            case .write(let text, let connection):
                connection.write(text: text)
            case .close(let connection):
                closing.append(connection.sendClose(code: 1000))
            case .abort(let connection):
                connection.channel.close(promise: nil)
            case .completeRequest(let reply, let result):
                reply.resume(returning: result)
            case .resumeWaiters(let waiters, let result):
                for waiter in waiters { waiter.resume(with: result) }
            case .emit(let event):
                eventSink.yield(event)
            case .armTimer(let deadline):
                timer?.cancel()
                timer = Task { [weak self] in
                    guard (try? await Task.sleep(until: deadline, clock: .continuous)) != nil else { return }
                    await self?.feed { $0.deadlineReached(armedAt: deadline, now: .now) }
                }
            case .cancelTimer:
                timer?.cancel()
                timer = nil
            }
        }
        return closing
    }

    private func fetchToken(generation: Int) {
        guard case .token(let fetch) = configuration.identity else { return }
        tokenFetch = Task { [weak self] in
            do {
                let token = try await fetch()
                await self?.feed { $0.tokenFetched(generation: generation, token: token, now: .now) }
            } catch {
                await self?.feed { $0.tokenFailed(generation: generation, error: error, now: .now) }
            }
        }
    }

    /// One attempt: open the WebSocket, feed every frame to the machine, report the end.
    private func runConnection(generation: Int, path: String) async {
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
            perform(machine.connectFailed(generation: generation, error: error, now: .now))
            return
        }
        perform(machine.connectionOpened(generation: generation, connection: connection, now: .now))
        var closeCode: UInt16?
        for await event in connection.events {
            switch event {
            case .text(let text):
                // The gateway only sends JSON objects; anything else is skipped.
                guard let frame = IncomingFrame(text: text) else { continue }
                perform(machine.frameReceived(frame, generation: generation, now: .now))
            case .close(let code):
                closeCode = code ?? 1005
                _ = connection.sendClose(code: code)
            case .binary, .ping, .pong:
                break
            }
        }
        perform(machine.connectionClosed(generation: generation, code: closeCode ?? 1006, now: .now))
    }
}

/// One `connect()` call waiting for `welcome`. It can be resumed from the actor (a
/// `welcome`, a close) or from the task's cancellation handler, which runs on no actor
/// and may come first; the first result wins and later ones are ignored.
final class WelcomeWaiter: Sendable {
    typealias Outcome = Result<GatewayClient.Welcome, SwitchboardClientError>

    private enum Slot {
        case empty
        case waiting(CheckedContinuation<Outcome, Never>)
        case resumed(Outcome)
        case done
    }

    private let slot = Mutex(Slot.empty)

    /// Waits for the first result (returns at once when it came already).
    func result() async -> Outcome {
        await withCheckedContinuation { continuation in
            let early: Outcome? = slot.withLock { slot in
                guard case .resumed(let outcome) = slot else {
                    slot = .waiting(continuation)
                    return nil
                }
                slot = .done
                return outcome
            }
            if let early { continuation.resume(returning: early) }
        }
    }

    func resume(with outcome: Outcome) {
        let continuation: CheckedContinuation<Outcome, Never>? = slot.withLock { slot in
            switch slot {
            case .empty:
                slot = .resumed(outcome)
                return nil
            case .waiting(let continuation):
                slot = .done
                return continuation
            case .resumed, .done:
                return nil
            }
        }
        continuation?.resume(returning: outcome)
    }
}

extension WebSocketConnection {
    /// Writes one masked text frame without waiting. A write fails only when the socket is
    /// broken; closing it then makes the connection end, which fails every pending request.
    func write(text: String) {
        let channel = self.channel
        channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: ByteBuffer(string: text)))
            .whenFailure { _ in channel.close(promise: nil) }
    }

    /// Sends a close frame with `code` (none when nil), then closes the socket: to end a
    /// connection, or to answer the server's close frame with its code (RFC 6455 5.5.1).
    /// - Returns: A future that completes once the socket is closed.
    func sendClose(code: UInt16?) -> EventLoopFuture<Void> {
        var payload = ByteBuffer()
        if let code { payload.writeInteger(code) }
        let channel = self.channel
        channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: payload))
            .whenComplete { _ in channel.close(promise: nil) }
        return channel.closeFuture
    }
}

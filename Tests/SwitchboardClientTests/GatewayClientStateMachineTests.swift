import Testing

@testable import SwitchboardClient

/// `GatewayClient.StateMachine` driven with made-up instants and no sockets: connections
/// are strings, replies and `connect()` waiters are numbers, and every action is read back
/// as one line of text (see `Script.describe`).
@Suite("GatewayClient's state machine")
struct GatewayClientStateMachineTests {
    @Test("requests expire in deadline order on one timer, armed only when an earlier deadline appears")
    func timeoutOrder() {
        var script = Script()
        script.bringUp()
        // The welcome deadline (5 s) is armed; the first request's is earlier, the next ones are later.
        #expect(script.request(.ping, reply: 1, at: 100) == [#"write conn1 {"type":"ping","id":"c1"}"#, "arm 1100ms"])
        #expect(script.request(.join(room: "lobby"), reply: 2, at: 200) == [#"write conn1 {"type":"join","room":"lobby","id":"c2"}"#])
        #expect(script.request(.ping, reply: 3, at: 300) == [#"write conn1 {"type":"ping","id":"c3"}"#])
        #expect(script.fire(1100) == ["reply 1 timeout", "arm 1200ms"])
        #expect(script.frame(.reply(id: "c3"), at: 1150) == ["reply 3 ok"])
        // The timer fires late: everything due goes, and nothing is left to arm for.
        #expect(script.fire(1200, now: 1250) == ["reply 2 timeout"])
        #expect(script.machine.rooms.isEmpty)
        #expect(script.machine.pendingCount == 0)

        // Several due at one firing fail earliest first, then by request order.
        #expect(script.request(.ping, reply: 4, at: 2000).last == "arm 3000ms")
        _ = script.request(.ping, reply: 5, at: 2000)
        _ = script.request(.ping, reply: 6, at: 2100)
        _ = script.request(.ping, reply: 7, at: 2900)
        #expect(script.fire(3000, now: 3500) == ["reply 4 timeout", "reply 5 timeout", "reply 6 timeout", "arm 3900ms"])
        // A timer that was replaced, or fires for an instant not armed, changes nothing.
        #expect(script.fire(5000) == [])
        #expect(script.machine.pendingCount == 1)
    }

    @Test("an ack before the deadline returns the call; after it, the ack is ignored and no error is reported")
    func ackAroundTheDeadline() {
        var script = Script()
        script.bringUp()
        _ = script.request(.join(room: "lobby"), reply: 1, at: 100)
        #expect(script.frame(.reply(id: "c1"), at: 1099) == ["reply 1 ok"])
        #expect(script.machine.rooms == ["lobby"])
        // The timer stays armed for the answered request and fires for nothing.
        #expect(script.fire(1100) == [])

        _ = script.request(.publish(room: "lobby", data: "1"), reply: 2, at: 2000)
        #expect(script.fire(3000) == ["reply 2 timeout"])
        #expect(script.frame(.reply(id: "c2"), at: 3001) == [])
        // A late error answer has no request to fail: it is reported as an event.
        #expect(script.frame(.error(id: "c2", code: "not_member", message: "join first"), at: 3002) == ["error not_member"])
        #expect(script.machine.state == .ready)
    }

    @Test("a close fails every pending request with connection_closed; close() does too and stops")
    func closeFailsPending() {
        var script = Script()
        script.bringUp()
        _ = script.request(.ping, reply: 1, at: 100)
        _ = script.request(.direct(to: "bob", data: #""hi""#), reply: 2, at: 200)
        #expect(
            script.closed(code: 1011, at: 300) == [
                "disconnected 1011 reconnect", "reply 1 connection_closed", "reply 2 connection_closed", "reconnecting 1 after 50ms", "arm 350ms",
            ]
        )
        #expect(script.machine.state == .reconnecting)
        #expect(script.request(.ping, reply: 3, at: 310) == ["reply 3 not_connected"])

        #expect(script.fire(350) == ["open #2 /ws?user=alice"])
        script.bringUp(connection: "conn2", generation: 2, at: 400)
        _ = script.request(.ping, reply: 4, at: 500)
        #expect(script.close() == ["disconnected 1000 final", "close conn2", "reply 4 connection_closed", "cancel timer"])
        #expect(script.machine.state == .idle)
        #expect(script.request(.ping, reply: 5, at: 600) == ["reply 5 not_connected"])
        // A leave while disconnected forgets the room and succeeds without sending.
        #expect(script.request(.leave(room: "lobby"), reply: 6, at: 600) == ["reply 6 ok"])
    }

    @Test("reconnect delays follow the jittered backoff; a welcome resets it to the first step")
    func backoffSequence() {
        var script = Script()
        #expect(script.connect(waiter: 1, at: 0) == ["open #1 /ws?user=alice"])
        var delays: [String] = []
        var now = 0
        for generation in 1...4 {
            let actions = script.failed(generation: generation, at: now)
            #expect(actions.first == "error connect_failed")
            #expect(actions.contains("disconnected 1006 reconnect"))
            delays += actions.filter { $0.hasPrefix("reconnecting") }
            // Jitter 0.5 of ceilings 100, 200, 400, 400 ms.
            let delay = [50, 100, 200, 200][generation - 1]
            #expect(actions.last == "arm \(now + delay)ms")
            now += delay
            #expect(script.fire(now) == ["open #\(generation + 1) /ws?user=alice"])
        }
        #expect(delays == ["reconnecting 1 after 50ms", "reconnecting 2 after 100ms", "reconnecting 3 after 200ms", "reconnecting 4 after 200ms"])
        #expect(script.opened("conn5", generation: 5, at: now) == ["arm \(now + 5000)ms"])
        #expect(
            script.frame(.welcome(user: "alice", gateway: "gw1"), generation: 5, at: now) == ["waiters [1] welcome alice@gw1", "welcome alice@gw1"]
        )
        #expect(
            script.closed(code: 1012, generation: 5, at: now + 10) == [
                "disconnected 1012 reconnect", "reconnecting 1 after 50ms", "arm \(now + 60)ms",
            ]
        )
    }

    @Test("after a reconnect's welcome only acked rooms are joined again, before anything else; the outcome is reported")
    func rejoinAckedRooms() {
        var script = Script()
        script.bringUp()
        _ = script.request(.join(room: "acked"), reply: 1, at: 100)
        _ = script.request(.join(room: "refused"), reply: 2, at: 100)
        _ = script.request(.join(room: "unanswered"), reply: 3, at: 100)
        _ = script.request(.join(room: "left"), reply: 4, at: 100)
        _ = script.frame(.reply(id: "c1"), at: 110)
        #expect(script.frame(.error(id: "c2", code: "forbidden", message: "no"), at: 110) == ["reply 2 forbidden"])
        _ = script.frame(.reply(id: "c4"), at: 110)
        _ = script.request(.leave(room: "left"), reply: 5, at: 120)
        _ = script.frame(.reply(id: "c5"), at: 130)
        #expect(script.machine.rooms == ["acked"])
        _ = script.closed(code: 1001, at: 200)
        #expect(script.machine.rooms == ["acked"])

        #expect(script.fire(250) == ["open #2 /ws?user=alice"])
        _ = script.opened("conn2", generation: 2, at: 260)
        #expect(
            script.frame(.welcome(user: "alice", gateway: "gw2"), generation: 2, at: 270) == [
                #"write conn2 {"type":"join","room":"acked","id":"c6"}"#, "arm 1270ms", "welcome alice@gw2",
            ]
        )
        #expect(script.frame(.reply(id: "c6"), generation: 2, at: 280) == ["rejoined [acked] failed []"])
        #expect(script.machine.rooms == ["acked"])
    }

    @Test("a re-join refused for good forgets the room; one that timed out keeps it for the next reconnect")
    func rejoinFailures() {
        var script = Script()
        script.bringUp()
        for (index, room) in ["a", "b", "c"].enumerated() {
            _ = script.request(.join(room: room), reply: index + 1, at: 100)
            _ = script.frame(.reply(id: "c\(index + 1)"), at: 100)
        }
        _ = script.closed(code: 1006, at: 200)
        _ = script.fire(250)
        _ = script.opened("conn2", generation: 2, at: 260)
        _ = script.frame(.welcome(user: "alice", gateway: "gw1"), generation: 2, at: 270)
        #expect(script.frame(.error(id: "c5", code: "forbidden", message: "no"), generation: 2, at: 280) == ["error forbidden room b"])
        #expect(script.frame(.reply(id: "c6"), generation: 2, at: 280) == [])
        #expect(script.fire(1270) == ["error timeout room a", "rejoined [c] failed [a: timeout, b: forbidden]"])
        #expect(script.machine.rooms == ["a", "c"])
    }

    @Test("1008 stops the client unless a token provider can fetch a fresh token")
    func policyClose() {
        var user = Script()
        user.bringUp()
        _ = user.request(.ping, reply: 1, at: 100)
        #expect(user.closed(code: 1008, at: 200) == ["disconnected 1008 final", "reply 1 connection_closed", "cancel timer"])
        #expect(user.machine.state == .stopped)
        #expect(user.request(.ping, reply: 2, at: 300) == ["reply 2 not_connected"])
        // connect() starts over from a stopped client.
        #expect(user.connect(waiter: 3, at: 400) == ["open #2 /ws?user=alice"])

        var fixed = Script(identity: .fixedToken("t0"))
        #expect(fixed.connect(waiter: 1, at: 0) == ["open #1 /ws?token=t0"])
        _ = fixed.opened("conn1", generation: 1, at: 10)
        #expect(fixed.closed(code: 1008, at: 20) == ["disconnected 1008 final", "waiters [1] connection_closed", "cancel timer"])
        #expect(fixed.machine.state == .stopped)

        var provider = Script(identity: .token { "fresh" })
        #expect(provider.connect(waiter: 1, at: 0) == ["fetch token #1"])
        #expect(provider.machine.state == .connecting)
        #expect(describe(provider.machine.tokenFetched(generation: 1, token: "t 1", now: provider.at(5)), provider.t0) == ["open #1 /ws?token=t%201"])
        provider.bringUp(at: 10)
        #expect(provider.closed(code: 1008, at: 100) == ["disconnected 1008 reconnect", "reconnecting 1 after 50ms", "arm 150ms"])
        #expect(provider.fire(5010) == [])  // the welcome deadline's timer was replaced
        #expect(provider.fire(150) == ["fetch token #2"])
        #expect(
            describe(provider.machine.tokenFailed(generation: 2, error: TestError(), now: provider.at(160)), provider.t0) == [
                "error token_unavailable", "reconnecting 2 after 100ms", "arm 260ms",
            ]
        )
    }

    @Test("with reconnects off, a failed attempt ends connect() with connection_closed and its cause")
    func noReconnects() {
        var script = Script(reconnects: false)
        _ = script.connect(waiter: 1, at: 0)
        let actions = script.machine.connectFailed(generation: 1, error: TestError(), now: script.at(10))
        #expect(describe(actions, script.t0) == ["error connect_failed", "disconnected 1006 final", "waiters [1] connection_closed"])
        guard case .resumeWaiters(_, .failure(let error)) = actions.last else { return }
        #expect(error.cause is TestError)
        #expect(script.machine.state == .idle)
    }

    @Test("close() while connecting or fetching a token: waiters fail, and the attempt's late results are ignored")
    func closeWhileConnecting() {
        var script = Script()
        #expect(script.connect(waiter: 1, at: 0) == ["open #1 /ws?user=alice"])
        #expect(script.connect(waiter: 2, at: 1) == [])
        #expect(script.close() == ["waiters [1, 2] connection_closed"])
        #expect(script.machine.state == .idle)
        #expect(script.opened("late", generation: 1, at: 20) == ["close late"])
        #expect(script.failed(generation: 1, at: 20) == [])
        #expect(script.machine.state == .idle)

        var provider = Script(identity: .token { "fresh" })
        _ = provider.connect(waiter: 1, at: 0)
        #expect(provider.close() == ["cancel token fetch", "waiters [1] connection_closed"])
        #expect(describe(provider.machine.tokenFetched(generation: 1, token: "late", now: provider.at(10)), provider.t0) == [])
        #expect(provider.machine.state == .idle)
    }

    @Test("inputs of an earlier attempt are ignored once a newer one runs")
    func staleGenerations() {
        var script = Script()
        script.bringUp()
        _ = script.closed(code: 1001, at: 100)
        _ = script.fire(150)
        _ = script.opened("conn2", generation: 2, at: 160)
        #expect(script.frame(.welcome(user: "ghost", gateway: "old"), generation: 1, at: 170) == [])
        #expect(script.frame(.direct(from: "bob", to: "alice", data: "1"), generation: 1, at: 170) == [])
        #expect(script.closed(code: 1006, generation: 1, at: 170) == [])
        #expect(script.opened("conn-old", generation: 1, at: 170) == ["close conn-old"])
        #expect(script.machine.state == .open)
        #expect(script.frame(.direct(from: "bob", to: "alice", data: "1"), generation: 2, at: 180) == ["direct bob->alice 1"])
        #expect(script.frame(.welcome(user: "alice", gateway: "gw1"), generation: 2, at: 190) == ["welcome alice@gw1", "rejoined [] failed []"])
    }

    @Test("no welcome within the connect timeout: the attempt is abandoned, and its end is a 1006 close")
    func welcomeTimeout() {
        var script = Script()
        _ = script.connect(waiter: 1, at: 0)
        #expect(script.opened("conn1", generation: 1, at: 10) == ["arm 5000ms"])
        #expect(script.fire(5000) == ["error connect_failed", "abort conn1"])
        // The socket is on its way down: a welcome now comes too late.
        #expect(script.frame(.welcome(user: "alice", gateway: "gw1"), at: 5001) == [])
        #expect(script.closed(code: 1006, at: 5002) == ["disconnected 1006 reconnect", "reconnecting 1 after 50ms", "arm 5052ms"])
        #expect(script.machine.state == .reconnecting)
    }

    @Test("connect() when ready returns the current welcome at once; gateway pushes become events")
    func readyConnectAndEvents() {
        var script = Script()
        script.bringUp()
        #expect(script.connect(waiter: 9, at: 100) == ["waiters [9] welcome alice@gw1"])
        #expect(script.frame(.room(room: "lobby", from: "bob", data: "[1]"), at: 110) == ["room lobby bob [1]"])
        #expect(script.frame(.broadcast(from: "ops", data: "{}"), at: 110) == ["broadcast ops {}"])
        #expect(script.frame(.error(id: nil, code: "rate_limited", message: "slow"), at: 110) == ["error rate_limited"])
        #expect(script.frame(.error(id: nil, code: "from_a_newer_gateway", message: "?"), at: 110) == ["error from_a_newer_gateway"])
        #expect(script.frame(.unknown, at: 110) == [])
        #expect(script.machine.welcome == GatewayClient.Welcome(user: "alice", gateway: "gw1"))
    }
}

// MARK: Driving the machine

typealias Machine = GatewayClient.StateMachine<String, Int, Int>

struct TestError: Error {}

/// A machine, a time origin, and inputs given in milliseconds after it.
struct Script {
    var machine: Machine
    let t0 = ContinuousClock.now

    /// Backoff 100 ms…400 ms with jitter 0.5, ack timeout 1 s, connect timeout 5 s.
    init(
        identity: GatewayClient.Identity = .user("alice"),
        reconnects: Bool = true,
        resumeFrom: [GatewayClient.MessageStream: GatewayClient.StreamPosition] = [:]
    ) {
        machine = Machine(
            configuration: .init(
                port: 9,
                identity: identity,
                backoff: ReconnectBackoff(minimum: .milliseconds(100), maximum: .milliseconds(400)),
                ackTimeout: .seconds(1),
                connectTimeout: .seconds(5),
                reconnects: reconnects,
                unitRandom: { 0.5 },
                resumeFrom: resumeFrom
            )
        )
    }

    func at(_ milliseconds: Int) -> ContinuousClock.Instant { t0 + .milliseconds(milliseconds) }

    mutating func connect(waiter: Int, at milliseconds: Int) -> [String] {
        let (_, actions) = machine.connect(waiter: waiter, now: at(milliseconds))
        return describe(actions, t0)
    }

    mutating func close() -> [String] { describe(machine.close(), t0) }

    mutating func request(_ request: Machine.Request, reply: Int, at milliseconds: Int) -> [String] {
        describe(machine.request(request, reply: reply, now: at(milliseconds)), t0)
    }

    mutating func opened(_ connection: String, generation: Int, at milliseconds: Int) -> [String] {
        describe(machine.connectionOpened(generation: generation, connection: connection, now: at(milliseconds)), t0)
    }

    mutating func failed(generation: Int, at milliseconds: Int) -> [String] {
        describe(machine.connectFailed(generation: generation, error: TestError(), now: at(milliseconds)), t0)
    }

    mutating func frame(_ frame: IncomingFrame, generation: Int = 1, at milliseconds: Int) -> [String] {
        describe(machine.frameReceived(frame, generation: generation, now: at(milliseconds)), t0)
    }

    mutating func closed(code: UInt16, generation: Int = 1, at milliseconds: Int) -> [String] {
        describe(machine.connectionClosed(generation: generation, code: code, now: at(milliseconds)), t0)
    }

    /// The timer armed for `armed` fires at `now` (the same instant unless given).
    mutating func fire(_ armed: Int, now: Int? = nil) -> [String] {
        describe(machine.deadlineReached(armedAt: at(armed), now: at(now ?? armed)), t0)
    }

    /// Connects (or, with a token provider, goes on from the fetched token) and reads
    /// `welcome` (with `position` from a gateway with history).
    /// - Returns: What the `welcome` did.
    @discardableResult
    mutating func bringUp(
        connection: String = "conn1",
        generation: Int = 1,
        at milliseconds: Int = 0,
        position: GatewayClient.StreamPosition? = nil
    ) -> [String] {
        if machine.state == .idle { _ = connect(waiter: 1, at: milliseconds) }
        _ = opened(connection, generation: generation, at: milliseconds)
        let actions = frame(.welcome(user: "alice", gateway: "gw1", position: position), generation: generation, at: milliseconds)
        #expect(machine.state == .ready)
        return actions
    }
}

/// One line per action, instants as milliseconds after `t0`.
func describe(_ actions: [Machine.Action], _ t0: ContinuousClock.Instant) -> [String] {
    func milliseconds(_ duration: Duration) -> Int { Int((duration / .milliseconds(1)).rounded()) }
    func result<T>(_ result: Result<T, SwitchboardClientError>, _ success: (T) -> String) -> String {
        switch result {
        case .success(let value): success(value)
        case .failure(let error): error.code.rawValue
        }
    }
    func list(_ items: [String]) -> String { "[" + items.joined(separator: ", ") + "]" }
    func line(_ event: GatewayClient.Event) -> String {
        switch event {
        case .welcome(let user, let gateway): "welcome \(user)@\(gateway)"
        case .direct(let from, let to, let data): "direct \(from)->\(to) \(data)"
        case .room(let room, let from, let data): "room \(room) \(from) \(data)"
        case .broadcast(let from, let data): "broadcast \(from) \(data)"
        case .joined(let room, let user): "joined \(room) \(user)"
        case .left(let room, let user): "left \(room) \(user)"
        case .error(let error): "error \(error.code)" + (error.room.map { " room \($0)" } ?? "")
        case .disconnected(let code, let willReconnect): "disconnected \(code) " + (willReconnect ? "reconnect" : "final")
        case .reconnecting(let attempt, let delay): "reconnecting \(attempt) after \(milliseconds(delay))ms"
        case .rejoined(let rooms, let failed): "rejoined " + list(rooms) + " failed " + list(failed.map { "\($0.room ?? "?"): \($0.code)" })
        case .position(let stream, let position): "position \(stream) \(position)"
        case .recovered(let stream, let recovered, let reason): "recovered \(stream) \(recovered)" + (reason.map { " \($0)" } ?? "")
        }
    }
    func ack(_ ack: Acknowledgement) -> String {
        "ok" + (ack.offset.map { " offset \($0)" } ?? "") + (ack.recipientOffline ? " recipient offline" : "")
    }

    return actions.map { action in
        switch action {
        case .fetchToken(let generation): "fetch token #\(generation)"
        case .cancelTokenFetch: "cancel token fetch"
        case .openConnection(let generation, let path): "open #\(generation) \(path)"
        case .write(let text, let connection): "write \(connection) \(text)"
        case .close(let connection): "close \(connection)"
        case .abort(let connection): "abort \(connection)"
        case .completeRequest(let reply, let outcome): "reply \(reply) " + result(outcome, ack)
        case .resumeWaiters(let waiters, let outcome): "waiters \(waiters) " + result(outcome) { "welcome \($0.user)@\($0.gateway)" }
        case .emit(let event): line(event)
        case .armTimer(let instant): "arm \(milliseconds(instant - t0))ms"
        case .cancelTimer: "cancel timer"
        }
    }
}

import Foundation
import NIOCore
import NIOPosix
import SwitchboardBackplane
import SwitchboardServer
import SwitchboardTesting
import Synchronization
import Testing

@testable import SwitchboardClient

/// The Swift client library (`GatewayClient`) against real in-process gateways: acks,
/// typed errors, events with exact data, ack timeout, reconnect with re-join, close(),
/// 1008, and the backoff's bounds.
@Suite("GatewayClient, the Swift client library", .serialized, .timeLimit(.minutes(1)))
struct ClientLibraryTests {
    @Test("presence: who is in a room, and joined / left events for a room joined with presence: true")
    func presence() async throws {
        try await withGateway(configure: {
            $0.presence = MemoryPresence(policy: PresencePolicy(ttl: .seconds(60), grace: .milliseconds(200)))
        }) { gateway in
            let alice = GatewayClient(configuration: .init(port: gateway.port, identity: .user("alice")))
            let bob = GatewayClient(configuration: .init(port: gateway.port, identity: .user("bob")))
            let aliceEvents = EventLog.recording(alice)
            _ = try await alice.connect()
            _ = try await bob.connect()
            try await alice.join("lobby", presence: true)
            try await bob.join("lobby")
            let joined = try await aliceEvents.next { event -> [String]? in
                if case .joined(let room, let user) = event { [room, user] } else { nil }
            }
            #expect(joined == ["lobby", "bob"])
            let here = try await bob.presence("lobby")
            #expect(
                here
                    == GatewayClient.Presence(
                        users: [.init(user: "alice", connections: 1), .init(user: "bob", connections: 1)],
                        count: 2,
                        truncated: false
                    )
            )
            do {
                _ = try await bob.presence("elsewhere")
                Issue.record("presence of a room not joined answered")
            } catch let error as SwitchboardClientError {
                #expect(error.code == .notMember)
            }
            await bob.close()
            let left = try await aliceEvents.next { event -> [String]? in
                if case .left(let room, let user) = event { [room, user] } else { nil }
            }
            #expect(left == ["lobby", "bob"])
            await alice.close()
        }
    }

    @Test("requests return on their ack; direct and room events carry the exact data bytes")
    func acksAndEvents() async throws {
        try await withGateway { gateway in
            let alice = GatewayClient(configuration: .init(port: gateway.port, identity: .user("alice")))
            let bob = GatewayClient(configuration: .init(port: gateway.port, identity: .user("bob smith")))
            let bobEvents = EventLog.recording(bob)
            let welcome = try await alice.connect()
            #expect(welcome.user == "alice" && welcome.gateway == "gw-test")
            #expect(await alice.state == .ready)
            #expect(await alice.user == "alice")
            #expect(await alice.gateway == "gw-test")
            // `?user=` is percent-encoded: the gateway decodes it back.
            #expect(try await bob.connect().user == "bob smith")

            let directData = #"{"text":"hi","n":1.50,"e":"\u00e9", "list" : [1 ,2]}"#
            try await alice.sendDirect(to: "bob smith", json: directData)
            let direct = try await bobEvents.next { event -> [String]? in
                if case .direct(let from, let to, let data) = event { [from, to, data] } else { nil }
            }
            #expect(direct == ["alice", "bob smith", directData])

            try await bob.join("lobby")
            try await alice.join("lobby")
            #expect(await bob.rooms == ["lobby"])
            let roomData = #"[1, 2.0 ,"x\n"]"#
            try await alice.publish(room: "lobby", json: roomData)
            let room = try await bobEvents.next { event -> [String]? in
                if case .room(let room, let from, let data) = event { [room, from, data] } else { nil }
            }
            #expect(room == ["lobby", "alice", roomData])

            // An Encodable value is sent as JSONEncoder writes it.
            try await alice.publish(room: "lobby", data: ["text": "hello"])
            let encoded = try await bobEvents.next { event -> String? in
                if case .room(_, _, let data) = event { data } else { nil }
            }
            #expect(encoded == #"{"text":"hello"}"#)

            try await bob.leave("lobby")
            #expect(await bob.rooms.isEmpty)
            #expect(try await alice.ping() < .seconds(5))
            await alice.close()
            await bob.close()
        }
    }

    @Test("gateway errors throw SwitchboardClientError with the gateway's code; bad data fails before sending")
    func typedErrors() async throws {
        try await withGateway { gateway in
            let alice = GatewayClient(configuration: .init(port: gateway.port, identity: .user("alice")))
            let aliceEvents = EventLog.recording(alice)
            try await alice.connect()

            let offline = await caught { try await alice.sendDirect(to: "carol", json: #""hello?""#) }
            #expect(offline?.code == .recipientOffline)
            #expect(offline?.message.isEmpty == false)
            let notMember = await caught { try await alice.publish(room: "nowhere", json: "1") }
            #expect(notMember?.code == .notMember)
            let invalidRoom = await caught { try await alice.join("") }
            #expect(invalidRoom?.code == .invalidID)
            #expect(await alice.rooms.isEmpty)

            // Not one JSON value: refused locally (the gateway's answer would carry no id).
            for bad in ["{oops", #"1},"x":{"#, "", "1 2"] {
                let error = await caught { try await alice.sendDirect(to: "alice", json: bad) }
                #expect(error?.code == .invalidMessage, "data \(bad)")
            }
            // The connection stays usable, and no error went unmatched.
            try await alice.ping()
            #expect(aliceEvents.all.allSatisfy { if case .error = $0 { false } else { true } })
            await alice.close()
        }
    }

    @Test("requests while not connected fail at once with not_connected; nothing is queued")
    func notConnected() async throws {
        try await withGateway { gateway in
            let alice = GatewayClient(configuration: .init(port: gateway.port, identity: .user("alice")))
            let started = ContinuousClock.now
            #expect(await caught { try await alice.sendDirect(to: "bob", json: "1") }?.code == .notConnected)
            #expect(await caught { try await alice.join("lobby") }?.code == .notConnected)
            #expect(await caught { try await alice.publish(room: "lobby", json: "1") }?.code == .notConnected)
            #expect(await caught { try await alice.ping() }?.code == .notConnected)
            #expect(ContinuousClock.now - started < .seconds(1))

            try await alice.connect()
            try await alice.join("lobby")
            await alice.close()
            #expect(await alice.state == .idle)
            #expect(await caught { try await alice.ping() }?.code == .notConnected)
            // leave() while disconnected forgets the room at once.
            #expect(await caught { try await alice.leave("lobby") } == nil)
            #expect(await alice.rooms.isEmpty)
        }
    }

    @Test("a request the gateway never answers fails with timeout after ackTimeout; a late ack is ignored")
    func ackTimeout() async throws {
        let backplane = HoldingBackplane()
        try await withGateway(backplane: backplane) { gateway in
            let alice = GatewayClient(configuration: .init(port: gateway.port, identity: .user("alice"), ackTimeout: .milliseconds(300)))
            let aliceEvents = EventLog.recording(alice)
            let bob = GatewayClient(configuration: .init(port: gateway.port, identity: .user("bob")))
            try await alice.connect()
            try await bob.connect()

            backplane.holdsPublishes.store(true, ordering: .relaxed)
            let started = ContinuousClock.now
            let error = await caught { try await alice.sendDirect(to: "bob", json: "1") }
            let waited = ContinuousClock.now - started
            #expect(error?.code == .timeout)
            #expect(waited >= .milliseconds(300) && waited < .seconds(3))
            #expect(backplane.heldCount == 1)

            // The gateway acks now; nobody waits for it any more, and the connection is fine.
            backplane.releaseAll()
            try await alice.ping()
            #expect(aliceEvents.all.allSatisfy { if case .error = $0 { false } else { true } })
            await alice.close()
            await bob.close()
        }
    }

    @Test("the gateway restarts on its port: the client reconnects by itself, re-joins, and gets room messages again")
    func reconnectAndRejoin() async throws {
        let port = try await freePort()
        // An attempt that lands on the gateway being stopped can be accepted and never
        // answered: connectTimeout abandons it.
        let bob = GatewayClient(
            configuration: .init(
                port: port,
                identity: .user("bob"),
                backoff: ReconnectBackoff(minimum: .milliseconds(50), maximum: .milliseconds(200)),
                connectTimeout: .seconds(1)
            )
        )
        let bobEvents = EventLog.recording(bob)
        try await withGateway(configure: {
            $0.port = port
            $0.gatewayID = "gw-first"
        }) { _ in
            #expect(try await bob.connect().gateway == "gw-first")
            try await bob.join("lobby")
        }
        // Stopping the gateway drains it: bob is closed with 1012 and starts reconnecting.
        let close = try await bobEvents.nextDisconnect()
        #expect(close == Disconnect(code: 1012, willReconnect: true))
        #expect(try await bobEvents.nextReconnectAttempt() == 1)

        try await withGateway(configure: {
            $0.port = port
            $0.gatewayID = "gw-second"
        }) { _ in
            let welcome = try await bobEvents.next(within: .seconds(10)) { event -> [String]? in
                if case .welcome(let user, let gateway) = event { [user, gateway] } else { nil }
            }
            #expect(welcome == ["bob", "gw-second"])
            // The re-joins were written before anything sent after the welcome: no not_member.
            try await bob.publish(room: "lobby", json: #""bob is back""#)
            let rejoined = try await bobEvents.next { event -> [String]? in
                if case .rejoined(let rooms, let failed) = event { rooms + failed.map(\.description) } else { nil }
            }
            #expect(rejoined == ["lobby"])
            #expect(await bob.state == .ready)
            #expect(await bob.gateway == "gw-second")

            let alice = GatewayClient(configuration: .init(port: port, identity: .user("alice")))
            try await alice.connect()
            try await alice.join("lobby")
            try await alice.publish(room: "lobby", json: #"{"text":"after the restart"}"#)
            let message = try await bobEvents.next { event -> [String]? in
                if case .room(let room, "alice", let data) = event { [room, data] } else { nil }
            }
            #expect(message == ["lobby", #"{"text":"after the restart"}"#])
            #expect(bobEvents.all.contains { if case .room("lobby", "bob", #""bob is back""#) = $0 { true } else { false } })
            await alice.close()
        }
        // The welcome reset the attempt counter: the next outage starts again at attempt 1.
        #expect(try await bobEvents.nextReconnectAttempt() == 1)
        await bob.close()
        #expect(await bob.state == .idle)
    }

    @Test("close() stops reconnecting, also while a reconnect is scheduled")
    func closeStopsReconnecting() async throws {
        let port = try await freePort()
        let carol = GatewayClient(
            configuration: .init(
                port: port,
                identity: .user("carol"),
                backoff: ReconnectBackoff(minimum: .milliseconds(100), maximum: .milliseconds(100))
            )
        )
        let carolEvents = EventLog.recording(carol)
        try await withGateway(configure: { $0.port = port }) { _ in
            try await carol.connect()
            await carol.close()
            let close = try await carolEvents.nextDisconnect()
            #expect(close == Disconnect(code: 1000, willReconnect: false))
            try await Task.sleep(for: .milliseconds(300))
            #expect(!carolEvents.all.contains { if case .reconnecting = $0 { true } else { false } })
            #expect(await carol.state == .idle)
            // A closed client can connect again.
            try await carol.connect()
        }
        // The gateway is gone: carol keeps trying until close().
        _ = try await carolEvents.nextReconnectAttempt()
        await carol.close()
        let eventsAtClose = carolEvents.all.count
        try await Task.sleep(for: .milliseconds(500))
        #expect(carolEvents.all.count == eventsAtClose, "events after close(): \(carolEvents.all.dropFirst(eventsAtClose))")
        #expect(await carol.state == .idle)
    }

    @Test("1008 with a user identity: pending requests fail with connection_closed, rate_limited is an event, no reconnect")
    func policyCloseStops() async throws {
        try await withGateway(configure: { configuration in
            configuration.messageRate = 1
            configuration.messageBurst = 1
            configuration.rateLimitedCloseAfter = 3
        }) { gateway in
            let alice = GatewayClient(
                configuration: .init(
                    port: gateway.port,
                    identity: .user("alice"),
                    backoff: ReconnectBackoff(minimum: .milliseconds(20), maximum: .milliseconds(20))
                )
            )
            let aliceEvents = EventLog.recording(alice)
            try await alice.connect()
            try await alice.ping()  // the one message the bucket holds
            let errors = await withTaskGroup(of: SwitchboardClientError?.self) { group in
                for _ in 0..<3 { group.addTask { await caught { try await alice.ping() } } }
                return await group.reduce(into: []) { $0.append($1) }
            }
            // Two are dropped with an id-less rate_limited, the third closes with 1008: all three were pending.
            #expect(errors.map { $0?.code } == Array(repeating: .connectionClosed, count: 3))
            let close = try await aliceEvents.nextDisconnect()
            #expect(close == Disconnect(code: 1008, willReconnect: false))
            #expect(aliceEvents.all.contains { if case .error(let error) = $0 { error.code == .rateLimited } else { false } })
            #expect(await alice.state == .stopped)
            try await Task.sleep(for: .milliseconds(200))
            #expect(!aliceEvents.all.contains { if case .reconnecting = $0 { true } else { false } })
            #expect(await caught { try await alice.ping() }?.code == .notConnected)
        }
    }

    @Test("1008 with a token provider: a fresh token is fetched and the client reconnects; a fixed token stops")
    func policyCloseWithTokenProvider() async throws {
        try await withJWTGateway(configure: { configuration in
            configuration.messageRate = 1
            configuration.messageBurst = 1
            configuration.rateLimitedCloseAfter = 2
        }) { gateway in
            let tokensFetched = Counter()
            let backoff = ReconnectBackoff(minimum: .milliseconds(20), maximum: .milliseconds(20))
            let alice = GatewayClient(
                configuration: .init(
                    port: gateway.port,
                    identity: .token {
                        tokensFetched.increment()
                        return try await Tokens.hs256(Tokens.claims("alice"))
                    },
                    backoff: backoff
                )
            )
            let bob = GatewayClient(
                configuration: .init(
                    port: gateway.port,
                    identity: .fixedToken(try await Tokens.hs256(Tokens.claims("bob"))),
                    backoff: backoff
                )
            )
            let aliceEvents = EventLog.recording(alice)
            let bobEvents = EventLog.recording(bob)
            #expect(try await alice.connect().user == "alice")
            #expect(try await bob.connect().user == "bob")
            #expect(tokensFetched.value == 1)

            for client in [alice, bob] {
                await withTaskGroup(of: Void.self) { group in
                    for _ in 0..<3 { group.addTask { _ = await caught { try await client.ping() } } }
                }
            }
            let aliceClose = try await aliceEvents.nextDisconnect()
            #expect(aliceClose == Disconnect(code: 1008, willReconnect: true))
            let welcomeAgain = try await aliceEvents.next { event -> String? in
                if case .welcome(let user, _) = event { user } else { nil }
            }
            #expect(welcomeAgain == "alice")
            #expect(tokensFetched.value == 2)
            #expect(await alice.state == .ready)

            let bobClose = try await bobEvents.nextDisconnect()
            #expect(bobClose == Disconnect(code: 1008, willReconnect: false))
            #expect(await bob.state == .stopped)
            await alice.close()
            await bob.close()
        }
    }

    @Test("reconnect attempts wait the jittered backoff of the injected random source; reconnects: false gives up")
    func backoffDelaysOfTheClient() async throws {
        let port = try await freePort()  // nothing listens there
        let client = GatewayClient(
            configuration: .init(
                port: port,
                identity: .user("dave"),
                backoff: ReconnectBackoff(minimum: .milliseconds(40), maximum: .milliseconds(100)),
                unitRandom: { 0.5 }
            )
        )
        let events = EventLog.recording(client)
        let connecting = Task { await caught { try await client.connect() } }
        var attempts: [Int] = []
        var delays: [Duration] = []
        for _ in 0..<4 {
            let (attempt, delay) = try await events.next { event -> (Int, Duration)? in
                if case .reconnecting(let attempt, let delay) = event { (attempt, delay) } else { nil }
            }
            attempts.append(attempt)
            delays.append(delay)
        }
        #expect(attempts == [1, 2, 3, 4])
        #expect(delays == [.milliseconds(20), .milliseconds(40), .milliseconds(50), .milliseconds(50)])
        #expect(events.all.contains { if case .disconnected(1006, true) = $0 { true } else { false } })
        #expect(events.all.contains { if case .error(let error) = $0 { error.code == .connectFailed && error.cause != nil } else { false } })
        await client.close()
        #expect(await connecting.value?.code == .connectionClosed)

        let oneShot = GatewayClient(configuration: .init(port: port, identity: .user("dave"), reconnects: false))
        let failure = await caught { try await oneShot.connect() }
        #expect(failure?.code == .connectionClosed && failure?.cause != nil)
        #expect(await oneShot.state == .idle)
    }

    @Test("an attempt that hangs is abandoned after connectTimeout and retried: no handshake answer, or no welcome")
    func connectTimeout() async throws {
        // A TCP server that accepts connections and never says anything.
        let silentServer = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .bind(host: "127.0.0.1", port: 0).get()
        let silentPort = silentServer.localAddress?.port ?? 0
        let quick = ReconnectBackoff(minimum: .milliseconds(20), maximum: .milliseconds(20))
        let hanging = GatewayClient(
            configuration: .init(port: silentPort, identity: .user("erin"), backoff: quick, connectTimeout: .milliseconds(300))
        )
        let hangingEvents = EventLog.recording(hanging)
        let waiting = Task { await caught { try await hanging.connect() } }
        let started = ContinuousClock.now
        let timedOut = try await hangingEvents.next { event -> SwitchboardClientError? in
            if case .error(let error) = event { error } else { nil }
        }
        let waited = ContinuousClock.now - started
        #expect(timedOut.code == .connectFailed && (timedOut.cause as? HandshakeError) == .timedOut)
        #expect(waited >= .milliseconds(250) && waited < .seconds(3))
        #expect(try await hangingEvents.nextReconnectAttempt() == 1)
        await hanging.close()
        #expect(await waiting.value?.code == .connectionClosed)
        try await silentServer.close()

        // A gateway that upgrades but does not send welcome (the user's bind is held).
        let backplane = HoldingBackplane()
        try await withGateway(backplane: backplane) { gateway in
            backplane.holdsBinds.store(true, ordering: .relaxed)
            let client = GatewayClient(
                configuration: .init(port: gateway.port, identity: .user("erin"), backoff: quick, connectTimeout: .milliseconds(300))
            )
            let events = EventLog.recording(client)
            let connecting = Task { await caught { try await client.connect() } }
            let noWelcome = try await events.next { event -> String? in
                if case .error(let error) = event, error.code == .connectFailed { error.message } else { nil }
            }
            #expect(noWelcome.contains("no welcome"))
            #expect(try await events.next { if case .disconnected(let code, true) = $0 { code } else { nil } } == 1006)
            // Once binds go through again, a later attempt gets its welcome and connect() returns.
            backplane.releaseAll()
            #expect(await connecting.value == nil)
            #expect(await client.state == .ready)
            await client.close()
        }
    }

    @Test("cancelling the task waiting in connect() throws cancelled; close() then stops the attempts")
    func connectCancellation() async throws {
        let port = try await freePort()  // nothing listens there
        let client = GatewayClient(
            configuration: .init(
                port: port,
                identity: .user("erin"),
                backoff: ReconnectBackoff(minimum: .milliseconds(20), maximum: .milliseconds(20))
            )
        )
        let waiting = Task { await caught { try await client.connect() } }
        try await Task.sleep(for: .milliseconds(100))
        waiting.cancel()
        #expect(await waiting.value?.code == .cancelled)
        #expect(await client.state != .idle)  // still trying, as documented
        await client.close()
        #expect(await client.state == .idle)
    }

    @Test("backoff: delay in [0, min(max, min·2^retry)), ceilings double up to the cap")
    func backoffBounds() {
        let backoff = ReconnectBackoff()
        #expect(backoff.minimum == .milliseconds(500) && backoff.maximum == .seconds(30))
        let ceilings = (0..<9).map { backoff.ceiling(forRetry: $0) }
        #expect(
            ceilings == [
                .milliseconds(500), .seconds(1), .seconds(2), .seconds(4), .seconds(8), .seconds(16), .seconds(30), .seconds(30), .seconds(30),
            ]
        )
        for retry in [0, 1, 2, 5, 6, 40, 1000, Int.max] {
            let ceiling = backoff.ceiling(forRetry: retry)
            var previous = Duration.zero
            for random in [0, 0.1, 0.5, 0.9, 0.999_999, 1, 7] {
                let delay = backoff.delay(forRetry: retry, unitRandom: random)
                #expect(delay >= previous && delay < ceiling, "retry \(retry) random \(random): \(delay)")
                previous = delay
            }
        }
        #expect(backoff.delay(forRetry: 0, unitRandom: 0) == .zero)
        #expect(backoff.delay(forRetry: 2, unitRandom: 0.5) == .seconds(1))
        #expect(backoff.delay(forRetry: 0, unitRandom: -1) == .zero)
        #expect(backoff.delay(forRetry: 0, unitRandom: .nan) == .zero)
        // With the same random number, later retries wait longer until the cap.
        let growing = (0..<8).map { backoff.delay(forRetry: $0, unitRandom: 0.7) }
        #expect(growing == growing.sorted() && growing[6] > growing[5] && growing[7] == growing[6])
    }

    @Test("server frames: data is the exact JSON text of the member; broadcast, ack, error and unknown frames")
    func frameReading() {
        #expect(IncomingFrame(text: #"{"type":"broadcast","from":"ops","data": {"a" : 1.0} }"#) == .broadcast(from: "ops", data: #"{"a" : 1.0}"#))
        #expect(
            IncomingFrame(text: #"{"type":"room","room":"l\u00e9","from":"a","data":"\u00e9"}"#) == .room(room: "lé", from: "a", data: #""\u00e9""#)
        )
        #expect(IncomingFrame(text: #"{"type":"ack","id":"c7"}"#) == .reply(id: "c7"))
        #expect(IncomingFrame(text: #"{"type":"pong","id":12}"#) == .reply(id: "12"))
        #expect(
            IncomingFrame(text: #"{"type":"error","code":"rate_limited","message":"slow down"}"#)
                == .error(id: nil, code: "rate_limited", message: "slow down")
        )
        #expect(IncomingFrame(text: #"{"type":"future","x":1}"#) == .unknown)
        #expect(IncomingFrame(text: #"{"type":"direct","from":"a"}"#) == .unknown)
        #expect(IncomingFrame(text: "not json") == nil)
        #expect(OutgoingFrame.direct(to: "b\"ob", data: #"{"x":1}"#, id: "c1") == #"{"type":"direct","to":"b\"ob","data":{"x":1},"id":"c1"}"#)
        #expect(OutgoingFrame.percentEncoded("bob smith/é?&=") == "bob%20smith%2F%C3%A9%3F%26%3D")
    }
}

// MARK: Helpers

/// Runs `body` and returns the SwitchboardClientError it threw, or nil; any other error is an issue.
func caught(_ body: () async throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) async -> SwitchboardClientError? {
    do {
        try await body()
        return nil
    } catch let error as SwitchboardClientError {
        return error
    } catch {
        Issue.record("expected a SwitchboardClientError, got \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

/// A thread-safe count.
final class Counter: Sendable {
    private let count = Atomic<Int>(0)
    func increment() { count.add(1, ordering: .relaxed) }
    var value: Int { count.load(ordering: .relaxed) }
}

/// A `.disconnected` event's payload.
struct Disconnect: Equatable {
    var code: UInt16
    var willReconnect: Bool
}

/// Reads a client's events in the background, so that a test can wait for the one it expects.
final class EventLog: Sendable {
    private let recorded = Mutex<[GatewayClient.Event]>([])
    /// The same events, for `next`: each read wakes on the event itself.
    private let unread = EventInbox<GatewayClient.Event>()

    private init() {}

    static func recording(_ client: GatewayClient) -> EventLog {
        let log = EventLog()
        // Ends when the client is deallocated and its event stream finishes.
        Task {
            for await event in client.events {
                log.recorded.withLock { $0.append(event) }
                log.unread.append(event)
            }
            log.unread.finish()
        }
        return log
    }

    /// Every event so far.
    var all: [GatewayClient.Event] { recorded.withLock { $0 } }

    /// The next `.disconnected` event.
    func nextDisconnect() async throws -> Disconnect {
        try await next {
            if case .disconnected(let code, let willReconnect) = $0 { Disconnect(code: code, willReconnect: willReconnect) } else { nil }
        }
    }

    /// The attempt number of the next `.reconnecting` event.
    func nextReconnectAttempt() async throws -> Int {
        try await next { if case .reconnecting(let attempt, _) = $0 { attempt } else { nil } }
    }

    /// Waits for the first event after the last one matched for which `match` returns a value.
    func next<T>(within timeout: Duration = .seconds(5), _ match: (GatewayClient.Event) -> T?) async throws -> T {
        let deadline = ContinuousClock.now + timeout
        var skipped: [GatewayClient.Event] = []
        do {
            while let event = try await unread.next(timeout: deadline - .now) {
                if let value = match(event) { return value }
                skipped.append(event)
            }
        } catch TestClientError.timedOut {}
        throw TestFailure("no matching event within \(timeout); got \(skipped)")
    }
}

/// An in-memory backplane that holds publishes or binds on demand: a request the gateway
/// never acks (the client's ack timeout), a connection that never gets `welcome` (its connect timeout).
final class HoldingBackplane: Backplane {
    private let inner = InMemoryBackplane()
    let holdsPublishes = Atomic<Bool>(false)
    let holdsBinds = Atomic<Bool>(false)
    private let held = Mutex<[@Sendable () -> Void]>([])

    var heldCount: Int { held.withLock { $0.count } }

    /// Stops holding and lets every held publish and bind through.
    func releaseAll() {
        holdsPublishes.store(false, ordering: .relaxed)
        holdsBinds.store(false, ordering: .relaxed)
        let publishes = held.withLock { held in
            defer { held.removeAll() }
            return held
        }
        for publish in publishes { publish() }
    }

    func setDeliveryHandler(_ handler: @escaping BackplaneDeliveryHandler) { inner.setDeliveryHandler(handler) }
    var isReady: Bool { inner.isReady }
    var statistics: BackplaneStatistics { inner.statistics }
    func run() async throws { try await inner.run() }

    func bind(_ address: BackplaneAddress, completion: @escaping @Sendable (Result<Void, BackplaneError>) -> Void) {
        guard holdsBinds.load(ordering: .relaxed) else { return inner.bind(address, completion: completion) }
        let inner = self.inner
        held.withLock { $0.append { inner.bind(address, completion: completion) } }
    }

    func unbind(_ address: BackplaneAddress, completion: @escaping @Sendable (Result<Void, BackplaneError>) -> Void) {
        inner.unbind(address, completion: completion)
    }

    func publish(_ frame: ByteBuffer, to address: BackplaneAddress, completion: @escaping @Sendable (Result<PublishOutcome, BackplaneError>) -> Void)
    {
        guard holdsPublishes.load(ordering: .relaxed) else { return inner.publish(frame, to: address, completion: completion) }
        let inner = self.inner
        held.withLock { $0.append { inner.publish(frame, to: address, completion: completion) } }
    }
}

import Foundation
import NIOCore
import NIOWebSocket
import SwitchboardBackplane
import SwitchboardProtocol
import SwitchboardRegistry
import Testing

@testable import SwitchboardServer

/// The session's decisions, driven without sockets and with made-up instants.
@Suite("Session state machine")
struct SessionStateMachineTests {
    typealias Action = SessionStateMachine.Action

    static let start = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    static func machine(
        expiresAt: Date? = nil,
        rooms: RoomRules = .unrestricted,
        configure: (inout GatewayConfiguration) -> Void = { _ in }
    ) throws -> SessionStateMachine {
        var configuration = GatewayConfiguration(
            gatewayID: "gw-test",
            auth: .none,
            maximumMessageSize: 1000,
            messageRate: 10,
            messageBurst: 5,
            rateLimitedCloseAfter: 3
        )
        configure(&configuration)
        let identity = Identity(user: try UserID(validating: "alice"), rooms: rooms, expiresAt: expiresAt)
        return SessionStateMachine(identity: identity, gatewayID: configuration.gatewayID, limits: .init(configuration), now: start)
    }

    /// A machine past `welcome`.
    static func open(configure: (inout GatewayConfiguration) -> Void = { _ in }) throws -> SessionStateMachine {
        var machine = try machine(configure: configure)
        _ = machine.started(wallClock: 0)
        _ = machine.userBindCompleted(.success(()))
        #expect(machine.phase == .open)
        return machine
    }

    /// A client frame, masked with a zero key (so its bytes read as they are).
    static func frame(_ opcode: WebSocketOpcode, _ bytes: [UInt8], fin: Bool = true, masked: Bool = true, rsv1: Bool = false) -> WebSocketFrame {
        var data = ByteBuffer()
        data.writeBytes(bytes)
        return WebSocketFrame(fin: fin, rsv1: rsv1, opcode: opcode, maskKey: masked ? WebSocketMaskingKey([0, 0, 0, 0])! : nil, data: data)
    }

    static func text(_ string: String, fin: Bool = true) -> WebSocketFrame { frame(.text, Array(string.utf8), fin: fin) }

    static func texts(_ actions: [Action]) -> [String] {
        actions.compactMap { if case .writeText(let text, _) = $0 { String(buffer: text) } else { nil } }
    }

    static func errorCodes(_ actions: [Action]) -> [String] {
        texts(actions).compactMap { text in
            guard text.contains(#""type":"error""#), let range = text.range(of: #""code":""#) else { return nil }
            return String(text[range.upperBound...].prefix { $0 != "\"" })
        }
    }

    /// The close frame the actions send: code, reason text, and whether the socket closes once it is written.
    static func sentClose(_ actions: [Action]) -> (code: Int, message: String?, closeWhenWritten: Bool)? {
        for action in actions {
            if case .sendClose(let code, let message, let closeWhenWritten) = action {
                return (Int(UInt16(webSocketErrorCode: code)), message, closeWhenWritten)
            }
        }
        return nil
    }

    static func closesSocket(_ actions: [Action]) -> Bool {
        actions.contains { if case .closeSocket = $0 { true } else { false } }
    }

    static func endReason(_ actions: [Action]) -> GatewayMetrics.CloseReason? {
        for action in actions { if case .end(let reason) = action { return reason } }
        return nil
    }

    // MARK: RFC 6455

    @Test(
        "RFC 6455 violations the server decides close with 1002",
        arguments: [
            ("unmasked frame", frame(.text, Array("{}".utf8), masked: false)),
            ("RSV1 without an extension", frame(.text, Array("{}".utf8), rsv1: true)),
            ("reserved opcode 0x3", frame(WebSocketOpcode(encodedWebSocketOpcode: 0x3)!, [])),
            ("reserved control opcode 0xB", frame(WebSocketOpcode(encodedWebSocketOpcode: 0xB)!, [])),
            ("continuation with nothing to continue", frame(.continuation, Array("{}".utf8))),
            ("fragmented ping", frame(.ping, [1], fin: false)),
            ("ping over 125 bytes", frame(.ping, Array(repeating: 0, count: 126))),
            ("close with a one-byte payload", frame(.connectionClose, [0x03])),
            ("close code 1005", frame(.connectionClose, [0x03, 0xED])),
            ("close code 2999", frame(.connectionClose, [0x0B, 0xB7])),
        ]
    )
    func protocolErrors(name: String, frame: WebSocketFrame) throws {
        var machine = try Self.open()
        let actions = machine.frameReceived(frame, now: Self.start)
        let close = try #require(Self.sentClose(actions), "\(name)")
        #expect(close.code == 1002, "\(name)")
        #expect(Self.endReason(actions) == .protocolError)
        #expect(machine.phase == .closing)
    }

    @Test("a new message inside a fragmented one is a protocol error; control frames between fragments are fine")
    func fragmentation() throws {
        var machine = try Self.open()
        #expect(machine.frameReceived(Self.text(#"{"type":"#, fin: false), now: Self.start).isEmpty)
        let pong = machine.frameReceived(Self.frame(.ping, [7]), now: Self.start)
        #expect(
            pong.contains { if case .writeControl(let frame) = $0 { frame.opcode == .pong && frame.data == ByteBuffer(bytes: [7]) } else { false } }
        )
        let done = machine.frameReceived(Self.frame(.continuation, Array(#""ping","id":1}"#.utf8)), now: Self.start)
        #expect(Self.texts(done) == [#"{"type":"pong","id":1}"#])

        _ = machine.frameReceived(Self.text("{", fin: false), now: Self.start)
        let interleaved = machine.frameReceived(Self.text("{}"), now: Self.start)
        #expect(Self.sentClose(interleaved)?.code == 1002)
    }

    @Test("the client's close is echoed (1000 for none) and the socket closes once that is written")
    func clientClose() throws {
        for (payload, answer) in [([UInt8](), 1000), ([0x0F, 0xA0], 4000), ([0x03, 0xE9, 0x68, 0x69], 1001)] {
            var machine = try Self.open()
            let actions = machine.frameReceived(Self.frame(.connectionClose, payload), now: Self.start)
            let close = try #require(Self.sentClose(actions))
            #expect(close.code == answer)
            #expect(close.closeWhenWritten)
            #expect(Self.endReason(actions) == .client)
            #expect(machine.phase == .closed)
        }
    }

    @Test("a close reason that is not UTF-8 gets 1007")
    func closeReasonUTF8() throws {
        var machine = try Self.open()
        let actions = machine.frameReceived(Self.frame(.connectionClose, [0x03, 0xE8, 0xC3, 0x28]), now: Self.start)
        #expect(Self.sentClose(actions)?.code == 1007)
    }

    @Test("UTF-8 is checked per fragment: the fragment with an invalid byte fails at once, a code point split across fragments passes")
    func utf8PerFragment() throws {
        var failing = try Self.open()
        #expect(failing.frameReceived(Self.text(#"{"type":"ping","x":""#, fin: false), now: Self.start).isEmpty)
        // 0xFF can never be UTF-8: the connection fails on this fragment, though the message is not complete.
        let bad = failing.frameReceived(Self.frame(.continuation, [0x61, 0xFF], fin: false), now: Self.start)
        #expect(Self.sentClose(bad)?.code == 1007)

        var split = try Self.open()
        // "é" is C3 A9; the fragments split it.
        _ = split.frameReceived(Self.frame(.text, Array(#"{"type":"ping","id":"\#u{00}"#.utf8.dropLast()) + [0xC3], fin: false), now: Self.start)
        let whole = split.frameReceived(Self.frame(.continuation, [0xA9] + Array(#""}"#.utf8)), now: Self.start)
        #expect(Self.texts(whole) == [#"{"type":"pong","id":"é"}"#])

        var truncated = try Self.open()
        _ = truncated.frameReceived(Self.frame(.text, Array(#"{"x":""#.utf8) + [0xE2, 0x82], fin: false), now: Self.start)
        #expect(Self.sentClose(truncated.frameReceived(Self.frame(.continuation, []), now: Self.start))?.code == 1007)
    }

    @Test(
        "UTF8Validator follows RFC 3629",
        arguments: [
            ([0x24, 0xC2, 0xA2, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x98, 0x80], true),
            ([0xC0, 0xAF], false),  // overlong "/"
            ([0xE0, 0x80, 0xAF], false),  // overlong
            ([0xED, 0xA0, 0x80], false),  // surrogate U+D800
            ([0xF4, 0x90, 0x80, 0x80], false),  // past U+10FFFF
            ([0xF8, 0x88, 0x80, 0x80, 0x80], false),
            ([0x80], false),  // lone continuation
            (Array("plain ascii, longer than eight bytes".utf8), true),
        ] as [([UInt8], Bool)]
    )
    func validator(bytes: [UInt8], valid: Bool) {
        var validator = UTF8Validator()
        let taken = bytes.withUnsafeBytes { validator.take($0) }
        #expect((taken && validator.isAtBoundary) == valid)
        // Byte by byte gives the same answer.
        var stepwise = UTF8Validator()
        let all = bytes.allSatisfy { byte in [byte].withUnsafeBytes { stepwise.take($0) } }
        #expect((all && stepwise.isAtBoundary) == valid)
    }

    // MARK: Limits

    @Test("a message over the size limit gets too_large, whole or fragmented; past the frame limit the connection closes with 1009")
    func sizeLimits() throws {
        var machine = try Self.open()
        let big = String(repeating: "x", count: 1001)
        #expect(Self.errorCodes(machine.frameReceived(Self.text(big), now: Self.start)) == ["too_large"])
        _ = machine.frameReceived(Self.text(String(repeating: "x", count: 600), fin: false), now: Self.start)
        _ = machine.frameReceived(Self.frame(.continuation, Array(repeating: 0x78, count: 600), fin: false), now: Self.start)
        #expect(Self.errorCodes(machine.frameReceived(Self.frame(.continuation, [0x78]), now: Self.start)) == ["too_large"])
        #expect(machine.phase == .open)
        // The frame limit is 4 × the message size (4000 bytes here).
        _ = machine.frameReceived(Self.text(String(repeating: "x", count: 3000), fin: false), now: Self.start)
        let over = machine.frameReceived(Self.frame(.continuation, Array(repeating: 0x78, count: 1001), fin: false), now: Self.start)
        #expect(Self.sentClose(over)?.code == 1009)
    }

    @Test("binary messages get invalid_message and are counted")
    func binary() throws {
        var machine = try Self.open()
        let actions = machine.frameReceived(Self.frame(.binary, [1, 2, 3]), now: Self.start)
        #expect(Self.errorCodes(actions) == ["invalid_message"])
        #expect(actions.contains { if case .received(.binary) = $0 { true } else { false } })
    }

    @Test("frames before welcome are held and handled after it; more than the limit closes with 1008 and a reason")
    func heldFrames() throws {
        var machine = try Self.machine()
        _ = machine.started(wallClock: 0)
        #expect(machine.frameReceived(Self.text(#"{"type":"ping","id":1}"#), now: Self.start).isEmpty)
        #expect(machine.deliver(ByteBuffer(string: #"{"type":"direct"}"#)).isEmpty)
        let welcome = machine.userBindCompleted(.success(()))
        #expect(
            Self.texts(welcome) == [#"{"type":"welcome","user":"alice","gateway":"gw-test"}"#, #"{"type":"direct"}"#, #"{"type":"pong","id":1}"#]
        )

        var flooded = try Self.machine()
        _ = flooded.started(wallClock: 0)
        for _ in 0..<32 { #expect(flooded.frameReceived(Self.text("{}"), now: Self.start).isEmpty) }
        let close = Self.sentClose(flooded.frameReceived(Self.text("{}"), now: Self.start))
        #expect(close?.code == 1008)
        #expect(close?.message == "too many messages before welcome")
        #expect(flooded.userBindCompleted(.success(())).isEmpty, "no welcome after the close")
    }

    @Test("join then publish, both sent before welcome: the publish sees the membership; a repeated join costs one join token")
    func heldJoinThenPublish() throws {
        var machine = try Self.machine { $0.joinBurst = 1 }
        _ = machine.started(wallClock: 0)
        for text in [#"{"type":"join","room":"r","id":1}"#, #"{"type":"join","room":"r","id":2}"#, #"{"type":"publish","room":"r","data":1,"id":3}"#]
        {
            _ = machine.frameReceived(Self.text(text), now: Self.start)
        }
        let actions = machine.userBindCompleted(.success(()))
        #expect(Self.errorCodes(actions).isEmpty, "\(Self.texts(actions))")
        #expect(actions.filter { if case .register = $0 { true } else { false } }.count == 2)
        #expect(actions.contains { if case .publish = $0 { true } else { false } })
    }

    @Test("an expired token at start closes before any broker bind; no timer is armed for it")
    func expiredBeforeBind() throws {
        var machine = try Self.machine(expiresAt: Date(timeIntervalSince1970: 100))
        let actions = machine.started(wallClock: 200)
        #expect(!actions.contains { if case .bindUser = $0 { true } else { false } })
        #expect(!actions.contains { if case .scheduleExpiryCheck = $0 { true } else { false } })
        #expect(Self.endReason(actions) == .policy)
    }

    @Test("a user bind that fails or times out gets backplane_unavailable, then 1013")
    func bindFailures() throws {
        var timedOut = try Self.machine()
        let started = timedOut.started(wallClock: 0)
        #expect(started.contains { if case .scheduleBindTimeout(let delay) = $0 { delay == .seconds(10) } else { false } })
        let actions = timedOut.userBindTimedOut()
        #expect(Self.errorCodes(actions) == ["backplane_unavailable"])
        #expect(Self.sentClose(actions)?.code == 1013)
        #expect(timedOut.userBindCompleted(.success(())).isEmpty, "a late bind changes nothing")

        var failed = try Self.machine()
        _ = failed.started(wallClock: 0)
        let refused = failed.userBindCompleted(.failure(BackplaneError(.unavailable, "down")))
        #expect(Self.sentClose(refused)?.code == 1013)
        #expect(Self.endReason(refused) == .backplane)
    }

    @Test(
        "the rate limiter by the injected clock: the burst passes, then rate_limited, refilled with time; sustained abuse closes with 1008 and the handshake"
    )
    func rateLimit() throws {
        var machine = try Self.open()
        let ping = Self.text(#"{"type":"ping"}"#)
        for _ in 0..<5 { #expect(Self.texts(machine.frameReceived(ping, now: Self.start)) == [#"{"type":"pong"}"#]) }
        #expect(Self.errorCodes(machine.frameReceived(ping, now: Self.start)) == ["rate_limited"])
        // 10 per second: 100 ms later one more is allowed, and the limited streak resets.
        #expect(Self.texts(machine.frameReceived(ping, now: Self.start + .milliseconds(100))) == [#"{"type":"pong"}"#])
        let later = Self.start + .milliseconds(100)
        #expect(Self.errorCodes(machine.frameReceived(ping, now: later)) == ["rate_limited"])
        #expect(Self.errorCodes(machine.frameReceived(ping, now: later)) == ["rate_limited"])
        let abuse = machine.frameReceived(ping, now: later)
        let close = try #require(Self.sentClose(abuse))
        #expect(close.code == 1008)
        #expect(close.message == "rate limit exceeded")
        #expect(!close.closeWhenWritten, "the gateway waits for the client's close frame")
        #expect(!Self.closesSocket(abuse), "1008 for abuse gets the close handshake, unlike a slow consumer's")
        #expect(Self.endReason(abuse) == .policy)
    }

    @Test("joins of new rooms are rate limited; re-joining a room is free")
    func joinLimit() throws {
        var machine = try Self.open {
            $0.joinRate = 1
            $0.joinBurst = 2
            $0.messageBurst = 100
        }
        for room in ["a", "b"] {
            let actions = machine.frameReceived(Self.text(#"{"type":"join","room":"\#(room)"}"#), now: Self.start)
            #expect(actions.contains { if case .register(join: let joined, _, _) = $0 { joined.description == room } else { false } })
            _ = machine.joinRegistered(try RoomID(validating: room), correlationID: nil, wasMember: false, result: .joined(roomBecameLocal: true))
        }
        #expect(Self.errorCodes(machine.frameReceived(Self.text(#"{"type":"join","room":"c"}"#), now: Self.start)) == ["rate_limited"])
        let again = machine.frameReceived(Self.text(#"{"type":"join","room":"a"}"#), now: Self.start)
        #expect(again.contains { if case .register = $0 { true } else { false } })
        #expect(
            machine.frameReceived(Self.text(#"{"type":"join","room":"c"}"#), now: Self.start + .seconds(1)).contains {
                if case .register = $0 { true } else { false }
            }
        )
    }

    @Test("publish needs membership; a failed room bind undoes it; leave acks")
    func rooms() throws {
        var machine = try Self.open()
        #expect(Self.errorCodes(machine.frameReceived(Self.text(#"{"type":"publish","room":"r","data":1}"#), now: Self.start)) == ["not_member"])
        let room = try RoomID(validating: "r")
        _ = machine.frameReceived(Self.text(#"{"type":"join","room":"r"}"#), now: Self.start)
        #expect(
            machine.joinRegistered(room, correlationID: nil, wasMember: false, result: .joined(roomBecameLocal: true)).contains {
                if case .bindRoom = $0 { true } else { false }
            }
        )
        #expect(
            machine.frameReceived(Self.text(#"{"type":"publish","room":"r","data":1}"#), now: Self.start).contains {
                if case .publish = $0 { true } else { false }
            }
        )
        let failed = machine.roomBindCompleted(room, correlationID: nil, result: .failure(BackplaneError(.unavailable, "down")))
        #expect(failed.contains { if case .leave = $0 { true } else { false } })
        #expect(Self.errorCodes(failed) == ["backplane_unavailable"])
        #expect(!machine.rooms.contains(room))
        _ = machine.frameReceived(Self.text(#"{"type":"join","room":"r"}"#), now: Self.start)
        #expect(Self.errorCodes(machine.joinRegistered(room, correlationID: nil, wasMember: false, result: .tooManyRooms)) == ["forbidden"])
        #expect(!machine.rooms.contains(room), "a refused join is taken back")
        #expect(
            Self.errorCodes(machine.joinRegistered(room, correlationID: nil, wasMember: false, result: .connectionLeaving)) == [
                "backplane_unavailable"
            ]
        )
    }

    @Test("publish outcomes: routed acks, no recipient of a direct is recipient_offline and reported, broker errors map to codes")
    func publishOutcomes() throws {
        var machine = try Self.open()
        let direct = SessionStateMachine.PublishRequest(
            head: ByteBuffer(string: "{"),
            address: .user(try UserID(validating: "bob")),
            correlationID: nil,
            noRecipient: .recipientOffline
        )
        let room = SessionStateMachine.PublishRequest(
            head: ByteBuffer(string: "{"),
            address: .room(try RoomID(validating: "r")),
            correlationID: nil,
            noRecipient: nil
        )
        #expect(Self.texts(machine.publishCompleted(.success(.routed), request: direct, frame: ByteBuffer())) == [#"{"type":"ack"}"#])
        let offline = machine.publishCompleted(.success(.noRecipient), request: direct, frame: ByteBuffer())
        #expect(Self.errorCodes(offline) == ["recipient_offline"])
        #expect(offline.contains { if case .reportUndelivered = $0 { true } else { false } })
        #expect(Self.texts(machine.publishCompleted(.success(.noRecipient), request: room, frame: ByteBuffer())) == [#"{"type":"ack"}"#])
        #expect(
            Self.errorCodes(machine.publishCompleted(.failure(BackplaneError(.overloaded, "")), request: room, frame: ByteBuffer())) == [
                "backplane_unavailable"
            ]
        )
        #expect(
            Self.errorCodes(machine.publishCompleted(.failure(BackplaneError(.closed, "")), request: room, frame: ByteBuffer())) == [
                "backplane_unavailable"
            ]
        )
        let other = machine.publishCompleted(.failure(BackplaneError(.rejected, "")), request: room, frame: ByteBuffer())
        #expect(Self.errorCodes(other) == ["internal"])
        #expect(other.contains { if case .log(.publishFailed) = $0 { true } else { false } })
    }

    // MARK: Closing

    @Test("a drain's close before welcome closes the session; the late bind sends no welcome")
    func drainBeforeWelcome() throws {
        var machine = try Self.machine()
        _ = machine.started(wallClock: 0)
        let close = machine.closeRequested(code: CloseCode.serviceRestart, reason: .drain)
        #expect(Self.sentClose(close)?.code == 1012)
        #expect(Self.endReason(close) == .drain)
        #expect(machine.userBindCompleted(.success(())).isEmpty)
    }

    @Test("the gateway's close waits for the client's close frame, ignoring data meanwhile, or for the timeout")
    func closeHandshake() throws {
        var machine = try Self.open()
        let close = machine.closeRequested(code: CloseCode.serviceRestart, reason: .drain)
        #expect(!Self.closesSocket(close))
        #expect(close.contains { if case .scheduleCloseTimeout(let delay) = $0 { delay == .seconds(2) } else { false } })
        #expect(machine.frameReceived(Self.text(#"{"type":"ping"}"#), now: Self.start).isEmpty)
        #expect(machine.deliver(ByteBuffer(string: "{}")).isEmpty, "nothing is written after the close frame")
        let answered = machine.frameReceived(Self.frame(.connectionClose, [0x03, 0xF4]), now: Self.start)
        #expect(Self.closesSocket(answered))
        #expect(Self.endReason(answered) == nil, "the session ended once, when the close started")
        #expect(machine.closeHandshakeTimedOut().isEmpty)

        var silent = try Self.open()
        _ = silent.closeRequested(code: CloseCode.goingAway, reason: .idle)
        #expect(Self.closesSocket(silent.closeHandshakeTimedOut()))
    }

    @Test("a slow consumer is closed at once, without a close frame; the close reason decides, not the 1008")
    func slowConsumer() throws {
        var machine = try Self.open()
        machine.writabilityChanged(isWritable: false)
        let actions = machine.deliver(ByteBuffer(string: "{}"))
        #expect(actions.contains { if case .log(.slowConsumer) = $0 { true } else { false } })
        #expect(Self.closesSocket(actions))
        #expect(Self.sentClose(actions) == nil)
        #expect(Self.endReason(actions) == .slowConsumer)

        var beforeWelcome = try Self.machine { $0.maximumOutboundBytes = 10 }
        _ = beforeWelcome.started(wallClock: 0)
        #expect(beforeWelcome.deliver(ByteBuffer(string: "12345")).isEmpty)
        #expect(Self.endReason(beforeWelcome.deliver(ByteBuffer(string: "123456"))) == .slowConsumer)
    }

    @Test("the session ends exactly once, whatever comes first")
    func endsOnce() throws {
        var machine = try Self.open()
        #expect(Self.endReason(machine.inputClosed()) == .disconnected)
        #expect(machine.channelClosed().isEmpty)
        #expect(machine.closeRequested(code: CloseCode.serviceRestart, reason: .drain).isEmpty)
    }

    // MARK: Time

    @Test("token expiry: a past exp closes with 1008 'token expired' at start; a future one is checked when due")
    func tokenExpiry() throws {
        var expired = try Self.machine(expiresAt: Date(timeIntervalSince1970: 100))
        let close = Self.sentClose(expired.started(wallClock: 200))
        #expect(close?.code == 1008)
        #expect(close?.message == "token expired")

        var later = try Self.machine(expiresAt: Date(timeIntervalSince1970: 100))
        let armed = later.started(wallClock: 40)
        #expect(armed.contains { if case .scheduleExpiryCheck(let delay) = $0 { delay == .seconds(60) } else { false } })
        _ = later.userBindCompleted(.success(()))
        #expect(Self.sentClose(later.expiryCheck(wallClock: 100.5))?.code == 1008)

        var far = try Self.machine(expiresAt: Date(timeIntervalSince1970: 1e300))
        #expect(
            far.started(wallClock: 0).contains {
                if case .scheduleExpiryCheck(let delay) = $0 { delay == TimeAmount(TokenLifetime.longestTimer) } else { false }
            }
        )
    }

    @Test("keepalive by the injected clock: quiet clients are pinged, silent ones closed with 1001")
    func keepalive() throws {
        var machine = try Self.open {
            $0.pingInterval = .seconds(30)
            $0.idleTimeout = .seconds(75)
        }
        #expect(machine.keepaliveTick(now: Self.start + .seconds(29)).isEmpty)
        let ping = machine.keepaliveTick(now: Self.start + .seconds(31))
        #expect(ping.contains { if case .writeControl(let frame) = $0 { frame.opcode == .ping } else { false } })
        _ = machine.frameReceived(Self.frame(.pong, []), now: Self.start + .seconds(40))
        #expect(Self.sentClose(machine.keepaliveTick(now: Self.start + .seconds(114))) == nil)
        let idle = machine.keepaliveTick(now: Self.start + .seconds(116))
        #expect(Self.sentClose(idle)?.code == 1001)
        #expect(Self.endReason(idle) == .idle)
    }
}

@Suite("Drain plan")
struct DrainPlanTests {
    @Test("connections split into batches spread evenly over the window, at most one every 100 ms; every connection once")
    func batches() {
        let plan = DrainPlan(connections: 10, window: .seconds(1))
        #expect(plan.batches.count == 10)
        #expect(plan.batches.map(\.startsAfter) == (0..<10).map { Duration.milliseconds(100 * $0) })

        let many = DrainPlan(connections: 1001, window: .seconds(10))
        #expect(many.batches.count == 100)
        #expect(many.batches.flatMap { Array($0.members) } == Array(0..<1001))
        #expect(many.batches.last?.startsAfter == .milliseconds(9900))

        #expect(DrainPlan(connections: 3, window: .zero).batches == [.init(members: 0..<3, startsAfter: .zero)])
        #expect(DrainPlan(connections: 0, window: .seconds(10)).batches.isEmpty)
    }
}

@Suite("Session state machine: presence")
struct SessionPresenceStateMachineTests {
    typealias Machine = SessionStateMachineTests
    let lobby = try! RoomID(validating: "lobby")

    static func withPresence(_ configuration: inout GatewayConfiguration) {
        configuration.presence = MemoryPresence()
    }

    /// Joins lobby, with events when `events`, and completes the registry step and the bind.
    func joined(_ machine: inout SessionStateMachine, events: Bool) {
        let flag = events ? #","presence":true"# : ""
        let actions = machine.frameReceived(Machine.text(#"{"type":"join","room":"lobby","id":1\#(flag)}"#), now: Machine.start)
        #expect(actions.contains { if case .register(join: lobby, _, _) = $0 { true } else { false } })
        _ = machine.joinRegistered(lobby, correlationID: nil, wasMember: false, result: .joined(roomBecameLocal: true))
        _ = machine.roomBindCompleted(lobby, correlationID: nil, result: .success(()))
    }

    @Test("presence from a member is a read of the store; from a non-member not_member; without a store presence_disabled")
    func query() throws {
        var machine = try Machine.open(configure: Self.withPresence)
        let early = machine.frameReceived(Machine.text(#"{"type":"presence","room":"lobby","id":"p"}"#), now: Machine.start)
        #expect(Machine.errorCodes(early) == ["not_member"])
        joined(&machine, events: false)
        let asked = machine.frameReceived(Machine.text(#"{"type":"presence","room":"lobby","id":"p"}"#), now: Machine.start)
        #expect(asked.contains { if case .readPresence(lobby, _) = $0 { true } else { false } })
        let bob = try UserID(validating: "bob")
        let answer = machine.presenceRead(
            lobby,
            correlationID: CorrelationID("p"),
            result: .success(PresenceSnapshot(users: [.init(user: bob, connections: 1)], count: 1))
        )
        #expect(Machine.texts(answer) == [#"{"type":"presence","room":"lobby","id":"p","users":[{"user":"bob","connections":1}],"count":1}"#])
        let failed = machine.presenceRead(lobby, correlationID: nil, result: .failure(PresenceError("down")))
        #expect(Machine.errorCodes(failed) == ["presence_unavailable"])

        var without = try Machine.open()
        let refused = without.frameReceived(Machine.text(#"{"type":"join","room":"lobby","presence":true}"#), now: Machine.start)
        #expect(Machine.errorCodes(refused) == ["presence_disabled"])
        #expect(!without.rooms.contains(lobby), "a refused join is no membership")
    }

    @Test("events reach only connections that joined with presence, never about their own user, and stop after a leave")
    func events() throws {
        let bob = try UserID(validating: "bob")
        let alice = try UserID(validating: "alice")
        var silent = try Machine.open(configure: Self.withPresence)
        joined(&silent, events: false)
        #expect(silent.deliver(ServerFrame.joined(room: lobby, user: bob), address: .room(lobby), isPresenceEvent: true).isEmpty)

        var listening = try Machine.open(configure: Self.withPresence)
        joined(&listening, events: true)
        let event = listening.deliver(ServerFrame.joined(room: lobby, user: bob), address: .room(lobby), isPresenceEvent: true)
        #expect(Machine.texts(event) == [#"{"type":"joined","room":"lobby","user":"bob"}"#])
        #expect(listening.deliver(ServerFrame.joined(room: lobby, user: alice), address: .room(lobby), isPresenceEvent: true).isEmpty)
        _ = listening.frameReceived(Machine.text(#"{"type":"leave","room":"lobby"}"#), now: Machine.start)
        #expect(listening.deliver(ServerFrame.left(room: lobby, user: bob), address: .room(lobby), isPresenceEvent: true).isEmpty)
    }
}

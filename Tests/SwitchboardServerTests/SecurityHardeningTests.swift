import Foundation
import JWTKit
import NIOCore
import NIOPosix
import SwitchboardBackplane
import SwitchboardClient
import SwitchboardProtocol
import SwitchboardServer
import SwitchboardTesting
import Testing

/// Pairs of ids that Swift's `String ==` calls equal (Unicode canonical equivalence) and
/// whose UTF-8 bytes differ: KELVIN SIGN, a precomposed and a combining é, ANGSTROM SIGN.
let canonicallyEquivalentIDs: [(String, String)] = [("Kate", "\u{212A}ate"), ("caf\u{E9}", "cafe\u{301}"), ("\u{C5}sa", "\u{212B}sa")]

func utf8(_ text: String?) -> [UInt8]? { text.map { Array($0.utf8) } }

/// A token's claims with every time claim a raw JSON number, as an issuer may write any.
struct RawTimeClaims: JWTPayload {
    var sub: String
    var exp: Double?
    var nbf: Double?
    var iat: Double?
    var rooms: [String]?

    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

/// The defects of the security review (issue "Security hardening II"), each against a
/// live gateway: every test here fails on the code before the fix.
@Suite("Security hardening: ids by bytes, claim values, connection caps, slow requests, join churn", .serialized, .timeLimit(.minutes(2)))
struct SecurityHardeningTests {
    @Test("canonically equivalent user ids are different users: a direct message reaches only the exact bytes", arguments: canonicallyEquivalentIDs)
    func directByBytes(plain: String, equivalent: String) async throws {
        try await withGateway(configure: { $0.maximumConnectionsPerUser = 1 }) { gateway in
            let exact = try await gateway.connect(plain)
            // With one connection per user allowed, the equivalent id still connects: it is another user.
            let lookalike = try await gateway.connect(equivalent)
            let sender = try await gateway.connect("sender")
            #expect(gateway.gateway.localCounts.users == 3)

            try await sender.send(#"{"type":"direct","to":"\#(plain)","data":"for the exact id","id":"d1"}"#)
            let delivered = try await exact.next()
            #expect(utf8(delivered["to"]) == utf8(plain))
            #expect(delivered["data"] == "for the exact id")
            #expect(try await sender.next()["type"] == "ack")
            try await lookalike.expectSilence()

            try await sender.send(#"{"type":"direct","to":"\#(equivalent)","data":"for the lookalike","id":"d2"}"#)
            #expect(try await lookalike.next()["data"] == "for the lookalike")
            #expect(try await sender.next()["type"] == "ack")
            try await exact.expectSilence()

            await exact.close()
            #expect(try await eventually { !gateway.gateway.isLocal(user: try! UserID(validating: plain)) })
            #expect(gateway.gateway.isLocal(user: try UserID(validating: equivalent)), "closing one did not take the other's binding")
            try await sender.send(#"{"type":"direct","to":"\#(plain)","data":"x","id":"d3"}"#)
            let offline = try await sender.next()
            #expect(offline["code"] == "recipient_offline", "the exact id is offline although its lookalike is connected")
            await lookalike.close()
            await sender.close()
        }
    }

    @Test("canonically equivalent room ids are different rooms", arguments: canonicallyEquivalentIDs)
    func roomsByBytes(plain: String, equivalent: String) async throws {
        try await withGateway { gateway in
            let member = try await gateway.connect("member")
            let other = try await gateway.connect("other")
            try await member.send(#"{"type":"join","room":"room-\#(plain)","id":"j1"}"#)
            #expect(try await member.next()["type"] == "ack")
            try await other.send(#"{"type":"join","room":"room-\#(equivalent)","id":"j2"}"#)
            #expect(try await other.next()["type"] == "ack")
            #expect(gateway.gateway.localCounts.rooms == 2)

            try await member.send(#"{"type":"publish","room":"room-\#(plain)","data":"to the exact room","id":"p1"}"#)
            var got: [String: String] = [:]
            for _ in 0..<2 {
                let frame = try await member.next()
                got[frame["type"] ?? ""] = frame["room"] ?? frame["id"]
            }
            #expect(utf8(got["room"]) == utf8("room-\(plain)"))
            try await other.expectSilence()

            // Membership is by bytes too: the member of one is not a member of the other.
            try await member.send(#"{"type":"publish","room":"room-\#(equivalent)","data":"x","id":"p2"}"#)
            #expect(try await member.next()["code"] == "not_member")
            await member.close()
            await other.close()
        }
    }

    @Test("the rooms claim allows exact bytes only, for names and prefix patterns", arguments: canonicallyEquivalentIDs)
    func roomsClaimByBytes(plain: String, equivalent: String) async throws {
        try await withJWTGateway { gateway in
            let token = try await Tokens.hs256(Tokens.claims("alice", rooms: ["r-\(equivalent)", "p-\(equivalent)*"]))
            let alice = try await TestClient.connect(port: gateway.port, path: "/ws?token=\(token)")
            #expect(try await alice.next()["type"] == "welcome")
            for (room, expected) in [
                ("r-\(plain)", "forbidden"), ("p-\(plain)-1", "forbidden"), ("r-\(equivalent)", "ack"), ("p-\(equivalent)-1", "ack"),
            ] {
                try await alice.send(#"{"type":"join","room":"\#(room)","id":"j"}"#)
                let answer = try await alice.next()
                #expect((answer["code"] ?? answer["type"]) == expected, "join \(Array(room.unicodeScalars))")
            }
            await alice.close()
        }
    }

    @Test("no time claim traps: exp, nbf, iat of any JSON number give a working connection or a 401")
    func extremeClaimValues() async throws {
        let now = Date().timeIntervalSince1970
        // (exp, nbf, iat, accepted)
        let cases: [(Double?, Double?, Double?, Bool)] = [
            (1e16, nil, nil, true),  // the reproduced crash
            (1e300, nil, nil, true),
            (Double.greatestFiniteMagnitude, nil, nil, true),
            (now + 600.75, now - 0.5, now - 0.25, true),
            (now + 600, -1e300, -1e300, true),
            (now + 600, nil, 1e300, true),
            (9.3e18, 9.3e-18, 9.3e18, true),
            (-1, nil, nil, false),
            (-1e300, nil, nil, false),
            (0.5, nil, nil, false),
            (now - 1.5, nil, nil, false),
            (now + 600, 1e300, nil, false),
            (1e16, 1e16, 1e16, false),
            (nil, nil, nil, false),
        ]
        try await withJWTGateway { gateway in
            let keys = JWTKeyCollection()
            await keys.add(hmac: HMACKey(from: Tokens.secret), digestAlgorithm: .sha256)
            for (exp, nbf, iat, accepted) in cases {
                let token = try await keys.sign(RawTimeClaims(sub: "alice", exp: exp, nbf: nbf, iat: iat))
                let label = "exp \(exp.map { "\($0)" } ?? "-"), nbf \(nbf.map { "\($0)" } ?? "-"), iat \(iat.map { "\($0)" } ?? "-")"
                if accepted {
                    let client = try await TestClient.connect(port: gateway.port, path: "/ws?token=\(token)")
                    #expect(try await client.next()["type"] == "welcome", "\(label)")
                    try await client.expectAlive()
                    await client.close()
                } else {
                    #expect(await refusal(port: gateway.port, path: "/ws?token=\(token)") == 401, "\(label)")
                }
            }
            // Still serving: nothing above took the process or a loop down.
            let token = try await Tokens.hs256(Tokens.claims("bob"))
            let bob = try await TestClient.connect(port: gateway.port, path: "/ws?token=\(token)")
            #expect(try await bob.next()["type"] == "welcome")
            await bob.close()
        }
    }

    @Test("20 parallel handshakes with one token against a limit of 3: exactly 3 connect, 17 get 429")
    func parallelHandshakesRespectTheUserLimit() async throws {
        try await withJWTGateway(configure: { $0.maximumConnectionsPerUser = 3 }) { gateway in
            let token = try await Tokens.hs256(Tokens.claims("alice"))
            let port = gateway.port
            let outcomes = await withTaskGroup(of: Result<WebSocketConnection, HandshakeFailure>.self) { group in
                for _ in 0..<20 {
                    group.addTask {
                        do {
                            return .success(
                                try await WebSocketConnection.connect(
                                    host: "127.0.0.1",
                                    port: port,
                                    path: "/ws",
                                    headers: [("Authorization", "Bearer \(token)")]
                                )
                            )
                        } catch let HandshakeError.refused(status, _) {
                            return .failure(HandshakeFailure(status: status))
                        } catch {
                            return .failure(HandshakeFailure(status: -1))
                        }
                    }
                }
                var all: [Result<WebSocketConnection, HandshakeFailure>] = []
                for await outcome in group { all.append(outcome) }
                return all
            }
            let connected = outcomes.compactMap { try? $0.get() }
            let statuses = outcomes.compactMap { if case .failure(let failure) = $0 { failure.status } else { nil } }
            #expect(connected.count == 3)
            #expect(statuses == Array(repeating: 429, count: 17))
            for connection in connected { await connection.close() }
            // The reservations end with the connections.
            #expect(try await eventuallyAsync { await refusal(port: port, path: "/ws?token=\(token)") == nil })
        }
    }

    struct HandshakeFailure: Error {
        let status: Int
    }

    @Test("--max-connections: the handshake beyond the cap gets 503, and /readyz is not ready while full")
    func gatewayConnectionCap() async throws {
        try await withGateway(configure: { $0.maximumConnections = 2 }) { gateway in
            #expect(try await gateway.get("/readyz").status == 200)
            let first = try await gateway.connect("a")
            let second = try await gateway.connect("b")
            #expect(await refusal(port: gateway.port, path: "/ws?user=c") == 503)
            #expect(try await gateway.get("/readyz").status == 503)
            #expect(try await gateway.get("/healthz").status == 200, "full is not dead")
            await first.close()
            #expect(try await eventuallyAsync { (try? await gateway.get("/readyz").status) == 200 })
            let third = try await gateway.connect("c")
            await second.close()
            await third.close()
        }
    }

    @Test("--max-connections-per-ip: 429 beyond the cap; behind a trusted proxy the last X-Forwarded-For address counts")
    func perAddressCap() async throws {
        try await withGateway(configure: { $0.maximumConnectionsPerAddress = 2 }) { gateway in
            let first = try await gateway.connect("a")
            let second = try await gateway.connect("b")
            #expect(await refusal(port: gateway.port, path: "/ws?user=c") == 429)
            // An untrusted peer's X-Forwarded-For is ignored: the TCP peer is what counts.
            #expect(await refusal(port: gateway.port, path: "/ws?user=d", headers: [("X-Forwarded-For", "2001:db8::9")]) == 429)
            await first.close()
            await second.close()
        }
        try await withGateway(configure: {
            $0.maximumConnectionsPerAddress = 1
            $0.trustedProxies = ["127.0.0.1"]
        }) { gateway in
            func connect(_ user: String, forwardedFor: String) async throws -> TestClient {
                try await TestClient.connect(port: gateway.port, path: "/ws?user=\(user)", headers: [("X-Forwarded-For", forwardedFor)])
            }
            let one = try await connect("a", forwardedFor: "2001:db8::1")
            let two = try await connect("b", forwardedFor: "2001:db8::2")
            #expect(try await one.next()["type"] == "welcome")
            #expect(try await two.next()["type"] == "welcome")
            #expect(await refusal(port: gateway.port, path: "/ws?user=c", headers: [("X-Forwarded-For", "2001:db8::1")]) == 429)
            // A client that writes its own entry first is still counted by what the proxy appended.
            #expect(await refusal(port: gateway.port, path: "/ws?user=d", headers: [("X-Forwarded-For", "2001:db8::77, 2001:db8::2")]) == 429)
            await one.close()
            await two.close()
        }
    }

    @Test("a request body trickled a byte at a time is cut off at the request deadline")
    func slowRequestBody() async throws {
        try await withGateway(configure: {
            $0.handshakeTimeout = .seconds(1)
            $0.apiKeys = ["an-api-key-of-16-bytes-or-more"]
        }) { gateway in
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(host: "127.0.0.1", port: gateway.port).get()
            let started = ContinuousClock.now
            let head =
                "POST /v1/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer an-api-key-of-16-bytes-or-more\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n"
            try await channel.writeAndFlush(ByteBuffer(string: head))
            // A byte every 200 ms: each restarts an idle timer of 1 s, so only a deadline
            // on the whole request ends this before the 8 s the trickle would take.
            var sent = 0
            while channel.isActive, sent < 40 {
                try? await channel.writeAndFlush(ByteBuffer(string: " "))
                sent += 1
                try await Task.sleep(for: .milliseconds(200))
            }
            let held = ContinuousClock.now - started
            #expect(!channel.isActive, "the connection is still open after \(held)")
            #expect(held < .seconds(4), "held for \(held)")
            try? await channel.close()
        }
    }

    @Test("join churn: joins of new rooms beyond the join rate get rate_limited, and leave-then-join of one room costs one bind")
    func joinChurn() async throws {
        try await withGateway(configure: {
            $0.joinRate = 5
            $0.joinBurst = 5
            $0.messageRate = 10_000
            $0.messageBurst = 10_000
        }) { gateway in
            let churner = try await gateway.connect("churner")
            let before = gateway.backplane.statistics.binds
            let started = ContinuousClock.now
            for index in 0..<50 {
                try await churner.send(#"{"type":"join","room":"churn-\#(index)","id":"j\#(index)"}"#)
                try await churner.send(#"{"type":"leave","room":"churn-\#(index)","id":"l\#(index)"}"#)
            }
            var joinsAcked = 0
            var joinsLimited = 0
            for _ in 0..<100 {
                let answer = try await churner.next()
                guard answer["id"]?.hasPrefix("j") == true else { continue }
                if answer["type"] == "ack" { joinsAcked += 1 }
                if answer["code"] == "rate_limited" { joinsLimited += 1 }
            }
            let elapsed = Double((ContinuousClock.now - started).components.seconds) + 1
            #expect(joinsAcked + joinsLimited == 50)
            #expect(Double(joinsAcked) <= 5 + 5 * elapsed, "\(joinsAcked) joins in \(elapsed) s")
            #expect(joinsLimited > 0)
            let binds = gateway.backplane.statistics.binds - before
            #expect(Double(binds) <= 5 + 5 * elapsed, "\(binds) binds")
            await churner.close()
        }
        try await withGateway(configure: {
            $0.roomUnbindGrace = .seconds(5)
            $0.messageRate = 10_000
            $0.messageBurst = 10_000
            $0.joinRate = 10_000
            $0.joinBurst = 10_000
        }) { gateway in
            let client = try await gateway.connect("flapper")
            let before = gateway.backplane.statistics
            for index in 0..<30 {
                try await client.send(#"{"type":"join","room":"flap","id":"j\#(index)"}"#)
                try await client.send(#"{"type":"leave","room":"flap","id":"l\#(index)"}"#)
            }
            for _ in 0..<60 { #expect(try await client.next()["type"] == "ack") }
            let after = gateway.backplane.statistics
            #expect(after.binds - before.binds == 1, "30 leave-and-join cycles of one room cost one bind")
            #expect(after.unbinds - before.unbinds == 0, "and no unbind within the grace")
            await client.close()
        }
    }
}

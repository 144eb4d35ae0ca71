import Foundation
import Logging
import NIOCore
import RedisClient
import SwitchboardBackplane
import SwitchboardProtocol
import SwitchboardRedis
import SwitchboardServer
import SwitchboardTesting
import Testing

/// History and recovery on real brokers: messages sent while a user was away arrive on
/// resume, exactly once and in offset order, on every backplane.
@Suite("Recovery on real brokers", .needsRabbitMQ, .needsRedis, .serialized, .timeLimit(.minutes(3)))
struct RecoveryTests {
    /// Where the streams live and how gateways talk.
    enum Setup: String, CaseIterable, Sendable, CustomTestStringConvertible {
        /// One gateway, the embedded default.
        case memory
        /// Two gateways on RabbitMQ sharing a Redis history.
        case rabbitmqRedisHistory = "rabbitmq+redis-history"
        /// Two gateways on the Redis backplane, its history on the same Redis (one script writes and publishes).
        case redisRedisHistory = "redis+redis-history"

        var testDescription: String { rawValue }
    }

    static var logger: Logger {
        var logger = Logger(label: "test.history")
        logger.logLevel = .warning
        return logger
    }

    /// A Redis history per gateway, in a key prefix of the test's own.
    static func redisHistories(
        count: Int,
        prefix: String,
        retention: HistoryRetention = HistoryRetention(),
        publishing: RedisBackplaneConfiguration? = nil
    ) throws -> [RedisHistory] {
        try (0..<count).map { index in
            RedisHistory(
                configuration: try RedisConfiguration(url: try RedisServer.url),
                prefix: prefix,
                retention: retention,
                publishing: publishing,
                gatewayID: "gw\(index)",
                logger: logger
            )
        }
    }

    /// Runs `body` with gateways of `setup` (one for memory, two otherwise), history on.
    static func run(
        _ setup: Setup,
        configure: @escaping @Sendable (inout GatewayConfiguration) -> Void = { _ in },
        _ body: @Sendable ([RunningGateway]) async throws -> Void
    ) async throws {
        switch setup {
        case .memory:
            try await withGateway(configure: { configuration in
                configuration.history = MemoryHistory()
                configure(&configuration)
            }) { gateway in
                try await body([gateway])
            }
        case .rabbitmqRedisHistory, .redisRedisHistory:
            let cluster = try BackplaneCluster(setup == .memory || setup == .rabbitmqRedisHistory ? .rabbitmq : .redisChannels, gateways: 2)
            var publishing: RedisBackplaneConfiguration?
            if setup == .redisRedisHistory {
                publishing = try RedisBackplaneConfiguration(url: try RedisServer.url + "?mode=channels&prefix=\(cluster.namespace)", gatewayID: "p")
            }
            let histories = try redisHistories(count: 2, prefix: cluster.namespace, publishing: publishing)
            let ids = cluster.gatewayIDs
            try await cluster.run(configure: { configuration in
                configuration.history = histories[ids.firstIndex(of: configuration.gatewayID)!]
                configure(&configuration)
            }) { gateways in
                guard try await eventually(timeout: .seconds(10), { histories.allSatisfy(\.isReady) }) else {
                    throw TestFailure("the Redis histories did not connect")
                }
                try await body(gateways)
            }
        }
    }

    @Test(
        "Bob is away while Alice sends 200 directs and 200 room messages; on the other gateway he resumes both: all 400 once, in order",
        arguments: Setup.allCases
    )
    func awayAndBack(_ setup: Setup) async throws {
        // Alice sends 400 as fast as acks come back: past the default rate limit.
        try await Self.run(
            setup,
            configure: {
                $0.messageRate = 10_000
                $0.messageBurst = 10_000
            }
        ) { gateways in
            let bob = try await TestClient.connect(port: gateways[0].port, path: "/ws?user=bob")
            let welcome = try await bob.next()
            let userPosition = try #require(welcome.position, "welcome carries the user stream's position: \(welcome)")
            try await bob.send(#"{"type":"join","room":"lobby","id":"j"}"#)
            let joined = try await bob.next()
            let roomPosition = try #require(joined.position, "the join's ack carries the room's position: \(joined)")
            await bob.close()
            #expect(try await eventually { !gateways[0].gateway.isLocal(user: try! UserID(validating: "bob")) })

            let alice = try await gateways.last!.connect("alice")
            try await alice.send(#"{"type":"join","room":"lobby","id":"j"}"#)
            #expect(try await alice.next(type: "ack")["id"] == "j")
            for index in 1...200 {
                try await alice.send(#"{"type":"direct","to":"bob","data":\#(index),"id":\#(index)}"#)
                let ack = try await alice.next(type: "ack")
                #expect(ack["recipient_offline"] == "1", "kept for bob: \(ack)")
                #expect(ack.offset == userPosition.offset + index)
            }
            for index in 1...200 {
                try await alice.send(#"{"type":"publish","room":"lobby","data":\#(index),"id":"p\#(index)"}"#)
                _ = try await alice.next(type: "ack")
            }

            let back = try await TestClient.connect(port: gateways.last!.port, path: "/ws?user=bob")
            #expect(try await back.next()["type"] == "welcome")
            try await back.send(#"{"type":"resume","since":\#(ReceivedFrame.since(userPosition)),"id":"r1"}"#)
            for index in 1...200 {
                let frame = try await back.next()
                #expect(frame["type"] == "direct" && frame["data"] == "\(index)", "direct \(index): \(frame)")
                #expect(frame.offset == userPosition.offset + index)
                #expect(frame["epoch"] == userPosition.epoch)
            }
            let resumed = try await back.next()
            #expect(resumed["type"] == "ack" && resumed["id"] == "r1" && resumed["recovered"] == "1", "\(resumed)")
            #expect(resumed.position?.offset == userPosition.offset + 200)

            try await back.send(#"{"type":"join","room":"lobby","since":\#(ReceivedFrame.since(roomPosition)),"id":"j2"}"#)
            for index in 1...200 {
                let frame = try await back.next()
                #expect(frame["type"] == "room" && frame["data"] == "\(index)", "room \(index): \(frame)")
                #expect(frame.offset == roomPosition.offset + index)
            }
            let rejoined = try await back.next()
            #expect(rejoined["id"] == "j2" && rejoined["recovered"] == "1", "\(rejoined)")
            // Live again, in the same streams.
            try await alice.send(#"{"type":"direct","to":"bob","data":201,"id":"live"}"#)
            let live = try await back.next()
            #expect(live["data"] == "201" && live.offset == userPosition.offset + 201)
            try await back.expectSilence()
            await back.close()
            await alice.close()
        }
    }

    @Test("not recovered, and nothing replayed: a lost stream (new epoch), more missing than the limit, an expired range")
    func notRecovered() async throws {
        let prefix = "sbtest.\(UInt32.random(in: 0...UInt32.max))"
        let histories = try Self.redisHistories(
            count: 1,
            prefix: prefix,
            retention: HistoryRetention(size: 1_000, ttl: .seconds(1), metadataTTL: .seconds(600))
        )
        try await withGateway(configure: {
            $0.history = histories[0]
            $0.recoveryLimit = 20
        }) { gateway in
            #expect(try await eventually(timeout: .seconds(10)) { histories[0].isReady })
            let alice = try await gateway.connect("alice")

            // More missing than --recovery-limit.
            let carol = try await TestClient.connect(port: gateway.port, path: "/ws?user=carol")
            let carolStart = try #require(try await carol.next().position)
            await carol.close()
            for index in 1...21 {
                try await alice.send(#"{"type":"direct","to":"carol","data":\#(index),"id":\#(index)}"#)
                _ = try await alice.next(type: "ack")
            }
            let carolBack = try await gateway.connect("carol")
            try await carolBack.send(#"{"type":"resume","since":\#(ReceivedFrame.since(carolStart)),"id":"r"}"#)
            let tooMany = try await carolBack.next()
            #expect(tooMany["recovered"] == "0" && tooMany["reason"] == "limit_exceeded", "\(tooMany)")
            #expect(tooMany.position?.offset == carolStart.offset + 21, "the top, to carry on from")

            // A lost stream: its keys deleted, as an eviction or a flush would.
            let dave = try await TestClient.connect(port: gateway.port, path: "/ws?user=dave")
            let daveStart = try #require(try await dave.next().position)
            await dave.close()
            try await alice.send(#"{"type":"direct","to":"dave","data":1,"id":"d"}"#)
            _ = try await alice.next(type: "ack")
            try RedisServer.cli(["DEL", "\(prefix):h:{user.dave}", "\(prefix):m:{user.dave}"])
            try await alice.send(#"{"type":"direct","to":"dave","data":2,"id":"d2"}"#)
            _ = try await alice.next(type: "ack")
            let daveBack = try await gateway.connect("dave")
            try await daveBack.send(#"{"type":"resume","since":\#(ReceivedFrame.since(daveStart)),"id":"r"}"#)
            let lost = try await daveBack.next()
            #expect(lost["recovered"] == "0" && lost["reason"] == "epoch_changed", "\(lost)")
            #expect(lost.position?.epoch != daveStart.epoch)

            // An expired range: the TTL (1 s) passed.
            let erin = try await TestClient.connect(port: gateway.port, path: "/ws?user=erin")
            let erinStart = try #require(try await erin.next().position)
            await erin.close()
            try await alice.send(#"{"type":"direct","to":"erin","data":1,"id":"e"}"#)
            _ = try await alice.next(type: "ack")
            // The one wait that is the point: the message must age past the TTL.
            try await Task.sleep(for: .milliseconds(1_500))
            let erinBack = try await gateway.connect("erin")
            try await erinBack.send(#"{"type":"resume","since":\#(ReceivedFrame.since(erinStart)),"id":"r"}"#)
            let expired = try await erinBack.next()
            #expect(expired["recovered"] == "0" && expired["reason"] == "expired", "\(expired)")
            #expect(expired.position?.epoch == erinStart.epoch, "the metadata outlived the message")
            for client in [carolBack, daveBack, erinBack] { try await client.expectSilence() }
        }
    }

    @Test("a message whose predecessor never comes live (written to history, not published) is read from history, in order")
    func gapFilledLive() async throws {
        let cluster = try BackplaneCluster(.rabbitmq, gateways: 1)
        let histories = try Self.redisHistories(count: 1, prefix: cluster.namespace)
        try await cluster.run(configure: { $0.history = histories[0] }) { gateways in
            #expect(try await eventually(timeout: .seconds(10)) { histories[0].isReady })
            let bob = try await gateways[0].connect("bob")
            try await bob.send(#"{"type":"join","room":"gap","id":"j"}"#)
            let top = try #require(try await bob.next().position)
            // Offset top + 1 exists only in history, as if its gateway died before publishing it.
            let head = ServerFrame.roomHead(try RoomID(validating: "gap"), from: try UserID(validating: "ghost"), data: ByteBuffer(string: "1"))
            _ = try await histories[0].append(head, to: .room(try RoomID(validating: "gap")))
            let alice = try await gateways[0].connect("alice")
            try await alice.send(#"{"type":"join","room":"gap","id":"j"}"#)
            _ = try await alice.next(type: "ack")
            try await alice.send(#"{"type":"publish","room":"gap","data":2,"id":"p"}"#)
            let first = try await bob.next(timeout: .seconds(5))
            #expect(first["data"] == "1" && first.offset == top.offset + 1, "the missing one first: \(first)")
            let second = try await bob.next()
            #expect(second["data"] == "2" && second.offset == top.offset + 2)
            await alice.close()
            await bob.close()
        }
    }

    @Test("bad input: resume twice, resume with history off, a bad since; each a documented error, and the connection stays")
    func badInput() async throws {
        try await Self.run(.memory) { gateways in
            let bob = try await TestClient.connect(port: gateways[0].port, path: "/ws?user=bob")
            let position = try #require(try await bob.next().position)
            try await bob.send(#"{"type":"resume","since":\#(ReceivedFrame.since(position)),"id":1}"#)
            #expect(try await bob.next()["recovered"] == "1")
            try await bob.send(#"{"type":"resume","since":\#(ReceivedFrame.since(position)),"id":2}"#)
            #expect(try await bob.next()["code"] == "already_resumed")
            for since in [#""x""#, #"{"epoch":"e","offset":-1}"#, #"{"epoch":"e","offset":0.5}"#, #"{"epoch":"e","offset":1e400}"#] {
                try await bob.send(#"{"type":"join","room":"r","since":\#(since),"id":3}"#)
                #expect(try await bob.next()["code"] == "invalid_message", "since \(since)")
            }
            try await bob.expectAlive()
        }
        try await withGateway { gateway in
            let bob = try await TestClient.connect(port: gateway.port, path: "/ws?user=bob")
            let welcome = try await bob.next()
            #expect(welcome.position == nil, "no history, no position")
            try await bob.send(#"{"type":"resume","since":{"epoch":"e","offset":1},"id":1}"#)
            #expect(try await bob.next()["code"] == "history_disabled")
            try await bob.send(#"{"type":"direct","to":"nobody","data":1,"id":2}"#)
            #expect(try await bob.next()["code"] == "recipient_offline", "history off: as before")
            try await bob.expectAlive()
        }
    }
}

import Foundation
import Logging
import RedisClient
import SwitchboardBackplane
import SwitchboardProtocol
import SwitchboardRedis
import SwitchboardServer
import SwitchboardTesting
import Synchronization
import Testing

/// A Sentinel-managed Redis (one master, one replica, three sentinels on loopback, from
/// Debian's redis-server and redis-sentinel): the master is killed and the gateways follow
/// the promotion by themselves. Each test starts and stops its own setup.
@Suite("Redis Sentinel failover", .needsRedis, .serialized, .timeLimit(.minutes(3)))
struct RedisSentinelTests {
    static var logger: Logger {
        var logger = Logger(label: "test.sentinel")
        logger.logLevel = ProcessInfo.processInfo.environment["SWITCHBOARD_TEST_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .error
        return logger
    }

    @Test("the Redis backplane through Sentinel: the master dies under steady traffic; sockets stay open and messages flow after the promotion")
    func backplaneFollowsPromotion() async throws {
        let sentinel = try RedisSentinelSetup.start()
        defer { sentinel.stop() }
        let configuration = try RedisConfiguration(url: sentinel.url)
        #expect(configuration.sentinel?.masterName == "sbmaster")
        #expect(configuration.sentinel?.addresses.count == 3)
        let tag = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        let ids = ["sen1-\(tag)", "sen2-\(tag)"]
        let backplanes = try ids.map { id in
            RedisBackplane(
                configuration: try RedisBackplaneConfiguration(url: sentinel.url + "?prefix=sbsen.\(tag)", gatewayID: id),
                logger: Self.logger
            )
        }
        try await withGateways(
            backplanes,
            configure: { configuration, index in
                configuration.gatewayID = ids[index]
                configuration.messageRate = 10_000
                configuration.messageBurst = 10_000
            }
        ) { gateways in
            #expect(try await eventually(timeout: .seconds(10)) { backplanes.allSatisfy(\.isReady) })
            let alice = try await gateways[0].connect("alice")
            let bob = try await gateways[1].connect("bob")
            try await alice.send(#"{"type":"direct","to":"bob","data":"before","id":"b"}"#)
            #expect(try await bob.next(type: "direct")["data"] == "before")
            #expect(try await alice.next(type: "ack")["id"] == "b")

            // Steady traffic: alice sends to bob every 20 ms (at most 1,000) while the master dies.
            let sending = SendingFlag()
            let sender = Task {
                var sent = 0
                while sending.isOn, sent < 1_000 {
                    sent += 1
                    try? await alice.send(#"{"type":"direct","to":"bob","data":"steady-\#(sent)","id":"s\#(sent)"}"#)
                    try? await Task.sleep(for: .milliseconds(20))
                }
                return sent
            }
            let killed = try sentinel.killMaster()
            #expect(try await eventually(timeout: .seconds(20)) { (try? sentinel.masterPort()) != killed }, "the sentinels promoted the replica")
            #expect(try await eventually(timeout: .seconds(20)) { backplanes.allSatisfy(\.isReady) })
            try await Task.sleep(for: .milliseconds(500))  // the point: traffic flows across the promotion for a moment
            sending.turnOff()
            let sent = await sender.value
            #expect(sent > 10)

            // After the promotion every message arrives: a marker makes it certain the stream is through.
            try await alice.send(#"{"type":"direct","to":"bob","data":"after","id":"a"}"#)
            var received: [String] = []
            while received.last != "after" {
                let frame = try await bob.next(type: "direct", timeout: .seconds(10))
                received.append(frame["data"] ?? "")
            }
            #expect(received.contains { $0.hasPrefix("steady-") }, "steady traffic reached bob")
            // Both sockets are open and in order (alice still has acks to read: skip them).
            for client in [alice, bob] {
                try await client.send(#"{"type":"ping","id":"alive"}"#)
                #expect(try await client.next(type: "pong")["id"] == "alive")
            }
            await alice.close()
            await bob.close()
        }
    }

    @Test(
        "the history through Sentinel: a promotion changes every stream's epoch, so a resume across it is recovered:false (epoch_changed), never a silent gap"
    )
    func historyEpochChangesWithPromotion() async throws {
        let sentinel = try RedisSentinelSetup.start()
        defer { sentinel.stop() }
        let tag = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        let history = RedisHistory(
            configuration: try RedisConfiguration(url: sentinel.url),
            prefix: "sbsen.\(tag)",
            retention: HistoryRetention(),
            gatewayID: "sen-history",
            logger: Self.logger
        )
        try await withGateway(configure: { $0.history = history }) { gateway in
            #expect(try await eventually(timeout: .seconds(10)) { history.isReady })
            let bob = try await TestClient.connect(port: gateway.port, path: "/ws?user=bob")
            let before = try #require(try await bob.next().position, "welcome carries bob's position")
            #expect(before.epoch.contains("-"), "with Sentinel the epoch ends in the master's generation: \(before.epoch)")
            await bob.close()
            #expect(try await eventually { !gateway.gateway.isLocal(user: try! UserID(validating: "bob")) })

            let alice = try await gateway.connect("alice")
            for number in 1...3 {
                try await alice.send(#"{"type":"direct","to":"bob","data":\#(number),"id":"o\#(number)"}"#)
                #expect(try await alice.next(type: "ack")["recipient_offline"] == "1")
            }
            let killed = try sentinel.killMaster()
            #expect(try await eventually(timeout: .seconds(20)) { (try? sentinel.masterPort()) != killed })
            // Written again once the history reached the new master.
            var acked = false
            for attempt in 1...100 where !acked {
                try await alice.send(#"{"type":"direct","to":"bob","data":"after","id":"w\#(attempt)"}"#)
                let answer = try await alice.next(timeout: .seconds(10))
                acked = answer["type"] == "ack"
                if !acked { try await Task.sleep(for: .milliseconds(100)) }
            }
            #expect(acked, "the history took writes again after the promotion")

            let back = try await TestClient.connect(port: gateway.port, path: "/ws?user=bob")
            let welcome = try await back.next()
            let after = try #require(welcome.position)
            #expect(after.epoch != before.epoch, "the epoch changed with the promotion")
            try await back.send(#"{"type":"resume","since":{"epoch":"\#(before.epoch)","offset":\#(before.offset)},"id":"r"}"#)
            let resumed = try await back.next(type: "ack")
            #expect(resumed["recovered"] == "0", "\(resumed)")
            #expect(resumed["reason"] == "epoch_changed", "\(resumed)")
            await alice.close()
            await back.close()
        }
    }
}

/// Whether the steady sender goes on.
private final class SendingFlag: Sendable {
    private let value = Atomic<Bool>(true)
    var isOn: Bool { value.load(ordering: .relaxed) }
    func turnOff() { value.store(false, ordering: .relaxed) }
}

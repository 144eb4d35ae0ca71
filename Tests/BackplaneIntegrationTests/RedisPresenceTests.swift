import Logging
import RedisClient
import SwitchboardBackplane
import SwitchboardProtocol
import SwitchboardRedis
import SwitchboardServer
import SwitchboardTesting
import Testing

/// The presence rules (``PresenceRoom``) as the Lua scripts apply them, on the test Redis,
/// with Redis's own clock and short times.
@Suite("Redis presence store", .needsRedis, .timeLimit(.minutes(1)))
struct RedisPresenceTests {
    static func user(_ name: String) -> UserID { try! UserID(validating: name) }

    /// Runs `body` with a store that a gateway runs as its service (as `switchboard serve` does).
    func withStore(policy: PresencePolicy, _ body: @Sendable (RedisPresence, RoomID) async throws -> Void) async throws {
        var logger = Logger(label: "test.presence")
        logger.logLevel = .warning
        let tag = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        let store = RedisPresence(
            configuration: try RedisConfiguration(url: try RedisServer.url),
            prefix: "sbp.\(tag)",
            policy: policy,
            gatewayID: "p-\(tag)",
            logger: logger
        )
        try await withGateway(configure: { $0.presence = store }) { _ in
            #expect(try await eventually(timeout: .seconds(10)) { store.isReady })
            try await body(store, try RoomID(validating: "room \(tag)"))
        }
    }

    @Test("joined on the first connection anywhere, leaving on the last, left once after the grace; counts summed over gateways")
    func transitions() async throws {
        try await withStore(policy: PresencePolicy(ttl: .seconds(60), grace: .milliseconds(400))) { store, room in
            let alice = Self.user("alice")
            let bob = Self.user("bob é")
            #expect(try await store.sync(room, gateway: "a", entries: [.init(user: alice, connections: 1)]).joined == [alice])
            #expect(
                try await store.sync(room, gateway: "b", entries: [.init(user: alice, connections: 2), .init(user: bob, connections: 1)]).joined == [
                    bob
                ]
            )
            let snapshot = try await store.read(room, limit: 10)
            #expect(snapshot == PresenceSnapshot(users: [.init(user: alice, connections: 3), .init(user: bob, connections: 1)], count: 2))
            let capped = try await store.read(room, limit: 1)
            #expect(capped.users.count == 1 && capped.count == 2)
            #expect(try await store.sync(room, gateway: "a", entries: [.init(user: alice, connections: 0)]) == PresenceChanges(users: 2))
            #expect(
                try await store.sync(room, gateway: "b", entries: [.init(user: alice, connections: 0)]) == PresenceChanges(leaving: [alice], users: 2)
            )
            #expect(try await store.read(room, limit: 10).users.contains(.init(user: alice, connections: 0)), "listed within the grace")
            // Back on another gateway within the grace: nothing.
            #expect(try await store.sync(room, gateway: "c", entries: [.init(user: alice, connections: 1)]) == PresenceChanges(users: 2))
            _ = try await store.sync(room, gateway: "c", entries: [.init(user: alice, connections: 0)])
            try await Task.sleep(for: .milliseconds(500))
            #expect(try await store.sync(room, gateway: "b", entries: []) == PresenceChanges(left: [alice], users: 1))
            #expect(try await store.sync(room, gateway: "a", entries: []) == PresenceChanges(users: 1), "announced once")
            #expect(try await store.read(room, limit: 10).users == [.init(user: bob, connections: 1)])
            // Gone (grace over, not yet swept) and back in one sync: neither event.
            let carol = Self.user("carol")
            _ = try await store.sync(room, gateway: "a", entries: [.init(user: carol, connections: 1)])
            _ = try await store.sync(room, gateway: "a", entries: [.init(user: carol, connections: 0)])
            try await Task.sleep(for: .milliseconds(500))
            #expect(try await store.sync(room, gateway: "b", entries: [.init(user: carol, connections: 1)]) == PresenceChanges(users: 2))
            // A server that lost its scripts (restart, SCRIPT FLUSH) is sent their text once more.
            try RedisServer.cli(["SCRIPT", "FLUSH"])
            #expect(try await store.sync(room, gateway: "a", entries: [.init(user: alice, connections: 1)]).joined == [alice])
            #expect(try await store.read(room, limit: 10).count == 3)
        }
    }

    @Test("a gateway that stops refreshing: its users leave when its entries expire, once; users also elsewhere stay")
    func expiry() async throws {
        try await withStore(policy: PresencePolicy(ttl: .milliseconds(600), grace: .seconds(5))) { store, room in
            let carol = Self.user("carol")
            let dave = Self.user("dave")
            _ = try await store.sync(room, gateway: "dead", entries: [.init(user: carol, connections: 1), .init(user: dave, connections: 1)])
            _ = try await store.sync(room, gateway: "alive", entries: [.init(user: dave, connections: 1)])
            try await Task.sleep(for: .milliseconds(300))
            _ = try await store.sync(room, gateway: "alive", entries: [.init(user: dave, connections: 1)])
            try await Task.sleep(for: .milliseconds(400))
            #expect(
                try await store.read(room, limit: 10).users == [.init(user: dave, connections: 1)],
                "an expired entry is not listed, even before a sync"
            )
            #expect(
                try await store.sync(room, gateway: "alive", entries: [.init(user: dave, connections: 1)]) == PresenceChanges(left: [carol], users: 1)
            )
            #expect(try await store.sync(room, gateway: "alive", entries: [.init(user: dave, connections: 1)]).left.isEmpty)
        }
    }
}

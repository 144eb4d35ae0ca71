import Foundation
import NIOCore
import SwitchboardBackplane
import SwitchboardProtocol
import SwitchboardServer
import SwitchboardTesting
import Synchronization
import Testing

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The rules both presence stores follow, on ``PresenceRoom`` with a made-up clock (ms).
@Suite("Presence rules: joined and left once per user, with a grace and a TTL")
struct PresenceRoomTests {
    let policy = PresencePolicy(ttl: .seconds(60), grace: .seconds(5))
    static func user(_ name: String) -> UserID { try! UserID(validating: name) }
    let alice = user("alice")
    let bob = user("bob")

    func entry(_ user: UserID, _ connections: Int) -> PresenceEntry { PresenceEntry(user: user, connections: connections) }

    @Test("a user's first connection anywhere is `joined`; more connections, on any gateway, are not")
    func firstConnection() {
        var room = PresenceRoom()
        #expect(room.sync(gateway: "a", entries: [entry(alice, 1)], now: 0, policy: policy) == PresenceChanges(joined: [alice], users: 1))
        #expect(room.sync(gateway: "a", entries: [entry(alice, 2)], now: 10, policy: policy) == PresenceChanges(users: 1))
        #expect(room.sync(gateway: "b", entries: [entry(alice, 1)], now: 20, policy: policy) == PresenceChanges(users: 1))
        #expect(room.snapshot(limit: 10).users == [PresenceEntry(user: alice, connections: 3)])
    }

    @Test("the last connection anywhere is `leaving`, and `left` once when the grace is over")
    func lastConnection() {
        var room = PresenceRoom()
        _ = room.sync(gateway: "a", entries: [entry(alice, 1)], now: 0, policy: policy)
        _ = room.sync(gateway: "b", entries: [entry(alice, 1)], now: 0, policy: policy)
        #expect(room.sync(gateway: "a", entries: [entry(alice, 0)], now: 100, policy: policy) == PresenceChanges(users: 1), "still on b")
        #expect(room.sync(gateway: "b", entries: [entry(alice, 0)], now: 200, policy: policy) == PresenceChanges(leaving: [alice], users: 1))
        #expect(room.snapshot(limit: 10).users == [PresenceEntry(user: alice, connections: 0)], "listed until `left`")
        #expect(room.sync(gateway: "a", entries: [], now: 5_199, policy: policy).left.isEmpty, "the grace is not over")
        #expect(room.sync(gateway: "a", entries: [], now: 5_200, policy: policy) == PresenceChanges(left: [alice], users: 0))
        #expect(room.sync(gateway: "b", entries: [], now: 5_300, policy: policy).left.isEmpty, "announced once")
        #expect(room.isEmpty)
    }

    @Test("back within the grace, on the same gateway or another: no event at all")
    func reconnectWithinGrace() {
        var room = PresenceRoom()
        _ = room.sync(gateway: "a", entries: [entry(alice, 1)], now: 0, policy: policy)
        _ = room.sync(gateway: "a", entries: [entry(alice, 0)], now: 1_000, policy: policy)
        #expect(room.sync(gateway: "b", entries: [entry(alice, 1)], now: 3_000, policy: policy) == PresenceChanges(users: 1), "moved to b")
        #expect(room.sync(gateway: "b", entries: [], now: 10_000, policy: policy) == PresenceChanges(users: 1), "no left after the grace")
    }

    @Test("gone and back in one sync (a grace over but not yet swept): neither event")
    func backBeforeTheSweep() {
        var room = PresenceRoom()
        _ = room.sync(gateway: "a", entries: [entry(alice, 1)], now: 0, policy: policy)
        _ = room.sync(gateway: "a", entries: [entry(alice, 0)], now: 0, policy: policy)
        #expect(room.sync(gateway: "b", entries: [entry(alice, 1)], now: 6_000, policy: policy) == PresenceChanges(users: 1))
        #expect(room.sync(gateway: "b", entries: [], now: 20_000, policy: policy) == PresenceChanges(users: 1))
    }

    @Test("a gateway that stops refreshing: its users are `left` at its TTL, unless they are also elsewhere")
    func deadGateway() {
        var room = PresenceRoom()
        _ = room.sync(gateway: "dead", entries: [entry(alice, 1), entry(bob, 2)], now: 0, policy: policy)
        _ = room.sync(gateway: "alive", entries: [entry(bob, 1)], now: 0, policy: policy)
        _ = room.sync(gateway: "alive", entries: [entry(bob, 1)], now: 40_000, policy: policy)
        #expect(room.sync(gateway: "alive", entries: [], now: 59_999, policy: policy).left.isEmpty)
        #expect(room.snapshot(limit: 10).count == 2)
        let expired = room.sync(gateway: "alive", entries: [], now: 60_000, policy: policy)
        #expect(expired == PresenceChanges(left: [alice], users: 1))
        #expect(room.snapshot(limit: 10).users == [PresenceEntry(user: bob, connections: 1)])
    }

    @Test("a snapshot lists users by id bytes, capped, with the full count")
    func snapshot() {
        var room = PresenceRoom()
        let names = ["é", "b", "a", "B", "e\u{301}"]
        _ = room.sync(gateway: "a", entries: names.map { entry(Self.user($0), 1) }, now: 0, policy: policy)
        let all = room.snapshot(limit: 10)
        #expect(all.users.map(\.user.rawValue) == ["B", "a", "b", "e\u{301}", "é"], "two spellings of é are two users")
        let capped = room.snapshot(limit: 2)
        #expect(capped.users.count == 2 && capped.count == 5)
    }
}

@Suite("Presence on one gateway (memory store): answers, events, API, metrics")
struct PresenceGatewayTests {
    static let key = "presence-key-0123456789"

    static func configure(_ configuration: inout GatewayConfiguration) {
        configuration.presence = MemoryPresence(policy: PresencePolicy(ttl: .seconds(60), grace: .milliseconds(300)))
        configuration.apiKeys = [key]
    }

    /// Joins `room` (with events when `events`) and reads up to the ack; returns the other
    /// frames read meanwhile (the joiner's own `joined` may come before its ack).
    @discardableResult
    static func join(_ client: TestClient, _ room: String, events: Bool = false) async throws -> [ReceivedFrame] {
        try await client.send(#"{"type":"join","room":"\#(room)","id":"j"\#(events ? #","presence":true"# : "")}"#)
        var others: [ReceivedFrame] = []
        while true {
            let frame = try await client.next()
            if frame["type"] == "ack", frame["id"] == "j" { return others }
            guard frame["type"] != "error" else { throw TestFailure("join refused: \(frame)") }
            others.append(frame)
        }
    }

    static func presence(_ client: TestClient, _ room: String) async throws -> ReceivedFrame {
        try await client.send(#"{"type":"presence","room":"\#(room)","id":"p1"}"#)
        return try await client.next(type: "presence")
    }

    @Test("members are listed with their connection counts; joined once per user, left once after the grace")
    func eventsAndAnswers() async throws {
        try await withGateway(configure: Self.configure) { gateway in
            let observer = try await gateway.connect("olga")
            #expect(try await Self.join(observer, "lobby", events: true).isEmpty, "no event about the connection's own user")

            let alice1 = try await gateway.connect("alice")
            try await Self.join(alice1, "lobby")
            let joined = try await observer.next(type: "joined")
            #expect(joined.text == #"{"type":"joined","room":"lobby","user":"alice"}"#)
            let alice2 = try await gateway.connect("alice")
            try await Self.join(alice2, "lobby")

            let answer = try await Self.presence(alice2, "lobby")
            #expect(answer.presenceUsers == ["alice": 2, "olga": 1])
            #expect(answer["count"] == "2" && answer["id"] == "p1" && answer["truncated"] == nil)

            await alice1.close()
            try await observer.expectSilence(for: .milliseconds(600))
            await alice2.close()
            let left = try await observer.next(type: "left", timeout: .seconds(3))
            #expect(left.text == #"{"type":"left","room":"lobby","user":"alice"}"#)
            try await observer.expectSilence(for: .milliseconds(500))
            #expect(try await Self.presence(observer, "lobby").presenceUsers == ["olga": 1])

            let metrics = try await MetricsTests.scrape(gateway)
            #expect(metrics[#"switchboard_presence_events_total{type="joined"}"#] == 2, "olga and alice, once each")
            #expect(metrics[#"switchboard_presence_events_total{type="left"}"#] == 1)
            #expect(metrics["switchboard_presence_entries"] == 1)
            #expect(metrics[#"switchboard_messages_out_total{type="presence_event"}"#] == 2, "alice joined, alice left")
        }
    }

    @Test("a member without `presence: true` gets no events; a non-member gets not_member; leave and join again within the grace is silent")
    func subscriptionAndMembership() async throws {
        try await withGateway(configure: Self.configure) { gateway in
            let quiet = try await gateway.connect("quiet")
            try await Self.join(quiet, "lobby")
            let loud = try await gateway.connect("loud")
            try await Self.join(loud, "lobby", events: true)
            let bob = try await gateway.connect("bob")
            try await bob.send(#"{"type":"presence","room":"lobby","id":7}"#)
            let refused = try await bob.next()
            #expect(refused["type"] == "error" && refused["code"] == "not_member" && refused["id"] == "7")
            try await Self.join(bob, "lobby")
            #expect(try await loud.next(type: "joined")["user"] == "bob")
            try await bob.send(#"{"type":"leave","room":"lobby","id":"l"}"#)
            _ = try await bob.next()
            try await Self.join(bob, "lobby")
            try await loud.expectSilence(for: .milliseconds(600))
            try await quiet.expectSilence(for: .zero)
        }
    }

    @Test("a room over the event limit sends no events, and presence still answers, capped and truncated")
    func eventLimitAndCap() async throws {
        try await withGateway(configure: {
            Self.configure(&$0)
            $0.presenceEventLimit = 2
            $0.presenceListLimit = 2
        }) { gateway in
            let watcher = try await gateway.connect("a-watcher")
            try await Self.join(watcher, "big", events: true)
            let second = try await gateway.connect("b-second")
            try await Self.join(second, "big")
            _ = try await watcher.next(type: "joined")
            let third = try await gateway.connect("c-third")
            try await Self.join(third, "big")
            try await watcher.expectSilence(for: .milliseconds(300))
            let answer = try await Self.presence(watcher, "big")
            #expect(answer.presenceUsers == ["a-watcher": 1, "b-second": 1])
            #expect(answer["count"] == "3" && answer["truncated"] == "1")
            let metrics = try await MetricsTests.scrape(gateway)
            #expect(metrics["switchboard_presence_events_suppressed_total"] == 1)
        }
    }

    @Test("GET /v1/presence answers with the API key; presence_disabled without a store")
    func apiAndDisabled() async throws {
        try await withGateway(configure: Self.configure) { gateway in
            let alice = try await gateway.connect("alice")
            try await Self.join(alice, "lobby")
            var request = URLRequest(url: URL(string: "http://127.0.0.1:\(gateway.port)/v1/presence?room=lobby")!)
            request.setValue("Bearer \(Self.key)", forHTTPHeaderField: "Authorization")
            let (data, response) = try await URLSession.shared.data(for: request)
            #expect((response as? HTTPURLResponse)?.statusCode == 200)
            #expect(String(decoding: data, as: UTF8.self) == #"{"room":"lobby","users":[{"user":"alice","connections":1}],"count":1}"#)
            #expect(try await gateway.get("/v1/presence?room=lobby").status == 401)
            request.url = URL(string: "http://127.0.0.1:\(gateway.port)/v1/presence?room=lobby&limit=0")!
            #expect((try await URLSession.shared.data(for: request).1 as? HTTPURLResponse)?.statusCode == 400)
        }
        try await withGateway(configure: { _ in }) { gateway in
            let alice = try await gateway.connect("alice")
            try await alice.send(#"{"type":"join","room":"lobby","presence":true,"id":1}"#)
            let refused = try await alice.next()
            #expect(refused["code"] == "presence_disabled", "\(refused)")
            try await Self.join(alice, "lobby")
            try await alice.send(#"{"type":"presence","room":"lobby","id":2}"#)
            #expect(try await alice.next()["code"] == "presence_disabled")
            try await alice.send(#"{"type":"join","room":"lobby","presence":"yes","id":3}"#)
            #expect(try await alice.next()["code"] == "invalid_message")
        }
    }
}

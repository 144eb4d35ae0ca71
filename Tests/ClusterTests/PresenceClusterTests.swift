import Foundation
import SwitchboardTesting
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Presence end to end: three `switchboard serve` processes on RabbitMQ with a shared Redis
/// presence store, clients connected to chosen gateways.
@Suite("Presence across three gateways", .needsRabbitMQ, .needsRedis, .serialized, .timeLimit(.minutes(3)))
struct PresenceClusterTests {
    static let grace: Duration = .milliseconds(1500)

    /// Connects `user` to gateway `name` and joins `room` (with events when `events`).
    static func member(
        _ user: String,
        on name: String,
        of cluster: LocalCluster,
        room: String = "lobby",
        events: Bool = false
    ) async throws -> TestClient {
        let client = try await TestClient.connect(port: cluster.gateway(name).port, path: "/ws?user=\(user)")
        guard try await client.next()["type"] == "welcome" else { throw TestFailure("\(user): no welcome") }
        try await client.send(#"{"type":"join","room":"\#(room)","id":"j"\#(events ? #","presence":true"# : "")}"#)
        let ack = try await client.next()
        guard ack["type"] == "ack" else { throw TestFailure("\(user): join of \(room) answered \(ack)") }
        return client
    }

    static func presence(_ client: TestClient, room: String = "lobby") async throws -> ReceivedFrame {
        try await client.send(#"{"type":"presence","room":"\#(room)","id":"p"}"#)
        return try await client.next(type: "presence")
    }

    @Test(
        "listed once per user with their connection count; joined and left once, after the grace; no event for a second connection, a reconnect or a move; a killed gateway's members leave within the TTL; a room over the event limit is silent"
    )
    func acrossGateways() async throws {
        let cluster = try await LocalCluster.start(
            extraArguments: [
                "--presence", try RedisServer.url + "?prefix=presence.{tag}", "--presence-grace", "1.5", "--presence-ttl", "3",
                "--presence-event-limit", "3",
            ]
        )
        do {
            let olga = try await Self.member("olga", on: "gw-1", of: cluster, events: true)
            let alice1 = try await Self.member("alice", on: "gw-2", of: cluster)
            let joined = try await olga.next(type: "joined")
            #expect(joined.text == #"{"type":"joined","room":"lobby","user":"alice"}"#)
            let alice2 = try await Self.member("alice", on: "gw-3", of: cluster)
            let carol = try await Self.member("carol", on: "gw-3", of: cluster)
            #expect(try await olga.next(type: "joined")["user"] == "carol", "alice's second connection said nothing")

            let listed = try await Self.presence(olga)
            #expect(listed.presenceUsers == ["alice": 2, "carol": 1, "olga": 1], "\(listed)")
            #expect(listed["count"] == "3")

            // One of alice's two connections goes: she is still there.
            await alice1.close()
            try await olga.expectSilence(for: Self.grace + .seconds(1))
            // Her last one goes: one `left`, after the grace.
            let closed = ContinuousClock.now
            await alice2.close()
            let left = try await olga.next(type: "left", timeout: .seconds(6))
            #expect(left.text == #"{"type":"left","room":"lobby","user":"alice"}"#)
            #expect(ContinuousClock.now - closed >= Self.grace, "not before the grace")
            try await olga.expectSilence(for: .seconds(1))

            // Carol moves from gw-3 to gw-1 (a reconnect elsewhere) within the grace, then
            // reconnects to gw-1 itself: nothing either time.
            await carol.close()
            let carolMoved = try await Self.member("carol", on: "gw-1", of: cluster)
            await carolMoved.close()
            let carolAgain = try await Self.member("carol", on: "gw-1", of: cluster)
            try await olga.expectSilence(for: Self.grace + .seconds(1))
            #expect(try await Self.presence(olga).presenceUsers == ["carol": 1, "olga": 1])

            // Over the event limit (3 users): the fourth user's arrival is not announced.
            let watcher = try await Self.member("wendy", on: "gw-1", of: cluster, room: "big", events: true)
            var big: [TestClient] = []
            for (index, user) in ["u1", "u2"].enumerated() {
                big.append(try await Self.member(user, on: index == 0 ? "gw-2" : "gw-3", of: cluster, room: "big"))
                #expect(try await watcher.next(type: "joined")["user"] == user)
            }
            big.append(try await Self.member("u3", on: "gw-3", of: cluster, room: "big"))
            try await watcher.expectSilence(for: .seconds(1))
            let bigRoom = try await Self.presence(watcher, room: "big")
            #expect(bigRoom["count"] == "4" && bigRoom.presenceUsers?.count == 4, "\(bigRoom)")

            // SIGKILL gw-2: dave (there only) leaves within the TTL, once; u1 too, silently (big room).
            let dave = try await Self.member("dave", on: "gw-2", of: cluster)
            #expect(try await olga.next(type: "joined")["user"] == "dave")
            let killed = ContinuousClock.now
            cluster.gateway("gw-2").process.signal(SIGKILL)
            let daveLeft = try await olga.next(type: "left", timeout: .seconds(10))
            #expect(daveLeft["user"] == "dave")
            #expect(ContinuousClock.now - killed < .seconds(3) + .seconds(2), "within the TTL and one refresh")
            try await olga.expectSilence(for: .seconds(1.5))
            #expect(try await Self.presence(olga).presenceUsers == ["carol": 1, "olga": 1])
            #expect(try await Self.presence(watcher, room: "big")["count"] == "3", "u1 went with gw-2")
            _ = dave
            for client in big + [watcher, carolAgain, olga] { await client.close() }
        } catch {
            await cluster.stop()
            throw error
        }
        await cluster.stop()
    }
}

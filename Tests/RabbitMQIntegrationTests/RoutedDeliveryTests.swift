import Foundation
import SwitchboardBackplane
import SwitchboardProtocol
import SwitchboardRabbitMQ
import SwitchboardServer
import SwitchboardTesting
import Testing

/// Three gateways on one real RabbitMQ. Serialized: the broker-restart test takes the
/// broker away from every other test while it runs.
@Suite("RabbitMQ backplane: routed delivery across gateways", .serialized, .timeLimit(.minutes(3)))
struct RoutedDeliveryTests {
    @Test("alice on gw1 reaches bob on gw2; only gw2's queue receives it (counted, and in the broker's bindings)")
    func directAcrossGateways() async throws {
        let cluster = try RabbitCluster(gateways: 3)
        try await cluster.run { gateways in
            let alice = try await gateways[0].connect("alice")
            let bob = try await gateways[1].connect("bob")
            let before = cluster.backplanes.map(\.statistics.received)

            try await alice.send(#"{"type":"direct","to":"bob","data":{"text":"hi bob"},"id":"d1"}"#)
            #expect(try await bob.nextText() == #"{"type":"direct","from":"alice","to":"bob","data":{"text":"hi bob"}}"#)
            #expect(try await alice.nextText() == #"{"type":"ack","id":"d1"}"#)

            let after = cluster.backplanes.map(\.statistics.received)
            #expect(after[1] - before[1] == 1, "gw2 received the message once")
            #expect(after[0] == before[0], "gw1 (the sender's gateway) received nothing")
            #expect(after[2] == before[2], "gw3 received nothing")

            // The broker routes user.bob to gw2's queue alone.
            let bindings = try Broker.bindings(exchange: cluster.exchange)
            #expect(bindings.filter { $0.key == "user.bob" } == [Broker.Binding(queue: cluster.queue(1), key: "user.bob")])
            #expect(bindings.contains(Broker.Binding(queue: cluster.queue(0), key: "user.alice")))
            for index in 0..<3 {
                #expect(bindings.contains(Broker.Binding(queue: cluster.queue(index), key: "broadcast")))
            }
            await alice.close()
            await bob.close()
        }
    }

    @Test("a room message reaches each member once, across gateways; a gateway with no member gets nothing")
    func roomAcrossGateways() async throws {
        let cluster = try RabbitCluster(gateways: 3)
        try await cluster.run { gateways in
            let alice = try await gateways[0].connect("alice")
            let bob = try await gateways[1].connect("bob")
            let bob2 = try await gateways[1].connect("bob")
            let carol = try await gateways[2].connect("carol")  // not a member
            for client in [alice, bob, bob2] {
                try await client.send(#"{"type":"join","room":"lobby"}"#)
                #expect(try await client.next()["type"] == "ack")
            }
            let before = cluster.backplanes.map(\.statistics.received)
            try await alice.send(#"{"type":"publish","room":"lobby","data":"hello room","id":"p1"}"#)
            let expected = #"{"type":"room","room":"lobby","from":"alice","data":"hello room"}"#
            #expect(try await bob.nextText() == expected)
            #expect(try await bob2.nextText() == expected)
            var aliceFrames = [try await alice.nextText(), try await alice.nextText()]
            aliceFrames.sort()
            #expect(aliceFrames == [#"{"type":"ack","id":"p1"}"#, expected].sorted())
            try await bob.expectSilence()
            try await bob2.expectSilence(for: .milliseconds(50))
            try await carol.expectSilence(for: .milliseconds(50))

            let after = cluster.backplanes.map(\.statistics.received)
            #expect(after[0] - before[0] == 1 && after[1] - before[1] == 1, "each member gateway received it once")
            #expect(after[2] == before[2], "gw3 has no member and received nothing")
            let roomQueues = try Broker.bindings(exchange: cluster.exchange).filter { $0.key == "room.lobby" }.map(\.queue)
            #expect(Set(roomQueues) == [cluster.queue(0), cluster.queue(1)])
            for client in [alice, bob, bob2, carol] { await client.close() }
        }
    }

    @Test("a user connected to two gateways gets a direct message on both")
    func userOnTwoGateways() async throws {
        let cluster = try RabbitCluster(gateways: 3)
        try await cluster.run { gateways in
            let alice = try await gateways[0].connect("alice")
            let bobPhone = try await gateways[1].connect("bob")
            let bobLaptop = try await gateways[2].connect("bob")
            try await alice.send(#"{"type":"direct","to":"bob","data":7,"id":"d"}"#)
            #expect(try await bobPhone.next()["data"] == "7")
            #expect(try await bobLaptop.next()["data"] == "7")
            #expect(try await alice.next()["type"] == "ack")
            for client in [alice, bobPhone, bobLaptop] { await client.close() }
        }
    }

    @Test("direct to a user no gateway hosts: recipient_offline (basic.return), also after the user left")
    func recipientOffline() async throws {
        let cluster = try RabbitCluster(gateways: 2)
        try await cluster.run { gateways in
            let alice = try await gateways[0].connect("alice")
            try await alice.send(#"{"type":"direct","to":"nobody","data":1,"id":"x"}"#)
            let error = try await alice.next()
            #expect(error["code"] == "recipient_offline" && error["id"] == "x")

            let bob = try await gateways[1].connect("bob")
            try await alice.send(#"{"type":"direct","to":"bob","data":1,"id":"y"}"#)
            _ = try await bob.next()
            #expect(try await alice.next()["type"] == "ack")
            await bob.close()
            #expect(try await eventually { !gateways[1].gateway.isLocal(user: try! .init(validating: "bob")) })
            #expect(try await eventually(timeout: .seconds(5)) { (try? Broker.bindings(exchange: cluster.exchange).contains { $0.key == "user.bob" }) == false })
            try await alice.send(#"{"type":"direct","to":"bob","data":2,"id":"z"}"#)
            #expect(try await alice.next()["code"] == "recipient_offline")
            #expect(cluster.backplanes[0].statistics.unroutable == 2)
            await alice.close()
        }
    }

    @Test("bindings follow users and rooms: gone when the last connection or member leaves")
    func bindingsDisappear() async throws {
        let cluster = try RabbitCluster(gateways: 2)
        try await cluster.run { gateways in
            let queue = cluster.queue(0)
            let alice = try await gateways[0].connect("alice")
            let alice2 = try await gateways[0].connect("alice")
            try await alice.send(#"{"type":"join","room":"r.1 *"}"#)
            _ = try await alice.next()
            try await alice.send(#"{"type":"join","room":"r2"}"#)
            _ = try await alice.next()
            var keys = Set(try Broker.bindings(exchange: cluster.exchange).filter { $0.queue == queue }.map(\.key))
            #expect(keys == ["broadcast", "user.alice", "room.~ci4xICo", "room.r2"])

            try await alice.send(#"{"type":"leave","room":"r2"}"#)
            _ = try await alice.next()
            await alice.close()  // leaves r.1 * too; alice2 keeps user.alice
            #expect(
                try await eventually {
                    (try? Broker.bindings(exchange: cluster.exchange).filter { $0.queue == queue }.map(\.key)).map(Set.init) == ["broadcast", "user.alice"]
                }
            )
            await alice2.close()
            #expect(
                try await eventually {
                    (try? Broker.bindings(exchange: cluster.exchange).filter { $0.queue == queue }.map(\.key)).map(Set.init) == ["broadcast"]
                }
            )
            keys = Set(try Broker.bindings(exchange: cluster.exchange).filter { $0.queue == queue }.map(\.key))
            #expect(keys == ["broadcast"])
        }
    }

    @Test("broker restart: sockets stay open, sends get backplane_unavailable, /readyz is 503, then bindings come back by themselves")
    func brokerRestart() async throws {
        let cluster = try RabbitCluster(gateways: 2)
        try await cluster.run { gateways in
            let alice = try await gateways[0].connect("alice")
            let bob = try await gateways[1].connect("bob")
            try await bob.send(#"{"type":"join","room":"lobby"}"#)
            _ = try await bob.next()
            let bound = try Broker.bindings(exchange: cluster.exchange)

            try Broker.ctl(["stop_app"])
            #expect(try await eventually(timeout: .seconds(15)) { !cluster.backplanes[0].isReady && !cluster.backplanes[1].isReady })
            #expect(try await gateways[0].get("/readyz").status == 503)
            try await alice.send(#"{"type":"direct","to":"bob","data":"during","id":"o"}"#)
            let outage = try await alice.next()
            #expect(outage["code"] == "backplane_unavailable" && outage["id"] == "o")

            try Broker.ctl(["start_app"])
            #expect(try await eventually(timeout: .seconds(30)) { cluster.backplanes.allSatisfy(\.isReady) })
            #expect(try await gateways[1].get("/readyz").status == 200)
            // Every binding the connections need is back, without any client doing anything.
            #expect(try Broker.bindings(exchange: cluster.exchange) == bound)

            try await alice.send(#"{"type":"direct","to":"bob","data":"after","id":"a"}"#)
            #expect(try await bob.next()["data"] == "after")
            #expect(try await alice.next()["type"] == "ack")
            try await alice.send(#"{"type":"join","room":"lobby"}"#)
            _ = try await alice.next()
            try await alice.send(#"{"type":"publish","room":"lobby","data":"room after"}"#)
            #expect(try await bob.next()["data"] == "room after")
            await alice.close()
            await bob.close()
        }
    }
}

import Foundation
import SwitchboardBackplane
import SwitchboardProtocol
import SwitchboardServer
import SwitchboardTesting
import Testing

/// The same behaviour, from the client's side, on every backplane: gateways on one real
/// broker each (RabbitMQ, Redis `channels`, Redis `broadcast`). Serialized: the
/// broker-restart test takes the broker away from every other test while it runs.
@Suite("Delivery across gateways, on every backplane", .needsRabbitMQ, .needsRedis, .serialized, .timeLimit(.minutes(3)))
struct RoutedDeliveryTests {
    @Test("alice on gw1 reaches bob on gw2; only gw2 receives it from the broker when routed", arguments: BackplaneKind.allCases)
    func directAcrossGateways(kind: BackplaneKind) async throws {
        let cluster = try BackplaneCluster(kind, gateways: 3)
        try await cluster.run { gateways in
            let alice = try await gateways[0].connect("alice")
            let bob = try await gateways[1].connect("bob")
            let before = cluster.received

            try await alice.send(#"{"type":"direct","to":"bob","data":{"text":"hi bob"},"id":"d1"}"#)
            #expect(try await bob.nextText() == #"{"type":"direct","from":"alice","to":"bob","data":{"text":"hi bob"}}"#)
            #expect(try await alice.nextText() == #"{"type":"ack","id":"d1"}"#)
            try await alice.expectSilence(for: .milliseconds(100))

            #expect(try await eventually { cluster.received[1] - before[1] == 1 }, "gw2 received the message once")
            let after = cluster.received
            if kind.isRouted {
                #expect(after[0] == before[0], "gw1 (the sender's gateway) received nothing")
                #expect(after[2] == before[2], "gw3 received nothing")
                #expect(try cluster.brokerSubscribers("user.bob") == 1)
                #expect(try cluster.brokerSubscribers("user.alice") == 1)
            } else {
                // The classic design: every gateway gets every message and drops what it does not host.
                #expect(try await eventually { cluster.received.enumerated().allSatisfy { $1 - before[$0] == 1 } })
                #expect(try await eventually { cluster.backplanes[2].statistics.filtered >= 1 })
                #expect(try cluster.brokerSubscribers("user.bob") == 3)
            }
            if kind == .rabbitmq {
                // The broker routes user.bob to gw2's queue alone.
                let bindings = try Broker.bindings(exchange: cluster.namespace)
                #expect(bindings.filter { $0.key == "user.bob" } == [Broker.Binding(queue: cluster.queue(1), key: "user.bob")])
                for index in 0..<3 {
                    #expect(bindings.contains(Broker.Binding(queue: cluster.queue(index), key: "broadcast")))
                }
            }
            await alice.close()
            await bob.close()
        }
    }

    @Test("a room message reaches each member once, across gateways; a gateway with no member delivers nothing", arguments: BackplaneKind.allCases)
    func roomAcrossGateways(kind: BackplaneKind) async throws {
        let cluster = try BackplaneCluster(kind, gateways: 3)
        try await cluster.run { gateways in
            let alice = try await gateways[0].connect("alice")
            let bob = try await gateways[1].connect("bob")
            let bob2 = try await gateways[1].connect("bob")
            let carol = try await gateways[2].connect("carol")  // not a member
            for client in [alice, bob, bob2] {
                try await client.send(#"{"type":"join","room":"lobby"}"#)
                #expect(try await client.next()["type"] == "ack")
            }
            let before = cluster.received
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

            let after = cluster.received
            #expect(after[0] - before[0] == 1 && after[1] - before[1] == 1, "each member gateway received it once")
            if kind.isRouted {
                #expect(after[2] == before[2], "gw3 has no member and received nothing")
                #expect(try cluster.brokerSubscribers("room.lobby") == 2)
            } else {
                #expect(after[2] - before[2] == 1, "broadcast: gw3 received it too, and dropped it")
            }
            for client in [alice, bob, bob2, carol] { await client.close() }
        }
    }

    @Test("a user connected to two gateways gets a direct message on both", arguments: BackplaneKind.allCases)
    func userOnTwoGateways(kind: BackplaneKind) async throws {
        let cluster = try BackplaneCluster(kind, gateways: 3)
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

    @Test(
        "direct to a user no gateway hosts: recipient_offline where the backplane can tell, also after the user left",
        arguments: BackplaneKind.allCases
    )
    func recipientOffline(kind: BackplaneKind) async throws {
        let cluster = try BackplaneCluster(kind, gateways: 2)
        try await cluster.run { gateways in
            let alice = try await gateways[0].connect("alice")
            try await alice.send(#"{"type":"direct","to":"nobody","data":1,"id":"x"}"#)
            let first = try await alice.next()
            if kind.reportsOfflineRecipients {
                #expect(first["code"] == "recipient_offline" && first["id"] == "x")
            } else {
                #expect(first["type"] == "ack" && first["id"] == "x", "broadcast cannot know; the message went to every gateway and was dropped")
            }

            let bob = try await gateways[1].connect("bob")
            try await alice.send(#"{"type":"direct","to":"bob","data":1,"id":"y"}"#)
            _ = try await bob.next()
            #expect(try await alice.next()["type"] == "ack")
            await bob.close()
            #expect(try await eventually { !gateways[1].gateway.isLocal(user: try! .init(validating: "bob")) })
            if kind.isRouted {
                #expect(try await eventually(timeout: .seconds(5)) { (try? cluster.brokerSubscribers("user.bob")) == 0 })
            }
            try await alice.send(#"{"type":"direct","to":"bob","data":2,"id":"z"}"#)
            let last = try await alice.next()
            if kind.reportsOfflineRecipients {
                #expect(last["code"] == "recipient_offline")
                #expect(cluster.backplanes[0].statistics.unroutable == 2)
            } else {
                #expect(last["type"] == "ack")
                #expect(cluster.backplanes[0].statistics.unconfirmed == 3)
            }
            await alice.close()
        }
    }

    @Test("bindings follow users and rooms: gone when the last connection or member leaves", arguments: [BackplaneKind.rabbitmq, .redisChannels])
    func bindingsDisappear(kind: BackplaneKind) async throws {
        let cluster = try BackplaneCluster(kind, gateways: 2)
        try await cluster.run { gateways in
            let alice = try await gateways[0].connect("alice")
            let alice2 = try await gateways[0].connect("alice")
            try await alice.send(#"{"type":"join","room":"r.1 *"}"#)
            _ = try await alice.next()
            try await alice.send(#"{"type":"join","room":"r2"}"#)
            _ = try await alice.next()
            let keys = ["broadcast", "user.alice", "room.~ci4xICo", "room.r2"]
            let counts = { try keys.map { try cluster.brokerSubscribers($0) } }
            #expect(try counts() == [2, 1, 1, 1])
            if kind == .rabbitmq {
                let queue = cluster.queue(0)
                let bound = Set(try Broker.bindings(exchange: cluster.namespace).filter { $0.queue == queue }.map(\.key))
                #expect(bound == Set(keys))
            }

            try await alice.send(#"{"type":"leave","room":"r2"}"#)
            _ = try await alice.next()
            await alice.close()  // leaves r.1 * too; alice2 keeps user.alice
            #expect(try await eventually { (try? counts()) == [2, 1, 0, 0] })
            await alice2.close()
            #expect(try await eventually { (try? counts()) == [2, 0, 0, 0] })
        }
    }

    @Test(
        "broker restart: sockets stay open, sends get backplane_unavailable, /readyz is 503, then bindings come back by themselves",
        arguments: BackplaneKind.allCases
    )
    func brokerRestart(kind: BackplaneKind) async throws {
        let cluster = try BackplaneCluster(kind, gateways: 2)
        try await cluster.run { gateways in
            let alice = try await gateways[0].connect("alice")
            let bob = try await gateways[1].connect("bob")
            try await bob.send(#"{"type":"join","room":"lobby"}"#)
            _ = try await bob.next()
            let keys = ["broadcast", "user.alice", "user.bob", "room.lobby"]
            let bound = try keys.map { try cluster.brokerSubscribers($0) }

            try cluster.stopBroker()
            do {
                #expect(try await eventually(timeout: .seconds(15)) { !cluster.backplanes[0].isReady && !cluster.backplanes[1].isReady })
                #expect(try await gateways[0].get("/readyz").status == 503)
                try await alice.send(#"{"type":"direct","to":"bob","data":"during","id":"o"}"#)
                let outage = try await alice.next()
                #expect(outage["code"] == "backplane_unavailable" && outage["id"] == "o")
            } catch {
                try? cluster.startBroker()
                throw error
            }

            try cluster.startBroker()
            #expect(try await eventually(timeout: .seconds(30)) { cluster.backplanes.allSatisfy(\.isReady) })
            #expect(try await gateways[1].get("/readyz").status == 200)
            // Every binding the connections need is back, without any client doing anything.
            #expect(try keys.map { try cluster.brokerSubscribers($0) } == bound)

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

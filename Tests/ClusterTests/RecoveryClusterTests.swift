import Foundation
import SwitchboardTesting
import Testing

/// Recovery end to end: three `switchboard serve` processes on RabbitMQ with a shared Redis
/// history, behind HAProxy.
@Suite("Recovery behind HAProxy", .needsRabbitMQ, .needsRedis, .serialized, .timeLimit(.minutes(3)))
struct RecoveryClusterTests {
    @Test(
        "Bob away: 200 directs (acked recipient_offline) and 200 room messages; back through HAProxy on another gateway, he resumes all 400 once, in order"
    )
    func awayAndBackThroughHAProxy() async throws {
        let cluster = try await LocalCluster.start(history: true)
        do {
            let (bob, bobGateway, _) = try await cluster.connect("bob")
            let (alice, _, _) = try await cluster.connect("alice")
            try await bob.send(#"{"type":"join","room":"lobby","id":"j"}"#)
            let joined = try await bob.next()
            let roomPosition = try #require(joined.position, "\(joined)")
            try await alice.send(#"{"type":"join","room":"lobby","id":"j"}"#)
            _ = try await alice.next(type: "ack")
            // The user stream's position as bob's app would keep it: the last offset it got.
            try await alice.send(#"{"type":"direct","to":"bob","data":0,"id":"first"}"#)
            let last = try await bob.next()
            let userPosition = (epoch: try #require(last["epoch"]), offset: try #require(last.offset))
            _ = try await alice.next(type: "ack")
            let port = cluster.gateway(bobGateway).port
            let before = try #require(await metricValue("switchboard_connections", port: port))
            await bob.close()
            // Until bob's gateway has let him go, a direct would still be routed to his old connection.
            #expect(try await eventuallyAsync(timeout: .seconds(10)) { await metricValue("switchboard_connections", port: port) == before - 1 })

            for index in 1...200 {
                try await alice.send(#"{"type":"direct","to":"bob","data":\#(index),"id":\#(index)}"#)
                let ack = try await alice.next(type: "ack")
                #expect(ack["recipient_offline"] == "1" && ack.offset == userPosition.offset + index, "\(ack)")
            }
            for index in 1...200 {
                try await alice.send(#"{"type":"publish","room":"lobby","data":\#(index),"id":"p\#(index)"}"#)
                _ = try await alice.next(type: "ack")
            }

            let other = try #require(["gw-1", "gw-2", "gw-3"].first { $0 != bobGateway })
            let (back, backGateway, _) = try await cluster.connect("bob", cookie: "SB_GW=\(other)")
            #expect(backGateway == other, "HAProxy's cookie put bob on another gateway")
            try await back.send(#"{"type":"resume","since":\#(ReceivedFrame.since(userPosition)),"id":"r1"}"#)
            for index in 1...200 {
                let frame = try await back.next()
                #expect(frame["type"] == "direct" && frame["data"] == "\(index)" && frame.offset == userPosition.offset + index, "\(frame)")
            }
            let resumed = try await back.next()
            #expect(resumed["id"] == "r1" && resumed["recovered"] == "1" && resumed.position?.offset == userPosition.offset + 200, "\(resumed)")
            try await back.send(#"{"type":"join","room":"lobby","since":\#(ReceivedFrame.since(roomPosition)),"id":"j2"}"#)
            for index in 1...200 {
                let frame = try await back.next()
                #expect(frame["type"] == "room" && frame["data"] == "\(index)" && frame.offset == roomPosition.offset + index, "\(frame)")
            }
            let rejoined = try await back.next()
            #expect(rejoined["id"] == "j2" && rejoined["recovered"] == "1", "\(rejoined)")
            try await back.expectSilence()
            await back.close()
            await alice.close()
        } catch {
            await cluster.stop()
            throw error
        }
        await cluster.stop()
    }
}

import Foundation
import NIOCore
import NIOWebSocket
import SwitchboardClient
import SwitchboardProtocol
import SwitchboardServer
import SwitchboardTesting
import Testing

/// Every row of the wire protocol table (docs/protocol.md), over real WebSockets.
@Suite("Wire protocol v1 over WebSocket", .serialized, .timeLimit(.minutes(1)))
struct ProtocolRowTests {
    @Test("connect: welcome names the user and the gateway")
    func welcome() async throws {
        try await withGateway { gateway in
            let client = try await TestClient.connect(port: gateway.port, path: "/ws?user=alice")
            let welcome = try await client.next()
            #expect(welcome.text == #"{"type":"welcome","user":"alice","gateway":"gw-test"}"#)
            await client.close()
        }
    }

    @Test("percent-encoded user ids arrive decoded")
    func encodedUser() async throws {
        try await withGateway { gateway in
            let client = try await TestClient.connect(port: gateway.port, path: "/ws?user=bob%20smith%2E%2A")
            #expect(try await client.next()["user"] == "bob smith.*")
            await client.close()
        }
    }

    @Test("ping gets pong with the id echoed exactly (string, number, none)")
    func ping() async throws {
        try await withGateway { gateway in
            let alice = try await gateway.connect("alice")
            try await alice.send(#"{"type":"ping","id":"c5"}"#)
            #expect(try await alice.nextText() == #"{"type":"pong","id":"c5"}"#)
            try await alice.send(#"{"type":"ping","id":42}"#)
            #expect(try await alice.nextText() == #"{"type":"pong","id":42}"#)
            try await alice.send(#"{"type":"ping"}"#)
            #expect(try await alice.nextText() == #"{"type":"pong"}"#)
            await alice.close()
        }
    }

    @Test("direct: the recipient gets from/to/data verbatim, the sender an ack")
    func direct() async throws {
        try await withGateway { gateway in
            let alice = try await gateway.connect("alice")
            let bob = try await gateway.connect("bob")
            try await alice.send(#"{"type":"direct","to":"bob","data":{"text":"hi","n":1.50,"e":"\u00e9"},"id":"c1"}"#)
            #expect(try await bob.nextText() == #"{"type":"direct","from":"alice","to":"bob","data":{"text":"hi","n":1.50,"e":"\u00e9"}}"#)
            #expect(try await alice.nextText() == #"{"type":"ack","id":"c1"}"#)
            try await alice.expectSilence()
            await alice.close()
            await bob.close()
        }
    }

    @Test("direct to a user nobody hosts: recipient_offline")
    func recipientOffline() async throws {
        try await withGateway { gateway in
            let alice = try await gateway.connect("alice")
            try await alice.send(#"{"type":"direct","to":"carol","data":"hello?","id":"c1"}"#)
            let error = try await alice.next()
            #expect(error["type"] == "error")
            #expect(error["code"] == "recipient_offline")
            #expect(error["id"] == "c1")
            await alice.close()
        }
    }

    @Test("join, publish, leave: every member connection gets the room frame once")
    func rooms() async throws {
        try await withGateway { gateway in
            let alice = try await gateway.connect("alice")
            let bob = try await gateway.connect("bob")
            let carol = try await gateway.connect("carol")
            for (client, id) in [(alice, "j1"), (bob, "j2")] {
                try await client.send(#"{"type":"join","room":"lobby","id":"\#(id)"}"#)
                #expect(try await client.nextText() == #"{"type":"ack","id":"\#(id)"}"#)
            }
            try await alice.send(#"{"type":"publish","room":"lobby","data":[1,2,3],"id":"c3"}"#)
            let roomFrame = #"{"type":"room","room":"lobby","from":"alice","data":[1,2,3]}"#
            #expect(try await bob.nextText() == roomFrame)
            // The sender is a member too: it gets the room frame, then the ack.
            #expect(try await alice.nextText() == roomFrame)
            #expect(try await alice.nextText() == #"{"type":"ack","id":"c3"}"#)
            try await carol.expectSilence()
            try await bob.expectSilence(for: .milliseconds(50))

            try await bob.send(#"{"type":"leave","room":"lobby","id":"c4"}"#)
            #expect(try await bob.nextText() == #"{"type":"ack","id":"c4"}"#)
            try await alice.send(#"{"type":"publish","room":"lobby","data":"after","id":"c5"}"#)
            #expect(try await alice.next()["type"] == "room")
            #expect(try await alice.next()["type"] == "ack")
            try await bob.expectSilence()
            for client in [alice, bob, carol] { await client.close() }
        }
    }

    @Test("publish to a room one has not joined: not_member; leaving a room one is not in: ack")
    func notMember() async throws {
        try await withGateway { gateway in
            let alice = try await gateway.connect("alice")
            try await alice.send(#"{"type":"publish","room":"lobby","data":1,"id":"p"}"#)
            let error = try await alice.next()
            #expect(error["code"] == "not_member" && error["id"] == "p")
            try await alice.send(#"{"type":"leave","room":"nowhere","id":"l"}"#)
            #expect(try await alice.nextText() == #"{"type":"ack","id":"l"}"#)
            await alice.close()
        }
    }

    @Test("one connection in many rooms gets each room's messages")
    func manyRooms() async throws {
        try await withGateway { gateway in
            let alice = try await gateway.connect("alice")
            let bob = try await gateway.connect("bob")
            let rooms = (0..<20).map { "room-\($0)" }
            for room in rooms {
                try await alice.send(#"{"type":"join","room":"\#(room)"}"#)
                #expect(try await alice.next()["type"] == "ack")
                try await bob.send(#"{"type":"join","room":"\#(room)"}"#)
                #expect(try await bob.next()["type"] == "ack")
            }
            #expect(gateway.gateway.localCounts.rooms == 20)
            for room in rooms {
                try await bob.send(#"{"type":"publish","room":"\#(room)","data":"\#(room)"}"#)
            }
            for room in rooms {
                let frame = try await alice.next()
                #expect(frame["room"] == room && frame["data"] == room)
            }
            await alice.close()
            await bob.close()
        }
    }

    @Test("a user with several connections gets each direct message on every one")
    func multipleConnections() async throws {
        try await withGateway { gateway in
            let alice = try await gateway.connect("alice")
            let phone = try await gateway.connect("bob")
            let laptop = try await gateway.connect("bob")
            try await alice.send(#"{"type":"direct","to":"bob","data":1,"id":"d1"}"#)
            #expect(try await phone.next()["data"] == "1")
            #expect(try await laptop.next()["data"] == "1")
            #expect(try await alice.next()["type"] == "ack")

            await phone.close()
            #expect(try await eventually { gateway.gateway.localCounts.connections == 2 })
            try await alice.send(#"{"type":"direct","to":"bob","data":2,"id":"d2"}"#)
            #expect(try await laptop.next()["data"] == "2")
            #expect(try await alice.next()["type"] == "ack")

            await laptop.close()
            #expect(try await eventually { gateway.gateway.localCounts.users == 1 })
            try await alice.send(#"{"type":"direct","to":"bob","data":3,"id":"d3"}"#)
            #expect(try await alice.next()["code"] == "recipient_offline")
            await alice.close()
        }
    }

    @Test("a closed connection leaves every room; user and rooms stop being local with the last connection")
    func disconnectCleanup() async throws {
        try await withGateway { gateway in
            let server = gateway.gateway
            let alice = try await gateway.connect("alice")
            let alice2 = try await gateway.connect("alice")
            for room in ["a", "b", "c"] {
                try await alice.send(#"{"type":"join","room":"\#(room)"}"#)
                _ = try await alice.next()
            }
            try await alice2.send(#"{"type":"join","room":"a"}"#)
            _ = try await alice2.next()
            let alice1ID = try UserID(validating: "alice")
            #expect(server.isLocal(room: try RoomID(validating: "b")))
            #expect(server.boundAddressCount == 4)  // user.alice + 3 rooms

            await alice.abort()  // vanish without a close frame
            #expect(try await eventually { !server.isLocal(room: try! RoomID(validating: "b")) })
            #expect(!server.isLocal(room: try RoomID(validating: "c")))
            #expect(server.isLocal(room: try RoomID(validating: "a")))
            #expect(server.isLocal(user: alice1ID))
            #expect(try await eventually { server.boundAddressCount == 2 })

            await alice2.close()
            #expect(try await eventually { server.localCounts == (0, 0, 0) })
            #expect(try await eventually { server.boundAddressCount == 0 })
            #expect(!server.isLocal(user: alice1ID))
        }
    }

    @Test("/healthz and /readyz answer; GET /ws without upgrade is 426")
    func httpRoutes() async throws {
        try await withGateway { gateway in
            let health = try await gateway.get("/healthz")
            #expect(health.status == 200 && health.body == #"{"status":"alive"}"#)
            let ready = try await gateway.get("/readyz")
            #expect(ready.status == 200 && ready.body == #"{"status":"ready"}"#)
            let plainWS = try await gateway.get("/ws")
            #expect(plainWS.status == 426)
            let missing = try await gateway.get("/nope")
            #expect(missing.status == 404)
        }
    }

    @Test(
        "handshakes without a valid identity get HTTP 401 and no WebSocket",
        arguments: ["/ws", "/ws?user=", "/ws?user=a%00b", "/ws?user=" + String(repeating: "x", count: 129)]
    )
    func unauthorized(path: String) async throws {
        try await withGateway { gateway in
            await #expect(throws: HandshakeError.self) {
                _ = try await WebSocketConnection.connect(host: "127.0.0.1", port: gateway.port, path: path)
            }
            do {
                _ = try await WebSocketConnection.connect(host: "127.0.0.1", port: gateway.port, path: path)
            } catch let HandshakeError.refused(status, body) {
                #expect(status == 401)
                #expect(body.contains("unauthorized"))
            }
            #expect(gateway.gateway.localCounts.connections == 0)
        }
    }

    @Test("upgrades on any path but /ws get 404")
    func wrongPath() async throws {
        try await withGateway { gateway in
            do {
                _ = try await WebSocketConnection.connect(host: "127.0.0.1", port: gateway.port, path: "/socket?user=a")
                Issue.record("upgrade on /socket succeeded")
            } catch let HandshakeError.refused(status, _) {
                #expect(status == 404)
            }
        }
    }
}

import NIOCore
import NIOWebSocket
import SwitchboardClient
import SwitchboardServer
import SwitchboardTesting
import Testing

/// Bad input gets the documented error; it never crashes the gateway, and never closes
/// any other client's connection.
@Suite("Bad input", .serialized, .timeLimit(.minutes(1)))
struct BadInputTests {
    @Test(
        "malformed frames get an error and the connection stays open",
        arguments: [
            ("{not json", "invalid_message"),
            ("", "invalid_message"),
            ("[1,2,3]", "invalid_message"),
            (#""just a string""#, "invalid_message"),
            (#"{"data":1}"#, "invalid_message"),
            (#"{"type":null}"#, "invalid_message"),
            (#"{"type":"shout"}"#, "unknown_type"),
            (#"{"type":"direct","data":1}"#, "invalid_message"),
            (#"{"type":"direct","to":["bob"],"data":1}"#, "invalid_message"),
            (#"{"type":"direct","to":"bob"}"#, "invalid_message"),
            (#"{"type":"join"}"#, "invalid_message"),
            (#"{"type":"join","room":7}"#, "invalid_message"),
            (#"{"type":"publish","room":"r"}"#, "invalid_message"),
            (#"{"type":"leave","room":{}}"#, "invalid_message"),
            (#"{"type":"ping","id":[1]}"#, "invalid_message"),
            (#"{"type":"ping","type":"ping"}"#, "invalid_message"),
            (#"{"type":"join","room":""}"#, "invalid_id"),
            (#"{"type":"join","room":"a\u0000b"}"#, "invalid_id"),
            (#"{"type":"join","room":"bell\u0007"}"#, "invalid_id"),
            (#"{"type":"direct","to":"\n","data":1}"#, "invalid_id"),
        ]
    )
    func malformedFrames(frame: String, code: String) async throws {
        try await withGateway { gateway in
            let alice = try await gateway.connect("alice")
            let bystander = try await gateway.connect("bob")
            try await alice.send(frame)
            let error = try await alice.next()
            #expect(error["type"] == "error")
            #expect(error["code"] == code, "\(frame) → \(error)")
            #expect(error["message"]?.isEmpty == false)
            try await alice.expectAlive()
            try await bystander.expectAlive()
            await alice.close()
            await bystander.close()
        }
    }

    @Test("ids that break the id rules (10 KB, 129 bytes) get invalid_id, with the id echoed")
    func longIDs() async throws {
        try await withGateway { gateway in
            let alice = try await gateway.connect("alice")
            for length in [129, 10_240] {
                let room = String(repeating: "r", count: length)
                try await alice.send(#"{"type":"join","room":"\#(room)","id":"j"}"#)
                let error = try await alice.next()
                #expect(error["code"] == "invalid_id" && error["id"] == "j")
            }
            #expect(gateway.gateway.localCounts.rooms == 0)
            try await alice.expectAlive()
            await alice.close()
        }
    }

    @Test("binary frames get invalid_message")
    func binaryFrame() async throws {
        try await withGateway { gateway in
            let alice = try await gateway.connect("alice")
            try await alice.send(frame: WebSocketFrame(fin: true, opcode: .binary, maskKey: .random(), data: ByteBuffer(bytes: [1, 2, 3])))
            let error = try await alice.next()
            #expect(error["code"] == "invalid_message")
            try await alice.expectAlive()
            await alice.close()
        }
    }

    @Test("a message over the size limit gets too_large, whole or fragmented, and the connection stays open")
    func tooLarge() async throws {
        try await withGateway { gateway in
            let alice = try await gateway.connect("alice")
            let bob = try await gateway.connect("bob")
            let limit = gateway.gateway.configuration.maximumMessageSize
            #expect(limit == 64 * 1024)
            let padding = String(repeating: "x", count: limit)
            try await alice.send(#"{"type":"direct","to":"bob","data":"\#(padding)","id":"big"}"#)
            let error = try await alice.next()
            #expect(error["code"] == "too_large")
            try await bob.expectSilence()

            // The same message in 4 fragments.
            let text = Array(#"{"type":"direct","to":"bob","data":"\#(padding)"}"#.utf8)
            let quarter = text.count / 4
            for index in 0..<4 {
                let slice = text[(index * quarter)..<(index == 3 ? text.count : (index + 1) * quarter)]
                try await alice.send(
                    frame: WebSocketFrame(
                        fin: index == 3,
                        opcode: index == 0 ? .text : .continuation,
                        maskKey: .random(),
                        data: ByteBuffer(bytes: slice)
                    )
                )
            }
            #expect(try await alice.next()["code"] == "too_large")
            try await bob.expectSilence()

            // Exactly at the limit is fine.
            let fitting = String(repeating: "y", count: limit - #"{"type":"direct","to":"bob","data":""}"#.utf8.count)
            try await alice.send(#"{"type":"direct","to":"bob","data":"\#(fitting)"}"#)
            #expect(try await bob.next()["data"] == fitting)
            #expect(try await alice.next()["type"] == "ack")
            await alice.close()
            await bob.close()
        }
    }

    @Test("fragmented messages are reassembled, with control frames between fragments")
    func fragments() async throws {
        try await withGateway { gateway in
            let alice = try await gateway.connect("alice")
            let parts = [#"{"type":"pi"#, #"ng","id":"#, #""frag"}"#]
            for (index, part) in parts.enumerated() {
                try await alice.send(
                    frame: WebSocketFrame(
                        fin: index == parts.count - 1,
                        opcode: index == 0 ? .text : .continuation,
                        maskKey: .random(),
                        data: ByteBuffer(string: part)
                    )
                )
                if index == 0 {
                    try await alice.send(frame: WebSocketFrame(fin: true, opcode: .ping, maskKey: .random(), data: ByteBuffer(string: "p")))
                }
            }
            guard case .pong(let echoed) = try await alice.nextEvent() else {
                Issue.record("the ping between fragments got no pong")
                return
            }
            #expect(String(buffer: echoed) == "p")
            #expect(try await alice.nextText() == #"{"type":"pong","id":"frag"}"#)
            await alice.close()
        }
    }

    @Test("a frame over the hard frame limit closes only that connection, with 1009")
    func hugeFrame() async throws {
        try await withGateway { gateway in
            let alice = try await gateway.connect("alice")
            let bob = try await gateway.connect("bob")
            let huge = String(repeating: "z", count: gateway.gateway.configuration.maximumFrameSize + 1)
            try await alice.send(huge)
            #expect(try await alice.nextCloseCode() == 1009)
            try await bob.expectAlive()
            await bob.close()
        }
    }

    @Test("invalid UTF-8 in a text message closes that connection with 1007")
    func invalidUTF8() async throws {
        try await withGateway { gateway in
            let alice = try await gateway.connect("alice")
            let bob = try await gateway.connect("bob")
            let bytes: [UInt8] = Array(#"{"type":"ping","id":""#.utf8) + [0xC3, 0x28] + Array(#""}"#.utf8)
            try await alice.send(frame: WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: ByteBuffer(bytes: bytes)))
            #expect(try await alice.nextCloseCode() == 1007)
            try await bob.expectAlive()
            await bob.close()
        }
    }

    @Test("RFC 6455 violations close that connection with 1002", arguments: ["unmasked", "rsv", "opcode", "continuation", "interleaved"])
    func protocolViolations(kind: String) async throws {
        try await withGateway { gateway in
            let alice = try await gateway.connect("alice")
            let bob = try await gateway.connect("bob")
            let data = ByteBuffer(string: #"{"type":"ping"}"#)
            switch kind {
            case "unmasked":
                try await alice.send(frame: WebSocketFrame(fin: true, opcode: .text, data: data))
            case "rsv":
                try await alice.send(frame: WebSocketFrame(fin: true, rsv1: true, opcode: .text, maskKey: .random(), data: data))
            case "opcode":
                try await alice.send(
                    frame: WebSocketFrame(fin: true, opcode: WebSocketOpcode(encodedWebSocketOpcode: 0x3)!, maskKey: .random(), data: data)
                )
            case "continuation":
                try await alice.send(frame: WebSocketFrame(fin: true, opcode: .continuation, maskKey: .random(), data: data))
            default:
                try await alice.send(frame: WebSocketFrame(fin: false, opcode: .text, maskKey: .random(), data: data))
                try await alice.send(frame: WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: data))
            }
            #expect(try await alice.nextCloseCode() == 1002)
            try await bob.expectAlive()
            #expect(try await eventually { gateway.gateway.localCounts.connections == 1 })
            await bob.close()
        }
    }

    @Test("a client's close frame is answered with the same code; a WebSocket ping gets a pong")
    func controlFrames() async throws {
        try await withGateway { gateway in
            let alice = try await gateway.connect("alice")
            try await alice.send(frame: WebSocketFrame(fin: true, opcode: .ping, maskKey: .random(), data: ByteBuffer(string: "hello")))
            guard case .pong(let echoed) = try await alice.nextEvent() else {
                Issue.record("no pong")
                return
            }
            #expect(String(buffer: echoed) == "hello")
            var payload = ByteBuffer()
            payload.write(webSocketErrorCode: .goingAway)
            try await alice.send(frame: WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: payload))
            #expect(try await alice.nextCloseCode() == 1001)
            #expect(try await eventually { gateway.gateway.localCounts.connections == 0 })
        }
    }
}

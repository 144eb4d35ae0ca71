import NIOCore
import NIOWebSocket
import SwitchboardClient
import SwitchboardServer
import SwitchboardTesting
import Testing

/// RFC 6455 behaviour the gateway controls, grouped like the Autobahn test suite; the
/// cases not here are in BadInputTests (framing, RSV bits, opcodes, masking, sizes,
/// fragmentation with interleaved pings). docs/conformance.md has the table.
@Suite("RFC 6455 conformance (Autobahn groups)", .serialized, .timeLimit(.minutes(1)))
struct ConformanceTests {
    static func frame(_ opcode: WebSocketOpcode, _ bytes: [UInt8], fin: Bool = true) -> WebSocketFrame {
        WebSocketFrame(fin: fin, opcode: opcode, maskKey: .random(), data: ByteBuffer(bytes: bytes))
    }

    @Test("2.x: a ping with 125 bytes is answered with the same payload; 126 bytes or a fragmented ping is a protocol error")
    func pings() async throws {
        try await withGateway { gateway in
            let client = try await gateway.connect("a")
            let payload = (0..<125).map { UInt8($0) }
            try await client.send(frame: Self.frame(.ping, payload))
            guard case .pong(let echoed) = try await client.nextEvent() else {
                Issue.record("no pong")
                return
            }
            #expect(Array(echoed.readableBytesView) == payload)

            // The frame decoder refuses oversized or fragmented control frames (1002).
            let big = try await gateway.connect("b")
            try await big.connection.send(rawBytes: Self.rawMaskedFrame(opcode: 0x9, fin: true, payload: Array(repeating: 1, count: 126)))
            #expect(try await big.nextCloseCode() == 1002)
            let fragmented = try await gateway.connect("c")
            try await fragmented.connection.send(rawBytes: Self.rawMaskedFrame(opcode: 0x9, fin: false, payload: [1]))
            #expect(try await fragmented.nextCloseCode() == 1002)
            try await client.expectAlive()
            await client.close()
        }
    }

    @Test("6.x: UTF-8 split across fragments is reassembled; invalid UTF-8 across fragments closes with 1007")
    func utf8AcrossFragments() async throws {
        try await withGateway { gateway in
            let client = try await gateway.connect("a")
            // "é" (C3 A9) split between two fragments.
            let text = Array(#"{"type":"ping","id":"é"}"#.utf8)
            let split = text.firstIndex(of: 0xC3)! + 1
            try await client.send(frame: Self.frame(.text, Array(text[..<split]), fin: false))
            try await client.send(frame: Self.frame(.continuation, Array(text[split...])))
            #expect(try await client.nextText() == #"{"type":"pong","id":"é"}"#)

            try await client.send(frame: Self.frame(.text, Array(#"{"type":"ping","id":""#.utf8) + [0xF0, 0x9F], fin: false))
            try await client.send(frame: Self.frame(.continuation, [0x28] + Array(#""}"#.utf8)))
            #expect(try await client.nextCloseCode() == 1007)
        }
    }

    @Test(
        "7.x: close codes: valid ones are echoed, invalid ones (0, 999, 1004, 1005, 1006, 1015, 5000) get 1002",
        arguments: [
            (UInt16(1000), UInt16(1000)), (1001, 1001), (1011, 1011), (3000, 3000), (4999, 4999),
            (0, 1002), (999, 1002), (1004, 1002), (1005, 1002), (1006, 1002), (1015, 1002), (5000, 1002),
        ]
    )
    func closeCodes(sent: UInt16, expected: UInt16) async throws {
        try await withGateway { gateway in
            let client = try await gateway.connect("a")
            var payload = ByteBuffer()
            payload.writeInteger(sent)
            payload.writeString("bye")
            try await client.send(frame: WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: payload))
            #expect(try await client.nextCloseCode() == expected)
        }
    }

    @Test("7.x: an empty close is answered with 1000; a 1-byte close payload is a protocol error (1002), an invalid UTF-8 reason is 1007")
    func closePayloads() async throws {
        try await withGateway { gateway in
            let empty = try await gateway.connect("a")
            try await empty.send(frame: Self.frame(.connectionClose, []))
            #expect(try await empty.nextCloseCode() == 1000)
            let oneByte = try await gateway.connect("b")
            try await oneByte.send(frame: Self.frame(.connectionClose, [0x03]))
            #expect(try await oneByte.nextCloseCode() == 1002)
            let badReason = try await gateway.connect("c")
            try await badReason.send(frame: Self.frame(.connectionClose, [0x03, 0xE8, 0xC3, 0x28]))
            #expect(try await badReason.nextCloseCode() == 1007)
            #expect(try await eventually { gateway.gateway.localCounts.connections == 0 })
        }
    }

    @Test("5.x: a pong nobody asked for is ignored; text after a completed fragmented message works")
    func unsolicitedPongAndSequence() async throws {
        try await withGateway { gateway in
            let client = try await gateway.connect("a")
            try await client.send(frame: Self.frame(.pong, [1, 2, 3]))
            try await client.send(frame: Self.frame(.text, Array(#"{"type":"pi"#.utf8), fin: false))
            try await client.send(frame: Self.frame(.continuation, Array(#"ng"}"#.utf8)))
            #expect(try await client.nextText() == #"{"type":"pong"}"#)
            try await client.expectAlive()
            await client.close()
        }
    }

    /// A masked frame built by hand, for frames NIO's encoder would not produce.
    static func rawMaskedFrame(opcode: UInt8, fin: Bool, payload: [UInt8]) -> [UInt8] {
        var bytes: [UInt8] = [(fin ? 0x80 : 0) | opcode]
        if payload.count < 126 {
            bytes.append(0x80 | UInt8(payload.count))
        } else {
            bytes.append(0x80 | 126)
            bytes.append(UInt8(payload.count >> 8))
            bytes.append(UInt8(payload.count & 0xFF))
        }
        let mask: [UInt8] = [0x12, 0x34, 0x56, 0x78]
        bytes += mask
        bytes += payload.enumerated().map { $0.element ^ mask[$0.offset % 4] }
        return bytes
    }
}

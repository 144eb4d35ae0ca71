import Foundation
import NIOCore
import NIOWebSocket
import SwitchboardClient
import SwitchboardServer
import SwitchboardTesting
import Testing

/// `--echo-path`: the `/ws` WebSocket layer, echoing, for outside conformance suites.
@Suite("Echo endpoint (--echo-path)", .serialized, .timeLimit(.minutes(1)))
struct EchoEndpointTests {
    static func frame(_ opcode: WebSocketOpcode, _ bytes: [UInt8], fin: Bool = true) -> WebSocketFrame {
        ConformanceTests.frame(opcode, bytes, fin: fin)
    }

    @Test("text and binary messages come back unchanged, fragmented ones whole; no identity is needed")
    func echoes() async throws {
        try await withGateway(configure: { $0.echoPath = "/echo" }) { gateway in
            let client = try await TestClient.connect(port: gateway.port, path: "/echo")
            try await client.send("not even JSON: é")
            #expect(try await client.nextText() == "not even JSON: é")
            try await client.send(frame: Self.frame(.binary, [0, 255, 7]))
            guard case .binary(let echoed) = try await client.nextEvent() else {
                Issue.record("no binary echo")
                return
            }
            #expect(Array(echoed.readableBytesView) == [0, 255, 7])
            try await client.send(frame: Self.frame(.text, Array("frag".utf8), fin: false))
            try await client.send(frame: Self.frame(.ping, [1]))
            guard case .pong = try await client.nextEvent() else {
                Issue.record("no pong between fragments")
                return
            }
            try await client.send(frame: Self.frame(.continuation, Array("mented".utf8)))
            #expect(try await client.nextText() == "fragmented")
            #expect(gateway.gateway.localCounts.connections == 0, "the echo endpoint holds no session")
            await client.close()
        }
    }

    @Test("invalid UTF-8 fails at the fragment that carries it, before the message is complete (1007)")
    func utf8PerFragment() async throws {
        try await withGateway(configure: { $0.echoPath = "/echo" }) { gateway in
            let client = try await TestClient.connect(port: gateway.port, path: "/echo")
            try await client.send(frame: Self.frame(.text, Array("ok".utf8), fin: false))
            try await client.send(frame: Self.frame(.continuation, [0xCE, 0xBA, 0xF4, 0x90], fin: false))
            #expect(try await client.nextCloseCode() == 1007)
        }
    }

    @Test("RFC 6455 violations get the same codes as on /ws")
    func violations() async throws {
        try await withGateway(configure: { $0.echoPath = "/echo" }) { gateway in
            let continuation = try await TestClient.connect(port: gateway.port, path: "/echo")
            try await continuation.send(frame: Self.frame(.continuation, Array("x".utf8)))
            #expect(try await continuation.nextCloseCode() == 1002)
            let closing = try await TestClient.connect(port: gateway.port, path: "/echo")
            try await closing.send(frame: Self.frame(.connectionClose, [0x0F, 0xA0]))
            #expect(try await closing.nextCloseCode() == 4000)
        }
    }

    @Test("without --echo-path there is no echo endpoint")
    func offByDefault() async throws {
        try await withGateway { gateway in
            await #expect(throws: (any Error).self) { try await TestClient.connect(port: gateway.port, path: "/echo") }
            let status = try await gateway.get("/echo").status
            #expect(status == 404)
        }
    }

    @Test("--echo-path refuses a non-loopback --host unless --allow-echo-on-any-host, and anything but a path")
    func flagChecks() throws {
        let binary = try switchboardBinary().path
        let base = ["-k", "2", "5", binary, "serve", "--port", "1", "--auth", "none", "--allow-insecure-auth-none"]
        let remote = try runProcess("/usr/bin/timeout", base + ["--host", "0.0.0.0", "--echo-path", "/echo"])
        #expect(remote.status != 0)
        #expect(remote.output.contains("--allow-echo-on-any-host"), "\(remote.output)")
        for path in ["echo", "/ws", "/echo?x=1"] {
            let bad = try runProcess("/usr/bin/timeout", base + ["--echo-path", path])
            #expect(bad.status != 0 && bad.output.contains("--echo-path must be a path"), "\(path): \(bad.output)")
        }
    }
}

import Foundation
import NIOCore
import NIOPosix
import SwitchboardClient
import SwitchboardServer
import SwitchboardTesting
import Testing

@Suite("Limits", .serialized, .timeLimit(.minutes(2)))
struct LimitTests {
    @Test("more connections than --max-connections-per-user get HTTP 429")
    func connectionsPerUser() async throws {
        try await withGateway(configure: { $0.maximumConnectionsPerUser = 2 }) { gateway in
            let one = try await gateway.connect("alice")
            let two = try await gateway.connect("alice")
            #expect(await refusal(port: gateway.port, path: "/ws?user=alice") == 429)
            let bob = try await gateway.connect("bob")
            await one.close()
            #expect(try await eventually { gateway.gateway.localCounts.connections == 2 })
            let three = try await gateway.connect("alice")
            for client in [two, three, bob] { await client.close() }
        }
    }

    /// End to end through a live gateway; the refill and the streak by the clock are
    /// `SessionStateMachineTests.rateLimit`, on made-up instants.
    @Test("past its burst a connection gets rate_limited; one that keeps going is closed with 1008; others are not affected")
    func rateLimit() async throws {
        try await withGateway(configure: {
            $0.messageRate = 5
            $0.messageBurst = 10
            $0.rateLimitedCloseAfter = 30
        }) { gateway in
            let bystander = try await gateway.connect("bystander")
            let alice = try await gateway.connect("alice")
            var codes: [String] = []
            for index in 0..<20 {
                try await alice.send(#"{"type":"ping","id":\#(index)}"#)
                let reply = try await alice.next()
                codes.append(reply["type"] == "pong" ? "pong" : reply["code"] ?? "?")
            }
            #expect(codes.prefix(10).allSatisfy { $0 == "pong" }, "the burst passes: \(codes)")
            #expect(codes.suffix(5).allSatisfy { $0 == "rate_limited" }, "then the limit holds: \(codes)")

            let flooder = try await gateway.connect("mallory")
            for index in 0..<200 {
                do { try await flooder.send(#"{"type":"ping","id":\#(index)}"#) } catch { break }
            }
            var closeCode: UInt16?
            while let event = try? await flooder.nextEvent(timeout: .seconds(3)) {
                if case .close(let code) = event {
                    closeCode = code
                    break
                }
            }
            #expect(closeCode == 1008)
            try await bystander.expectAlive()
            await alice.close()
            await bystander.close()
        }
    }

    @Test("a silent client gets pings; one that does not answer is closed with 1001, one that does stays")
    func idleTimeout() async throws {
        try await withGateway(configure: {
            $0.pingInterval = .milliseconds(300)
            $0.idleTimeout = .milliseconds(1200)
        }) { gateway in
            let dead = try await TestClient.connect(port: gateway.port, path: "/ws?user=dead", answerPings: false)
            let alive = try await TestClient.connect(port: gateway.port, path: "/ws?user=alive")
            _ = try await dead.next()
            _ = try await alive.next()
            guard case .ping = try await dead.nextEvent(timeout: .seconds(2)) else {
                Issue.record("no ping for a silent client")
                return
            }
            var code: UInt16?
            while let event = try? await dead.nextEvent(timeout: .seconds(3)) {
                if case .close(let received) = event {
                    code = received
                    break
                }
            }
            #expect(code == 1001)
            // A silence check, not a wait for an event: several keepalive sweeps (every 150 ms)
            // pass, and the client that answers pings must still be open after them.
            try await Task.sleep(for: .milliseconds(500))
            try await alive.expectAlive()
            #expect(gateway.gateway.localCounts.connections == 1)
            await alive.close()
        }
    }

    @Test("a TCP connection that never completes a request is closed after the handshake timeout")
    func handshakeTimeout() async throws {
        try await withGateway(configure: { $0.handshakeTimeout = .milliseconds(500) }) { gateway in
            let started = ContinuousClock.now
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: "127.0.0.1", port: gateway.port).get()
            try await channel.writeAndFlush(ByteBuffer(string: "GET /ws?user=slow HTTP/1.1\r\nHost: x\r\n"))  // never finished
            try await channel.closeFuture.get()
            let elapsed = ContinuousClock.now - started
            #expect(elapsed >= .milliseconds(400) && elapsed < .seconds(5))
        }
    }
}

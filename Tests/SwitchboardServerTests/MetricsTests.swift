import Foundation
import SwitchboardServer
import SwitchboardTesting
import Testing

@Suite("GET /metrics in the Prometheus text format")
struct MetricsTests {
    /// `name{labels} value` lines of a scrape, by series.
    static func scrape(_ gateway: RunningGateway) async throws -> [String: Double] {
        let (status, body) = try await gateway.get("/metrics")
        #expect(status == 200)
        var series: [String: Double] = [:]
        for line in body.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            series[String(line[..<space])] = value
        }
        return series
    }

    @Test("connections, messages in and out by type, backplane publishes and latency, bindings, closes by reason, auth failures")
    func countsWhatHappened() async throws {
        try await withGateway(configure: { _ in }) { gateway in
            let alice = try await gateway.connect("alice")
            let bob = try await gateway.connect("bob")
            try await alice.send(#"{"type":"direct","to":"bob","data":1,"id":"d"}"#)
            _ = try await bob.next()
            #expect(try await alice.next()["type"] == "ack")
            try await alice.send(#"{"type":"direct","to":"nobody","data":1,"id":"x"}"#)
            #expect(try await alice.next()["code"] == "recipient_offline")
            try await bob.send("not json")
            _ = try await bob.next()
            try await bob.send(#"{"type":"join","room":"lobby","id":"j"}"#)
            _ = try await bob.next()
            // No user id in --auth none: the handshake is refused with 401.
            await #expect(throws: (any Error).self) { _ = try await TestClient.connect(port: gateway.port, path: "/ws") }

            var metrics = try await Self.scrape(gateway)
            #expect(metrics["switchboard_connections"] == 2)
            #expect(metrics["switchboard_connections_opened_total"] == 2)
            #expect(metrics["switchboard_rooms"] == 1)
            #expect(metrics[#"switchboard_messages_in_total{type="direct"}"#] == 2)
            #expect(metrics[#"switchboard_messages_in_total{type="invalid"}"#] == 1)
            #expect(metrics[#"switchboard_messages_in_total{type="join"}"#] == 1)
            #expect(metrics[#"switchboard_messages_out_total{type="direct"}"#] == 1)
            #expect(metrics[#"switchboard_messages_out_total{type="ack"}"#] == 2)
            #expect(metrics[#"switchboard_messages_out_total{type="error"}"#] == 2)
            #expect(metrics[#"switchboard_messages_out_total{type="welcome"}"#] == 2)
            #expect(metrics[#"switchboard_backplane_publishes_total{outcome="routed"}"#] == 1)
            #expect(metrics[#"switchboard_backplane_publishes_total{outcome="unroutable"}"#] == 1)
            #expect(metrics["switchboard_backplane_publish_duration_seconds_count"] == 2)
            #expect(metrics["switchboard_backplane_received_messages_total"] == 1)
            #expect(metrics["switchboard_backplane_bindings_total"] == 3, "alice, bob, lobby")
            #expect(metrics["switchboard_bindings"] == 3, "alice, bob and lobby (broadcast belongs to the backplane)")
            #expect(metrics[#"switchboard_auth_failures_total{reason="credentials"}"#] == 1)
            #expect(metrics[#"switchboard_handshake_refusals_total{status="401"}"#] == 1)
            #expect(metrics["switchboard_ready"] == 1 && metrics["switchboard_draining"] == 0)

            await alice.close()
            await bob.abort()
            #expect(try await eventually { gateway.gateway.localCounts.connections == 0 })
            metrics = try await Self.scrape(gateway)
            #expect(metrics[#"switchboard_connections_closed_total{reason="client"}"#] == 1)
            #expect(metrics[#"switchboard_connections_closed_total{reason="disconnected"}"#] == 1)
            #expect(metrics["switchboard_backplane_unbindings_total"] == 2, "alice and bob at once; lobby only after the room grace")
            #expect(try await eventuallyAsync { (try? await Self.scrape(gateway))?["switchboard_backplane_unbindings_total"] == 3 })
            #expect(metrics["switchboard_connections"] == 0)
        }
    }
}

import Foundation
import SwitchboardBackplane
import SwitchboardClient
import SwitchboardServer
import SwitchboardTesting
import Synchronization
import Testing

@Suite("Graceful drain", .serialized, .timeLimit(.minutes(1)))
struct DrainTests {
    @Test("drain: readiness false first, then every client closed with 1012, spread over the window; bindings gone")
    func drainSpreadsCloses() async throws {
        let backplane = InMemoryBackplane()
        try await withGateway(
            backplane: backplane,
            configure: { configuration in
                configuration.drainGrace = .milliseconds(400)
                configuration.drainWindow = .seconds(1)
            }
        ) { gateway in
            var clients: [TestClient] = []
            for index in 0..<20 {
                let client = try await gateway.connect("user-\(index)")
                try await client.send(#"{"type":"join","room":"lobby"}"#)
                _ = try await client.next()
                clients.append(client)
            }
            #expect(gateway.gateway.boundAddressCount == 21)
            let started = ContinuousClock.now
            let drain = Task { await gateway.gateway.drain() }

            // Readiness turns false at once and new clients are refused, while the old ones still talk.
            #expect(try await eventually(timeout: .milliseconds(300)) { !gateway.gateway.isReady })
            #expect(try await gateway.get("/readyz").status == 503)
            try await clients[0].send(#"{"type":"direct","to":"user-19","data":"still here","id":"s"}"#)
            #expect(try await clients[19].next()["data"] == "still here")
            #expect(try await clients[0].next()["type"] == "ack")

            var closedAt: [Duration] = []
            for client in clients {
                #expect(try await client.nextCloseCode(timeout: .seconds(5)) == 1012)
                closedAt.append(ContinuousClock.now - started)
            }
            await drain.value
            let first = try #require(closedAt.min())
            let last = try #require(closedAt.max())
            #expect(first >= .milliseconds(400), "no client is closed during the grace")
            #expect(last - first >= .milliseconds(500), "closes are spread over the window, not all at once")
            #expect(gateway.gateway.localCounts == (0, 0, 0))
            #expect(gateway.gateway.boundAddressCount == 0)
        }
    }

    @Test("during a drain, a message to a user being closed is delivered before the close or answered recipient_offline, never acked and lost")
    func noSilentLossDuringDrain() async throws {
        try await withGateway(configure: { configuration in
            configuration.drainGrace = .zero
            configuration.drainWindow = .milliseconds(800)
        }) { gateway in
            let sender = try await gateway.connect("sender")
            var receivers: [TestClient] = []
            for index in 0..<10 { receivers.append(try await gateway.connect("r\(index)")) }
            let drain = Task { await gateway.gateway.drain() }
            var acked: [String: Set<Int>] = [:]
            var sequence = 0
            // Send to every receiver until the sender itself is closed.
            sending: while true {
                for index in 0..<10 {
                    sequence += 1
                    do {
                        try await sender.send(#"{"type":"direct","to":"r\#(index)","data":\#(sequence),"id":\#(sequence)}"#)
                    } catch { break sending }
                }
                for _ in 0..<10 {
                    guard let event = try? await sender.nextEvent(timeout: .seconds(2)) else { break sending }
                    guard case .text(let text) = event else { break sending }
                    let reply = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
                    if reply?["type"] as? String == "ack", let id = reply?["id"] as? Int {
                        acked["r\((id - 1) % 10)", default: []].insert(id)
                    }
                }
            }
            await drain.value
            var lost = 0
            for (index, receiver) in receivers.enumerated() {
                var received: Set<Int> = []
                while let event = try? await receiver.nextEvent(timeout: .milliseconds(100)) {
                    if case .text(let text) = event, let frame = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
                        let data = frame["data"] as? Int
                    {
                        received.insert(data)
                    }
                }
                lost += acked["r\(index)", default: []].subtracting(received).count
            }
            #expect(acked.values.map(\.count).reduce(0, +) > 0)
            #expect(lost == 0, "acked messages that never arrived")
        }
    }
}

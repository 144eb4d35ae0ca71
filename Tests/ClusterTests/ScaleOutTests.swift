import Foundation
import SwitchboardClient
import SwitchboardTesting
import Synchronization
import Testing

/// End to end through a real HAProxy (deploy/haproxy/haproxy.cfg) in front of three
/// `switchboard serve` processes on one RabbitMQ.
@Suite("Scale-out behind HAProxy", .needsRabbitMQ, .serialized, .timeLimit(.minutes(3)))
struct ScaleOutTests {
    @Test("clients land on different gateways (leastconn) and reach each other across them")
    func spreadAndCrossTalk() async throws {
        let cluster = try await LocalCluster.start()
        do {
            let (alice, aliceGateway, _) = try await cluster.connect("alice")
            let (bob, bobGateway, _) = try await cluster.connect("bob")
            let (carol, carolGateway, _) = try await cluster.connect("carol")
            #expect(Set([aliceGateway, bobGateway, carolGateway]) == ["gw-1", "gw-2", "gw-3"])

            try await alice.send(#"{"type":"direct","to":"bob","data":1,"id":"a"}"#)
            #expect(try await bob.next()["data"] == "1")
            #expect(try await alice.next()["type"] == "ack")
            try await bob.send(#"{"type":"direct","to":"carol","data":2,"id":"b"}"#)
            #expect(try await carol.next()["data"] == "2")
            #expect(try await bob.next()["type"] == "ack")
            for client in [alice, bob, carol] {
                try await client.send(#"{"type":"join","room":"all"}"#)
                #expect(try await client.next()["type"] == "ack")
            }
            try await carol.send(#"{"type":"publish","room":"all","data":3}"#)
            #expect(try await alice.next()["data"] == "3")
            #expect(try await bob.next()["data"] == "3")
            // The demo page comes through the balancer; /metrics only from a gateway itself,
            // however the path is spelled. Sent byte for byte (rawHTTPStatus): httpStatus's
            // libcurl would resolve `/./`, `/../` and `//` itself.
            #expect(await httpStatus(port: cluster.haproxyPort, path: "/") == 200)
            #expect(await httpStatus(port: cluster.gateways[0].port, path: "/metrics") == 200)
            // The gateway's router serves these spellings itself...
            let servedByGateways = ["/metrics", "/metrics/", "//metrics", "/metrics?x", "///metrics//"]
            for target in servedByGateways {
                #expect(rawHTTPStatus(port: cluster.gateways[0].port, target: target) == 200, "\(target) on a gateway")
            }
            // ...and HAProxy answers 404 for them and for what normalizes to them.
            let normalizedToMetrics = [
                "/%6Detrics", "/%6detrics", "/./metrics", "/x/../metrics", "/../metrics", "/%2E/metrics", "/METRICS", "/Metrics/", "/%2Fmetrics",
                "/metrics/.",
            ]
            for target in servedByGateways + normalizedToMetrics {
                #expect(rawHTTPStatus(port: cluster.haproxyPort, target: target) == 404, "\(target) through HAProxy")
            }
            // The other paths still pass, normalized, and a malformed %-escape is refused.
            #expect(rawHTTPStatus(port: cluster.haproxyPort, target: "/./readyz") == 200)
            #expect(rawHTTPStatus(port: cluster.haproxyPort, target: "/%72eadyz") == 200)
            #expect(rawHTTPStatus(port: cluster.haproxyPort, target: "/%zzmetrics") == 400)
            for client in [alice, bob, carol] { await client.close() }
        } catch {
            await cluster.stop()
            throw error
        }
        await cluster.stop()
    }

    @Test("a client that reconnects with HAProxy's cookie goes back to the same gateway")
    func stickiness() async throws {
        let cluster = try await LocalCluster.start()
        do {
            let (first, gateway, cookie) = try await cluster.connect("dave")
            let sticky = try #require(cookie)
            #expect(sticky == "SB_GW=\(gateway)")
            await first.close()
            for _ in 0..<5 {
                // Other clients in between, so that leastconn alone would pick another gateway.
                let (other, _, _) = try await cluster.connect("filler-\(Int.random(in: 0...9999))")
                let (again, againGateway, _) = try await cluster.connect("dave", cookie: sticky)
                #expect(againGateway == gateway)
                await again.close()
                await other.close()
            }
        } catch {
            await cluster.stop()
            throw error
        }
        await cluster.stop()
    }

    @Test(
        "without history, SIGTERM on a gateway: its clients get 1012, reconnect elsewhere, and no acked message is lost (the rest were recipient_offline); with history nothing is lost (RecoveryClusterTests)"
    )
    func drainThroughHAProxy() async throws {
        let cluster = try await LocalCluster.start(drainGrace: 2.5, drainWindow: 2)
        do {
            let (sender, senderGateway, _) = try await cluster.connect("sender")
            let receivers = (0..<6).map { ReconnectingReceiver(user: "r\($0)", cluster: cluster) }
            let readers = receivers.map { receiver in Task { await receiver.run() } }
            #expect(try await eventually(timeout: .seconds(10)) { receivers.allSatisfy { $0.currentGateway != nil } })
            let victimName = try #require(
                receivers.compactMap(\.currentGateway).first { $0 != senderGateway },
                "a receiver on a gateway other than the sender's"
            )
            let victim = cluster.gateway(victimName)
            let onVictim = receivers.filter { $0.currentGateway == victimName }

            let acked = Mutex<[String: Set<Int>]>([:])
            let offline = Atomic<Int>(0)
            let stopSending = Atomic<Bool>(false)
            let sending = Task {
                var sequence = 0
                while !stopSending.load(ordering: .relaxed) {
                    for receiver in receivers {
                        sequence += 1
                        try await sender.send(#"{"type":"direct","to":"\#(receiver.user)","data":\#(sequence),"id":\#(sequence)}"#)
                        let reply = try await sender.next()
                        if reply["type"] == "ack" {
                            acked.withLock { _ = $0[receiver.user, default: []].insert(sequence) }
                        } else if reply["code"] == "recipient_offline" {
                            offline.wrappingAdd(1, ordering: .relaxed)
                        } else {
                            throw TestFailure("unexpected reply \(reply)")
                        }
                    }
                    try await Task.sleep(for: .milliseconds(5))
                }
            }
            // Traffic is flowing to the victim's clients before it is stopped.
            #expect(
                try await eventually(timeout: .seconds(10)) {
                    onVictim.allSatisfy { receiver in acked.withLock { $0[receiver.user, default: []].count } >= 5 }
                }
            )
            victim.process.signal(SIGTERM)
            #expect(await victim.process.waitForExit(timeout: .seconds(20)) == 0)
            // Everyone is reachable again on the other gateways.
            #expect(try await eventually(timeout: .seconds(10)) { receivers.allSatisfy { $0.currentGateway != victimName } })
            // ...and traffic flows to them there.
            let afterReconnect = acked.withLock { $0 }.mapValues(\.count)
            #expect(
                try await eventually(timeout: .seconds(10)) {
                    onVictim.allSatisfy { receiver in
                        acked.withLock { $0[receiver.user, default: []].count } >= afterReconnect[receiver.user, default: 0] + 5
                    }
                }
            )
            stopSending.store(true, ordering: .relaxed)
            try await sending.value
            // Every acked message on its way arrives (or the loss check below says which did not).
            _ = try await eventually(timeout: .seconds(5)) {
                receivers.allSatisfy { receiver in acked.withLock { $0[receiver.user, default: []] }.isSubset(of: receiver.received) }
            }
            for receiver in receivers { receiver.stop() }
            for reader in readers { await reader.value }

            for receiver in onVictim {
                #expect(receiver.closeCodes.first == 1012, "\(receiver.user) was closed with 1012")
                #expect(receiver.gateways.count >= 2 && receiver.gateways.last != victimName)
            }
            var lost = 0
            var total = 0
            for receiver in receivers {
                let sent = acked.withLock { $0[receiver.user, default: []] }
                total += sent.count
                lost += sent.subtracting(receiver.received).count
            }
            #expect(total > 100, "enough traffic during the drain: \(total) acked")
            #expect(lost == 0, "acked but never delivered: \(lost) of \(total); recipient_offline: \(offline.load(ordering: .relaxed))")
            await sender.close()
        } catch {
            await cluster.stop()
            throw error
        }
        await cluster.stop()
    }

    @Test("SIGKILL on a gateway: its clients reconnect through HAProxy to the others and are reachable within 10 s")
    func hardKill() async throws {
        let cluster = try await LocalCluster.start()
        do {
            let (sender, senderGateway, _) = try await cluster.connect("sender")
            let receivers = (0..<6).map { ReconnectingReceiver(user: "k\($0)", cluster: cluster) }
            let readers = receivers.map { receiver in Task { await receiver.run() } }
            #expect(try await eventually(timeout: .seconds(10)) { receivers.allSatisfy { $0.currentGateway != nil } })
            let victimName = try #require(receivers.compactMap(\.currentGateway).first { $0 != senderGateway })
            let victim = cluster.gateway(victimName)
            let onVictim = receivers.filter { $0.currentGateway == victimName }

            let killed = ContinuousClock.now
            victim.process.signal(SIGKILL)
            // The bound this test states: reconnected elsewhere and reachable within 10 s of the kill.
            var sequence = 1_000_000
            for receiver in onVictim {
                var delivered = false
                while !delivered, ContinuousClock.now - killed < .seconds(10) {
                    sequence += 1
                    try await sender.send(#"{"type":"direct","to":"\#(receiver.user)","data":\#(sequence),"id":\#(sequence)}"#)
                    let reply = try await sender.next()
                    if reply["type"] == "ack" {
                        delivered = try await eventually(timeout: .seconds(1)) { receiver.received.contains(sequence) }
                    } else {
                        try await Task.sleep(for: .milliseconds(100))
                    }
                }
                #expect(delivered, "\(receiver.user) reachable again within 10 s")
                #expect(receiver.currentGateway != victimName)
            }
            let elapsed = ContinuousClock.now - killed
            #expect(elapsed < .seconds(10))
            for receiver in receivers { receiver.stop() }
            for reader in readers { await reader.value }
            await sender.close()
        } catch {
            await cluster.stop()
            throw error
        }
        await cluster.stop()
    }
}

import Foundation
import SwitchboardClient
import SwitchboardTesting
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Recovery end to end: three `switchboard serve` processes on RabbitMQ with a shared Redis
/// history, behind HAProxy.
/// How the victim gateway goes away.
enum GatewayEnd: String, Sendable, CustomTestStringConvertible {
    /// SIGTERM: the drain closes its clients with 1012.
    case drain
    /// SIGKILL: its sockets just die.
    case kill

    var testDescription: String { rawValue }
}

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

    @Test(
        "a steady stream to Bob while his gateway drains (SIGTERM) or dies (SIGKILL): after the client library reconnects and resumes, he has every acked message, none twice",
        arguments: [GatewayEnd.drain, .kill]
    )
    func noLoss(_ end: GatewayEnd) async throws {
        let cluster = try await LocalCluster.start(drainGrace: 1, drainWindow: 1, history: true)
        do {
            let (sender, senderGateway, _) = try await cluster.connect("sender")
            let receivers = (0..<5).map { LibraryReceiver(user: "bob\($0)", port: cluster.haproxyPort) }
            let readers = receivers.map { receiver in Task { await receiver.run() } }
            for receiver in receivers { _ = try await receiver.client.connect() }
            let victimName = try #require(
                receivers.compactMap { $0.gateway(in: cluster) }.first { $0 != senderGateway },
                "a receiver away from the sender"
            )
            let onVictim = receivers.filter { $0.gateway(in: cluster) == victimName }

            let acked = Mutex<[String: Set<Int>]>([:])
            let stopSending = Atomic<Bool>(false)
            let sending = Task {
                var sequence = 0
                while !stopSending.load(ordering: .relaxed) {
                    for receiver in receivers {
                        sequence += 1
                        try await sender.send(#"{"type":"direct","to":"\#(receiver.user)","data":\#(sequence),"id":\#(sequence)}"#)
                        let reply = try await sender.next(type: "ack", timeout: .seconds(10))
                        guard reply["id"] == "\(sequence)" else { throw TestFailure("unexpected reply \(reply)") }
                        acked.withLock { _ = $0[receiver.user, default: []].insert(sequence) }
                    }
                    try await Task.sleep(for: .milliseconds(5))
                }
            }
            #expect(
                try await eventually(timeout: .seconds(10)) {
                    onVictim.allSatisfy { receiver in receiver.received.count >= 5 }
                }
            )
            cluster.gateway(victimName).process.signal(end == .drain ? SIGTERM : SIGKILL)
            _ = await cluster.gateway(victimName).process.waitForExit(timeout: .seconds(20))
            // Everyone on the victim reconnected elsewhere and resumed.
            #expect(
                try await eventually(timeout: .seconds(15)) {
                    onVictim.allSatisfy { $0.gateway(in: cluster) != victimName && $0.recoveries.last == true }
                },
                "\(onVictim.map { "\($0.user): \($0.gateways) \($0.recoveries)" })"
            )
            let afterResume = acked.withLock { $0 }.mapValues(\.count)
            #expect(
                try await eventually(timeout: .seconds(10)) {
                    onVictim.allSatisfy { acked.withLock { $0 }[$0.user, default: []].count >= afterResume[$0.user, default: 0] + 5 }
                }
            )
            stopSending.store(true, ordering: .relaxed)
            try await sending.value
            _ = try await eventually(timeout: .seconds(5)) {
                receivers.allSatisfy { receiver in acked.withLock { $0[receiver.user, default: []] }.isSubset(of: Set(receiver.received)) }
            }
            var total = 0
            for receiver in receivers {
                let sent = acked.withLock { $0[receiver.user, default: []] }
                total += sent.count
                let missing = sent.subtracting(receiver.received)
                #expect(missing.isEmpty, "\(receiver.user) never got \(missing.sorted().prefix(20)) of \(sent.count)")
                #expect(receiver.received.count == Set(receiver.received).count, "\(receiver.user) got a message twice")
            }
            #expect(total > 50, "enough traffic: \(total) acked")
            for receiver in receivers { await receiver.client.close() }
            // The event stream outlives close() (a client may connect again): stop reading it.
            for reader in readers { reader.cancel() }
            await sender.close()
        } catch {
            await cluster.stop()
            throw error
        }
        await cluster.stop()
    }
}

/// A receiver on the client library: every direct message's data, in arrival order (so
/// a duplicate shows), and each recovery outcome of its user stream.
final class LibraryReceiver: Sendable {
    let user: String
    let client: GatewayClient
    private let state = Mutex<(received: [Int], recoveries: [Bool], gateways: [String])>(([], [], []))

    init(user: String, port: Int) {
        self.user = user
        client = GatewayClient(
            configuration: .init(
                port: port,
                identity: .user(user),
                backoff: ReconnectBackoff(minimum: .milliseconds(100), maximum: .milliseconds(500))
            )
        )
    }

    var received: [Int] { state.withLock { $0.received } }
    var recoveries: [Bool] { state.withLock { $0.recoveries } }
    var gateways: [String] { state.withLock { $0.gateways } }

    /// The HAProxy server name of the gateway it is on now.
    func gateway(in cluster: LocalCluster) -> String? { gateways.last.map(cluster.serverName(ofGatewayID:)) }

    /// Reads the client's events until it is closed.
    func run() async {
        for await event in client.events {
            switch event {
            case .direct(_, _, let data):
                if let value = Int(data) { state.withLock { $0.received.append(value) } }
            case .recovered(.user, let recovered, _):
                state.withLock { $0.recoveries.append(recovered) }
            case .welcome(_, let gateway):
                state.withLock { $0.gateways.append(gateway) }
            default:
                break
            }
        }
    }
}

import Foundation
import SwitchboardBackplane
import SwitchboardProtocol
import SwitchboardServer
import SwitchboardTesting
import Testing

#if canImport(Glibc)
import Glibc
#endif

private func utf8(_ text: String?) -> [UInt8]? { text.map { Array($0.utf8) } }

/// The security review's defects that involve a real broker (RabbitMQ).
@Suite("Security hardening on a real RabbitMQ", .needsRabbitMQ, .serialized, .timeLimit(.minutes(3)))
struct HardeningIntegrationTests {
    static let pairs: [(String, String)] = [("Kate", "\u{212A}ate"), ("caf\u{E9}", "cafe\u{301}"), ("\u{C5}sa", "\u{212B}sa")]

    @Test("canonically equivalent ids across two gateways: distinct routing keys, and each message reaches its exact id only")
    func equivalentIDsAcrossGateways() async throws {
        let cluster = try BackplaneCluster(.rabbitmq, gateways: 2)
        try await cluster.run { gateways in
            let sender = try await gateways[0].connect("sender")
            for (plain, equivalent) in Self.pairs {
                let exact = try await gateways[0].connect(plain)
                let lookalike = try await gateways[1].connect(equivalent)
                let plainKey = "user." + RoutingWord.encode(try UserID(validating: plain))
                let equivalentKey = "user." + RoutingWord.encode(try UserID(validating: equivalent))
                #expect(plainKey != equivalentKey)
                let bindings = try Broker.bindings(exchange: cluster.namespace)
                #expect(bindings.filter { $0.key == plainKey } == [Broker.Binding(queue: cluster.queue(0), key: plainKey)])
                #expect(bindings.filter { $0.key == equivalentKey } == [Broker.Binding(queue: cluster.queue(1), key: equivalentKey)])

                try await sender.send(#"{"type":"direct","to":"\#(equivalent)","data":"across","id":"d1"}"#)
                let across = try await lookalike.next()
                #expect(utf8(across["to"]) == utf8(equivalent))
                #expect(try await sender.next()["type"] == "ack")
                try await sender.send(#"{"type":"direct","to":"\#(plain)","data":"local","id":"d2"}"#)
                #expect(utf8(try await exact.next()["to"]) == utf8(plain))
                #expect(try await sender.next()["type"] == "ack")
                try await exact.expectSilence(for: .milliseconds(100))
                try await lookalike.expectSilence(for: .milliseconds(100))

                // Rooms: the member of the lookalike room on gw2 gets only that room's messages.
                try await lookalike.send(#"{"type":"join","room":"r-\#(equivalent)","id":"j"}"#)
                #expect(try await lookalike.next()["type"] == "ack")
                try await exact.send(#"{"type":"join","room":"r-\#(plain)","id":"j"}"#)
                #expect(try await exact.next()["type"] == "ack")
                try await exact.send(#"{"type":"publish","room":"r-\#(plain)","data":"plain room","id":"p"}"#)
                // The confirm and the delivery travel separately: either may come first.
                let answers = [try await exact.next(), try await exact.next()]
                #expect(Set(answers.compactMap { $0["type"] }) == ["room", "ack"], "\(answers)")
                try await lookalike.expectSilence(for: .milliseconds(200))
                await exact.close()
                await lookalike.close()
            }
            await sender.close()
        }
    }

    /// The test broker's Erlang VM, as scripts/rabbitmq.sh recorded it.
    static func brokerPID() throws -> pid_t {
        let dir = try requiredEnvironment("SWITCHBOARD_RABBITMQ_DIR")
        let text = try String(contentsOfFile: dir + "/rabbitmq.pid", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        guard let pid = pid_t(text) else { throw TestFailure("no broker PID in \(dir)/rabbitmq.pid") }
        return pid
    }

    @Test("a stalled broker: what a client sends before welcome is capped (1008), and the user's bind times out (1013)")
    func stalledBrokerBeforeWelcome() async throws {
        let cluster = try BackplaneCluster(.rabbitmq, gateways: 1)
        try await cluster.run(configure: {
            $0.userBindTimeout = .seconds(2)
            $0.maximumFramesBeforeWelcome = 8
        }) { gateways in
            let pid = try Self.brokerPID()
            kill(pid, SIGSTOP)
            defer { kill(pid, SIGCONT) }
            let port = gateways[0].port

            let eager = try await TestClient.connect(port: port, path: "/ws?user=eager")
            for index in 0..<20 { try? await eager.send(#"{"type":"ping","id":"\#(index)"}"#) }
            #expect(try await eager.nextCloseCode(timeout: .seconds(1)) == 1008, "closed at the cap, before any bind timeout")

            let patient = try await TestClient.connect(port: port, path: "/ws?user=patient")
            try await patient.send(#"{"type":"ping","id":"held"}"#)
            let error = try await patient.next(timeout: .seconds(5))
            #expect(error["code"] == "backplane_unavailable", "\(error)")
            #expect(try await patient.nextCloseCode(timeout: .seconds(3)) == 1013)
            #expect(gateways[0].gateway.localCounts.connections == 0)
        }
    }

    @Test("join churn on RabbitMQ: a churning client cannot push the gateway's bind rate past the join rate")
    func joinChurnOnTheBroker() async throws {
        let cluster = try BackplaneCluster(.rabbitmq, gateways: 1)
        try await cluster.run(configure: {
            $0.joinRate = 10
            $0.joinBurst = 10
            $0.messageRate = 10_000
            $0.messageBurst = 10_000
            $0.roomUnbindGrace = .milliseconds(200)
        }) { gateways in
            let churner = try await gateways[0].connect("churner")
            let before = cluster.backplanes[0].statistics.binds
            let started = ContinuousClock.now
            var acked = 0
            for round in 0..<4 {
                for index in 0..<100 {
                    try await churner.send(#"{"type":"join","room":"churn-\#(round)-\#(index)","id":"j"}"#)
                    try await churner.send(#"{"type":"leave","room":"churn-\#(round)-\#(index)","id":"l"}"#)
                }
                for _ in 0..<200 {
                    let answer = try await churner.next()
                    if answer["id"] == "j", answer["type"] == "ack" { acked += 1 }
                }
            }
            let seconds = Double((ContinuousClock.now - started).components.seconds) + 1
            let binds = cluster.backplanes[0].statistics.binds - before
            #expect(Double(binds) <= 10 + 10 * seconds, "\(binds) binds in \(seconds) s for 400 joins")
            #expect(binds == acked)
            // Nothing of the churn is left on the broker once the grace is over.
            #expect(
                try await eventually(timeout: .seconds(10)) {
                    ((try? Broker.bindings(exchange: cluster.namespace)) ?? []).allSatisfy { !$0.key.hasPrefix("room.churn") }
                }
            )
            await churner.close()
        }
    }
}

import AMQPClient
import Foundation
import Logging
import RedisClient
import SwitchboardBackplane
import SwitchboardClient
import SwitchboardRabbitMQ
import SwitchboardRedis
import SwitchboardServer
import SwitchboardTesting
import Synchronization
import Testing

/// Gateways on a real three-node RabbitMQ cluster (`scripts/rabbitmq.sh cluster-start`)
/// while its nodes crash, stop and come back. Serialized: each test takes nodes away.
@Suite("RabbitMQ cluster failover", .needsRabbitMQCluster, .needsRedis, .serialized, .timeLimit(.minutes(4)))
struct RabbitMQFailoverTests {
    /// How long a gateway may take from its node's death to ready on another node. It is
    /// about one connection attempt and the rebinding; the bound leaves room for a slow CI.
    static let failoverBound = Duration.seconds(15)

    /// Three gateways whose ids make them start on nodes 1, 2 and 3, on an exchange of their own.
    struct Deployment: Sendable {
        let exchange: String
        let ids: [String]
        let backplanes: [RabbitMQBackplane]

        init() throws {
            let brokers = try BrokerCluster.urls.map { try AMQPConfiguration(url: $0) }
            let tag = String(UInt32.random(in: 0...UInt32.max), radix: 36)
            exchange = "sbfailover.\(tag)"
            var logger = Logger(label: "test.failover")
            logger.logLevel = ProcessInfo.processInfo.environment["SWITCHBOARD_TEST_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .error
            // Gateway i gets the first id (of a few tried) that the spreading puts on node i + 1.
            var ids: [String] = []
            for node in brokers.indices {
                let id = try #require(
                    (0..<200).lazy.map { "fo\(node)-\(tag)-\($0)" }.first {
                        RabbitMQConfiguration(brokers: brokers, gatewayID: $0).firstBroker == node
                    }
                )
                ids.append(id)
            }
            self.ids = ids
            let exchange = exchange
            backplanes = ids.map { id in
                RabbitMQBackplane(configuration: RabbitMQConfiguration(brokers: brokers, gatewayID: id, exchange: exchange), logger: logger)
            }
        }

        /// Runs `body` with the three gateways up and ready; `histories`, when given, one per gateway.
        func run(histories: [RedisHistory]? = nil, _ body: @Sendable ([RunningGateway]) async throws -> Void) async throws {
            let ids = self.ids
            let backplanes = self.backplanes
            try await withGateways(
                backplanes,
                configure: { configuration, index in
                    configuration.gatewayID = ids[index]
                    configuration.history = histories?[index]
                    configuration.messageRate = 10_000
                    configuration.messageBurst = 10_000
                }
            ) { gateways in
                guard try await eventually(timeout: .seconds(20), { backplanes.allSatisfy(\.isReady) }) else {
                    throw TestFailure("the backplanes did not become ready on the cluster")
                }
                if let histories, !(try await eventually(timeout: .seconds(10), { histories.allSatisfy(\.isReady) })) {
                    throw TestFailure("the Redis histories did not connect")
                }
                try await body(gateways)
            }
        }

        /// The bindings on the exchange, as a node that is up sees them.
        func bindings(via node: Int) throws -> Set<Broker.Binding> {
            try BrokerCluster.bindings(exchange: exchange, via: node)
        }

        /// The queues of gateway `index` that the cluster knows, asked of `node`.
        func queues(of index: Int, via node: Int) throws -> Set<String> {
            let prefix = "switchboard.gateway.\(ids[index])."
            return Set(try bindings(via: node).map(\.queue).filter { $0.hasPrefix(prefix) })
        }
    }

    /// alice on gw1, bob on gw2, carol on gw3, all three in `lobby`.
    static func connectMembers(_ gateways: [RunningGateway]) async throws -> [TestClient] {
        var clients: [TestClient] = []
        for (index, user) in ["alice", "bob", "carol"].enumerated() {
            let client = try await gateways[index].connect(user)
            try await client.send(#"{"type":"join","room":"lobby","id":"j"}"#)
            #expect(try await client.next(type: "ack")["id"] == "j")
            clients.append(client)
        }
        return clients
    }

    /// Direct messages between every pair of gateways and a room message from each: all delivered.
    static func expectTrafficFlows(_ clients: [TestClient], tag: String, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let users = ["alice", "bob", "carol"]
        for (from, sender) in clients.enumerated() {
            for to in users.indices where to != from {
                try await sender.send(#"{"type":"direct","to":"\#(users[to])","data":"\#(tag)-\#(from)-\#(to)","id":"d"}"#)
                #expect(try await clients[to].next(type: "direct")["data"] == "\(tag)-\(from)-\(to)", sourceLocation: sourceLocation)
                #expect(try await sender.next(type: "ack")["id"] == "d", sourceLocation: sourceLocation)
            }
            try await sender.send(#"{"type":"publish","room":"lobby","data":"\#(tag)-room-\#(from)","id":"p"}"#)
            for (index, client) in clients.enumerated() where index != from {
                #expect(try await client.next(type: "room")["data"] == "\(tag)-room-\(from)", sourceLocation: sourceLocation)
            }
            // The sender gets its own room frame and the ack, in either order.
            let own = [try await sender.next(), try await sender.next()]
            #expect(
                Set(own.map { "\($0["type"] ?? "")|\($0["data"] ?? $0["id"] ?? "")" }) == ["room|\(tag)-room-\(from)", "ack|p"],
                "\(own)",
                sourceLocation: sourceLocation
            )
        }
    }

    @Test(
        "kill -9 of gw1's node: gw1 is ready on another node within the bound, no socket closes, traffic flows, the broker holds exactly gw1's new queue and keys; the node's return changes nothing"
    )
    func nodeLossAndReturn() async throws {
        let deployment = try Deployment()
        try await deployment.run { gateways in
            let clients = try await Self.connectMembers(gateways)
            // Spread: gateway i's queue is on node i + 1.
            let queues = deployment.backplanes.map(\.currentQueueName)
            for (index, queue) in queues.enumerated() {
                #expect(try BrokerCluster.node(holding: try #require(queue), via: 1) == index + 1, "gw\(index + 1)'s queue is on node \(index + 1)")
            }
            let oldQueue = try #require(queues[0])
            let failoversBefore = deployment.backplanes[0].statistics.failovers

            #expect(deployment.backplanes[0].connectedBrokers == (0, 0))
            try BrokerCluster.kill(nodes: 1)
            let killed = ContinuousClock.now
            // Node 1 must come back whatever fails below, or every later test finds it dead.
            do {
                try await Self.expectFailover(deployment, from: oldQueue, killed: killed, failoversBefore: failoversBefore, gateways, clients)
            } catch {
                try? BrokerCluster.start(nodes: 1)
                throw error
            }
            let newQueue = try #require(deployment.backplanes[0].currentQueueName)
            let failovers = deployment.backplanes[0].statistics.failovers - failoversBefore
            let bindingsAfterFailover = try deployment.bindings(via: 2)

            // The killed node comes back: gateways stay where they are, nothing is bound twice.
            try BrokerCluster.start(nodes: 1)
            #expect(deployment.backplanes.allSatisfy { $0.isReady })
            #expect(deployment.backplanes[0].currentQueueName == newQueue)
            #expect(deployment.backplanes[0].statistics.failovers == failoversBefore + failovers)
            for client in clients { try await client.expectAlive() }
            try await Self.expectTrafficFlows(clients, tag: "after-return")
            #expect(try deployment.bindings(via: 1) == bindingsAfterFailover, "the returned node sees the same bindings, none doubled")
            for client in clients { await client.close() }
        }
    }

    /// After node 1's death: gw1's two connections are on other nodes and ready within the
    /// bound, counted and timed; every socket is open; traffic flows; the broker holds
    /// exactly gw1's new queue with its keys and nothing of the old one.
    static func expectFailover(
        _ deployment: Deployment,
        from oldQueue: String,
        killed: ContinuousClock.Instant,
        failoversBefore: Int,
        _ gateways: [RunningGateway],
        _ clients: [TestClient]
    ) async throws {
        // Both connections moved (the publisher may notice the loss a moment after the consumer).
        let movedAndReady = try await eventually(timeout: Self.failoverBound) {
            let brokers = deployment.backplanes[0].connectedBrokers
            return brokers.consumer != 0 && brokers.publisher != 0 && deployment.backplanes.allSatisfy(\.isReady)
        }
        let elapsed = ContinuousClock.now - killed
        try #require(movedAndReady, "gw1 was not ready on another node within \(Self.failoverBound)")
        let newQueue = try #require(deployment.backplanes[0].currentQueueName)
        let newNode = try BrokerCluster.node(holding: newQueue, via: 2)
        #expect(newNode == 2 || newNode == 3, "gw1's new queue is on a live node, not \(String(describing: newNode))")
        // One recovery, or two when the consumer was ready again before the publisher noticed the loss.
        let failovers = deployment.backplanes[0].statistics.failovers - failoversBefore
        #expect(failovers == 1 || failovers == 2)
        #expect(deployment.backplanes[0].statistics.lastFailoverMilliseconds <= Int(elapsed.components.seconds + 1) * 1000)
        let metrics = try await gateways[0].get("/metrics").body
        #expect(
            metrics.contains("switchboard_backplane_failovers_total \(failoversBefore + failovers)"),
            "\(metrics.split(separator: "\n").filter { $0.contains("failover") })"
        )

        for client in clients { try await client.expectAlive() }
        try await Self.expectTrafficFlows(clients, tag: "after-kill")
        #expect(deployment.backplanes[0].currentQueueName != oldQueue)

        // The broker's own view: gw1 has its new queue with exactly its keys; nothing of the old one is left.
        let wanted: Set<Broker.Binding> = Set(["broadcast", "user.alice", "room.lobby"].map { Broker.Binding(queue: newQueue, key: $0) })
        #expect(
            try await eventually(timeout: .seconds(10)) {
                (try? deployment.queues(of: 0, via: 2)) == [newQueue]
                    && (try? deployment.bindings(via: 2).filter { $0.queue.hasPrefix("switchboard.gateway.\(deployment.ids[0]).") }) == wanted
            },
            "gw1's bindings: \(String(describing: try? deployment.bindings(via: 2).sorted { $0.description < $1.description }))"
        )
    }

    @Test("every node down: sockets stay open, sends get backplane_unavailable, /readyz is 503; the gateways come back with the nodes")
    func wholeClusterDown() async throws {
        let deployment = try Deployment()
        try await deployment.run { gateways in
            let clients = try await Self.connectMembers(gateways)
            try BrokerCluster.kill(nodes: 1, 2, 3)
            do {
                #expect(try await eventually(timeout: .seconds(10)) { deployment.backplanes.allSatisfy { !$0.isReady } })
                #expect(try await gateways[0].get("/readyz").status == 503)
                try await clients[0].send(#"{"type":"direct","to":"bob","data":"during","id":"o"}"#)
                let outage = try await clients[0].next(type: "error")
                #expect(outage["code"] == "backplane_unavailable" && outage["id"] == "o")
                for client in clients { try await client.expectAlive() }
            } catch {
                try? BrokerCluster.start(nodes: 1, 2, 3)
                throw error
            }
            // Nodes that went down together must boot together: each waits for the others' tables.
            try BrokerCluster.start(nodes: 1, 2, 3)
            #expect(try await eventually(timeout: .seconds(30)) { deployment.backplanes.allSatisfy(\.isReady) })
            #expect(try await gateways[1].get("/readyz").status == 200)
            try await Self.expectTrafficFlows(clients, tag: "after-outage")
            for client in clients { await client.close() }
        }
    }

    @Test(
        "rolling restart of all three nodes under a steady stream of direct and room messages, history on: every acked message arrives, none twice"
    )
    func rollingRestartLosesNothing() async throws {
        let deployment = try Deployment()
        let histories = try (0..<3).map { index in
            RedisHistory(
                configuration: try RedisConfiguration(url: try RedisServer.url),
                prefix: deployment.exchange,
                retention: HistoryRetention(),
                gatewayID: deployment.ids[index],
                logger: Logger(label: "test.failover.history")
            )
        }
        try await deployment.run(histories: histories) { gateways in
            let clients = try await Self.connectMembers(gateways)
            let users = ["alice", "bob", "carol"]
            let ledger = StreamLedger()
            let readers = clients.enumerated().map { index, client in
                Task { await ledger.read(client, as: users[index]) }
            }
            // alice sends directs to bob, carol to alice, and both publish to the room: 4 streams.
            let plans: [(sender: Int, direct: String)] = [(0, "bob"), (2, "alice")]
            let senders = plans.map { plan in
                Task {
                    var sequence = 0
                    // Bounded in count and in time: 50 per second per sender, at most 4,000 of each kind.
                    while ledger.isSending, sequence < 4_000 {
                        sequence += 1
                        let name = users[plan.sender]
                        let direct = "\(name)-d-\(sequence)"
                        let room = "\(name)-r-\(sequence)"
                        ledger.sent(direct, to: [plan.direct])
                        ledger.sent(room, to: users)
                        try? await clients[plan.sender].send(#"{"type":"direct","to":"\#(plan.direct)","data":"\#(direct)","id":"\#(direct)"}"#)
                        try? await clients[plan.sender].send(#"{"type":"publish","room":"lobby","data":"\#(room)","id":"\#(room)"}"#)
                        try? await Task.sleep(for: .milliseconds(20))
                    }
                    return sequence
                }
            }

            var nodeSwitches = 0
            for node in 1...3 {
                let queuesBefore = deployment.backplanes.map(\.currentQueueName)
                try BrokerCluster.stop(node: node)
                let recovered = try await eventually(timeout: Self.failoverBound) { deployment.backplanes.allSatisfy(\.isReady) }
                try BrokerCluster.start(nodes: node)
                try #require(recovered, "the gateways were not ready within \(Self.failoverBound) of node \(node)'s stop")
                nodeSwitches += zip(queuesBefore, deployment.backplanes.map(\.currentQueueName)).filter { $0 != $1 }.count
            }
            ledger.stopSending()
            var sentPerSender: [Int] = []
            for sender in senders { sentPerSender.append(await sender.value) }
            #expect(nodeSwitches >= 3, "every gateway's consumer moved at least once")

            // A lost tail is found at the stream's next message: one last message on each stream.
            for plan in plans {
                let name = users[plan.sender]
                ledger.sent("\(name)-d-end", to: [plan.direct])
                ledger.sent("\(name)-r-end", to: users)
                try await clients[plan.sender].send(#"{"type":"direct","to":"\#(plan.direct)","data":"\#(name)-d-end","id":"\#(name)-d-end"}"#)
                try await clients[plan.sender].send(#"{"type":"publish","room":"lobby","data":"\#(name)-r-end","id":"\#(name)-r-end"}"#)
            }
            let settled = try await eventually(timeout: .seconds(20)) { ledger.missing().isEmpty && ledger.unanswered().isEmpty }
            for client in clients { await client.close() }
            for reader in readers { await reader.value }

            let missing = ledger.missing()
            #expect(settled, "still missing or unanswered after 20 s: \(ledger.unanswered().count) unanswered")
            #expect(missing.isEmpty, "acked and not delivered (\(missing.count)): \(missing.prefix(20))")
            let duplicates = ledger.duplicates()
            #expect(duplicates.isEmpty, "delivered twice: \(duplicates.prefix(20))")
            let summary = ledger.summary
            #expect(summary.acked > 0 && sentPerSender.allSatisfy { $0 > 50 }, "\(summary), sent \(sentPerSender)")
            #expect(ledger.unexpectedCloses.isEmpty, "sockets closed: \(ledger.unexpectedCloses)")
        }
    }
}

/// What the rolling-restart test sent, what was acked, and what each user received.
private final class StreamLedger: Sendable {
    private struct State {
        /// Message data → the users who must get it.
        var recipients: [String: [String]] = [:]
        var acked: Set<String> = []
        var failed: [String: String] = [:]
        /// "user|data" → how many times it arrived.
        var received: [String: Int] = [:]
        var closes: [String] = []
        var sending = true
    }

    private let state = Mutex(State())

    var isSending: Bool { state.withLock { $0.sending } }

    func stopSending() {
        state.withLock { $0.sending = false }
    }

    func sent(_ data: String, to users: [String]) {
        state.withLock { $0.recipients[data] = users }
    }

    /// Reads `client` until it closes, sorting acks, errors and deliveries.
    func read(_ client: TestClient, as user: String) async {
        while true {
            let event: WebSocketConnection.Event?
            do { event = try await client.nextEventOrEnd(timeout: .seconds(120)) } catch { return }
            guard let event else { return }
            switch event {
            case .text(let text):
                guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
                    let type = object["type"] as? String
                else { continue }
                state.withLock { state in
                    switch type {
                    case "ack": if let id = object["id"] as? String, state.recipients[id] != nil { state.acked.insert(id) }
                    case "error": if let id = object["id"] as? String { state.failed[id] = object["code"] as? String ?? "?" }
                    case "direct", "room": if let data = object["data"] as? String { state.received["\(user)|\(data)", default: 0] += 1 }
                    default: break
                    }
                }
            case .close(let code):
                state.withLock { $0.closes.append("\(user): \(String(describing: code))") }
            default:
                continue
            }
        }
    }

    /// Acked messages some recipient has not received (yet).
    func missing() -> [String] {
        state.withLock { state in
            state.acked.sorted().flatMap { data in
                (state.recipients[data] ?? []).filter { state.received["\($0)|\(data)"] == nil }.map { "\($0)|\(data)" }
            }
        }
    }

    /// Sent messages that got neither an ack nor an error.
    func unanswered() -> [String] {
        state.withLock { state in state.recipients.keys.filter { !state.acked.contains($0) && state.failed[$0] == nil } }
    }

    func duplicates() -> [String] {
        state.withLock { state in state.received.filter { $0.value > 1 }.map { "\($0.key) ×\($0.value)" }.sorted() }
    }

    /// Close frames received before the test closed the clients itself (1000 from our own close is expected).
    var unexpectedCloses: [String] {
        state.withLock { state in state.closes.filter { !$0.hasSuffix("Optional(1000)") && !$0.hasSuffix("nil") } }
    }

    var summary: (acked: Int, failed: Int, failures: [String: Int]) {
        state.withLock { state in
            var failures: [String: Int] = [:]
            for code in state.failed.values { failures[code, default: 0] += 1 }
            return (state.acked.count, state.failed.count, failures)
        }
    }
}

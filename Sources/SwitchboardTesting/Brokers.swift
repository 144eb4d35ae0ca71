import Foundation
public import Testing

/// Whether the suites that need a broker may be skipped when it is not configured.
///
/// `swift test` alone runs the unit suites and skips the broker ones with a message that
/// says what to set. On CI (`CI` set) or with `SWITCHBOARD_REQUIRE_BROKERS=1` (which
/// `scripts/test.sh` exports) a broker suite runs anyway and fails on the missing URL: a
/// run that should cover the brokers never passes by skipping them.
public enum TestBrokers {
    public static var areRequired: Bool {
        let environment = ProcessInfo.processInfo.environment
        return environment["SWITCHBOARD_REQUIRE_BROKERS"] == "1" || !(environment["CI"] ?? "").isEmpty
    }

    /// Why a RabbitMQ suite was skipped.
    public static let rabbitMQMissing = "needs RabbitMQ: set SWITCHBOARD_AMQP_URL and SWITCHBOARD_RABBITMQ_DIR (scripts/test.sh starts one)"
    /// Why a RabbitMQ cluster suite was skipped.
    public static let rabbitMQClusterMissing =
        "needs a RabbitMQ cluster: set SWITCHBOARD_AMQP_CLUSTER_URLS and SWITCHBOARD_RABBITMQ_CLUSTER_DIR (scripts/test.sh starts one)"
    /// Why a Redis suite was skipped.
    public static let redisMissing = "needs Redis: set SWITCHBOARD_REDIS_URL and SWITCHBOARD_REDIS_DIR (scripts/test.sh starts one)"

    /// Ends the current test (or the current case of a parameterized one) as cancelled,
    /// with `message`, when `isConfigured` is false and brokers are not required; for
    /// tests that need a broker only for some of their arguments.
    public static func skipUnless(_ isConfigured: Bool, _ message: String) throws {
        guard !isConfigured, !areRequired else { return }
        // The console does not print why a case was cancelled; a warning (which fails
        // nothing) shows the message next to the case.
        Issue.record(Comment(rawValue: "skipped: " + message), severity: .warning)
        try Test.cancel(Comment(rawValue: message))
    }
}

extension Trait where Self == ConditionTrait {
    /// The suite talks to the test RabbitMQ (``Broker``).
    public static var needsRabbitMQ: Self {
        .enabled(if: Broker.isConfigured || TestBrokers.areRequired, Comment(rawValue: TestBrokers.rabbitMQMissing))
    }

    /// The suite talks to the test Redis (``RedisServer``).
    /// The suite takes nodes of the test RabbitMQ cluster away (``BrokerCluster``).
    public static var needsRabbitMQCluster: Self {
        .enabled(if: BrokerCluster.isConfigured || TestBrokers.areRequired, Comment(rawValue: TestBrokers.rabbitMQClusterMissing))
    }

    public static var needsRedis: Self {
        .enabled(if: RedisServer.isConfigured || TestBrokers.areRequired, Comment(rawValue: TestBrokers.redisMissing))
    }
}

/// The throwaway RabbitMQ that `scripts/test.sh` starts (scripts/rabbitmq.sh), found
/// through `SWITCHBOARD_AMQP_URL` and `SWITCHBOARD_RABBITMQ_DIR`.
public enum Broker {
    public static var isConfigured: Bool { isSet("SWITCHBOARD_AMQP_URL") && isSet("SWITCHBOARD_RABBITMQ_DIR") }

    public static var url: String {
        get throws { try requiredEnvironment("SWITCHBOARD_AMQP_URL") }
    }

    /// Runs `rabbitmqctl ARGS` against the test broker and returns its output.
    @discardableResult
    public static func ctl(_ arguments: [String]) throws -> String {
        let dir = try requiredEnvironment("SWITCHBOARD_RABBITMQ_DIR")
        let (status, text) = try runProcess(packageRoot.appendingPathComponent("scripts/rabbitmq.sh").path, ["ctl", dir] + arguments)
        guard status == 0 else { throw TestFailure("rabbitmqctl \(arguments) failed: \(text)") }
        return text
    }

    /// The broker's own view: (queue, routing key) of every binding on `exchange`.
    public static func bindings(exchange: String) throws -> Set<Binding> {
        Binding.parse(try ctl(Binding.listArguments), exchange: exchange)
    }

    /// One binding of an exchange, as `rabbitmqctl list_bindings` shows it.
    public struct Binding: Hashable, Sendable, CustomStringConvertible {
        public let queue: String
        public let key: String
        public init(queue: String, key: String) {
            self.queue = queue
            self.key = key
        }
        public var description: String { "\(queue)←\(key)" }

        /// What `rabbitmqctl` is asked for: source, destination and key of every binding.
        static let listArguments = ["list_bindings", "source_name", "destination_name", "routing_key", "--quiet", "--no-table-headers"]

        /// The bindings of `exchange` in the output of ``listArguments``.
        static func parse(_ text: String, exchange: String) -> Set<Binding> {
            var result: Set<Binding> = []
            for line in text.split(separator: "\n") {
                let fields = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
                guard fields.count == 3, fields[0] == exchange else { continue }
                result.insert(Binding(queue: fields[1], key: fields[2]))
            }
            return result
        }
    }
}

/// The throwaway three-node RabbitMQ cluster that `scripts/test.sh` starts
/// (`scripts/rabbitmq.sh cluster-start`), found through `SWITCHBOARD_AMQP_CLUSTER_URLS`
/// and `SWITCHBOARD_RABBITMQ_CLUSTER_DIR`. Nodes are numbered from 1, in URL order.
public enum BrokerCluster {
    public static var isConfigured: Bool { isSet("SWITCHBOARD_AMQP_CLUSTER_URLS") && isSet("SWITCHBOARD_RABBITMQ_CLUSTER_DIR") }

    /// The AMQP URL of every node, in node order.
    public static var urls: [String] {
        get throws { try requiredEnvironment("SWITCHBOARD_AMQP_CLUSTER_URLS").split(separator: ",").map(String.init) }
    }

    /// Runs `rabbitmqctl ARGS` against node `node`.
    @discardableResult
    public static func ctl(node: Int, _ arguments: [String]) throws -> String {
        let (status, text) = try runProcess(script, ["ctl", try folder(node)] + arguments)
        guard status == 0 else { throw TestFailure("rabbitmqctl \(arguments) on node \(node) failed: \(text)") }
        return text
    }

    /// `kill -9` of the nodes' Erlang VMs: a crash, no clean close for anyone.
    public static func kill(nodes: Int...) throws { try run("node-kill", nodes) }

    /// A clean stop of the node (it closes its client connections first).
    public static func stop(node: Int) throws { try run("node-stop", [node]) }

    /// Starts stopped or killed nodes again, all at once; they rejoin the cluster. Returns once all have booted.
    public static func start(nodes: Int...) throws { try run("node-start", nodes) }

    /// The cluster's view, asked of node `via`: (queue, routing key) of every binding on `exchange`.
    public static func bindings(exchange: String, via node: Int) throws -> Set<Broker.Binding> {
        Broker.Binding.parse(try ctl(node: node, Broker.Binding.listArguments), exchange: exchange)
    }

    /// The node (1…) that holds `queue`, asked of node `via`; nil when the cluster has no such queue.
    public static func node(holding queue: String, via node: Int) throws -> Int? {
        let text = try ctl(node: node, ["list_queues", "name", "pid", "--quiet", "--no-table-headers"])
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: "\t").map(String.init)
            guard fields.count == 2, fields[0] == queue else { continue }
            // A queue's pid reads <sbcluster123n2@localhost.1.2.3>: the node's name ends in n<i>.
            guard let at = fields[1].firstIndex(of: "@") else { return nil }
            let name = fields[1][..<at]
            guard let n = name.lastIndex(of: "n"), let index = Int(name[name.index(after: n)...]) else { return nil }
            return index
        }
        return nil
    }

    private static var script: String { packageRoot.appendingPathComponent("scripts/rabbitmq.sh").path }

    private static func folder(_ node: Int) throws -> String {
        try requiredEnvironment("SWITCHBOARD_RABBITMQ_CLUSTER_DIR") + "/node\(node)"
    }

    private static func run(_ command: String, _ nodes: [Int]) throws {
        let (status, text) = try runProcess(script, [command] + (try nodes.map(folder)))
        guard status == 0 else { throw TestFailure("scripts/rabbitmq.sh \(command) nodes \(nodes) failed: \(text)") }
    }
}

/// A throwaway Sentinel-managed Redis of the test's own (`scripts/redis.sh sentinel-start`):
/// a master, one replica and three sentinels on loopback, stopped by their PIDs.
public struct RedisSentinelSetup: Sendable {
    /// `redis+sentinel://127.0.0.1:…,…/sbmaster`.
    public let url: String
    public let folder: String

    /// Starts one in a new temporary folder; returns once the replica has synced and the sentinels know each other.
    public static func start() throws -> RedisSentinelSetup {
        let folder = NSTemporaryDirectory() + "switchboard-sentinel-\(UInt32.random(in: 0...UInt32.max))"
        let text = try redisScript(["sentinel-start", folder])
        var values: [String: String] = [:]
        for line in text.split(separator: "\n") where line.hasPrefix("export ") {
            let pair = line.dropFirst("export ".count).split(separator: "=", maxSplits: 1)
            if pair.count == 2 { values[String(pair[0])] = String(pair[1]) }
        }
        guard let url = values["SWITCHBOARD_REDIS_SENTINEL_URL"] else { throw TestFailure("sentinel-start printed no URL: \(text)") }
        return RedisSentinelSetup(url: url, folder: folder)
    }

    /// The port of the server the sentinels call the master now.
    public func masterPort() throws -> Int {
        guard let port = Int(try redisScript(["sentinel-master", folder]).trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw TestFailure("no master port")
        }
        return port
    }

    /// `kill -9` of the master; returns its port.
    @discardableResult
    public func killMaster() throws -> Int {
        guard let port = Int(try redisScript(["sentinel-kill-master", folder]).trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw TestFailure("sentinel-kill-master printed no port")
        }
        return port
    }

    public func stop() {
        _ = try? redisScript(["sentinel-stop", folder])
        try? FileManager.default.removeItem(atPath: folder)
    }
}

/// The throwaway Redis that `scripts/test.sh` starts (scripts/redis.sh), found through
/// `SWITCHBOARD_REDIS_URL` and `SWITCHBOARD_REDIS_DIR`.
public enum RedisServer {
    public static var isConfigured: Bool { isSet("SWITCHBOARD_REDIS_URL") && isSet("SWITCHBOARD_REDIS_DIR") }

    public static var url: String {
        get throws { try requiredEnvironment("SWITCHBOARD_REDIS_URL") }
    }

    /// Runs `redis-cli ARGS` against the test server and returns its output.
    @discardableResult
    public static func cli(_ arguments: [String]) throws -> String {
        try redisScript(["cli", try requiredEnvironment("SWITCHBOARD_REDIS_DIR")] + arguments)
    }

    /// Subscribers of `channel`, as the server counts them (`PUBSUB NUMSUB`).
    public static func subscribers(_ channel: String) throws -> Int {
        let lines = try cli(["PUBSUB", "NUMSUB", channel]).split(separator: "\n")
        guard lines.count == 2, let count = Int(lines[1].trimmingCharacters(in: .whitespaces)) else {
            throw TestFailure("unexpected PUBSUB NUMSUB output: \(lines)")
        }
        return count
    }

    /// Stops the server (its PID, from its folder).
    public static func stop() throws {
        try redisScript(["stop", try requiredEnvironment("SWITCHBOARD_REDIS_DIR")])
    }

    /// Starts it again on the same port and folder.
    public static func start() throws {
        let dir = try requiredEnvironment("SWITCHBOARD_REDIS_DIR")
        let port = try String(contentsOfFile: dir + "/port", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        try redisScript(["start", dir, port])
    }
}

/// Runs `scripts/redis.sh ARGS`; its output, or a failure with it.
@discardableResult
private func redisScript(_ arguments: [String]) throws -> String {
    let (status, text) = try runProcess(packageRoot.appendingPathComponent("scripts/redis.sh").path, arguments)
    guard status == 0 else { throw TestFailure("scripts/redis.sh \(arguments) failed: \(text)") }
    return text
}

private func isSet(_ name: String) -> Bool {
    !(ProcessInfo.processInfo.environment[name] ?? "").isEmpty
}

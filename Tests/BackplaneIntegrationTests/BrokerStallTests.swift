import AMQPClient
import Foundation
import Logging
import RedisClient
import SwitchboardBackplane
import SwitchboardRabbitMQ
import SwitchboardRedis
import SwitchboardServer
import SwitchboardTesting
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A broker that stops taking publishes (issue #11, "broker stall"): RabbitMQ under a
/// memory alarm (`connection.blocked`), Redis stopped with SIGSTOP. Under sustained sends
/// every send is answered, the gateway's memory stays flat, `/readyz` says not ready, and
/// delivery comes back by itself when the broker does.
///
/// Serialized, like every suite on the shared test broker: each test takes the broker
/// away from everyone while it runs, and gives it back in a `defer`.
@Suite("A stalled broker: bounded memory, every send answered, recovery", .needsRabbitMQ, .needsRedis, .serialized, .timeLimit(.minutes(3)))
struct BrokerStallTests {
    /// Publishes that may wait at once in these tests (the default is 5000): below what
    /// arrives within one timeout even at a debug build's pace (about 50 sends/s of 60 KB).
    static let bound = 50
    /// Sends offered during the stall: the unbounded client would hold all of them.
    static let sends = 1800
    /// Each send's body: `sends × body` = 108 MB, twice the allowed growth (without the
    /// bound, 3,000 such sends grew the process by 194 MB); `bound × body` = 3 MB.
    static let bodyBytes = 60_000
    /// Allowed RSS growth of the test process (the in-process gateway and its client).
    static let allowedGrowth = 50 * 1024 * 1024

    @Test(
        "RabbitMQ memory alarm: sends get an answer each (backplane_unavailable past the bound), RSS stays flat, /readyz 503, recovery after the alarm"
    )
    func rabbitMQMemoryAlarm() async throws {
        let tag = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        let backplane = RabbitMQBackplane(
            configuration: RabbitMQConfiguration(
                brokers: [try AMQPConfiguration(url: try Broker.url)],
                gatewayID: "stall-\(tag)",
                exchange: "sbtest.\(tag)",
                publishLimits: AMQPConnection.PublishLimits(maximumPending: Self.bound, timeout: .seconds(2))
            ),
            logger: Self.logger
        )
        try await Self.withStallGateway(backplane) { gateway in
            let alice = try await gateway.connect("alice")
            try await Self.warmUp(alice)
            let before = try Self.residentBytes()

            try Broker.ctl(["set_vm_memory_high_watermark", "0"])
            defer { _ = try? Broker.ctl(["set_vm_memory_high_watermark", "0.4"]) }
            let answers = try await Self.sustainedSends(from: alice)
            let after = try Self.residentBytes()
            Self.check(answers, rssBefore: before, rssAfter: after, label: "rabbitmq")

            // Still blocked: not ready, and the metrics say why.
            #expect(try await gateway.get("/readyz").status == 503)
            let metrics = try await gateway.get("/metrics").body
            #expect(metrics.contains("switchboard_backplane_stalled 1"), "\(Self.lines(metrics, "switchboard_backplane_"))")
            #expect(metrics.contains("switchboard_backplane_blocked 1"), "connection.blocked was reported")
            #expect(backplane.statistics.publishesRefusedFull > 0)

            try Broker.ctl(["set_vm_memory_high_watermark", "0.4"])
            try await Self.expectRecovery(gateway, from: alice)
            await alice.close()
        }
    }

    @Test("Redis stopped with SIGSTOP: sends get an answer each within the command timeout, RSS stays flat, recovery after SIGCONT")
    func redisStopped() async throws {
        let tag = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        var configuration = try RedisBackplaneConfiguration(url: try RedisServer.url + "?prefix=sbtest.\(tag)", gatewayID: "stall-\(tag)")
        configuration.redis.maximumPendingCommands = Self.bound
        let backplane = RedisBackplane(configuration: configuration, logger: Self.logger)
        let pidText = try String(contentsOfFile: try requiredEnvironment("SWITCHBOARD_REDIS_DIR") + "/redis.pid", encoding: .utf8)
        guard let pid = pid_t(pidText.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1 else {
            throw TestFailure("no Redis PID in redis.pid: '\(pidText)'")
        }
        try await Self.withStallGateway(backplane) { gateway in
            let alice = try await gateway.connect("alice")
            try await Self.warmUp(alice)
            let before = try Self.residentBytes()

            guard kill(pid, SIGSTOP) == 0 else { throw TestFailure("SIGSTOP \(pid): errno \(errno)") }
            defer { kill(pid, SIGCONT) }
            let answers = try await Self.sustainedSends(from: alice)
            let after = try Self.residentBytes()
            Self.check(answers, rssBefore: before, rssAfter: after, label: "redis")
            #expect(backplane.statistics.publishesRefusedFull > 0)
            // A stopped server still accepts connections (the kernel's backlog), then answers nothing.
            #expect(try await eventuallyAsync(timeout: .seconds(10)) { (try? await gateway.get("/readyz").status) == 503 })

            kill(pid, SIGCONT)
            try await Self.expectRecovery(gateway, from: alice)
            await alice.close()
        }
    }

    @Test("RabbitMQ memory alarm: a gateway still shuts down promptly (the connection thread is never stuck in a socket write)")
    func shutdownWhileBlocked() async throws {
        let tag = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        let backplane = RabbitMQBackplane(
            configuration: RabbitMQConfiguration(
                brokers: [try AMQPConfiguration(url: try Broker.url)],
                gatewayID: "stall-\(tag)",
                exchange: "sbtest.\(tag)",
                publishLimits: AMQPConnection.PublishLimits(maximumPending: Self.bound, timeout: .seconds(30))
            ),
            logger: Self.logger
        )
        try Broker.ctl(["set_vm_memory_high_watermark", "0"])
        defer { _ = try? Broker.ctl(["set_vm_memory_high_watermark", "0.4"]) }
        let stopping = try await Self.withStallGateway(backplane) { gateway in
            let alice = try await gateway.connect("alice")
            for index in 0..<100 { try await alice.send(Self.message(index: index)) }
            guard try await eventually(timeout: .seconds(20), { backplane.statistics.isBlocked && backplane.statistics.pendingPublishes > 0 }) else {
                throw TestFailure("the broker did not block the publisher: \(backplane.statistics)")
            }
            // Publishes wait (their 30 s timeout has not passed); shut down now.
            return ContinuousClock.now
        }
        let took = ContinuousClock.now - stopping
        print("[rabbitmq] shutdown while blocked took \(took)")
        #expect(took < .seconds(10), "shutdown took \(took)")
    }

    @Test(
        "RabbitMQ stopped with SIGSTOP (no blocked notice, a full socket, no heartbeats): sends are answered, the loss is noticed by heartbeat, recovery after SIGCONT"
    )
    func rabbitMQStopped() async throws {
        let tag = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        // Heartbeats every 2 s: a silent broker is noticed within 5 s.
        var amqp = try AMQPConfiguration(url: try Broker.url)
        amqp.heartbeatSeconds = 2
        let backplane = RabbitMQBackplane(
            configuration: RabbitMQConfiguration(
                brokers: [amqp],
                gatewayID: "stall-\(tag)",
                exchange: "sbtest.\(tag)",
                publishLimits: AMQPConnection.PublishLimits(maximumPending: Self.bound, timeout: .seconds(2))
            ),
            logger: Self.logger
        )
        let pidText = try String(contentsOfFile: try requiredEnvironment("SWITCHBOARD_RABBITMQ_DIR") + "/rabbitmq.pid", encoding: .utf8)
        guard let pid = pid_t(pidText.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1 else {
            throw TestFailure("no RabbitMQ PID in rabbitmq.pid: '\(pidText)'")
        }
        try await Self.withStallGateway(backplane) { gateway in
            let alice = try await gateway.connect("alice")
            try await Self.warmUp(alice)
            let before = try Self.residentBytes()

            guard kill(pid, SIGSTOP) == 0 else { throw TestFailure("SIGSTOP \(pid): errno \(errno)") }
            defer { kill(pid, SIGCONT) }
            let count = 600
            let answers = try await Self.sustainedSends(from: alice, count: count)
            let after = try Self.residentBytes()
            Self.check(answers, rssBefore: before, rssAfter: after, label: "rabbitmq-sigstop", sends: count)
            // The heartbeat notices the silent broker: not ready (the connection is down or reconnecting).
            #expect(try await eventually(timeout: .seconds(10)) { !backplane.isReady })
            #expect(try await gateway.get("/readyz").status == 503)

            kill(pid, SIGCONT)
            try await Self.expectRecovery(gateway, from: alice)
            await alice.close()
        }
    }

    // MARK: Helpers

    static var logger: Logger {
        var logger = Logger(label: "test.stall")
        logger.logLevel = .warning
        return logger
    }

    /// A gateway on `backplane` whose clients may send far faster than the default rate limit.
    static func withStallGateway<T: Sendable>(_ backplane: any Backplane, _ body: @Sendable (RunningGateway) async throws -> T) async throws -> T {
        try await withGateway(
            backplane: backplane,
            configure: { configuration in
                configuration.messageRate = 1_000_000
                configuration.messageBurst = 1_000_000
            }
        ) { gateway in
            guard try await eventually(timeout: .seconds(20), { backplane.isReady }) else {
                throw TestFailure("the backplane did not become ready")
            }
            return try await body(gateway)
        }
    }

    /// A few big sends while the broker is healthy, so that buffers and pools exist before the baseline.
    static func warmUp(_ client: TestClient) async throws {
        for index in 0..<20 {
            try await client.send(message(index: index))
            let answer = try await client.next()
            #expect(answer["code"] == "recipient_offline", "healthy broker: \(answer)")
        }
    }

    /// A direct message of `bodyBytes` to a user nobody hosts: confirmed, it is answered
    /// `recipient_offline` (the broker's answer, as good as an ack here); not confirmed, `backplane_unavailable`.
    static func message(index: Int) -> String {
        #"{"type":"direct","to":"nobody","data":""# + String(repeating: "x", count: bodyBytes) + #"","id":"m\#(index)"}"#
    }

    /// Sends `sends` messages back to back, then reads one answer per send (each within the
    /// publish timeout and then some), and returns the answers by id.
    static func sustainedSends(from client: TestClient, count: Int = sends) async throws -> [String: String] {
        for index in 0..<count {
            try await client.send(message(index: index))
        }
        var answers: [String: String] = [:]
        for _ in 0..<count {
            let answer = try await client.next(timeout: .seconds(10))
            if let id = answer["id"] { answers[id] = answer["code"] ?? answer["type"] ?? "?" }
        }
        return answers
    }

    static func check(_ answers: [String: String], rssBefore: Int, rssAfter: Int, label: String, sends: Int = sends) {
        #expect(answers.count == sends, "every send got exactly one answer")
        let unavailable = answers.values.filter { $0 == "backplane_unavailable" }.count
        let other = answers.values.filter { $0 != "backplane_unavailable" && $0 != "recipient_offline" }
        #expect(other.isEmpty, "unexpected answers: \(Set(other))")
        #expect(unavailable >= sends - 2 * bound, "most sends were refused or timed out: \(unavailable)")
        let growth = rssAfter - rssBefore
        print(
            "[\(label)] RSS before \(rssBefore / 1024) KiB, after \(rssAfter / 1024) KiB, growth \(growth / 1024) KiB; backplane_unavailable \(unavailable) of \(sends)"
        )
        #expect(growth < allowedGrowth, "RSS grew by \(growth / 1024 / 1024) MiB")
    }

    /// Ready again by itself, and a message reaches a newly connected recipient.
    static func expectRecovery(_ gateway: RunningGateway, from alice: TestClient) async throws {
        guard try await eventually(timeout: .seconds(30), { gateway.gateway.isReady && gateway.backplane.statistics.pendingPublishes == 0 }) else {
            throw TestFailure("not ready again after the broker recovered: \(gateway.backplane.statistics)")
        }
        #expect(try await gateway.get("/readyz").status == 200)
        let bob = try await gateway.connect("bob")
        try await alice.send(#"{"type":"direct","to":"bob","data":"back","id":"r"}"#)
        #expect(try await bob.next(timeout: .seconds(10))["data"] == "back")
        // Answers to late confirms never arrive twice: the next frame is this one's ack.
        #expect(try await alice.next(timeout: .seconds(10))["id"] == "r")
        await bob.close()
    }

    /// The process's resident set, from /proc/self/statm (pages).
    static func residentBytes() throws -> Int {
        let text = try String(contentsOfFile: "/proc/self/statm", encoding: .utf8)
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { throw TestFailure("unreadable /proc/self/statm: \(text)") }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    static func lines(_ text: String, _ prefix: String) -> String {
        text.split(separator: "\n").filter { $0.hasPrefix(prefix) }.joined(separator: "\n")
    }
}

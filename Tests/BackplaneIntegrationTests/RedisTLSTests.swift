import Foundation
import Logging
import NIOPosix
import RedisClient
import SwitchboardBackplane
import SwitchboardRedis
import SwitchboardServer
import SwitchboardTesting
import Synchronization
import Testing

/// `rediss://` through swift-nio-ssl, against the test Redis's TLS listener
/// (scripts/redis.sh makes a throwaway CA for it): the backplane and the history.
@Suite("Redis over TLS (rediss://)", .needsRedis, .serialized, .timeLimit(.minutes(2)))
struct RedisTLSTests {
    static var redissURL: String {
        get throws { try requiredEnvironment("SWITCHBOARD_REDISS_URL") }
    }

    static var logger: Logger {
        var logger = Logger(label: "test.redis-tls")
        logger.logLevel = .warning
        return logger
    }

    @Test("two gateways on a rediss:// backplane and a rediss:// history: a direct message crosses, with its offset")
    func gatewaysOverTLS() async throws {
        let url = try Self.redissURL
        let tag = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        let redis = try RedisConfiguration(url: url)
        #expect(redis.tls?.verifyPeer == true)
        #expect(redis.tls?.caCertificatePath?.hasSuffix("tls/ca.pem") == true)
        let ids = ["tls1-\(tag)", "tls2-\(tag)"]
        let backplanes = try ids.map { id in
            RedisBackplane(
                configuration: try RedisBackplaneConfiguration(url: url + "&mode=channels&prefix=sbtls.\(tag)", gatewayID: id),
                logger: Self.logger
            )
        }
        let histories = ids.map { id in
            RedisHistory(configuration: redis, prefix: "sbtls.\(tag)", retention: HistoryRetention(), gatewayID: id, logger: Self.logger)
        }
        try await withGateways(
            backplanes,
            configure: { configuration, index in
                configuration.gatewayID = ids[index]
                configuration.history = histories[index]
            }
        ) { gateways in
            #expect(try await eventually(timeout: .seconds(10)) { backplanes.allSatisfy(\.isReady) && histories.allSatisfy(\.isReady) })
            let alice = try await gateways[0].connect("alice")
            let bob = try await gateways[1].connect("bob")
            try await alice.send(#"{"type":"direct","to":"bob","data":"over tls","id":"t"}"#)
            let delivered = try await bob.next(type: "direct")
            #expect(delivered["data"] == "over tls")
            #expect(delivered["offset"] == "1", "the history over TLS gave it an offset: \(delivered)")
            #expect(try await alice.next(type: "ack")["id"] == "t")
            await alice.close()
            await bob.close()
        }
    }

    @Test("a server certificate from another CA is refused: never open, and the log says the handshake failed")
    func wrongCertificateAuthority() async throws {
        let url = try Self.redissURL.replacingOccurrences(of: "tls/ca.pem", with: "tls/other-ca.pem")
        let logs = CapturedLogs()
        let opened = Atomic<Bool>(false)
        let connection = RedisConnection(
            configuration: try RedisConfiguration(url: url),
            name: "tls-wrong-ca",
            eventLoop: MultiThreadedEventLoopGroup.singleton.next(),
            logger: logs.logger(label: "test.redis-tls"),
            onStateChange: { isOpen in if isOpen { opened.store(true, ordering: .relaxed) } }
        )
        connection.start()
        let refused = try await eventually(timeout: .seconds(10)) {
            logs.all.contains { $0.contains("Redis connect failed") && $0.contains("TLS handshake") }
        }
        await connection.shutdown()
        #expect(refused, "\(logs.all.suffix(5))")
        let everOpened = opened.load(ordering: .relaxed)
        #expect(!everOpened, "a connection with an untrusted server certificate never counts as open")
        #expect(logs.all.contains { $0.contains("Redis connect failed") && $0.lowercased().contains("certificate") }, "\(logs.all.suffix(5))")
    }

    @Test("rediss:// options parse like the AMQP ones; TLS options on redis:// and unreadable files are refused")
    func options() throws {
        let parsed = try RedisConfiguration(
            url: "rediss://:pw@cache.example:6380?cacertfile=/ca.pem&certfile=/c.pem&keyfile=/k.pem&verify=verify_none&prefix=p"
        )
        #expect(parsed.tls == RedisConfiguration.TLS(caCertificatePath: "/ca.pem", certificatePath: "/c.pem", keyPath: "/k.pem", verifyPeer: false))
        #expect(parsed.parameters == ["prefix": "p"])
        #expect(try RedisConfiguration(url: "redis://h:6379").tls == nil)
        for bad in ["redis://h?cacertfile=/ca.pem", "rediss://h?verify=maybe", "rediss://h?certfile=/c.pem"] {
            #expect(throws: RedisError.self, "\(bad)") { try RedisConfiguration(url: bad) }
        }
        let missing = try RedisConfiguration(url: "rediss://h?cacertfile=/nonexistent/ca.pem")
        #expect(throws: RedisError.self) { try missing.makeTLSContext() }
    }
}

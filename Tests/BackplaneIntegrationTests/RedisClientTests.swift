import Logging
import NIOCore
import NIOPosix
import RedisClient
import SwitchboardRedis
import SwitchboardTesting
import Synchronization
import Testing

@Suite("Redis URLs")
struct RedisURLTests {
    @Test("host, port, password, user, timeout and mode come from the URL; errors never show the password")
    func parsing() throws {
        let full = try RedisBackplaneConfiguration(
            url: "redis://app:s%40cret@10.0.0.5:6380/0?mode=broadcast&prefix=chat&timeout=2500",
            gatewayID: "gw"
        )
        #expect(full.redis.host == "10.0.0.5" && full.redis.port == 6380)
        #expect(full.redis.username == "app" && full.redis.password == "s@cret")
        #expect(full.redis.commandTimeout == .milliseconds(2500))
        #expect(full.mode == .broadcast && full.prefix == "chat")

        let sentinel = try RedisBackplaneConfiguration(
            url: "redis+sentinel://:pw@10.0.0.1,10.0.0.2:26380,[::1]:26381/my%2Dmaster?prefix=p",
            gatewayID: "gw"
        )
        #expect(
            sentinel.redis.sentinel
                == RedisConfiguration.Sentinel(
                    addresses: [.init(host: "10.0.0.1"), .init(host: "10.0.0.2", port: 26380), .init(host: "::1", port: 26381)],
                    masterName: "my-master"
                )
        )
        #expect(sentinel.redis.password == "pw" && sentinel.prefix == "p" && sentinel.redis.tls == nil)
        #expect(try RedisConfiguration(url: "rediss+sentinel://h1/m?cacertfile=/ca.pem").tls?.caCertificatePath == "/ca.pem")

        let plain = try RedisBackplaneConfiguration(url: "redis://:pw@localhost", gatewayID: "gw")
        #expect(plain.redis.port == 6379 && plain.redis.password == "pw" && plain.redis.username == nil)
        #expect(plain.mode == .channels, "channels is the default mode")

        for bad in [
            "redis://:topsecret@h?mode=fanout", "redis://:topsecret@h?colour=blue", "rediss://:topsecret@h?verify=sometimes",
            "redis://:topsecret@h/notadb", "http://h", "redis+sentinel://:topsecret@h1,h2", "redis+sentinel://:topsecret@h1:99999/m",
            "redis+sentinel://:topsecret@h1,,h2/m", "redis+sentinel://:topsecret@h1/",
        ] {
            do {
                _ = try RedisBackplaneConfiguration(url: bad, gatewayID: "gw")
                Issue.record("\(bad) was accepted")
            } catch {
                #expect(error.code == .invalidConfiguration)
                #expect(!error.description.contains("topsecret"), "\(error)")
            }
        }
    }
}

@Suite("Redis client against the real server", .needsRedis, .serialized, .timeLimit(.minutes(1)))
struct RedisClientTests {
    static func connection(subscriber: Bool = false, onMessages: @escaping @Sendable ([RedisMessage]) -> Void = { _ in }) throws -> RedisConnection {
        var logger = Logger(label: "test.redis")
        logger.logLevel = .warning
        return RedisConnection(
            configuration: try RedisConfiguration(url: try RedisServer.url),
            name: "test",
            eventLoop: MultiThreadedEventLoopGroup.singleton.next(),
            logger: logger,
            isSubscriber: subscriber,
            onMessages: onMessages
        )
    }

    @Test("pipelined commands get their own replies in order; values are binary-safe; error replies fail only their command")
    func pipelining() async throws {
        let connection = try Self.connection()
        connection.start()
        #expect(try await eventually { connection.isOpen })
        let key = "sbtest.\(UInt32.random(in: 0...UInt32.max))"
        let binary = ByteBuffer(bytes: [0, 13, 10, 255, 36, 42])
        let results = Mutex<[Int: Result<RedisValue, RedisError>]>([:])
        let commands = [
            RedisCommand("SET", [ByteBuffer(string: key), binary]),
            RedisCommand("GET", [ByteBuffer(string: key)]),
            RedisCommand("NOSUCHCOMMAND"),
            RedisCommand("INCR", [ByteBuffer(string: key + ".n")]),
            RedisCommand("INCR", [ByteBuffer(string: key + ".n")]),
            RedisCommand("DEL", key, key + ".n"),
        ]
        for (index, command) in commands.enumerated() {
            connection.send(command) { result in results.withLock { $0[index] = result } }
        }
        #expect(try await eventually { results.withLock { $0.count } == commands.count })
        let replies = results.withLock { $0 }
        #expect(try replies[0]?.get() == .simpleString("OK"))
        #expect(try replies[1]?.get() == .bulkString(binary))
        #expect((try? replies[2]?.get()) == nil)
        #expect(try replies[3]?.get() == .integer(1))
        #expect(try replies[4]?.get() == .integer(2))
        #expect(try replies[5]?.get() == .integer(2))
        await connection.shutdown()
        await #expect(throws: RedisError.self) { try await connection.send(RedisCommand("PING")) }
    }

    @Test("a subscriber gets messages between its replies, and PUBLISH counts its receivers")
    func publishSubscribe() async throws {
        let received = Mutex<[String]>([])
        let subscriber = try Self.connection(subscriber: true) { messages in
            received.withLock { $0 += messages.map { String(buffer: $0.channel) + "=" + String(buffer: $0.payload) } }
        }
        let publisher = try Self.connection()
        subscriber.start()
        publisher.start()
        #expect(try await eventually { subscriber.isOpen && publisher.isOpen })
        let channel = "sbtest.\(UInt32.random(in: 0...UInt32.max))"
        _ = try await subscriber.send(RedisCommand("SUBSCRIBE", channel))
        #expect(try await publisher.send(RedisCommand("PUBLISH", channel, "one")) == .integer(1))
        #expect(try await publisher.send(RedisCommand("PUBLISH", channel + ".other", "x")) == .integer(0))
        _ = try await subscriber.send(RedisCommand("PING"))
        #expect(try await publisher.send(RedisCommand("PUBLISH", channel, "two")) == .integer(1))
        #expect(try await eventually { received.withLock { $0 } == ["\(channel)=one", "\(channel)=two"] })
        _ = try await subscriber.send(RedisCommand("UNSUBSCRIBE", channel))
        #expect(try await publisher.send(RedisCommand("PUBLISH", channel, "three")) == .integer(0))
        await subscriber.shutdown()
        await publisher.shutdown()
    }
}

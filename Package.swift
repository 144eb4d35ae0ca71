// swift-tools-version:6.2
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "switchboard",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "switchboard", targets: ["switchboard"]),
        .executable(name: "switchboard-bench", targets: ["switchboard-bench"]),
        .library(name: "SwitchboardServer", targets: ["SwitchboardServer"]),
        .library(name: "SwitchboardClient", targets: ["SwitchboardClient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/vapor/jwt-kit.git", from: "5.7.1"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
    ],
    targets: [
        // Wire protocol v1: identifiers, routing-key words, client and server frames. No I/O.
        .target(
            name: "SwitchboardProtocol",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        // The seam between a gateway and whatever moves messages between gateways.
        .target(
            name: "SwitchboardBackplane",
            dependencies: [
                "SwitchboardProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Which users, rooms and connections are local to this gateway.
        .target(
            name: "SwitchboardRegistry",
            dependencies: ["SwitchboardProtocol"],
            swiftSettings: swiftSettings
        ),
        // The gateway: Hummingbird HTTP routes plus NIO WebSocket sessions.
        .target(
            name: "SwitchboardServer",
            dependencies: [
                "SwitchboardProtocol",
                "SwitchboardBackplane",
                "SwitchboardRegistry",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            resources: [.copy("Resources/web")],
            swiftSettings: swiftSettings
        ),
        // rabbitmq-c (Debian librabbitmq-dev), seen only by AMQPClient.
        .systemLibrary(
            name: "CRabbitMQ",
            pkgConfig: "librabbitmq",
            providers: [.apt(["librabbitmq-dev"])]
        ),
        // A small AMQP 0-9-1 client over rabbitmq-c: one owner thread per connection. Knows nothing of Switchboard.
        .target(
            name: "AMQPClient",
            dependencies: [
                "CRabbitMQ",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // The RabbitMQ backplane: topology, routed bindings, confirms -> PublishOutcome.
        .target(
            name: "SwitchboardRabbitMQ",
            dependencies: [
                "AMQPClient",
                "SwitchboardBackplane",
                "SwitchboardProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // hiredis (Debian libhiredis-dev), seen only by RedisClient.
        .systemLibrary(
            name: "CHiredis",
            pkgConfig: "hiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),
        // A small Redis client: SwiftNIO sockets, hiredis's RESP reader, pipelining, Pub/Sub, reconnect.
        .target(
            name: "RedisClient",
            dependencies: [
                "CHiredis",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // The Redis Pub/Sub backplane: `broadcast` (one channel) and `channels` (per user and room) modes.
        .target(
            name: "SwitchboardRedis",
            dependencies: [
                "RedisClient",
                "SwitchboardBackplane",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // A WebSocket client for Switchboard: the raw `WebSocketConnection` (`switchboard-bench`,
        // protocol tests) and `GatewayClient`, which reconnects, re-joins and awaits acks.
        .target(
            name: "SwitchboardClient",
            dependencies: [
                "SwitchboardProtocol",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // libFuzzer target over the frame decoder and routing words (scripts/fuzz.sh); a
        // normal build makes it a replayer of Tests/Fuzz/regressions.
        .executableTarget(
            name: "SwitchboardFuzz",
            dependencies: ["SwitchboardProtocol", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        // Helpers shared by the test targets: live gateways in-process and a test WebSocket client.
        .target(
            name: "SwitchboardTesting",
            dependencies: [
                "SwitchboardServer",
                "SwitchboardBackplane",
                "SwitchboardClient",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The gateway binary: argument parsing, and the only target that knows the concrete backplanes.
        .executableTarget(
            name: "switchboard",
            dependencies: [
                "SwitchboardServer",
                "SwitchboardBackplane",
                "SwitchboardRabbitMQ",
                "SwitchboardRedis",
                "AMQPClient",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The load generator (`switchboard-bench`), a binary of its own so that the gateway
        // links neither the client library nor HdrHistogram.
        .executableTarget(
            name: "switchboard-bench",
            dependencies: [
                "SwitchboardClient",
                "SwitchboardProtocol",
                "SwitchboardBackplane",
                "SwitchboardRabbitMQ",
                "AMQPClient",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "SwitchboardProtocolTests",
            dependencies: ["SwitchboardProtocol", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "SwitchboardRegistryTests",
            dependencies: ["SwitchboardRegistry", "SwitchboardProtocol"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "SwitchboardServerTests",
            dependencies: [
                "SwitchboardServer",
                "SwitchboardTesting",
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                "SwitchboardBackplane",
                "SwitchboardClient",
                "SwitchboardProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // GatewayClient's state machine and error codes, without sockets.
        .testTarget(
            name: "SwitchboardClientTests",
            dependencies: ["SwitchboardClient", "SwitchboardProtocol"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AMQPClientTests",
            dependencies: ["AMQPClient"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "BackplaneIntegrationTests",
            dependencies: [
                "SwitchboardClient",
                "SwitchboardRabbitMQ",
                "SwitchboardRedis",
                "RedisClient",
                "AMQPClient",
                "SwitchboardServer",
                "SwitchboardTesting",
                "SwitchboardBackplane",
                "SwitchboardProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // One suite over the `Backplane` API, run against every backplane (brokers: scripts/test.sh).
        .testTarget(
            name: "BackplaneConformanceTests",
            dependencies: [
                "SwitchboardBackplane",
                "SwitchboardRabbitMQ",
                "SwitchboardRedis",
                "SwitchboardProtocol",
                "SwitchboardTesting",
                "AMQPClient",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ClusterTests",
            dependencies: [
                "SwitchboardTesting",
                "SwitchboardClient",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)

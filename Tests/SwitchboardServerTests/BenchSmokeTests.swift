import Foundation
import SwitchboardTesting
import Testing

/// A seconds-long smoke run of `switchboard-bench` against a real `switchboard serve`:
/// the load generator works and counts right. Speed is measured by bench/run.sh, not here.
@Suite("switchboard-bench (smoke run)", .serialized, .timeLimit(.minutes(1)))
struct BenchSmokeTests {
    /// `switchboard-bench`, built beside `switchboard` (the same build products folder).
    static func benchBinary() throws -> URL {
        let url = try switchboardBinary().deletingLastPathComponent().appendingPathComponent("switchboard-bench")
        guard FileManager.default.isExecutableFile(atPath: url.path) else { throw TestFailure("\(url.path) not found: run swift build") }
        return url
    }

    static func bench(_ arguments: [String]) throws -> [String: Any] {
        let (status, output) = try runProcess(try benchBinary().path, arguments + ["--json"])
        guard status == 0, let line = output.split(separator: "\n").last(where: { $0.hasPrefix("{") }),
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
        else { throw TestFailure("bench \(arguments) failed (\(status)): \(output)") }
        return object
    }

    @Test("the gateway binary has no bench subcommand, and its target links neither the client library nor HdrHistogram")
    func gatewayWithoutLoadGenerator() throws {
        let (status, output) = try runProcess(try switchboardBinary().path, ["bench", "parse", "--iterations", "1"])
        #expect(status != 0, "\(output)")
        let manifest = try String(contentsOf: packageRoot.appendingPathComponent("Package.swift"), encoding: .utf8)
        let gateway = try #require(
            manifest.firstMatch(of: /\.executableTarget\(\s*name: "switchboard",(?<body>.*?)swiftSettings/.dotMatchesNewlines())
        )
        #expect(!gateway.body.contains("SwitchboardClient") && !gateway.body.contains("Histogram"), "\(gateway.body)")
    }

    @Test("direct, room, fanout and connect against one gateway: everything sent is delivered once, and counted")
    func scenarios() async throws {
        let port = try await freePort()
        let process = try ServeCommandTests.run([
            "serve", "--port", "\(port)", "--backplane", "memory", "--auth", "none", "--gateway-id", "gw-bench", "--log-level", "error",
        ])
        defer { process.signal(SIGKILL) }
        #expect(try await RunningGatewayAddress(port: port).waitUntilHealthy(timeout: .seconds(20)))
        let common = ["--gateway", "ws://127.0.0.1:\(port)/ws", "--gateway-pid", "\(process.pid)"]

        let direct = try Self.bench(["direct"] + common + ["--users", "20", "--rate", "100", "--duration", "1"])
        let sent = direct["sent"] as? Int ?? 0
        #expect(sent >= 90)
        #expect(direct["delivered"] as? Int == sent && direct["lost"] as? Int == 0 && direct["duplicated"] as? Int == 0)
        #expect(direct["amplification"] as? Double == 1, "the in-memory backplane hands each message over once")
        #expect((direct["latency_ms"] as? [String: Double])?["p50"] != nil)
        #expect((direct["cpu_us_per_msg"] as? [String: Double])?["gateways"] != nil)

        let room = try Self.bench(
            ["room"] + common + ["--users", "20", "--rooms", "2", "--members-per-room", "10", "--rate", "20", "--duration", "1"]
        )
        let roomSent = room["sent"] as? Int ?? 0
        #expect(roomSent >= 15 && room["delivered"] as? Int == roomSent * 10 && room["lost"] as? Int == 0)

        let fanout = try Self.bench(["fanout"] + common + ["--users", "11", "--members", "10", "--rate", "10", "--duration", "1"])
        #expect(fanout["delivered"] as? Int == (fanout["sent"] as? Int ?? -1) * 10 && fanout["lost"] as? Int == 0)

        let connect = try Self.bench(["connect"] + common + ["--users", "100"])
        #expect(connect["connected"] as? Int == 100)
        #expect((connect["subscriptions_per_s"] as? Double ?? 0) > 0)
        await process.stop()
    }
}

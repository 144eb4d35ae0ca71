import Foundation
import NIOCore
import SwitchboardClient
import SwitchboardTesting
import Testing

@Suite("Slow consumers", .serialized, .timeLimit(.minutes(2)))
struct SlowConsumerTests {
    static func residentKiB(_ pid: Int32) -> Int {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
    }

    @Test("a client that stops reading is closed when its outbound buffer is full, and the gateway's memory stays flat")
    func slowReader() async throws {
        let port = try await freePort()
        let directory = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("sb-slow-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let gateway = try ChildProcess(
            name: "gateway",
            executable: try switchboardBinary(),
            arguments: [
                "serve", "--port", "\(port)", "--auth", "none", "--max-outbound-bytes", "262144", "--rate-limit", "100000",
                "--rate-burst", "100000", "--drain-grace", "0", "--drain-window", "0",
                // Without history: the point is what is queued for a client, not what is kept for it.
                "--history", "none",
            ],
            logDirectory: directory
        )
        #expect(try await eventuallyAsync(timeout: .seconds(20)) { await httpStatus(port: port, path: "/healthz") == 200 })

        let reader = try await TestClient.connect(port: port, path: "/ws?user=slow")
        _ = try await reader.next()
        let sender = try await TestClient.connect(port: port, path: "/ws?user=sender")
        _ = try await sender.next()
        try await reader.connection.channel.setOption(ChannelOptions.autoRead, value: false).get()

        let payload = String(repeating: "x", count: 60_000)
        // Warm up the gateway's allocator with the same traffic shape before measuring.
        let warm = try await TestClient.connect(port: port, path: "/ws?user=warm")
        _ = try await warm.next()
        for index in 0..<50 {
            try await sender.send(#"{"type":"direct","to":"warm","data":"\#(payload)","id":\#(index)}"#)
            _ = try await sender.next()
            _ = try await warm.next()
        }
        let before = Self.residentKiB(gateway.pid)

        var acked = 0
        var offline = 0
        for index in 0..<1500 {
            try await sender.send(#"{"type":"direct","to":"slow","data":"\#(payload)","id":\#(index)}"#)
            let reply = try await sender.next()
            if reply["type"] == "ack" { acked += 1 } else if reply["code"] == "recipient_offline" { offline += 1 }
        }
        let after = Self.residentKiB(gateway.pid)
        let sentMiB = 1500 * 60_000 / 1_048_576
        #expect(offline > 0, "the slow reader was closed and then counted offline (acked \(acked), offline \(offline))")
        #expect(acked < 600, "it was closed long before everything was queued for it (acked \(acked))")
        #expect(
            after - before < 32 * 1024,
            "gateway RSS grew \((after - before) / 1024) MiB while \(sentMiB) MiB were sent to a client that does not read"
        )
        try await sender.expectAlive()
        try await warm.expectAlive()
        #expect(gateway.log.contains("slow consumer"))

        await sender.close()
        await warm.close()
        await reader.abort()
        await gateway.stop()
    }
}

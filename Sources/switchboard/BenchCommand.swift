import ArgumentParser
import Foundation
import NIOCore
import NIOPosix
import SwitchboardClient

/// `switchboard bench`: load generators for the gateway. Every run is bounded in
/// connections and time and stops by itself.
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure a running gateway.",
        subcommands: [IdleBench.self]
    )
}

/// Opens N idle WebSocket connections, holds them, and reports the server's RSS per connection.
struct IdleBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "idle",
        abstract: "Open N connections, hold them idle, report server RSS per connection."
    )

    @Option(help: "Gateway address (loopback only).")
    var host = "127.0.0.1"

    @Option(help: "Gateway port.")
    var port = 8080

    @Option(help: "Connections to open (at most 19000 from one process).")
    var connections = 10_000

    @Option(help: "Connections being opened at once.")
    var concurrency = 200

    @Option(help: "Seconds to hold the connections before measuring again and closing.")
    var hold = 5

    @Option(help: "PID of the gateway process, to read its RSS from /proc.")
    var serverPID: Int32

    func validate() throws {
        guard host.hasPrefix("127.") || host == "::1" || host == "localhost" else {
            throw ValidationError("bench only targets loopback addresses")
        }
        guard (1...19_000).contains(connections) else { throw ValidationError("--connections must be 1…19000") }
        guard (1...60).contains(hold) else { throw ValidationError("--hold must be 1…60 seconds") }
        guard (1...1000).contains(concurrency) else { throw ValidationError("--concurrency must be 1…1000") }
    }

    func run() async throws {
        _ = FileDescriptorLimit.raiseToHardLimit()
        let baseline = try ProcessMemory.residentKiB(pid: serverPID)
        let started = ContinuousClock.now
        let deadline = started + .seconds(120)
        var opened: [WebSocketConnection] = []
        opened.reserveCapacity(connections)
        var failures = 0
        try await withThrowingTaskGroup(of: WebSocketConnection?.self) { group in
            var next = 0
            func startOne() {
                let index = next
                next += 1
                group.addTask {
                    let connection = try? await WebSocketConnection.connect(host: host, port: port, path: "/ws?user=idle-\(index)")
                    guard let connection else { return nil }
                    // Count it only once the gateway has welcomed it (user bound, session live).
                    for await event in connection.events {
                        if case .text(let text) = event, text.contains(#""type":"welcome""#) { return connection }
                        break
                    }
                    await connection.abort()
                    return nil
                }
            }
            for _ in 0..<min(concurrency, connections) { startOne() }
            while let result = try await group.next() {
                if let result { opened.append(result) } else { failures += 1 }
                if next < connections, ContinuousClock.now < deadline { startOne() }
            }
        }
        let openSeconds = (ContinuousClock.now - started).seconds
        let afterOpen = try ProcessMemory.residentKiB(pid: serverPID)
        try await Task.sleep(for: .seconds(hold))
        let afterHold = try ProcessMemory.residentKiB(pid: serverPID)
        let perConnection = opened.isEmpty ? 0 : Double(afterHold - baseline) * 1024 / Double(opened.count)
        print("connections opened: \(opened.count), failed: \(failures), in \(String(format: "%.1f", openSeconds)) s")
        print("server RSS: baseline \(baseline) KiB, after open \(afterOpen) KiB, after \(hold) s idle \(afterHold) KiB")
        print("server RSS per idle connection: \(String(format: "%.0f", perConnection)) bytes (\(String(format: "%.1f", perConnection / 1024)) KiB)")
        for connection in opened { await connection.abort() }
    }
}

/// Reads a process's memory use from /proc.
enum ProcessMemory {
    struct Unavailable: Error, CustomStringConvertible {
        var description: String
    }

    static func residentKiB(pid: Int32) throws -> Int {
        let text = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
            let value = line.split(separator: " ").dropFirst().first.flatMap({ Int($0) })
        else { throw Unavailable(description: "no VmRSS for pid \(pid)") }
        return value
    }
}

extension Duration {
    var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}

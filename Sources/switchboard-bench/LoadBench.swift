import ArgumentParser
import Foundation
import Histogram
import NIOCore
import NIOPosix
import SwitchboardClient
import Synchronization

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Options every load scenario shares: where the gateways are, who to measure, how many users.
struct LoadOptions: ParsableArguments {
    @Option(name: .customLong("gateway"), help: "Gateway WebSocket URL, ws://127.0.0.1:PORT/ws (repeat; users are spread round-robin).")
    var gateways: [String] = []

    @Option(name: .customLong("gateway-pid"), help: "Gateway process id: CPU time and RSS are read from /proc (repeat).")
    var gatewayPIDs: [Int32] = []

    @Option(name: .customLong("broker-pid"), help: "Broker process id (beam.smp, redis-server): CPU time from /proc (repeat).")
    var brokerPIDs: [Int32] = []

    @Option(help: "Connections, one user each (at most 19000 from one process: the open-file limit is 20000).")
    var users = 2000

    @Option(help: "Spread connections over source addresses 127.0.0.1 … 127.0.0.K.")
    var sourceAddresses = 1

    @Option(help: "Connections being opened at once.")
    var connectConcurrency = 256

    @Option(help: "Copied into the JSON result (e.g. rabbitmq, redis-channels).")
    var label = ""

    @Flag(help: "Also print one line of JSON with every figure at the end.")
    var json = false

    struct Endpoint {
        var host: String
        var port: Int
        var path: String
    }

    func endpoints() throws -> [Endpoint] {
        try gateways.map { text in
            guard let url = URLComponents(string: text), url.scheme == "ws", let host = url.host, let port = url.port else {
                throw ValidationError("--gateway must look like ws://127.0.0.1:8080/ws, not \(text)")
            }
            guard Loopback.contains(host) else { throw ValidationError("bench only targets loopback addresses, not \(host)") }
            return Endpoint(host: host, port: port, path: url.path.isEmpty ? "/ws" : url.path)
        }
    }

    func validateCommon() throws {
        guard !gateways.isEmpty else { throw ValidationError("name at least one --gateway") }
        _ = try endpoints()
        guard (1...19_000).contains(users) else { throw ValidationError("--users must be 1…19000") }
        guard (1...250).contains(sourceAddresses) else { throw ValidationError("--source-addresses must be 1…250") }
        guard (1...2000).contains(connectConcurrency) else { throw ValidationError("--connect-concurrency must be 1…2000") }
    }
}

/// The only addresses `switchboard-bench` sends traffic to.
enum Loopback {
    static func contains(_ host: String) -> Bool {
        host.hasPrefix("127.") || host == "::1" || host == "[::1]" || host == "localhost"
    }
}

/// One scenario's figures; printed as text, and as one JSON line with `--json`.
struct LoadResult: Encodable {
    struct Latency: Encodable {
        var p50: Double
        var p90: Double
        var p99: Double
        var max: Double

        /// From a histogram of microseconds, in milliseconds.
        init(_ histogram: Histogram<UInt64>) {
            func ms(_ micros: UInt64) -> Double { Double(micros) / 1000 }
            p50 = ms(histogram.valueAtPercentile(50))
            p90 = ms(histogram.valueAtPercentile(90))
            p99 = ms(histogram.valueAtPercentile(99))
            max = ms(histogram.max)
        }
    }
    struct CPU: Encodable {
        var gateways: Double
        var brokers: Double
        var total: Double
        /// This load generator's own CPU per delivered message: on a shared machine it is
        /// taken from what it measures.
        var generator: Double?
    }
    struct Connect: Encodable {
        var accepted_per_s: Double
        var all_reachable_s: Double
        var failed: Int
        /// CPU seconds the load generator, the gateways and the brokers spent while the connections opened.
        var generator_cpu_s: Double?
        var gateways_cpu_s: Double?
        var brokers_cpu_s: Double?

        /// A welcome is sent once the user's binding is in place: the last welcome is the
        /// moment every user is reachable by a direct message from any gateway.
        init(_ fleet: Fleet, users: Int) {
            self.init(connected: fleet.connected, seconds: fleet.connectSeconds, users: users)
        }

        init(connected: Int, seconds: Double, users: Int) {
            accepted_per_s = Double(connected) / max(seconds, 0.001)
            all_reachable_s = seconds
            failed = users - connected
        }
    }

    var scenario: String
    var label: String
    var gateways: Int
    var users: Int
    var connected: Int
    var rate: Int?
    var duration_s: Double?
    var sent: Int?
    var delivered: Int?
    var expected: Int?
    var lost: Int?
    var duplicated: Int?
    var latency_ms: Latency?
    var achieved_rate: Double?
    var cpu_us_per_msg: CPU?
    var rss_kb_per_connection: Double?
    var backplane_received: Int?
    var amplification: Double?
    var connect: Connect?
    var subscriptions_per_s: Double?

    func report(json: Bool) {
        var lines = ["\(scenario) [\(label.isEmpty ? "-" : label)] on \(gateways) gateway(s), \(connected)/\(users) connected"]
        if let sent, let delivered, let expected {
            lines.append(
                "sent \(sent) (\(String(format: "%.0f", achieved_rate ?? 0))/s), delivered \(delivered) of \(expected), lost \(lost ?? 0), duplicated \(duplicated ?? 0)"
            )
        }
        if let latency_ms {
            lines.append(
                String(format: "latency ms: p50 %.3f  p90 %.3f  p99 %.3f  max %.3f", latency_ms.p50, latency_ms.p90, latency_ms.p99, latency_ms.max)
            )
        }
        if let cpu_us_per_msg {
            lines.append(
                String(
                    format: "CPU µs per delivered message: gateways %.1f + brokers %.1f = %.1f (the load generator itself: %.1f)",
                    cpu_us_per_msg.gateways,
                    cpu_us_per_msg.brokers,
                    cpu_us_per_msg.total,
                    cpu_us_per_msg.generator ?? .nan
                )
            )
        }
        if let amplification, let backplane_received {
            lines.append(String(format: "backplane: gateways received %d messages, %.2f per message sent", backplane_received, amplification))
        }
        if let connect {
            var line = String(
                format: "connect: %.0f accepted/s, all reachable after %.2f s, %d failed",
                connect.accepted_per_s,
                connect.all_reachable_s,
                connect.failed
            )
            if let gateways = connect.gateways_cpu_s, let brokers = connect.brokers_cpu_s, let generator = connect.generator_cpu_s {
                line += String(format: "; CPU s: gateways %.2f, brokers %.2f, the load generator %.2f", gateways, brokers, generator)
            }
            lines.append(line)
        }
        if let subscriptions_per_s { lines.append(String(format: "binds/subscribes: %.0f/s", subscriptions_per_s)) }
        if let rss_kb_per_connection { lines.append(String(format: "gateway RSS per connection: %.2f KiB", rss_kb_per_connection)) }
        print(lines.joined(separator: "\n"))
        if json, let data = try? JSONEncoder().encode(self) {
            print(String(decoding: data, as: UTF8.self))
        }
    }
}

/// CPU time and memory of processes, from /proc.
enum ProcessStats {
    /// utime + stime in microseconds.
    static func cpuMicroseconds(pid: Int32) throws -> Double {
        let text = try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
        // The command name (field 2) may hold spaces; fields are counted after its ')'.
        guard let close = text.lastIndex(of: ")") else { throw ValidationError("cannot read /proc/\(pid)/stat") }
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else {
            throw ValidationError("cannot read /proc/\(pid)/stat")
        }
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        return (user + system) / ticks * 1_000_000
    }

    static func cpuMicroseconds(_ pids: [Int32]) throws -> Double {
        try pids.reduce(0) { $0 + (try cpuMicroseconds(pid: $1)) }
    }

    static func residentKiB(_ pids: [Int32]) throws -> Int {
        try pids.reduce(0) { $0 + (try ProcessMemory.residentKiB(pid: $1)) }
    }
}

/// The gateways' own counters, from `GET /metrics`.
enum GatewayCounters {
    static func sum(_ series: String, endpoints: [LoadOptions.Endpoint]) async -> Int {
        var total = 0
        for endpoint in endpoints {
            guard let url = URL(string: "http://\(endpoint.host):\(endpoint.port)/metrics"),
                let (data, _) = try? await URLSession.shared.data(from: url)
            else { continue }
            for line in String(decoding: data, as: UTF8.self).split(separator: "\n") where line.hasPrefix(series + " ") {
                total += Int(Double(line.dropFirst(series.count + 1)) ?? 0)
            }
        }
        return total
    }
}

/// Open connections, one user each, spread over the gateways and source addresses.
final class Fleet: Sendable {
    let connections: [WebSocketConnection?]
    let connectSeconds: Double
    var connected: Int { connections.reduce(0) { $0 + ($1 == nil ? 0 : 1) } }

    private init(connections: [WebSocketConnection?], connectSeconds: Double) {
        self.connections = connections
        self.connectSeconds = connectSeconds
    }

    /// The gateway user `index` connects to.
    static func gateway(of index: Int, gateways: Int) -> Int { index % gateways }

    static func user(_ index: Int) -> String { "u\(index)" }

    /// Opens `options.users` connections, `connectConcurrency` at a time; each counts once
    /// its `welcome` arrived (the user is bound and reachable). At most 120 s.
    /// `onWelcome` gets each connection's welcome, `onText` every text frame after it, and
    /// `onEnd` is called once when a connection's stream ends (closed by either side).
    static func open(
        _ options: LoadOptions,
        onWelcome: @escaping @Sendable (Int, String) -> Void = { _, _ in },
        onText: @escaping @Sendable (Int, String) -> Void = { _, _ in },
        onEnd: @escaping @Sendable (Int) -> Void = { _ in }
    ) async throws -> Fleet {
        OpenFileLimit.raise()
        let endpoints = try options.endpoints()
        let group = MultiThreadedEventLoopGroup.singleton
        let started = ContinuousClock.now
        let deadline = started + .seconds(120)
        var connections = [WebSocketConnection?](repeating: nil, count: options.users)
        try await withThrowingTaskGroup(of: (Int, WebSocketConnection?).self) { tasks in
            var next = 0
            func startOne() {
                let index = next
                next += 1
                let endpoint = endpoints[gateway(of: index, gateways: endpoints.count)]
                let source = try? SocketAddress(ipAddress: "127.0.0.\(1 + index % options.sourceAddresses)", port: 0)
                tasks.addTask {
                    guard
                        let connection = try? await WebSocketConnection.connect(
                            host: endpoint.host,
                            port: endpoint.port,
                            path: "\(endpoint.path)?user=\(user(index))",
                            localAddress: options.sourceAddresses > 1 ? source : nil,
                            eventLoopGroup: group
                        )
                    else { return (index, nil) }
                    let welcomed = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                        // The reader runs for the connection's whole life; it reports the welcome once.
                        Task {
                            var reported = false
                            for await event in connection.events {
                                guard case .text(let text) = event else { continue }
                                if !reported {
                                    reported = true
                                    let welcomed = text.contains(#""type":"welcome""#)
                                    if welcomed { onWelcome(index, text) }
                                    continuation.resume(returning: welcomed)
                                    continue
                                }
                                onText(index, text)
                            }
                            if !reported { continuation.resume(returning: false) } else { onEnd(index) }
                        }
                    }
                    if welcomed { return (index, connection) }
                    await connection.abort()
                    return (index, nil)
                }
            }
            for _ in 0..<min(options.connectConcurrency, options.users) { startOne() }
            while let (index, connection) = try await tasks.next() {
                connections[index] = connection
                if next < options.users, ContinuousClock.now < deadline { startOne() }
            }
        }
        return Fleet(connections: connections, connectSeconds: (ContinuousClock.now - started).seconds)
    }

    func closeAll() async {
        await withTaskGroup(of: Void.self) { group in
            for connection in connections.compactMap({ $0 }) {
                group.addTask { await connection.abort() }
            }
        }
    }
}

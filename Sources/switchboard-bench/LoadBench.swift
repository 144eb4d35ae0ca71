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

        /// A welcome is sent once the user's binding is in place: the last welcome is the
        /// moment every user is reachable by a direct message from any gateway.
        init(_ fleet: Fleet, users: Int) {
            accepted_per_s = Double(fleet.connected) / max(fleet.connectSeconds, 0.001)
            all_reachable_s = fleet.connectSeconds
            failed = users - fleet.connected
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
            lines.append(
                String(
                    format: "connect: %.0f accepted/s, all reachable after %.2f s, %d failed",
                    connect.accepted_per_s,
                    connect.all_reachable_s,
                    connect.failed
                )
            )
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

/// Counts what arrived against what was expected, and the latency of each delivery.
final class DeliveryLedger: Sendable {
    private struct State {
        var counts: [UInt16]
        var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
    }

    private let state: Mutex<State>
    let origin = ContinuousClock.now

    init(capacity: Int) {
        state = Mutex(State(counts: [UInt16](repeating: 0, count: capacity)))
    }

    /// Microseconds since the ledger began: the send stamp carried in each message.
    var now: UInt64 { UInt64(max(0, (ContinuousClock.now - origin).seconds * 1_000_000)) }

    /// `{"s":SEQ,"t":MICROS}` as the data of a message.
    func payload(sequence: Int) -> String { #"{"s":"# + String(sequence) + #","t":"# + String(now) + "}" }

    /// Records a delivered frame whose data is a payload from ``payload(sequence:)``.
    func record(_ text: String) {
        guard let sequence = Self.number(after: #""s":"#, in: text), let stamp = Self.number(after: #""t":"#, in: text) else { return }
        let arrived = now
        state.withLock { state in
            guard sequence < state.counts.count else { return }
            state.counts[sequence] &+= 1
            _ = state.histogram.record(arrived >= UInt64(stamp) ? arrived - UInt64(stamp) : 0)
        }
    }

    func delivered(expectedPerMessage: Int, sent: Int) -> (delivered: Int, lost: Int, duplicated: Int) {
        state.withLock { state in
            var delivered = 0
            var lost = 0
            var duplicated = 0
            for sequence in 0..<min(sent, state.counts.count) {
                let count = Int(state.counts[sequence])
                delivered += min(count, expectedPerMessage)
                lost += max(0, expectedPerMessage - count)
                duplicated += max(0, count - expectedPerMessage)
            }
            return (delivered, lost, duplicated)
        }
    }

    var totalArrived: Int { state.withLock { $0.counts.reduce(0) { $0 + Int($1) } } }

    var latency: LoadResult.Latency {
        state.withLock { state in
            let h = state.histogram
            func ms(_ micros: UInt64) -> Double { Double(micros) / 1000 }
            return LoadResult.Latency(
                p50: ms(h.valueAtPercentile(50)),
                p90: ms(h.valueAtPercentile(90)),
                p99: ms(h.valueAtPercentile(99)),
                max: ms(h.max)
            )
        }
    }

    private static func number(after key: String, in text: String) -> Int? {
        guard let range = text.range(of: key) else { return nil }
        var value = 0
        var digits = 0
        for byte in text[range.upperBound...].utf8 {
            guard byte >= 48, byte <= 57 else { break }
            value = value * 10 + Int(byte - 48)
            digits += 1
        }
        return digits > 0 ? value : nil
    }
}

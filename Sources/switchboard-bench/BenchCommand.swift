import AMQPClient
import ArgumentParser
import Foundation
import Logging
import NIOCore
import NIOPosix
import SwitchboardBackplane
import SwitchboardProtocol
import SwitchboardRabbitMQ
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// `switchboard-bench`: load generators for the gateway. Every run is bounded in
/// connections and time and stops by itself.
///
/// A separate executable from `switchboard`, so that the gateway links neither the
/// client library nor HdrHistogram.
@main
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchboard-bench",
        abstract: "Measure a running gateway.",
        subcommands: [
            ConnectBench.self, DirectBench.self, RoomBench.self, FanoutBench.self, IdleBench.self, BindingsBench.self, ConfirmsBench.self,
            ParseBench.self, ResumeStormBench.self,
        ]
    )
}

/// The open-files limit of the load generator itself: every connection is a file.
enum OpenFileLimit {
    /// Raises the soft limit to the hard one.
    static func raise() {
        #if canImport(Glibc)
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        #endif
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

/// Binding churn on the RabbitMQ backplane: N user bindings requested at once, then N
/// unbindings, as a connection storm and its departure would ask for them.
struct BindingsBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bindings",
        abstract: "Bind N user addresses at once on a RabbitMQ backplane, then unbind them; report operations per second."
    )

    @Option(help: "Broker URL (loopback only).")
    var backplane = "amqp://guest:guest@127.0.0.1:5672/"

    @Option(help: "Bindings to create and remove (at most 100000).")
    var count = 10_000

    @Flag(help: "Wait for each operation before issuing the next (one round trip each), for comparison.")
    var sequential = false

    func validate() throws {
        guard (1...100_000).contains(count) else { throw ValidationError("--count must be 1…100000") }
        guard let host = try? AMQPConfiguration(url: backplane).host, Loopback.contains(host) else {
            throw ValidationError("bench only targets a loopback broker")
        }
    }

    func run() async throws {
        let tag = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        let (rabbit, service) = try await BenchBackplane.start(url: backplane, gatewayID: "bench-\(tag)", exchange: "bench.\(tag)")
        let addresses = try (0..<count).map { BackplaneAddress.user(try UserID(validating: "bench-user-\($0)")) }

        let bindSeconds = try await measure(addresses) { address, done in rabbit.bind(address, completion: done) }
        print("bind:   \(count) in \(String(format: "%.2f", bindSeconds)) s = \(Int(Double(count) / bindSeconds)) binds/s")
        let unbindSeconds = try await measure(addresses) { address, done in rabbit.unbind(address, completion: done) }
        print("unbind: \(count) in \(String(format: "%.2f", unbindSeconds)) s = \(Int(Double(count) / unbindSeconds)) unbinds/s")
        service.cancel()
        _ = try? await service.value
    }

    /// Issues one operation per address at once; returns the seconds until every completion ran.
    private func measure(
        _ addresses: [BackplaneAddress],
        operation: (BackplaneAddress, @escaping @Sendable (Result<Void, BackplaneError>) -> Void) -> Void
    ) async throws -> Double {
        let failures = Atomic<Int>(0)
        let started = ContinuousClock.now
        if sequential {
            for address in addresses {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    operation(address) { result in
                        if case .failure = result { failures.wrappingAdd(1, ordering: .relaxed) }
                        continuation.resume()
                    }
                }
            }
            let failed = failures.load(ordering: .relaxed)
            if failed > 0 { throw ValidationError("\(failed) operations failed") }
            return (ContinuousClock.now - started).seconds
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let remaining = Atomic<Int>(addresses.count)
            for address in addresses {
                operation(address) { result in
                    if case .failure = result { failures.wrappingAdd(1, ordering: .relaxed) }
                    if remaining.wrappingSubtract(1, ordering: .acquiringAndReleasing).newValue == 0 { continuation.resume() }
                }
            }
        }
        let seconds = (ContinuousClock.now - started).seconds
        let failed = failures.load(ordering: .relaxed)
        if failed > 0 { throw ValidationError("\(failed) operations failed") }
        return seconds
    }
}

/// Publish-to-confirm latency as another gateway sees it, second by second: for watching
/// what the broker does to everyone else while it deletes a queue with many bindings.
struct ConfirmsBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "confirms",
        abstract: "Publish at a fixed rate on a RabbitMQ backplane; print confirm latency per second."
    )

    @Option(help: "Broker URL (loopback only).")
    var backplane = "amqp://guest:guest@127.0.0.1:5672/"

    @Option(help: "Exchange to publish on (the gateways' exchange).")
    var exchange = "switchboard"

    @Option(help: "Publishes per second.")
    var rate = 500

    @Option(help: "Seconds to run (at most 300).")
    var duration = 60

    func validate() throws {
        guard (1...20_000).contains(rate) else { throw ValidationError("--rate must be 1…20000") }
        guard (1...300).contains(duration) else { throw ValidationError("--duration must be 1…300") }
        guard let host = try? AMQPConfiguration(url: backplane).host, Loopback.contains(host) else {
            throw ValidationError("bench only targets a loopback broker")
        }
    }

    func run() async throws {
        let tag = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        let (rabbit, service) = try await BenchBackplane.start(url: backplane, gatewayID: "probe-\(tag)", exchange: exchange)
        let address = BackplaneAddress.user(try UserID(validating: "probe-\(tag)"))
        try await rabbit.bind(address)
        let frame = ByteBuffer(string: #"{"type":"direct","from":"probe","to":"probe","data":0}"#)

        // samples[second] = latencies in microseconds of the publishes sent in that second.
        let samples = Mutex<[Int: [Int]]>([:])
        let failures = Atomic<Int>(0)
        let started = ContinuousClock.now
        let interval = Duration.seconds(1) / rate
        var next = started
        print("second\tsent\tp50_ms\tp99_ms\tmax_ms")
        var printed = 0
        while ContinuousClock.now - started < .seconds(duration) {
            next += interval
            try await Task.sleep(until: next)
            let sentAt = ContinuousClock.now
            let second = Int((sentAt - started).seconds)
            rabbit.publish(frame, to: address) { result in
                let micros = Int((ContinuousClock.now - sentAt).seconds * 1_000_000)
                if case .failure = result { failures.wrappingAdd(1, ordering: .relaxed) }
                samples.withLock { $0[second, default: []].append(micros) }
            }
            // Print each second once the next-but-one has begun (its confirms are in, unless stalled).
            while printed < second - 1 {
                printRow(printed, samples.withLock { $0[printed] ?? [] })
                printed += 1
            }
        }
        try await Task.sleep(for: .seconds(5))
        while printed <= Int(Double(duration)) {
            printRow(printed, samples.withLock { $0[printed] ?? [] })
            printed += 1
        }
        let all = samples.withLock { $0.values.flatMap { $0 } }.sorted()
        if !all.isEmpty {
            print(
                "all: \(all.count) confirmed, p50 \(ms(all[all.count / 2])) ms, p99 \(ms(all[all.count * 99 / 100])) ms, max \(ms(all[all.count - 1])) ms, failed \(failures.load(ordering: .relaxed))"
            )
        }
        service.cancel()
        _ = try? await service.value
    }

    private func printRow(_ second: Int, _ values: [Int]) {
        let sorted = values.sorted()
        guard let last = sorted.last else {
            print("\(second)\t0\t-\t-\t-")
            return
        }
        print("\(second)\t\(sorted.count)\t\(ms(sorted[sorted.count / 2]))\t\(ms(sorted[sorted.count * 99 / 100]))\t\(ms(last))")
    }

    private func ms(_ micros: Int) -> String {
        String(format: "%.2f", Double(micros) / 1000)
    }
}

/// A RabbitMQ backplane of the load generator's own, connected and ready.
enum BenchBackplane {
    static func start(url: String, gatewayID: String, exchange: String) async throws -> (RabbitMQBackplane, Task<Void, any Error>) {
        var logger = Logger(label: "bench")
        logger.logLevel = .error
        let rabbit = RabbitMQBackplane(
            configuration: RabbitMQConfiguration(brokers: [try AMQPConfiguration(url: url)], gatewayID: gatewayID, exchange: exchange),
            logger: logger
        )
        let service = Task { try await rabbit.run() }
        let deadline = ContinuousClock.now + .seconds(20)
        while !rabbit.isReady {
            guard ContinuousClock.now < deadline else {
                service.cancel()
                throw ValidationError("the backplane did not connect to \(CredentialRedaction.redact(url))")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        return (rabbit, service)
    }
}

import ArgumentParser
import Foundation
import NIOCore
import NIOPosix
import SwitchboardClient
import Synchronization

/// `bench resume`: a reconnect storm with recovery. K users on gateway A; A is drained
/// (SIGTERM); each user that gets its close misses M direct messages (sent from gateway B
/// while it is connected nowhere), reconnects to B after a delay, resumes its user stream
/// from the last offset it saw, and counts what was replayed. Reports the time from the
/// SIGTERM until every user has its resume answered, and the CPU of the gateways and the
/// brokers (Redis, RabbitMQ) over that window.
struct ResumeStormBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resume",
        abstract: "Drain a gateway holding K users (history on); each misses M messages, reconnects to another gateway and resumes."
    )
    @OptionGroup var load: LoadOptions

    @Option(help: "The gateway the users reconnect to, ws://127.0.0.1:PORT/ws.")
    var resumeGateway: String

    @Option(help: "Process id of the first --gateway: it gets SIGTERM.")
    var drainPid: Int32

    @Option(help: "Direct messages each user misses while away (0…20).")
    var missed = 3

    @Option(help: "Milliseconds a user waits after its close before it reconnects (0…10000).")
    var reconnectDelayMs = 1_000

    @Option(help: "Seconds the storm may take before the bench gives up (1…300).")
    var timeout = 120

    func validate() throws {
        try load.validateCommon()
        guard load.gateways.count == 1 else { throw ValidationError("give one --gateway (the one drained) and --resume-gateway") }
        guard (0...20).contains(missed) else { throw ValidationError("--missed must be 0…20") }
        guard (0...10_000).contains(reconnectDelayMs) else { throw ValidationError("--reconnect-delay-ms must be 0…10000") }
        guard (1...300).contains(timeout) else { throw ValidationError("--timeout must be 1…300") }
        guard drainPid > 1 else { throw ValidationError("--drain-pid must be a process id") }
    }

    func run() async throws {
        OpenFileLimit.raise()
        var options = load
        options.gateways = [resumeGateway]
        let target = try options.endpoints()[0]
        let tally = StormTally(users: load.users)

        // The users on A, each remembering the last position of its stream.
        let fleet = try await Fleet.open(
            load,
            onWelcome: { index, text in tally.see(index, text) },
            onText: { index, text in tally.see(index, text) },
            onEnd: { index in tally.ended(index) }
        )
        guard fleet.connected == load.users else {
            print("only \(fleet.connected) of \(load.users) connections opened; not draining")
            await fleet.closeAll()
            return
        }
        guard tally.positionsKnown == load.users else {
            print("welcome carried no position for \(load.users - tally.positionsKnown) users: is --history on?")
            await fleet.closeAll()
            return
        }

        // The sender, on B: M messages to each user as soon as its connection to A ends.
        let sender = try await WebSocketConnection.connect(host: target.host, port: target.port, path: "\(target.path)?user=storm-sender")
        let senderAcks = Atomic<Int>(0)
        let senderOffline = Atomic<Int>(0)
        let senderErrors = Mutex<[String]>([])
        Task {
            for await event in sender.events {
                guard case .text(let text) = event else { continue }
                if text.hasPrefix(#"{"type":"error""#) {
                    senderErrors.withLock { $0.append(text) }
                    continue
                }
                guard text.hasPrefix(#"{"type":"ack""#) else { continue }
                senderAcks.add(1, ordering: .relaxed)
                if text.contains(#""recipient_offline":true"#) { senderOffline.add(1, ordering: .relaxed) }
            }
        }
        let missed = self.missed
        tally.onEnded = { index in
            for number in 0..<missed {
                let frame = #"{"type":"direct","to":""# + Fleet.user(index) + #"","data":"# + String(number) + #","id":1}"#
                Task { try? await sender.send(text: frame) }
            }
        }

        // The drained gateway exits during the storm: its CPU is sampled until it is gone.
        let sampler = CPUSampler(pids: load.gatewayPIDs)
        let sampling = Task { await sampler.run() }
        let gatewayCPUBefore = sampler.total
        let brokerCPUBefore = try ProcessStats.cpuMicroseconds(load.brokerPIDs)
        let generatorCPUBefore = try ProcessStats.cpuMicroseconds(pid: getpid())
        let started = ContinuousClock.now
        kill(drainPid, SIGTERM)

        // Each user: when its connection ended, wait, reconnect to B, resume, read to the ack.
        let delay = Duration.milliseconds(reconnectDelayMs)
        let deadline = started + .seconds(timeout)
        try await withThrowingDiscardingTaskGroup { group in
            for index in 0..<load.users {
                group.addTask {
                    guard await tally.waitForEnd(index, until: deadline) else { return }
                    try? await Task.sleep(for: delay)
                    // Like a real client: an attempt that fails (refused, 1013, dropped) is
                    // retried after a jittered 0.5–1 s, until the deadline.
                    while await !ResumeStormBench.resume(index, at: target, tally: tally, started: started, final: ContinuousClock.now > deadline) {
                        tally.retried()
                        try? await Task.sleep(for: .milliseconds(Int.random(in: 500...1000)))
                    }
                }
            }
        }
        let elapsed = (ContinuousClock.now - started).seconds
        sampling.cancel()
        let gatewayCPU = sampler.total - gatewayCPUBefore
        let brokerCPU = try ProcessStats.cpuMicroseconds(load.brokerPIDs) - brokerCPUBefore
        let generatorCPU = try ProcessStats.cpuMicroseconds(pid: getpid()) - generatorCPUBefore

        let summary = tally.summary
        var lines = ["resume storm [\(load.label.isEmpty ? "-" : load.label)]: \(load.users) users drained from one gateway, \(missed) missed each"]
        lines.append(
            String(
                format:
                    "resumed: %d recovered, %d not recovered, %d failed (%d attempts retried); replayed %d of %d missed; sender acks %d (recipient_offline %d)",
                summary.recovered,
                summary.notRecovered,
                summary.failed,
                tally.retries,
                summary.replayed,
                load.users * missed,
                senderAcks.load(ordering: .relaxed),
                senderOffline.load(ordering: .relaxed)
            )
        )
        lines.append(
            String(
                format:
                    "all answered %.2f s after SIGTERM (last recovered at %.2f s); last attempt's connect→ack p50 %.0f ms, p99 %.0f ms (after the %d ms wait)",
                elapsed,
                summary.lastRecoveredSeconds,
                summary.p50Milliseconds,
                summary.p99Milliseconds,
                reconnectDelayMs
            )
        )
        lines.append(
            String(
                format: "CPU over the storm: gateways %.2f s, brokers %.2f s (Redis and RabbitMQ as given), the load generator %.2f s",
                gatewayCPU / 1e6,
                brokerCPU / 1e6,
                generatorCPU / 1e6
            )
        )
        let errors = senderErrors.withLock { $0 }
        if !errors.isEmpty { lines.append("sender errors: \(errors.count), first: \(errors[0])") }
        print(lines.joined(separator: "\n"))
        if load.json {
            let object: [String: Any] = [
                "scenario": "resume", "label": load.label, "users": load.users, "missed_each": missed,
                "recovered": summary.recovered, "not_recovered": summary.notRecovered, "failed": summary.failed,
                "replayed": summary.replayed, "retried": tally.retries, "seconds": elapsed, "last_recovered_s": summary.lastRecoveredSeconds,
                "reconnect_to_ack_ms_p50": summary.p50Milliseconds, "reconnect_to_ack_ms_p99": summary.p99Milliseconds,
                "gateway_cpu_s": gatewayCPU / 1e6, "broker_cpu_s": brokerCPU / 1e6, "generator_cpu_s": generatorCPU / 1e6,
            ]
            if let data = try? JSONSerialization.data(withJSONObject: object) { print(String(decoding: data, as: UTF8.self)) }
        }
        await sender.abort()
    }

    /// One user's return: connect to B, resume from the last position it saw, count the
    /// replay. False when the attempt failed and should be retried (unless `final`).
    static func resume(
        _ index: Int,
        at target: LoadOptions.Endpoint,
        tally: StormTally,
        started: ContinuousClock.Instant,
        final: Bool
    ) async -> Bool {
        let began = ContinuousClock.now
        guard let since = tally.position(index),
            let connection = try? await WebSocketConnection.connect(
                host: target.host,
                port: target.port,
                path: "\(target.path)?user=\(Fleet.user(index))"
            )
        else {
            if final { tally.finished(index, outcome: .failed, replayed: 0, latency: .zero, at: .zero) }
            return final
        }
        var replayed = 0
        var outcome = StormTally.Outcome.failed
        var sentResume = false
        reading: for await event in connection.events {
            guard case .text(let text) = event else {
                if case .close = event { break reading }
                continue
            }
            if !sentResume {
                guard text.contains(#""type":"welcome""#) else { break reading }
                sentResume = true
                let frame = #"{"type":"resume","since":{"epoch":""# + since.epoch + #"","offset":"# + String(since.offset) + #"},"id":"r"}"#
                guard (try? await connection.send(text: frame)) != nil else { break reading }
                continue
            }
            if text.hasPrefix(#"{"type":"direct""#) {
                replayed += 1
            } else if text.hasPrefix(#"{"type":"ack""#), text.contains(#""id":"r""#) {
                outcome = text.contains(#""recovered":true"#) ? .recovered : .notRecovered
                break reading
            } else if text.hasPrefix(#"{"type":"error""#) {
                break reading
            }
        }
        await connection.abort()
        guard outcome != .failed || final else { return false }
        tally.finished(index, outcome: outcome, replayed: replayed, latency: ContinuousClock.now - began, at: ContinuousClock.now - started)
        return true
    }
}

/// What the storm's users saw, shared by their tasks.
final class StormTally: Sendable {
    enum Outcome { case recovered, notRecovered, failed }

    private struct State {
        var positions: [(epoch: String, offset: Int)?]
        var ended: [Bool]
        var waiters: [Int: CheckedContinuation<Bool, Never>] = [:]
        var recovered = 0
        var notRecovered = 0
        var failed = 0
        var replayed = 0
        var latencies: [Double] = []
        var lastRecovered = 0.0
        var onEnded: (@Sendable (Int) -> Void)?
        var retries = 0
    }

    private let state: Mutex<State>

    init(users: Int) {
        state = Mutex(State(positions: Array(repeating: nil, count: users), ended: Array(repeating: false, count: users)))
    }

    var onEnded: (@Sendable (Int) -> Void)? {
        get { state.withLock { $0.onEnded } }
        set { state.withLock { $0.onEnded = newValue } }
    }

    var positionsKnown: Int { state.withLock { $0.positions.reduce(0) { $0 + ($1 == nil ? 0 : 1) } } }

    func position(_ index: Int) -> (epoch: String, offset: Int)? { state.withLock { $0.positions[index] } }

    /// A welcome's `position`, or a direct frame's `offset` and `epoch`.
    func see(_ index: Int, _ text: String) {
        guard let offset = Self.integer(after: #""offset":"#, in: text), let epoch = Self.string(after: #""epoch":""#, in: text) else { return }
        state.withLock { $0.positions[index] = (epoch, offset) }
    }

    func ended(_ index: Int) {
        let (waiter, callback) = state.withLock { state -> (CheckedContinuation<Bool, Never>?, (@Sendable (Int) -> Void)?) in
            state.ended[index] = true
            return (state.waiters.removeValue(forKey: index), state.onEnded)
        }
        callback?(index)
        waiter?.resume(returning: true)
    }

    /// Waits until user `index`'s first connection ended (true), or the deadline (false).
    func waitForEnd(_ index: Int, until deadline: ContinuousClock.Instant) async -> Bool {
        await withCheckedContinuation { continuation in
            let done = state.withLock { state -> Bool in
                if state.ended[index] { return true }
                state.waiters[index] = continuation
                return false
            }
            if done { continuation.resume(returning: true) }
            // Bounded: a user whose close never comes is given up at the deadline.
            Task {
                try? await Task.sleep(until: deadline)
                let waiter = self.state.withLock { $0.waiters.removeValue(forKey: index) }
                waiter?.resume(returning: false)
            }
        }
    }

    func retried() { state.withLock { $0.retries += 1 } }

    var retries: Int { state.withLock { $0.retries } }

    func finished(_ index: Int, outcome: Outcome, replayed: Int, latency: Duration, at: Duration) {
        state.withLock { state in
            switch outcome {
            case .recovered:
                state.recovered += 1
                state.lastRecovered = max(state.lastRecovered, at.seconds)
            case .notRecovered: state.notRecovered += 1
            case .failed: state.failed += 1
            }
            state.replayed += replayed
            state.latencies.append(latency.seconds * 1000)
        }
    }

    var summary:
        (
            recovered: Int, notRecovered: Int, failed: Int, replayed: Int, lastRecoveredSeconds: Double, p50Milliseconds: Double,
            p99Milliseconds: Double
        )
    {
        state.withLock { state in
            let sorted = state.latencies.sorted()
            func quantile(_ q: Double) -> Double { sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * q))] }
            return (state.recovered, state.notRecovered, state.failed, state.replayed, state.lastRecovered, quantile(0.5), quantile(0.99))
        }
    }

    private static func integer(after key: String, in text: String) -> Int? {
        guard let range = text.range(of: key) else { return nil }
        return Int(text[range.upperBound...].prefix { $0.isNumber })
    }

    private static func string(after key: String, in text: String) -> String? {
        guard let range = text.range(of: key) else { return nil }
        return String(text[range.upperBound...].prefix { $0 != "\"" })
    }
}

/// The CPU time of processes that may exit: the last value read for each, every 100 ms.
final class CPUSampler: Sendable {
    private let pids: [Int32]
    private let last: Mutex<[Int32: Double]>

    init(pids: [Int32]) {
        self.pids = pids
        var values: [Int32: Double] = [:]
        for pid in pids { values[pid] = try? ProcessStats.cpuMicroseconds(pid: pid) }
        last = Mutex(values)
    }

    var total: Double {
        sample()
        return last.withLock { $0.values.reduce(0, +) }
    }

    func run() async {
        while !Task.isCancelled {
            sample()
            try? await Task.sleep(for: .milliseconds(100))
        }
    }

    private func sample() {
        for pid in pids {
            guard let value = try? ProcessStats.cpuMicroseconds(pid: pid) else { continue }
            last.withLock { $0[pid] = value }
        }
    }
}

import ArgumentParser
import Foundation
import NIOCore
import SwitchboardClient
import Synchronization

/// Offered load: messages per second for a number of seconds.
struct TrafficOptions: ParsableArguments {
    @Option(help: "Messages per second offered, in total.")
    var rate = 1000

    @Option(help: "Seconds of sending (1…120).")
    var duration = 10

    func validateTraffic() throws {
        guard (1...50_000).contains(rate) else { throw ValidationError("--rate must be 1…50000") }
        guard (1...120).contains(duration) else { throw ValidationError("--duration must be 1…120") }
    }
}

/// `bench connect`: a connection storm.
struct ConnectBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "connect",
        abstract: "Open N connections as fast as the gateways accept; report accepted/s and the time until every user is reachable."
    )
    @OptionGroup var load: LoadOptions

    func validate() throws { try load.validateCommon() }

    func run() async throws {
        let endpoints = try load.endpoints()
        let bindsBefore = await GatewayCounters.sum("switchboard_backplane_bindings_total", endpoints: endpoints)
        let generatorCPUBefore = try ProcessStats.cpuMicroseconds(pid: getpid())
        let gatewayCPUBefore = try ProcessStats.cpuMicroseconds(load.gatewayPIDs)
        let brokerCPUBefore = try ProcessStats.cpuMicroseconds(load.brokerPIDs)
        let fleet = try await LeanFleet.open(load, capacity: 0)
        let generatorCPU = try ProcessStats.cpuMicroseconds(pid: getpid()) - generatorCPUBefore
        let gatewayCPU = try ProcessStats.cpuMicroseconds(load.gatewayPIDs) - gatewayCPUBefore
        let brokerCPU = try ProcessStats.cpuMicroseconds(load.brokerPIDs) - brokerCPUBefore
        let bindsAfter = await GatewayCounters.sum("switchboard_backplane_bindings_total", endpoints: endpoints)
        var result = LoadResult(scenario: "connect", label: load.label, gateways: endpoints.count, users: load.users, connected: fleet.connected)
        result.connect = .init(connected: fleet.connected, seconds: fleet.connectSeconds, users: load.users)
        result.connect?.generator_cpu_s = generatorCPU / 1_000_000
        result.connect?.gateways_cpu_s = gatewayCPU / 1_000_000
        result.connect?.brokers_cpu_s = brokerCPU / 1_000_000
        result.subscriptions_per_s = Double(bindsAfter - bindsBefore) / max(fleet.connectSeconds, 0.001)
        result.report(json: load.json)
        await fleet.closeAll()
    }
}

/// `bench idle`: hold N idle connections; RSS per connection.
struct IdleBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "idle",
        abstract: "Open N connections, hold them idle, report the gateways' RSS per connection."
    )
    @OptionGroup var load: LoadOptions

    @Option(help: "Seconds to hold the connections before measuring (1…300).")
    var hold = 5

    @Option(help: "Rooms to spread the users over: user i joins r<i mod rooms> before the hold (0: none; at most 10000).")
    var rooms = 0

    @Flag(help: "Join the rooms with \"presence\": true (each connection then gets the room's joined / left events).")
    var presenceEvents = false

    func validate() throws {
        try load.validateCommon()
        guard (1...300).contains(hold) else { throw ValidationError("--hold must be 1…300") }
        guard (0...10_000).contains(rooms) else { throw ValidationError("--rooms must be 0…10000") }
        guard !load.gatewayPIDs.isEmpty else { throw ValidationError("idle needs --gateway-pid to read RSS") }
    }

    func run() async throws {
        let baseline = try ProcessStats.residentKiB(load.gatewayPIDs)
        let joins = JoinCounter()
        let fleet = try await Fleet.open(
            load,
            onText: { _, text in
                if text.hasPrefix(#"{"type":"ack","id":"j""#) { joins.count.add(1, ordering: .relaxed) }
            }
        )
        var joined = 0
        let joinsStarted = ContinuousClock.now
        if rooms > 0 {
            for (index, connection) in fleet.connections.enumerated() {
                let flag = presenceEvents ? #","presence":true"# : ""
                try? await connection?.send(text: #"{"type":"join","room":"r\#(index % rooms)","id":"j"\#(flag)}"#)
            }
            // Bounded: at most 60 s for the joins' acks.
            let deadline = ContinuousClock.now + .seconds(60)
            while joins.count.load(ordering: .relaxed) < fleet.connected, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
            }
            joined = joins.count.load(ordering: .relaxed)
        }
        let joinSeconds = (ContinuousClock.now - joinsStarted).seconds
        // Scripts wait for this line before doing something to the held connections.
        let line = String(
            format: "connections opened: %d of %d in %.1f s; %d joined %d rooms in %.2f s; holding %d s\n",
            fleet.connected,
            load.users,
            fleet.connectSeconds,
            joined,
            rooms,
            rooms > 0 ? joinSeconds : 0,
            hold
        )
        FileHandle.standardOutput.write(Data(line.utf8))
        try await Task.sleep(for: .seconds(hold))
        let held = try ProcessStats.residentKiB(load.gatewayPIDs)
        var result = LoadResult(scenario: "idle", label: load.label, gateways: load.gateways.count, users: load.users, connected: fleet.connected)
        result.connect = .init(fleet, users: load.users)
        result.rss_kb_per_connection = fleet.connected == 0 ? nil : Double(held - baseline) / Double(fleet.connected)
        result.report(json: load.json)
        await fleet.closeAll()
    }
}

/// Join acks seen by the idle fleet's readers.
private final class JoinCounter: Sendable {
    let count = Atomic<Int>(0)
}

/// `bench direct`: direct messages between users on different gateways.
struct DirectBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "direct",
        abstract: "K users spread over the gateways; R direct messages/s for D seconds, each to a user on another gateway."
    )
    @OptionGroup var load: LoadOptions
    @OptionGroup var traffic: TrafficOptions

    func validate() throws {
        try load.validateCommon()
        try traffic.validateTraffic()
        guard load.users >= 2 else { throw ValidationError("direct needs at least 2 users") }
    }

    func run() async throws {
        let users = load.users
        let gateways = load.gateways.count
        let result = try await TrafficRun.run(scenario: "direct", load: load, traffic: traffic, expectedPerMessage: 1, setUp: { _, _ in nil }) {
            _,
            payload in
            // The next user is on the next gateway (users are spread round-robin).
            var sender = Int.random(in: 0..<users)
            if gateways > 1, Fleet.gateway(of: sender, gateways: gateways) == Fleet.gateway(of: (sender + 1) % users, gateways: gateways) {
                sender = (sender + 1) % users
            }
            let recipient = (sender + 1) % users
            return (sender, #"{"type":"direct","to":""# + Fleet.user(recipient) + #"","data":"# + payload + "}")
        }
        result.report(json: load.json)
    }
}

/// `bench room`: rooms whose members are spread over the gateways.
struct RoomBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "room",
        abstract: "M rooms of X members spread over the gateways; R room messages/s from random members for D seconds."
    )
    @OptionGroup var load: LoadOptions
    @OptionGroup var traffic: TrafficOptions

    @Option(help: "Rooms.")
    var rooms = 100

    @Option(help: "Members per room (users = rooms × members-per-room).")
    var membersPerRoom = 10

    func validate() throws {
        try load.validateCommon()
        try traffic.validateTraffic()
        guard rooms >= 1, membersPerRoom >= 1, rooms * membersPerRoom == load.users else {
            throw ValidationError("--users must equal --rooms × --members-per-room")
        }
    }

    func run() async throws {
        let rooms = self.rooms
        let members = membersPerRoom
        let result = try await TrafficRun.run(
            scenario: "room",
            load: load,
            traffic: traffic,
            expectedPerMessage: members,
            setUp: { index, _ in #"{"type":"join","room":"r"# + String(index / members) + #""}"# }
        ) { _, payload in
            let room = Int.random(in: 0..<rooms)
            let sender = room * members + Int.random(in: 0..<members)
            return (sender, #"{"type":"publish","room":"r"# + String(room) + #"","data":"# + payload + "}")
        }
        result.report(json: load.json)
    }
}

/// `bench fanout`: one room, many members, one publisher.
struct FanoutBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fanout",
        abstract: "One room with every user in it; one publisher sends R messages/s for D seconds."
    )
    @OptionGroup var load: LoadOptions
    @OptionGroup var traffic: TrafficOptions

    @Option(help: "Members of the room, publisher included (default: every user); the other users stay connected and idle.")
    var members: Int?

    func validate() throws {
        try load.validateCommon()
        try traffic.validateTraffic()
        if let members { guard (1...load.users).contains(members) else { throw ValidationError("--members must be 1…--users") } }
    }

    func run() async throws {
        let members = self.members ?? load.users
        // User 0 publishes; it is a member (a room takes messages from members only) and gets its own too.
        let result = try await TrafficRun.run(
            scenario: "fanout",
            load: load,
            traffic: traffic,
            expectedPerMessage: members,
            setUp: { index, _ in index < members ? #"{"type":"join","room":"fanout"}"# : nil }
        ) { _, payload in
            (0, #"{"type":"publish","room":"fanout","data":"# + payload + "}")
        }
        result.report(json: load.json)
    }
}

/// The measured phase shared by direct, room and fanout, on a ``LeanFleet``.
enum TrafficRun {
    /// Opens the fleet, sends each connection's set-up frame (a join) and waits for the acks,
    /// then offers `traffic.rate` messages/s for `traffic.duration` s, paced on the fleet's
    /// loop every millisecond, waits for the deliveries (at most 5 s more), and measures CPU
    /// and backplane traffic over that window.
    static func run(
        scenario: String,
        load: LoadOptions,
        traffic: TrafficOptions,
        expectedPerMessage: Int,
        setUp: @escaping @Sendable (Int, Int) -> String?,
        message: @escaping @Sendable (Int, String) -> (sender: Int, text: String)
    ) async throws -> LoadResult {
        let endpoints = try load.endpoints()
        let capacity = traffic.rate * traffic.duration + traffic.rate
        let fleet = try await LeanFleet.open(load, capacity: capacity)
        // Every way out closes the connections and stops the loop.
        do {
            var result = LoadResult(scenario: scenario, label: load.label, gateways: endpoints.count, users: load.users, connected: fleet.connected)
            guard fleet.connected == load.users else {
                print("only \(fleet.connected) of \(load.users) connections opened; not sending")
                await fleet.closeAll()
                return result
            }

            // Set-up frames (joins), then wait until each is acknowledged.
            let users = load.users
            let setUpFrames = try await fleet.onLoop {
                var frames = 0
                for index in 0..<users {
                    guard let frame = setUp(index, users), let channel = fleet.write(frame, to: index) else { continue }
                    channel.flush()
                    frames += 1
                }
                return frames
            }
            let setUpDeadline = ContinuousClock.now + .seconds(60)
            while try await fleet.onLoop({ fleet.acks }) < setUpFrames, ContinuousClock.now < setUpDeadline {
                try await Task.sleep(for: .milliseconds(20))
            }

            let receivedBefore = await GatewayCounters.sum("switchboard_backplane_received_messages_total", endpoints: endpoints)
            let gatewayCPUBefore = try ProcessStats.cpuMicroseconds(load.gatewayPIDs)
            let brokerCPUBefore = try ProcessStats.cpuMicroseconds(load.brokerPIDs)
            let generatorCPUBefore = try ProcessStats.cpuMicroseconds(pid: getpid())

            // Paced sending on the loop: each millisecond, catch up to rate × elapsed, then one
            // flush per connection written to.
            let rate = traffic.rate
            let duration = Duration.seconds(traffic.duration)
            let sending = fleet.loop.makePromise(of: (sent: Int, seconds: Double).self)
            try await fleet.onLoop {
                let pacer = Pacer(fleet: fleet, started: ContinuousClock.now)
                fleet.loop.scheduleRepeatedTask(initialDelay: .milliseconds(1), delay: .milliseconds(1)) { task in
                    let elapsed = ContinuousClock.now - pacer.started
                    pacer.send(upTo: min(capacity, Int(elapsed.seconds * Double(rate))), message)
                    if elapsed >= duration || pacer.sent >= capacity {
                        task.cancel()
                        sending.succeed((pacer.sent, elapsed.seconds))
                    }
                }
            }
            let (sent, sendSeconds) = try await sending.futureResult.get()
            let expected = sent * expectedPerMessage
            let drainDeadline = ContinuousClock.now + .seconds(5)
            while try await fleet.onLoop({ fleet.arrived }) < expected, ContinuousClock.now < drainDeadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            let gatewayCPU = try ProcessStats.cpuMicroseconds(load.gatewayPIDs) - gatewayCPUBefore
            let brokerCPU = try ProcessStats.cpuMicroseconds(load.brokerPIDs) - brokerCPUBefore
            let generatorCPU = try ProcessStats.cpuMicroseconds(pid: getpid()) - generatorCPUBefore
            let receivedAfter = await GatewayCounters.sum("switchboard_backplane_received_messages_total", endpoints: endpoints)

            let (delivered, lost, duplicated, latency) = try await fleet.onLoop {
                let (delivered, lost, duplicated) = fleet.delivered(expectedPerMessage: expectedPerMessage, sent: sent)
                return (delivered, lost, duplicated, fleet.latency)
            }
            result.rate = traffic.rate
            result.duration_s = sendSeconds
            result.sent = sent
            result.expected = expected
            result.delivered = delivered
            result.lost = lost
            result.duplicated = duplicated
            result.achieved_rate = Double(sent) / max(sendSeconds, 0.001)
            result.latency_ms = latency
            if delivered > 0, !load.gatewayPIDs.isEmpty {
                let perMessage = Double(delivered)
                result.cpu_us_per_msg = .init(
                    gateways: gatewayCPU / perMessage,
                    brokers: brokerCPU / perMessage,
                    total: (gatewayCPU + brokerCPU) / perMessage,
                    generator: generatorCPU / perMessage
                )
            }
            result.backplane_received = receivedAfter - receivedBefore
            result.amplification = sent > 0 ? Double(receivedAfter - receivedBefore) / Double(sent) : nil
            await fleet.closeAll()
            return result
        } catch {
            await fleet.closeAll()
            throw error
        }
    }
}

/// The sending side of a traffic run, on the fleet's loop.
private final class Pacer: @unchecked Sendable {
    // @unchecked Sendable: created and used only on `fleet.loop` (its repeated task).
    let fleet: LeanFleet
    let started: ContinuousClock.Instant
    private(set) var sent = 0
    private var touched: [ObjectIdentifier: any Channel] = [:]

    init(fleet: LeanFleet, started: ContinuousClock.Instant) {
        self.fleet = fleet
        self.started = started
    }

    /// Writes messages until `due` are sent, then flushes each connection written to once.
    func send(upTo due: Int, _ message: (Int, String) -> (sender: Int, text: String)) {
        while sent < due {
            let (sender, text) = message(sent, fleet.payload(sequence: sent))
            if let channel = fleet.write(text, to: sender) { touched[ObjectIdentifier(channel)] = channel }
            sent += 1
        }
        for channel in touched.values { channel.flush() }
        touched.removeAll(keepingCapacity: true)
    }
}

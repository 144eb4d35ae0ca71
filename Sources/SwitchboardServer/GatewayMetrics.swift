import CoreMetrics
import NIOCore
import Prometheus
import SwitchboardBackplane
import Synchronization

/// What one gateway counts, served at `GET /metrics` in the Prometheus text format.
///
/// The counters are swift-metrics objects made by a `PrometheusMetricsFactory` over a
/// registry of this gateway's own (not the process-wide bootstrap), so that several
/// gateways in one process (the tests) keep separate numbers. The hot paths only bump
/// atomics; gauges and the backplane's own counters (``BackplaneStatistics``) are read
/// when `/metrics` is scraped. docs/operations.md lists every series.
final class GatewayMetrics: Sendable {
    /// Why a connection ended: the `reason` label of `switchboard_connections_closed_total`.
    enum CloseReason: String, CaseIterable, Sendable {
        /// The client sent a close frame.
        case client
        /// The socket closed without a close handshake (network, client crash).
        case disconnected
        case idle = "idle_timeout"
        case slowConsumer = "slow_consumer"
        /// Token expired, or sustained rate-limit abuse (1008).
        case policy
        /// An RFC 6455 violation, invalid UTF-8, or a frame over the hard limit.
        case protocolError = "protocol_error"
        case drain
        /// The backplane could not make the user reachable at connect (1013).
        case backplane
        /// A stream could not go on in order (a gap history could not fill, a new epoch) or
        /// the history store was down at connect (1013).
        case history
        case serverError = "server_error"
    }

    /// Client frames, by `type` label.
    enum InboundKind: String, CaseIterable, Sendable {
        case direct, publish, join, leave, ping, resume, presence, invalid, binary
        case rateLimited = "rate_limited"
    }

    /// Frames written to clients, by `type` label.
    enum OutboundKind: String, CaseIterable, Sendable {
        case welcome, direct, room, broadcast, ack, error, pong, presence
        /// `joined` and `left`, as written to subscribed connections.
        case presenceEvent = "presence_event"
    }

    /// The `type` label of `switchboard_presence_events_total`.
    enum PresenceEventKind: String, CaseIterable, Sendable {
        case joined, left
    }

    let registry = PrometheusCollectorRegistry()
    private let opened: CoreMetrics.Counter
    private let closed: [CloseReason: CoreMetrics.Counter]
    private let inbound: [InboundKind: CoreMetrics.Counter]
    private let outbound: [OutboundKind: CoreMetrics.Counter]
    let slowConsumerCloses: CoreMetrics.Counter
    private let refusals: [Int: CoreMetrics.Counter]
    private let authFailures: [String: CoreMetrics.Counter]
    let apiPublishes: [String: CoreMetrics.Counter]
    /// Time from handing a message to the backplane to its outcome (confirm, return, error).
    let publishDuration: CoreMetrics.Timer
    /// Time from handing a message to the history store to its offset.
    let historyWriteDuration: CoreMetrics.Timer
    private let historyWrites: [Bool: CoreMetrics.Counter]
    /// `resume` and `join` with `since`, by outcome: `recovered` or why not.
    private let recoveries: [String: CoreMetrics.Counter]
    private let replayed: CoreMetrics.Counter
    private let presenceEvents: [PresenceEventKind: CoreMetrics.Counter]
    private let presenceSuppressed: CoreMetrics.Counter
    private let presenceRefreshes: CoreMetrics.Counter
    private let presenceFailures: CoreMetrics.Counter
    private let presenceEntries: CoreMetrics.Gauge
    private let connections: CoreMetrics.Gauge
    private let users: CoreMetrics.Gauge
    private let rooms: CoreMetrics.Gauge
    private let bindingsHeld: CoreMetrics.Gauge
    private let ready: CoreMetrics.Gauge
    private let draining: CoreMetrics.Gauge
    private let backplane: BackplaneCounterMirror

    init() {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2),
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .seconds(1), .seconds(5),
        ]
        func counter(_ name: String, _ dimensions: [(String, String)] = []) -> CoreMetrics.Counter {
            CoreMetrics.Counter(label: name, dimensions: dimensions, factory: factory)
        }
        func gauge(_ name: String) -> CoreMetrics.Gauge { CoreMetrics.Gauge(label: name, factory: factory) }

        opened = counter("switchboard_connections_opened_total")
        closed = Dictionary(
            uniqueKeysWithValues: CloseReason.allCases.map { ($0, counter("switchboard_connections_closed_total", [("reason", $0.rawValue)])) }
        )
        inbound = Dictionary(
            uniqueKeysWithValues: InboundKind.allCases.map { ($0, counter("switchboard_messages_in_total", [("type", $0.rawValue)])) }
        )
        outbound = Dictionary(
            uniqueKeysWithValues: OutboundKind.allCases.map { ($0, counter("switchboard_messages_out_total", [("type", $0.rawValue)])) }
        )
        slowConsumerCloses = counter("switchboard_slow_consumer_closes_total")
        refusals = Dictionary(
            uniqueKeysWithValues: [401, 403, 404, 429, 503].map { ($0, counter("switchboard_handshake_refusals_total", [("status", "\($0)")])) }
        )
        authFailures = Dictionary(
            uniqueKeysWithValues: ["credentials", "origin", "api_key"].map { ($0, counter("switchboard_auth_failures_total", [("reason", $0)])) }
        )
        apiPublishes = Dictionary(
            uniqueKeysWithValues: ["routed", "recipient_offline", "unknown", "rejected"].map {
                ($0, counter("switchboard_api_publishes_total", [("outcome", $0)]))
            }
        )
        publishDuration = CoreMetrics.Timer(label: "switchboard_backplane_publish_duration_seconds", dimensions: [], factory: factory)
        historyWriteDuration = CoreMetrics.Timer(label: "switchboard_history_write_duration_seconds", dimensions: [], factory: factory)
        historyWrites = [
            true: counter("switchboard_history_writes_total", [("outcome", "written")]),
            false: counter("switchboard_history_writes_total", [("outcome", "failed")]),
        ]
        recoveries = Dictionary(
            uniqueKeysWithValues: (["recovered", "failed"] + RecoveryDecision.NotRecovered.allCases.map(\.rawValue)).map {
                ($0, counter("switchboard_recoveries_total", [("outcome", $0)]))
            }
        )
        replayed = counter("switchboard_messages_replayed_total")
        presenceEvents = Dictionary(
            uniqueKeysWithValues: PresenceEventKind.allCases.map { ($0, counter("switchboard_presence_events_total", [("type", $0.rawValue)])) }
        )
        presenceSuppressed = counter("switchboard_presence_events_suppressed_total")
        presenceRefreshes = counter("switchboard_presence_refreshes_total")
        presenceFailures = counter("switchboard_presence_store_failures_total")
        presenceEntries = gauge("switchboard_presence_entries")
        connections = gauge("switchboard_connections")
        users = gauge("switchboard_users")
        rooms = gauge("switchboard_rooms")
        bindingsHeld = gauge("switchboard_bindings")
        ready = gauge("switchboard_ready")
        draining = gauge("switchboard_draining")
        backplane = BackplaneCounterMirror(factory: factory)
    }

    func connectionOpened() { opened.increment() }
    func connectionClosed(_ reason: CloseReason) { closed[reason]?.increment() }
    func received(_ kind: InboundKind) { inbound[kind]?.increment() }
    func sent(_ kind: OutboundKind, count: Int = 1) { outbound[kind]?.increment(by: count) }
    func refused(status: Int) {
        refusals[status]?.increment()
        if status == 401 { authFailures["credentials"]?.increment() }
        if status == 403 { authFailures["origin"]?.increment() }
    }
    func apiKeyRejected() { authFailures["api_key"]?.increment() }
    func apiPublished(_ outcome: String) { apiPublishes[outcome]?.increment() }
    func slowConsumerClosed() { slowConsumerCloses.increment() }
    func historyWritten(after duration: Duration, succeeded: Bool) {
        historyWrites[succeeded]?.increment()
        if succeeded { historyWriteDuration.recordNanoseconds(TimeAmount(duration).nanoseconds) }
    }
    func recovery(_ outcome: String, replayed count: Int) {
        recoveries[outcome]?.increment()
        if count > 0 { replayed.increment(by: count) }
    }
    /// A `joined` or `left` published to a room (once per room, by the gateway the store told).
    func presenceEvent(_ kind: PresenceEventKind) { presenceEvents[kind]?.increment() }
    /// Transitions in rooms over the event limit: decided, not announced.
    func presenceEventsSuppressed(_ count: Int) { presenceSuppressed.increment(by: count) }
    /// Rooms whose entries the periodic refresh rewrote (a store call each).
    func presenceRefreshed(rooms: Int) { if rooms > 0 { presenceRefreshes.increment(by: rooms) } }
    func presenceFailed() { presenceFailures.increment() }

    func publishCompleted(after duration: Duration) {
        publishDuration.recordNanoseconds(TimeAmount(duration).nanoseconds)
    }

    /// The Prometheus text of every series, after reading the gauges and the backplane.
    func scrape(_ gateway: Gateway) -> [UInt8] {
        let counts = gateway.localCounts
        connections.record(counts.connections)
        users.record(counts.users)
        rooms.record(counts.rooms)
        bindingsHeld.record(gateway.boundAddressCount)
        ready.record(gateway.isReady ? 1 : 0)
        draining.record(gateway.isDraining ? 1 : 0)
        presenceEntries.record(gateway.presence?.entryCount ?? 0)
        backplane.update(from: gateway.backplane.statistics)
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return buffer
    }
}

/// Prometheus counters that follow a backplane's own ``BackplaneStatistics``: each scrape
/// adds what changed since the last one, so the series stay monotonic.
private final class BackplaneCounterMirror: Sendable {
    private let last = Mutex(BackplaneStatistics())
    private let received: CoreMetrics.Counter
    private let filtered: CoreMetrics.Counter
    private let routed: CoreMetrics.Counter
    private let unroutable: CoreMetrics.Counter
    private let unconfirmed: CoreMetrics.Counter
    private let failed: CoreMetrics.Counter
    private let refusedFull: CoreMetrics.Counter
    private let timedOut: CoreMetrics.Counter
    private let pending: CoreMetrics.Gauge
    private let blocked: CoreMetrics.Gauge
    private let stalled: CoreMetrics.Gauge
    private let binds: CoreMetrics.Counter
    private let bindFailures: CoreMetrics.Counter
    private let unbinds: CoreMetrics.Counter
    private let eventsPublished: CoreMetrics.Counter
    private let eventFailures: CoreMetrics.Counter
    private let failovers: CoreMetrics.Counter
    private let failoverSeconds: CoreMetrics.FloatingPointCounter
    private let lastFailoverSeconds: CoreMetrics.Gauge

    init(factory: PrometheusMetricsFactory) {
        func counter(_ name: String, _ dimensions: [(String, String)] = []) -> CoreMetrics.Counter {
            CoreMetrics.Counter(label: name, dimensions: dimensions, factory: factory)
        }
        received = counter("switchboard_backplane_received_messages_total")
        filtered = counter("switchboard_backplane_filtered_messages_total")
        routed = counter("switchboard_backplane_publishes_total", [("outcome", "routed")])
        unroutable = counter("switchboard_backplane_publishes_total", [("outcome", "unroutable")])
        unconfirmed = counter("switchboard_backplane_publishes_total", [("outcome", "unknown")])
        failed = counter("switchboard_backplane_publishes_total", [("outcome", "failed")])
        refusedFull = counter("switchboard_backplane_publishes_total", [("outcome", "refused_full")])
        timedOut = counter("switchboard_backplane_publishes_total", [("outcome", "timed_out")])
        pending = CoreMetrics.Gauge(label: "switchboard_backplane_pending_publishes", factory: factory)
        blocked = CoreMetrics.Gauge(label: "switchboard_backplane_blocked", factory: factory)
        stalled = CoreMetrics.Gauge(label: "switchboard_backplane_stalled", factory: factory)
        binds = counter("switchboard_backplane_bindings_total")
        bindFailures = counter("switchboard_backplane_binding_failures_total")
        unbinds = counter("switchboard_backplane_unbindings_total")
        eventsPublished = counter("switchboard_events_published_total")
        eventFailures = counter("switchboard_events_publish_failures_total")
        failovers = counter("switchboard_backplane_failovers_total")
        failoverSeconds = CoreMetrics.FloatingPointCounter(label: "switchboard_backplane_failover_seconds_total", factory: factory)
        lastFailoverSeconds = CoreMetrics.Gauge(label: "switchboard_backplane_last_failover_seconds", factory: factory)
    }

    func update(from now: BackplaneStatistics) {
        let before = last.withLock { last in
            defer { last = now }
            return last
        }
        func add(_ counter: CoreMetrics.Counter, _ keyPath: KeyPath<BackplaneStatistics, Int>) {
            let delta = now[keyPath: keyPath] - before[keyPath: keyPath]
            if delta > 0 { counter.increment(by: delta) }
        }
        add(received, \.received)
        add(filtered, \.filtered)
        add(routed, \.routed)
        add(unroutable, \.unroutable)
        add(unconfirmed, \.unconfirmed)
        add(failed, \.publishFailures)
        add(refusedFull, \.publishesRefusedFull)
        add(timedOut, \.publishTimeouts)
        pending.record(now.pendingPublishes)
        blocked.record(now.isBlocked ? 1 : 0)
        stalled.record(now.isStalled ? 1 : 0)
        add(binds, \.binds)
        add(bindFailures, \.bindFailures)
        add(unbinds, \.unbinds)
        add(eventsPublished, \.eventsPublished)
        add(eventFailures, \.eventFailures)
        add(failovers, \.failovers)
        let failoverDelta = now.failoverMilliseconds - before.failoverMilliseconds
        if failoverDelta > 0 { failoverSeconds.increment(by: Double(failoverDelta) / 1000) }
        lastFailoverSeconds.record(Double(now.lastFailoverMilliseconds) / 1000)
    }
}

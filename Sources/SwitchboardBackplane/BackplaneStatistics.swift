package import Synchronization

/// What a backplane has done since it started: the numbers behind `/metrics` and the
/// benchmarks' amplification figures.
public struct BackplaneStatistics: Sendable, Equatable {
    /// Messages that arrived from the broker, before any local filtering. On Redis
    /// `broadcast` every gateway receives every message; elsewhere only those bound.
    public var received = 0
    /// Received messages dropped because no local address wanted them (Redis `broadcast`).
    public var filtered = 0
    /// Publishes the broker took and reported as reaching at least one gateway.
    public var routed = 0
    /// Publishes that reached no gateway (``PublishOutcome/noRecipient``).
    public var unroutable = 0
    /// Publishes taken without knowing who got them (``PublishOutcome/unknown``).
    public var unconfirmed = 0
    /// Publishes that failed (broker down, rejected), other than the two below.
    public var publishFailures = 0
    /// Publishes refused at once because the pending-publish bound was reached (a stalled broker).
    public var publishesRefusedFull = 0
    /// Publishes answered because they waited longer than the publish timeout (may still be delivered).
    public var publishTimeouts = 0
    /// Publishes accepted and not answered yet, now (a gauge).
    public var pendingPublishes = 0
    /// The broker blocks publishing now (RabbitMQ `connection.blocked`, a resource alarm).
    public var isBlocked = false
    /// Publishing is stalled now: blocked, or the oldest pending publish is past half its
    /// timeout. The gateway is not ready meanwhile.
    public var isStalled = false
    /// Binds (AMQP `queue.bind`, Redis `SUBSCRIBE`) that succeeded, and those that failed.
    public var binds = 0
    public var bindFailures = 0
    /// Unbinds sent.
    public var unbinds = 0
    /// Worker events (``EventSink``) the broker confirmed, and those that failed.
    public var eventsPublished = 0
    public var eventFailures = 0
    /// Times the backplane lost its broker connection and became ready again (on the same
    /// node, or on another node of a cluster), and how long those outages lasted in all,
    /// and the last one: from the loss to the new queue and all its bindings in place.
    public var failovers = 0
    public var failoverMilliseconds = 0
    public var lastFailoverMilliseconds = 0

    public init() {}
}

/// Lock-free counters behind ``BackplaneStatistics``; backplanes bump them from any thread.
///
/// `package`: shared by this package's backplanes, not part of the `Backplane` API.
package final class BackplaneCounters: Sendable {
    package let received = Atomic<Int>(0)
    package let filtered = Atomic<Int>(0)
    package let routed = Atomic<Int>(0)
    package let unroutable = Atomic<Int>(0)
    package let unconfirmed = Atomic<Int>(0)
    package let publishFailures = Atomic<Int>(0)
    package let publishesRefusedFull = Atomic<Int>(0)
    package let publishTimeouts = Atomic<Int>(0)
    package let binds = Atomic<Int>(0)
    package let bindFailures = Atomic<Int>(0)
    package let unbinds = Atomic<Int>(0)
    package let eventsPublished = Atomic<Int>(0)
    package let eventFailures = Atomic<Int>(0)
    package let failovers = Atomic<Int>(0)
    package let failoverMilliseconds = Atomic<Int>(0)
    package let lastFailoverMilliseconds = Atomic<Int>(0)

    package init() {}

    /// Counts one recovery from a lost broker connection that took `milliseconds`.
    package func countRecovery(milliseconds: Int64) {
        let value = Int(clamping: milliseconds)
        failoverMilliseconds.add(value, ordering: .relaxed)
        lastFailoverMilliseconds.store(value, ordering: .relaxed)
        failovers.add(1, ordering: .relaxed)
    }

    /// Counts one publish's result.
    package func count(_ result: Result<PublishOutcome, BackplaneError>) {
        switch result {
        case .success(.routed): routed.add(1, ordering: .relaxed)
        case .success(.noRecipient): unroutable.add(1, ordering: .relaxed)
        case .success(.unknown): unconfirmed.add(1, ordering: .relaxed)
        case .failure(let error) where error.code == .overloaded:
            // Which of the two: the backplane counts it with countStalled(timedOut:).
            break
        case .failure: publishFailures.add(1, ordering: .relaxed)
        }
    }

    /// Counts a publish answered `overloaded`: refused because the bound was full, or timed out.
    package func countStalled(timedOut: Bool) {
        if timedOut {
            publishTimeouts.add(1, ordering: .relaxed)
        } else {
            publishesRefusedFull.add(1, ordering: .relaxed)
        }
    }

    /// The counters; the gauges (pending, blocked, stalled) are the backplane's to fill in.
    package var snapshot: BackplaneStatistics {
        var statistics = BackplaneStatistics()
        statistics.received = received.load(ordering: .relaxed)
        statistics.filtered = filtered.load(ordering: .relaxed)
        statistics.routed = routed.load(ordering: .relaxed)
        statistics.unroutable = unroutable.load(ordering: .relaxed)
        statistics.unconfirmed = unconfirmed.load(ordering: .relaxed)
        statistics.publishFailures = publishFailures.load(ordering: .relaxed)
        statistics.publishesRefusedFull = publishesRefusedFull.load(ordering: .relaxed)
        statistics.publishTimeouts = publishTimeouts.load(ordering: .relaxed)
        statistics.binds = binds.load(ordering: .relaxed)
        statistics.bindFailures = bindFailures.load(ordering: .relaxed)
        statistics.unbinds = unbinds.load(ordering: .relaxed)
        statistics.eventsPublished = eventsPublished.load(ordering: .relaxed)
        statistics.eventFailures = eventFailures.load(ordering: .relaxed)
        statistics.failovers = failovers.load(ordering: .relaxed)
        statistics.failoverMilliseconds = failoverMilliseconds.load(ordering: .relaxed)
        statistics.lastFailoverMilliseconds = lastFailoverMilliseconds.load(ordering: .relaxed)
        return statistics
    }
}

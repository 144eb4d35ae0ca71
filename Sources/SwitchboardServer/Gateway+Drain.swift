import Logging
import ServiceLifecycle
import SwitchboardBackplane
import SwitchboardRegistry
import Synchronization

extension Gateway {
    /// Drains the gateway (SIGTERM, docs/operations.md "Draining and upgrades"), returning when every client
    /// is gone or a timeout passed:
    ///
    /// 1. Readiness turns false at once: `/readyz` answers 503 and new handshakes are
    ///    refused, so the load balancer stops sending clients here.
    /// 2. After `drainGrace`, clients are closed in batches spread over `drainWindow`.
    ///    For each batch the gateway first stops counting its connections as local and
    ///    unbinds the addresses that no other local connection needs (on RabbitMQ: the
    ///    queue sheds its bindings in batches, never thousands at once when it is
    ///    deleted), waits for those unbinds, lets deliveries already routed here arrive,
    ///    and only then closes each connection with 1012 after everything queued for it.
    ///    A message for a user in that batch is therefore delivered, or routed to the
    ///    user's other connections, or answered `recipient_offline`: never acked and lost.
    /// 3. The backplane closes afterwards, when the service group stops it.
    public func drain() async {
        guard !draining.exchange(true, ordering: .acquiringAndReleasing) else { return }
        let connections = registry.allConnections()
        logger.info(
            "draining: not ready; closing clients",
            metadata: [LoggingKeys.drainConnections: .stringConvertible(connections.count)]
        )
        try? await Task.sleep(for: configuration.drainGrace)

        let plan = DrainPlan(connections: connections.count, window: configuration.drainWindow)
        let started = ContinuousClock.now
        // Each batch starts on its own schedule, so a slow broker (unbinds) stretches no
        // batch beyond its own few hundred milliseconds and the window holds.
        await withTaskGroup(of: Void.self) { group in
            for batch in plan.batches {
                let members = Array(connections[batch.members])
                group.addTask {
                    try? await Task.sleep(until: started + batch.startsAfter)
                    await self.drain(members)
                }
            }
        }
        let deadline = ContinuousClock.now + .seconds(5)
        while registry.counts.connections > 0, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
        logger.info("drained", metadata: [LoggingKeys.drainLeftOpen: .stringConvertible(registry.counts.connections)])
    }

    private func drain(_ batch: [(id: ConnectionID, handle: SessionHandle)]) async {
        var released: [BackplaneAddress] = []
        for (id, _) in batch {
            for address in registry.markLeaving(id).noLongerLocal {
                let backplaneAddress = Self.backplaneAddress(address)
                bindings.release(backplaneAddress, immediately: true)
                released.append(backplaneAddress)
            }
        }
        let deadline = ContinuousClock.now + .seconds(5)
        while released.contains(where: bindings.isTracking), ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
        // Messages the broker routed here before the unbinds took effect are on their way.
        if !released.isEmpty { try? await Task.sleep(for: .milliseconds(200)) }
        for (_, handle) in batch {
            handle.withSession { $0.close(code: CloseCode.serviceRestart, reason: .drain) }
        }
    }
}

/// Which connections a drain closes when: the connections split into batches whose
/// starts are spread evenly over the window, one every 100 ms at most, so that clients
/// do not all reconnect to the other gateways at once.
struct DrainPlan: Equatable {
    struct Batch: Equatable {
        /// Indices into the drained connections.
        var members: Range<Int>
        /// From the end of the grace.
        var startsAfter: Duration
    }

    static let shortestSpacing = Duration.milliseconds(100)

    let batches: [Batch]

    init(connections: Int, window: Duration) {
        guard connections > 0 else {
            batches = []
            return
        }
        let slots = max(1, min(connections, Int(window / Self.shortestSpacing)))
        var next = 0
        batches = (0..<slots).map { slot in
            let end = connections * (slot + 1) / slots
            defer { next = end }
            return Batch(members: next..<end, startsAfter: window * (Double(slot) / Double(slots)))
        }
    }
}

/// Runs ``Gateway/drain()`` when graceful shutdown begins. ``buildGateway(configuration:backplane:logger:onServerRunning:)``
/// puts it after the application in a service group: services shut down in reverse
/// order, so the drain finishes before the HTTP server and the backplane stop.
struct GatewayDrainService: Service {
    let gateway: Gateway

    func run() async throws {
        do {
            try await gracefulShutdown()
        } catch {
            return  // cancelled: no drain
        }
        await gateway.drain()
    }
}

public import NIOCore
import ServiceLifecycle
import Synchronization

/// The embedded backplane for a single gateway: publishes are delivered straight back
/// to the same gateway.
///
/// Guarantees: synchronous and exact. `publish` delivers before it completes, and
/// returns ``PublishOutcome/noRecipient`` exactly when nothing is bound to the address.
/// Nothing crosses process boundaries, so two gateways on `memory` never see each other.
///
/// Threading: every method takes a lock briefly and may be called from any thread;
/// the delivery handler and completions run inline on the caller's thread.
public final class InMemoryBackplane: Backplane {
    private struct State {
        /// Like every backplane, bound to `broadcast` from the start.
        var bound: Set<BackplaneAddress> = [.broadcast]
        var handler: BackplaneDeliveryHandler?
        var isRunning = false
        var published = 0
    }

    private let state = Mutex(State())
    private let counters = BackplaneCounters()

    public init() {}

    /// Number of publishes that reached a bound address (tests count backplane traffic with it).
    public var deliveredCount: Int { state.withLock { $0.published } }

    public func setDeliveryHandler(_ handler: @escaping BackplaneDeliveryHandler) {
        state.withLock { $0.handler = handler }
    }

    public var isReady: Bool { state.withLock { $0.isRunning } }

    public var statistics: BackplaneStatistics { counters.snapshot }

    public func run() async throws {
        state.withLock { $0.isRunning = true }
        defer { state.withLock { $0.isRunning = false } }
        // Nothing to connect to: hold until the service group shuts down.
        try? await gracefulShutdown()
    }

    public func bind(_ address: BackplaneAddress, completion: @escaping @Sendable (Result<Void, BackplaneError>) -> Void) {
        state.withLock { _ = $0.bound.insert(address) }
        counters.binds.add(1, ordering: .relaxed)
        completion(.success(()))
    }

    public func unbind(_ address: BackplaneAddress, completion: @escaping @Sendable (Result<Void, BackplaneError>) -> Void) {
        state.withLock { _ = $0.bound.remove(address) }
        counters.unbinds.add(1, ordering: .relaxed)
        completion(.success(()))
    }

    public func publish(
        _ frame: ByteBuffer,
        to address: BackplaneAddress,
        completion: @escaping @Sendable (Result<PublishOutcome, BackplaneError>) -> Void
    ) {
        let handler: BackplaneDeliveryHandler? = state.withLock { state in
            guard state.bound.contains(address) else { return nil }
            state.published += 1
            return state.handler
        }
        guard let handler else {
            counters.count(.success(.noRecipient))
            completion(.success(.noRecipient))
            return
        }
        counters.received.add(1, ordering: .relaxed)
        handler([BackplaneDelivery(address: address, frame: frame)])
        counters.count(.success(.routed))
        completion(.success(.routed))
    }
}

import Synchronization

/// What a broker-backed backplane keeps across reconnects: the addresses the gateway
/// wants bound (`broadcast` from the start; restored after every reconnect) and the
/// delivery handler, under one lock. RabbitMQ and Redis share it.
///
/// An address enters on `bind` and leaves on `unbind` or when its bind fails.
package final class WantedBindings: Sendable {
    private struct State {
        var addresses: Set<BackplaneAddress> = [.broadcast]
        var handler: BackplaneDeliveryHandler?
    }

    private let state = Mutex(State())

    package init() {}

    package func insert(_ address: BackplaneAddress) {
        state.withLock { _ = $0.addresses.insert(address) }
    }

    package func remove(_ address: BackplaneAddress) {
        state.withLock { _ = $0.addresses.remove(address) }
    }

    package func setHandler(_ handler: @escaping BackplaneDeliveryHandler) {
        state.withLock { $0.handler = handler }
    }

    package var handler: BackplaneDeliveryHandler? {
        state.withLock { $0.handler }
    }

    /// Runs `body` with the wanted addresses and the handler, under the lock: keep it short.
    package func withAddresses<T>(_ body: (Set<BackplaneAddress>, BackplaneDeliveryHandler?) -> T) -> T {
        state.withLock { body($0.addresses, $0.handler) }
    }
}

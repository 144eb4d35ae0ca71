import SwitchboardBackplane
import Synchronization

/// Keeps the backplane's bindings equal to what the registry says is local.
///
/// The registry is the truth ("is this address local now?"); this type drives the
/// backplane towards it with at most one bind or unbind in flight per address. When an
/// operation completes it looks at the registry again, so a user who disconnects and
/// reconnects while an unbind is in flight ends up bound, and bursts of joins and
/// leaves cost one operation, not one per event.
///
/// Threading: callable from any thread; completions run wherever the backplane runs
/// them. The registry's lock may be taken inside this type's lock, never the reverse.
final class BindingReconciler: Sendable {
    typealias Completion = @Sendable (Result<Void, BackplaneError>) -> Void

    private enum Entry {
        /// A bind is in flight; these wait for it.
        case binding([Completion])
        /// Bound and wanted (as of the last look).
        case bound
        /// An unbind is in flight; these wait for a bind that follows it.
        case unbinding([Completion])
    }

    private enum Action {
        case bind(BackplaneAddress)
        case unbind(BackplaneAddress)
        case complete([Completion], Result<Void, BackplaneError>)
        case none
    }

    private let entries = Mutex<[BackplaneAddress: Entry]>([:])
    private let backplane: any Backplane
    private let isWanted: @Sendable (BackplaneAddress) -> Bool

    init(backplane: any Backplane, isWanted: @escaping @Sendable (BackplaneAddress) -> Bool) {
        self.backplane = backplane
        self.isWanted = isWanted
    }

    /// Number of addresses bound or being bound (metrics, tests).
    var boundCount: Int {
        entries.withLock { $0.values.count { if case .unbinding = $0 { false } else { true } } }
    }

    /// Calls `completion` once `address` is bound; the caller has just made it local.
    func ensureBound(_ address: BackplaneAddress, completion: @escaping Completion) {
        let action: Action = entries.withLock { entries in
            switch entries[address] {
            case nil:
                entries[address] = .binding([completion])
                return .bind(address)
            case .bound:
                return .complete([completion], .success(()))
            case .binding(var waiters):
                waiters.append(completion)
                entries[address] = .binding(waiters)
                return .none
            case .unbinding(var waiters):
                waiters.append(completion)
                entries[address] = .unbinding(waiters)
                return .none
            }
        }
        perform(action)
    }

    /// Unbinds `address` if it is bound and no longer wanted; the caller has just made it not local.
    func release(_ address: BackplaneAddress) {
        let action: Action = entries.withLock { entries in
            guard case .bound = entries[address], !isWanted(address) else { return .none }
            entries[address] = .unbinding([])
            return .unbind(address)
        }
        perform(action)
    }

    /// Whether `address` is bound or has an operation in flight.
    func isTracking(_ address: BackplaneAddress) -> Bool {
        entries.withLock { $0[address] != nil }
    }

    private func perform(_ action: Action) {
        switch action {
        case .bind(let address):
            backplane.bind(address) { result in self.bindCompleted(address, result) }
        case .unbind(let address):
            backplane.unbind(address) { result in self.unbindCompleted(address, result) }
        case .complete(let waiters, let result):
            for waiter in waiters { waiter(result) }
        case .none:
            break
        }
    }

    private func bindCompleted(_ address: BackplaneAddress, _ result: Result<Void, BackplaneError>) {
        var followUp: Action = .none
        let waiters: [Completion] = entries.withLock { entries in
            guard case .binding(let waiters) = entries[address] else { return [] }
            switch result {
            case .success where isWanted(address):
                entries[address] = .bound
            case .success:
                // Everyone left while the bind was in flight.
                entries[address] = .unbinding([])
                followUp = .unbind(address)
            case .failure:
                entries[address] = nil
            }
            return waiters
        }
        for waiter in waiters { waiter(result) }
        perform(followUp)
    }

    private func unbindCompleted(_ address: BackplaneAddress, _ result: Result<Void, BackplaneError>) {
        // A failed unbind leaves nothing to retry: the backplane forgets bindings it
        // cannot keep, and its reconnect restores only what is still wanted.
        let action: Action = entries.withLock { entries in
            guard case .unbinding(let waiters) = entries[address] else { return .none }
            if isWanted(address) {
                entries[address] = .binding(waiters)
                return .bind(address)
            }
            entries[address] = nil
            return .complete(waiters, .success(()))
        }
        perform(action)
    }
}

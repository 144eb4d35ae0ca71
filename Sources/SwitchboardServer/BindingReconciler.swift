import NIOCore
import NIOPosix
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
/// A room's binding outlives its last local member by a grace (``roomGrace``): a client
/// that leaves and re-joins, or churns joins and leaves of one room, costs the broker
/// nothing more. Users get no grace: a message to a user who is gone must come back
/// `recipient_offline`, not be routed here and dropped.
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
        /// Bound but no longer wanted; unbound when the grace of this generation ends.
        case lingering(generation: UInt64)
    }

    private enum Action {
        case bind(BackplaneAddress)
        case unbind(BackplaneAddress)
        case complete([Completion], Result<Void, BackplaneError>)
        /// Look again when the room grace of this generation has passed.
        case endGrace(BackplaneAddress, generation: UInt64)
        case none
    }

    private let entries = Mutex<[BackplaneAddress: Entry]>([:])
    private let generations = Atomic<UInt64>(0)
    private let backplane: any Backplane
    private let roomGrace: Duration
    private let isWanted: @Sendable (BackplaneAddress) -> Bool

    init(backplane: any Backplane, roomGrace: Duration = .zero, isWanted: @escaping @Sendable (BackplaneAddress) -> Bool) {
        self.backplane = backplane
        self.roomGrace = roomGrace
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
            case .lingering:
                // Still bound on the broker: the grace saved an unbind and a bind.
                entries[address] = .bound
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
    /// - Parameter immediately: Skip the room grace (a drain sheds bindings before it closes).
    func release(_ address: BackplaneAddress, immediately: Bool) {
        let useGrace = if case .room = address, !immediately, roomGrace > .zero { true } else { false }
        let action: Action = entries.withLock { entries in
            switch entries[address] {
            case .bound:
                guard !isWanted(address) else { return .none }
                if useGrace {
                    let generation = generations.wrappingAdd(1, ordering: .relaxed).newValue
                    entries[address] = .lingering(generation: generation)
                    return .endGrace(address, generation: generation)
                }
                entries[address] = .unbinding([])
                return .unbind(address)
            case .lingering:
                guard !useGrace, !isWanted(address) else { return .none }
                entries[address] = .unbinding([])
                return .unbind(address)
            case .binding, .unbinding, nil:
                return .none
            }
        }
        perform(action)
    }

    private func graceEnded(_ address: BackplaneAddress, generation: UInt64) {
        let action: Action = entries.withLock { entries in
            guard case .lingering(generation) = entries[address] else { return .none }
            if isWanted(address) {
                entries[address] = .bound
                return .none
            }
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
        case .endGrace(let address, let generation):
            NIOSingletons.posixEventLoopGroup.any().scheduleTask(in: TimeAmount(roomGrace)) {
                self.graceEnded(address, generation: generation)
            }
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

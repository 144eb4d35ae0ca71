import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import SwitchboardBackplane
import SwitchboardProtocol
import Synchronization

/// This gateway's side of presence: how many local connections each user has in each
/// room, written to the ``PresenceStore`` as absolute counts, and the store's transitions
/// turned into `joined` / `left` events published once to the room over the backplane.
///
/// Writes are batched per room without a timer: the first change of a room is written at
/// once, and changes made while that write is out go together in the next one. A connect
/// storm of one room therefore costs a handful of store calls, not one per connection.
///
/// Threading: one lock over the counts; store and backplane calls are made outside it.
final class PresenceTracker: Sendable {
    private struct RoomState {
        /// Local connections per user (members of the room on this gateway).
        var local: [UserID: Int] = [:]
        /// Users whose count changed (or is due for a refresh) since the last write was taken.
        var dirty: Set<UserID> = []
        /// A write of this room is out.
        var syncing = false
        /// Reads that wait for the write out, so that they see it.
        var waitingReads: [PendingRead] = []

        var isIdle: Bool { local.isEmpty && dirty.isEmpty && !syncing && waitingReads.isEmpty }
    }

    private struct PendingRead {
        let limit: Int
        let completion: @Sendable (Result<PresenceSnapshot, PresenceError>) -> Void
    }

    /// One write of a room, and the reads to send right behind it (the store applies its
    /// operations in order, so they see it).
    private struct Batch {
        let entries: [PresenceEntry]
        let reads: [PendingRead]
    }

    let store: any PresenceStore
    private let gatewayID: String
    private let backplane: any Backplane
    private let metrics: GatewayMetrics
    private let logger: Logger
    private let eventLimit: Int
    private let rooms = Mutex<[RoomID: RoomState]>([:])
    /// Where grace checks are scheduled; tiny tasks, off the sessions' loops.
    private let timers: any EventLoop
    /// The last time a store failure was logged (ms), so a Redis outage logs once per interval, not per member.
    private let lastFailureLog = Atomic<Int64>(-1_000_000)

    init(store: any PresenceStore, gatewayID: String, backplane: any Backplane, metrics: GatewayMetrics, eventLimit: Int, logger: Logger) {
        self.store = store
        self.gatewayID = gatewayID
        self.backplane = backplane
        self.metrics = metrics
        self.eventLimit = eventLimit
        self.logger = logger
        self.timers = MultiThreadedEventLoopGroup.singleton.next()
    }

    /// (room, user) pairs with a local connection: the `switchboard_presence_entries` gauge.
    var entryCount: Int {
        rooms.withLock { $0.values.reduce(0) { $0 + $1.local.count } }
    }

    /// A local connection of `user` became a member of `room`.
    func memberJoined(_ room: RoomID, user: UserID) {
        change(room, user: user, by: 1)
    }

    /// A local connection of `user` stopped being a member of `room` (leave or close).
    func memberLeft(_ room: RoomID, user: UserID) {
        change(room, user: user, by: -1)
    }

    private func change(_ room: RoomID, user: UserID, by delta: Int) {
        let batch: Batch? = rooms.withLock { rooms in
            var state = rooms[room] ?? RoomState()
            let count = (state.local[user] ?? 0) + delta
            state.local[user] = count > 0 ? count : nil
            state.dirty.insert(user)
            defer { rooms[room] = state }
            return Self.startWrite(&state)
        }
        if let batch { write(room, batch) }
    }

    /// Takes the dirty users' absolute counts (and the waiting reads) unless a write is out:
    /// one write per room at a time, so the store gets a room's counts in the order they were read.
    private static func startWrite(_ state: inout RoomState) -> Batch? {
        guard !state.syncing, !state.dirty.isEmpty else { return nil }
        state.syncing = true
        return takeBatch(&state)
    }

    private static func takeBatch(_ state: inout RoomState) -> Batch {
        let entries = state.dirty.map { PresenceEntry(user: $0, connections: state.local[$0] ?? 0) }
        state.dirty = []
        defer { state.waitingReads = [] }
        return Batch(entries: entries, reads: state.waitingReads)
    }

    /// Sends one batch; when it is done, the changes made meanwhile, until none are left.
    private func write(_ room: RoomID, _ batch: Batch) {
        store.sync(room, gateway: gatewayID, entries: batch.entries) { [self] result in
            handle(result, room: room)
            let failed = (try? result.get()) == nil
            let (next, reads): (Batch?, [PendingRead]) = rooms.withLock { rooms in
                guard var state = rooms[room] else { return (nil, []) }
                defer { rooms[room] = state.isIdle ? nil : state }
                // A failed batch is written again by the room's next change or refresh, not
                // at once: a store that is down would be asked in a loop.
                if failed { state.dirty.formUnion(batch.entries.map(\.user)) }
                guard !failed, !state.dirty.isEmpty else {
                    // Done (or given up for now): reads that came while this write was out go now.
                    state.syncing = false
                    defer { state.waitingReads = [] }
                    return (nil, state.waitingReads)
                }
                return (Self.takeBatch(&state), [])
            }
            for read in reads { store.read(room, limit: read.limit, completion: read.completion) }
            if let next { write(room, next) }
        }
        for read in batch.reads { store.read(room, limit: read.limit, completion: read.completion) }
    }

    /// Rewrites every local entry (renewing its expiry), which also expires what is overdue
    /// in those rooms: the `left` of a gateway that died is announced by the next refresh
    /// of any gateway with members there. A room with a write out gets its refresh in the
    /// next batch, behind it.
    func refresh() {
        let (batches, refreshed): ([(RoomID, Batch)], Int) = rooms.withLock { rooms in
            var batches: [(RoomID, Batch)] = []
            var refreshed = 0
            // Also rooms with nothing local but a failed write to repeat (a departure).
            for (room, var state) in rooms where !state.local.isEmpty || !state.dirty.isEmpty {
                refreshed += 1
                state.dirty.formUnion(state.local.keys)
                if let batch = Self.startWrite(&state) { batches.append((room, batch)) }
                rooms[room] = state
            }
            return (batches, refreshed)
        }
        metrics.presenceRefreshed(rooms: refreshed)
        for (room, batch) in batches { write(room, batch) }
    }

    /// Who is in `room`, after this gateway's changes of it (a member that just joined
    /// finds itself listed): behind the room's write out, if there is one.
    func read(_ room: RoomID, limit: Int, completion: @escaping @Sendable (Result<PresenceSnapshot, PresenceError>) -> Void) {
        let waits: Bool = rooms.withLock { rooms in
            guard var state = rooms[room], state.syncing else { return false }
            state.waitingReads.append(PendingRead(limit: limit, completion: completion))
            rooms[room] = state
            return true
        }
        if !waits { store.read(room, limit: limit, completion: completion) }
    }

    private func handle(_ result: Result<PresenceChanges, PresenceError>, room: RoomID) {
        let changes: PresenceChanges
        switch result {
        case .success(let value):
            changes = value
        case .failure(let error):
            // The batch was put back: the room's next change or refresh writes it again.
            metrics.presenceFailed()
            let now = (ContinuousClock.now - Self.origin).wholeMilliseconds
            let last = lastFailureLog.load(ordering: .relaxed)
            if now - last >= 10_000, lastFailureLog.compareExchange(expected: last, desired: now, ordering: .relaxed).exchanged {
                logger.warning(
                    "presence store write failed; written again at the room's next change or refresh",
                    metadata: [LoggingKeys.roomID: "\(room)", LoggingKeys.errorType: "\(error)"]
                )
            }
            return
        }
        if !changes.leaving.isEmpty {
            // Once the grace is over the store announces them, unless they came back; a
            // little later than the grace so that the store's clock has passed it too.
            let delay = TimeAmount(store.policy.grace + .milliseconds(100))
            timers.scheduleTask(in: delay) { [self] in
                store.sync(room, gateway: gatewayID, entries: []) { [self] result in handle(result, room: room) }
            }
        }
        guard !changes.joined.isEmpty || !changes.left.isEmpty else { return }
        guard changes.users <= eventLimit else {
            metrics.presenceEventsSuppressed(changes.joined.count + changes.left.count)
            return
        }
        // A user both left and joined in one sync was cancelled by the store; otherwise
        // the departures go first.
        for user in changes.left { announce(ServerFrame.left(room: room, user: user), kind: .left, room: room) }
        for user in changes.joined { announce(ServerFrame.joined(room: room, user: user), kind: .joined, room: room) }
    }

    private func announce(_ frame: ByteBuffer, kind: GatewayMetrics.PresenceEventKind, room: RoomID) {
        metrics.presenceEvent(kind)
        let logger = self.logger
        backplane.publish(frame, to: .room(room)) { result in
            if case .failure(let error) = result {
                logger.warning(
                    "presence event not published",
                    metadata: [LoggingKeys.roomID: "\(room)", LoggingKeys.errorType: "\(error)"]
                )
            }
        }
    }

    private static let origin = ContinuousClock.now
}

/// Rewrites this gateway's presence entries every ``PresencePolicy/refreshInterval``.
struct PresenceRefreshService: Service {
    let tracker: PresenceTracker

    func run() async throws {
        let interval = tracker.store.policy.refreshInterval
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do { try await Task.sleep(for: interval) } catch { return }
                tracker.refresh()
            }
        }
    }
}

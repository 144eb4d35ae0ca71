import ServiceLifecycle
public import SwitchboardProtocol
import Synchronization

/// Presence in this process: right for one gateway (the embedded default). Several gateways
/// each with its own would each see only their own members; they share a `RedisPresence`.
///
/// The rules are those of the Redis scripts, on ``PresenceRoom``: the two stores differ
/// only in where the state lives.
public final class MemoryPresence: PresenceStore {
    public let policy: PresencePolicy
    private let rooms = Mutex<[RoomID: PresenceRoom]>([:])
    private let clock: @Sendable () -> Int64

    /// - Parameter clock: milliseconds on a monotonic clock; tests pass their own.
    public init(policy: PresencePolicy = PresencePolicy(), clock: (@Sendable () -> Int64)? = nil) {
        self.policy = policy
        self.clock = clock ?? { (ContinuousClock.now - Self.origin).wholeMilliseconds }
    }

    public var isReady: Bool { true }

    public func run() async throws {
        try? await gracefulShutdown()
    }

    public func sync(
        _ room: RoomID,
        gateway: String,
        entries: [PresenceEntry],
        completion: @escaping @Sendable (Result<PresenceChanges, PresenceError>) -> Void
    ) {
        let now = clock()
        let policy = self.policy
        let changes = rooms.withLock { rooms in
            var state = rooms[room] ?? PresenceRoom()
            let changes = state.sync(gateway: gateway, entries: entries, now: now, policy: policy)
            rooms[room] = state.isEmpty ? nil : state
            return changes
        }
        completion(.success(changes))
    }

    public func read(_ room: RoomID, limit: Int, completion: @escaping @Sendable (Result<PresenceSnapshot, PresenceError>) -> Void) {
        let now = clock()
        let snapshot = rooms.withLock { rooms in
            guard var state = rooms[room] else { return PresenceSnapshot(users: [], count: 0) }
            // Expired entries are not listed, even before a sync removes them.
            _ = state.expire(now: now)
            return state.snapshot(limit: limit)
        }
        completion(.success(snapshot))
    }

    private static let origin = ContinuousClock.Instant.now
}

/// One room's presence, with the rules both stores follow (the Redis scripts are the same
/// steps in Lua):
/// - each gateway owns one entry per user (its connection count) with an expiry, renewed
///   whenever it writes the entry;
/// - a user's count is the sum over gateways; a user goes from absent to present only when
///   not within a grace (`joined`), and from present to absent only after the grace, or at
///   once when their entries expired (the gateway died long ago: the TTL was the grace);
/// - times are milliseconds of the store's clock.
public struct PresenceRoom: Sendable, Equatable {
    struct Field: Hashable, Sendable {
        var gateway: String
        var user: UserID
    }

    private var connections: [Field: Int] = [:]
    private var expiries: [Field: Int64] = [:]
    private var users: [UserID: Int] = [:]
    /// Users whose last connection went, and when their grace ends.
    private var leaving: [UserID: Int64] = [:]

    public init() {}

    public var isEmpty: Bool { connections.isEmpty && leaving.isEmpty }

    /// Users present now, those within the grace included.
    public var count: Int { users.count + leaving.count }

    public mutating func sync(gateway: String, entries: [PresenceEntry], now: Int64, policy: PresencePolicy) -> PresenceChanges {
        var changes = PresenceChanges()
        changes.left = expire(now: now)
        let ttl = policy.ttl.wholeMilliseconds
        let grace = policy.grace.wholeMilliseconds
        for entry in entries {
            let field = Field(gateway: gateway, user: entry.user)
            let before = connections[field] ?? 0
            let after = max(0, entry.connections)
            if after > 0 {
                connections[field] = after
                expiries[field] = now + ttl
            } else {
                connections[field] = nil
                expiries[field] = nil
            }
            guard after != before else { continue }
            let total = (users[entry.user] ?? 0) + after - before
            if total > 0 {
                if users[entry.user] == nil, leaving.removeValue(forKey: entry.user) == nil { changes.joined.append(entry.user) }
                users[entry.user] = total
            } else if users.removeValue(forKey: entry.user) != nil {
                leaving[entry.user] = now + grace
                changes.leaving.append(entry.user)
            }
        }
        // Gone (grace over, entries expired) and back in the same sync: to the room, nothing happened.
        let back = Set(changes.left).intersection(changes.joined)
        if !back.isEmpty {
            changes.left.removeAll { back.contains($0) }
            changes.joined.removeAll { back.contains($0) }
        }
        changes.users = count
        return changes
    }

    /// Drops expired entries and ended graces. Returns the users to announce `left`.
    mutating func expire(now: Int64) -> [UserID] {
        var left: [UserID] = []
        for (field, expiry) in expiries where expiry <= now {
            let count = connections.removeValue(forKey: field) ?? 0
            expiries[field] = nil
            guard let total = users[field.user] else { continue }
            if total - count > 0 {
                users[field.user] = total - count
            } else {
                users[field.user] = nil
                left.append(field.user)
            }
        }
        for (user, deadline) in leaving where deadline <= now {
            leaving[user] = nil
            left.append(user)
        }
        return left
    }

    /// At most `limit` users by id bytes, with their counts. A user within the grace is
    /// listed with 0 connections: no `left` was announced yet, and a client that builds its
    /// list from this and the events must still see them (if they come back, no `joined` follows).
    public func snapshot(limit: Int) -> PresenceSnapshot {
        let listed =
            users.map { PresenceEntry(user: $0.key, connections: $0.value) }
            + leaving.keys.map { PresenceEntry(user: $0, connections: 0) }
        let sorted = listed.sorted(by: PresenceEntry.precedesByID)
        return PresenceSnapshot(users: Array(sorted.prefix(max(0, limit))), count: count)
    }
}

public import ServiceLifecycle
public import SwitchboardProtocol

/// A user and a connection count: one gateway's, in a sync (0: none any more), or the sum
/// over gateways, in a snapshot.
public struct PresenceEntry: Sendable, Equatable {
    public var user: UserID
    public var connections: Int

    public init(user: UserID, connections: Int) {
        self.user = user
        self.connections = connections
    }

    /// The order of lists: by the users' id bytes (not by Unicode collation, as ids compare).
    public static func precedesByID(_ lhs: PresenceEntry, _ rhs: PresenceEntry) -> Bool {
        lhs.user.rawValue.utf8.lexicographicallyPrecedes(rhs.user.rawValue.utf8)
    }
}

/// What a ``PresenceStore/sync(_:gateway:entries:completion:)`` changed for the whole room,
/// decided atomically by the store, so that each change is reported to exactly one gateway.
public struct PresenceChanges: Sendable, Equatable {
    /// Users present now who were absent before and not within the grace: announce `joined`.
    public var joined: [UserID]
    /// Users whose last connection anywhere just went: `left` is due after the grace, unless
    /// they come back. The reporting gateway syncs the room again then.
    public var leaving: [UserID]
    /// Users whose grace ran out with no connection anywhere, or whose entries expired (a
    /// gateway died): announce `left`.
    public var left: [UserID]
    /// Users present in the room after the sync (those within the grace included).
    public var users: Int

    public init(joined: [UserID] = [], leaving: [UserID] = [], left: [UserID] = [], users: Int = 0) {
        self.joined = joined
        self.leaving = leaving
        self.left = left
        self.users = users
    }
}

/// Who is in a room: at most the limit asked for, and the full count.
public struct PresenceSnapshot: Sendable, Equatable {
    /// Users with their connection counts summed over gateways, ordered by id bytes.
    public var users: [PresenceEntry]
    /// Users in the room; more than `users.count` when the list was capped.
    public var count: Int

    public init(users: [PresenceEntry], count: Int) {
        self.users = users
        self.count = count
    }
}

/// How long presence survives without its gateway, and how long a departure waits.
public struct PresencePolicy: Sendable, Equatable {
    /// An entry lives this long after its gateway last wrote it; gateways refresh theirs
    /// every third of it, so only a gateway that died (or lost the store) lets them expire.
    public var ttl: Duration
    /// How long a user whose last connection went stays listed before `left` is announced:
    /// a reconnect, or a move to another gateway, within it produces no event at all.
    public var grace: Duration

    public init(ttl: Duration = .seconds(60), grace: Duration = .seconds(5)) {
        self.ttl = ttl
        self.grace = grace
    }

    /// How often a gateway rewrites its own entries.
    public var refreshInterval: Duration { ttl / 3 }
}

/// A presence operation that failed; the gateway answers `presence_unavailable`.
public struct PresenceError: Error, Sendable, CustomStringConvertible {
    /// What happened, for logs.
    public var reason: String
    /// The underlying error, when there is one.
    public var cause: (any Error & Sendable)?

    public init(_ reason: String, cause: (any Error & Sendable)? = nil) {
        self.reason = reason
        self.cause = cause
    }

    public var description: String {
        cause.map { "\(reason): \($0)" } ?? reason
    }
}

/// Where the gateways of a deployment keep who is in which room (``MemoryPresence`` for one
/// gateway, `RedisPresence` for several).
///
/// Each gateway owns the entries of its own connections: it writes absolute counts per user
/// and room (``sync(_:gateway:entries:completion:)``) when they change and every
/// ``PresencePolicy/refreshInterval``. The store sums them per user, expires the entries of a
/// gateway that stopped refreshing, and decides the `joined` / `left` transitions atomically,
/// so that a room hears each one once however many gateways report.
///
/// Threading: as for ``Backplane``: any thread, never blocking, completions on the store's
/// own thread (or inline). Operations on one store are applied in the order they were called.
public protocol PresenceStore: Service {
    var policy: PresencePolicy { get }

    /// Whether the store can take operations now; drives `/readyz`.
    var isReady: Bool { get }

    /// Sets this gateway's connection counts for `entries` in `room` (0 removes one) and
    /// renews their expiry; then expires what is overdue in the room (other gateways' stale
    /// entries, graces that ran out). Empty `entries` only does the latter.
    func sync(
        _ room: RoomID,
        gateway: String,
        entries: [PresenceEntry],
        completion: @escaping @Sendable (Result<PresenceChanges, PresenceError>) -> Void
    )

    /// The users in `room` (at most `limit`, ordered by id bytes; which ones a capped list
    /// holds is the store's choice) and their count.
    func read(_ room: RoomID, limit: Int, completion: @escaping @Sendable (Result<PresenceSnapshot, PresenceError>) -> Void)
}

extension PresenceStore {
    /// Async form of ``sync(_:gateway:entries:completion:)``.
    public func sync(_ room: RoomID, gateway: String, entries: [PresenceEntry]) async throws(PresenceError) -> PresenceChanges {
        let result = await withCheckedContinuation { continuation in
            sync(room, gateway: gateway, entries: entries) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }

    /// Async form of ``read(_:limit:completion:)``.
    public func read(_ room: RoomID, limit: Int) async throws(PresenceError) -> PresenceSnapshot {
        let result = await withCheckedContinuation { continuation in
            read(room, limit: limit) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }
}

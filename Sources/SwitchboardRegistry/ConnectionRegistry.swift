package import SwitchboardProtocol
import Synchronization

/// Which users, rooms and connections are on this gateway (centrifuge's Hub).
///
/// Every mutation returns the addresses whose local status it changed, so the
/// gateway binds on the first local connection or member and unbinds on the last,
/// and nothing else. The registry only keeps state; it performs no I/O.
///
/// Threading: all methods take one lock briefly and may be called from any thread,
/// event loops included. `Handle` is what the gateway delivers frames through.
package final class ConnectionRegistry<Handle: Sendable>: Sendable {
    private let state = Mutex(RegistryState<Handle>())

    package init() {}

    /// Adds a connection of `user`.
    /// - Returns: `.user(user)` in `becameLocal` when this is the user's first local connection.
    /// - Precondition: `id` is not registered yet.
    package func add(_ id: ConnectionID, user: UserID, handle: Handle) -> RegistryChange {
        state.withLock { $0.add(id, user: user, handle: handle) }
    }

    /// Removes a connection and every room membership it held.
    /// - Returns: the user and rooms that have no local connection any more; empty if `id` was unknown.
    package func remove(_ id: ConnectionID) -> RegistryChange {
        state.withLock { $0.remove(id) }
    }

    /// Marks connection `id` as leaving (the gateway is draining it): it still receives
    /// what is delivered to its user and rooms, but no longer counts towards them being local.
    /// - Returns: the user and rooms that have no other, non-leaving local connection.
    package func markLeaving(_ id: ConnectionID) -> RegistryChange {
        state.withLock { $0.markLeaving(id) }
    }

    /// Makes connection `id` a member of `room`.
    package func join(_ id: ConnectionID, room: RoomID, maximumRooms: Int = .max) -> JoinResult {
        state.withLock { $0.join(id, room: room, maximumRooms: maximumRooms) }
    }

    /// Ends the membership of connection `id` in `room`.
    /// - Returns: `.room(room)` in `noLongerLocal` when `id` was the room's last local member.
    package func leave(_ id: ConnectionID, room: RoomID) -> RegistryChange {
        state.withLock { $0.leave(id, room: room) }
    }

    /// Whether member connection `id` gets `room`'s presence events (ignored for a non-member;
    /// a leave or close ends it).
    package func setPresenceEvents(_ id: ConnectionID, room: RoomID, wanted: Bool) {
        state.withLock { $0.setPresenceEvents(id, room: room, wanted: wanted) }
    }

    /// The handles of the member connections of `room` that asked for its presence events.
    package func presenceHandles(for room: RoomID) -> [Handle] {
        state.withLock { state in
            guard let ids = state.presenceSubscribers[room] else { return [] }
            return ids.compactMap { state.connections[$0]?.handle }
        }
    }

    /// Whether connection `id` is a member of `room`.
    package func isMember(_ id: ConnectionID, of room: RoomID) -> Bool {
        state.withLock { $0.connections[id]?.rooms.contains(room) ?? false }
    }

    /// Whether `address` has at least one local connection.
    package func isLocal(_ address: LocalAddress) -> Bool {
        state.withLock { state in
            switch address {
            case .user(let user): state.activeUsers[user] != nil
            case .room(let room): state.activeRooms[room] != nil
            }
        }
    }

    /// The handles of every local connection of `address`.
    package func handles(for address: LocalAddress) -> [Handle] {
        state.withLock { state in
            let ids: Set<ConnectionID>?
            switch address {
            case .user(let user): ids = state.users[user]
            case .room(let room): ids = state.rooms[room]
            }
            guard let ids else { return [] }
            return ids.compactMap { state.connections[$0]?.handle }
        }
    }

    /// The handles of every local connection.
    package func allHandles() -> [Handle] {
        state.withLock { $0.connections.values.map(\.handle) }
    }

    /// The ids and handles of every local connection, in id order (oldest first).
    package func allConnections() -> [(id: ConnectionID, handle: Handle)] {
        state.withLock { state in
            state.connections.map { (id: $0.key, handle: $0.value.handle) }.sorted { $0.id.rawValue < $1.id.rawValue }
        }
    }

    /// Counts for metrics and tests: connections (leaving ones included), and users and rooms that are local.
    package var counts: (connections: Int, users: Int, rooms: Int) {
        state.withLock { ($0.connections.count, $0.activeUsers.count, $0.activeRooms.count) }
    }
}

/// What a registry mutation changed about which addresses are local.
package struct RegistryChange: Sendable, Equatable {
    /// Addresses that had no local connection before and have one now.
    package var becameLocal: [LocalAddress] = []
    /// Addresses that had a local connection before and have none now.
    package var noLongerLocal: [LocalAddress] = []
    /// The rooms whose membership of the connection this change ended (``ConnectionRegistry/leave(_:room:)``,
    /// ``ConnectionRegistry/remove(_:)``): presence counts them.
    package var endedMemberships: [RoomID] = []

    package init(becameLocal: [LocalAddress] = [], noLongerLocal: [LocalAddress] = []) {
        self.becameLocal = becameLocal
        self.noLongerLocal = noLongerLocal
    }

    /// Nothing became local or stopped being local (memberships may still have ended).
    package var isEmpty: Bool { becameLocal.isEmpty && noLongerLocal.isEmpty }
}

/// The answer to ``ConnectionRegistry/join(_:room:maximumRooms:)``.
package enum JoinResult: Sendable, Equatable {
    /// Now a member; `roomBecameLocal` when it is the room's first local member.
    case joined(roomBecameLocal: Bool)
    /// Was a member already; nothing changed.
    case alreadyMember
    /// The connection already holds `maximumRooms` memberships.
    case tooManyRooms
    /// No such connection (it closed meanwhile).
    case unknownConnection
    /// The connection is being drained and may not join rooms any more.
    case connectionLeaving
}

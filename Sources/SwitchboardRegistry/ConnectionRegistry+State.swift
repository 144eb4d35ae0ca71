import SwitchboardProtocol

/// The registry's maps, mutated only under the registry's lock.
///
/// `users` and `rooms` list every connection, which is where deliveries go.
/// `activeUsers` and `activeRooms` count only connections that are not leaving (being
/// drained): an address is local while its count is above zero. A leaving connection
/// therefore still receives, while its addresses can already be unbound.
struct RegistryState<Handle> {
    struct Connection {
        var user: UserID
        var handle: Handle
        var rooms: Set<RoomID> = []
        var isLeaving = false
    }

    var connections: [ConnectionID: Connection] = [:]
    var users: [UserID: Set<ConnectionID>] = [:]
    var rooms: [RoomID: Set<ConnectionID>] = [:]
    var activeUsers: [UserID: Int] = [:]
    var activeRooms: [RoomID: Int] = [:]
    /// Per room, the member connections that asked for its presence events.
    var presenceSubscribers: [RoomID: Set<ConnectionID>] = [:]

    mutating func add(_ id: ConnectionID, user: UserID, handle: Handle) -> RegistryChange {
        precondition(connections[id] == nil, "connection \(id) registered twice")
        connections[id] = Connection(user: user, handle: handle)
        users[user, default: []].insert(id)
        var change = RegistryChange()
        if Self.increment(user, in: &activeUsers) { change.becameLocal.append(.user(user)) }
        return change
    }

    mutating func remove(_ id: ConnectionID) -> RegistryChange {
        guard let connection = connections.removeValue(forKey: id) else { return RegistryChange() }
        Self.remove(id, from: connection.user, in: &users)
        for room in connection.rooms {
            Self.remove(id, from: room, in: &rooms)
            Self.remove(id, from: room, in: &presenceSubscribers)
        }
        // A leaving connection was no longer counted: removing it changes nothing local.
        var change = connection.isLeaving ? RegistryChange() : deactivate(connection)
        change.endedMemberships = Array(connection.rooms)
        return change
    }

    mutating func markLeaving(_ id: ConnectionID) -> RegistryChange {
        guard var connection = connections[id], !connection.isLeaving else { return RegistryChange() }
        connection.isLeaving = true
        connections[id] = connection
        return deactivate(connection)
    }

    mutating func join(_ id: ConnectionID, room: RoomID, maximumRooms: Int) -> JoinResult {
        guard var connection = connections[id] else { return .unknownConnection }
        if connection.isLeaving { return .connectionLeaving }
        if connection.rooms.contains(room) { return .alreadyMember }
        guard connection.rooms.count < maximumRooms else { return .tooManyRooms }
        connection.rooms.insert(room)
        connections[id] = connection
        rooms[room, default: []].insert(id)
        return .joined(roomBecameLocal: Self.increment(room, in: &activeRooms))
    }

    mutating func leave(_ id: ConnectionID, room: RoomID) -> RegistryChange {
        guard let isLeaving = connections[id]?.isLeaving, connections[id]?.rooms.remove(room) != nil else { return RegistryChange() }
        Self.remove(id, from: room, in: &rooms)
        Self.remove(id, from: room, in: &presenceSubscribers)
        var change = RegistryChange()
        change.endedMemberships = [room]
        if !isLeaving, Self.decrement(room, in: &activeRooms) { change.noLongerLocal = [.room(room)] }
        return change
    }

    mutating func setPresenceEvents(_ id: ConnectionID, room: RoomID, wanted: Bool) {
        guard wanted else { return Self.remove(id, from: room, in: &presenceSubscribers) }
        guard connections[id]?.rooms.contains(room) == true else { return }
        presenceSubscribers[room, default: []].insert(id)
    }

    /// Stops counting `connection` towards its user and rooms.
    private mutating func deactivate(_ connection: Connection) -> RegistryChange {
        var change = RegistryChange()
        if Self.decrement(connection.user, in: &activeUsers) { change.noLongerLocal.append(.user(connection.user)) }
        for room in connection.rooms where Self.decrement(room, in: &activeRooms) {
            change.noLongerLocal.append(.room(room))
        }
        return change
    }

    /// Counts one more; true when the count was zero.
    private static func increment<Key: Hashable>(_ key: Key, in counts: inout [Key: Int]) -> Bool {
        let before = counts[key, default: 0]
        counts[key] = before + 1
        return before == 0
    }

    /// Counts one less; true when the count reached zero (and was dropped).
    private static func decrement<Key: Hashable>(_ key: Key, in counts: inout [Key: Int]) -> Bool {
        guard let before = counts[key] else { return false }
        if before <= 1 {
            counts[key] = nil
            return true
        }
        counts[key] = before - 1
        return false
    }

    private static func remove<Key: Hashable>(_ id: ConnectionID, from key: Key, in map: inout [Key: Set<ConnectionID>]) {
        guard var members = map[key] else { return }
        members.remove(id)
        map[key] = members.isEmpty ? nil : members
    }
}

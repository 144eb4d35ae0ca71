import SwitchboardProtocol

/// The registry's maps, mutated only under the registry's lock.
struct RegistryState<Handle> {
    struct Connection {
        var user: UserID
        var handle: Handle
        var rooms: Set<RoomID> = []
    }

    var connections: [ConnectionID: Connection] = [:]
    var users: [UserID: Set<ConnectionID>] = [:]
    var rooms: [RoomID: Set<ConnectionID>] = [:]

    mutating func add(_ id: ConnectionID, user: UserID, handle: Handle) -> RegistryChange {
        precondition(connections[id] == nil, "connection \(id) registered twice")
        connections[id] = Connection(user: user, handle: handle)
        var change = RegistryChange()
        if users[user, default: []].isEmpty { change.becameLocal.append(.user(user)) }
        users[user, default: []].insert(id)
        return change
    }

    mutating func remove(_ id: ConnectionID) -> RegistryChange {
        guard let connection = connections.removeValue(forKey: id) else { return RegistryChange() }
        var change = RegistryChange()
        if Self.remove(id, from: connection.user, in: &users) { change.noLongerLocal.append(.user(connection.user)) }
        for room in connection.rooms where Self.remove(id, from: room, in: &rooms) {
            change.noLongerLocal.append(.room(room))
        }
        return change
    }

    mutating func join(_ id: ConnectionID, room: RoomID, maximumRooms: Int) -> JoinResult {
        guard var connection = connections[id] else { return .unknownConnection }
        if connection.rooms.contains(room) { return .alreadyMember }
        guard connection.rooms.count < maximumRooms else { return .tooManyRooms }
        connection.rooms.insert(room)
        connections[id] = connection
        let first = rooms[room] == nil
        rooms[room, default: []].insert(id)
        return .joined(roomBecameLocal: first)
    }

    mutating func leave(_ id: ConnectionID, room: RoomID) -> RegistryChange {
        guard connections[id]?.rooms.remove(room) != nil else { return RegistryChange() }
        return Self.remove(id, from: room, in: &rooms) ? RegistryChange(noLongerLocal: [.room(room)]) : RegistryChange()
    }

    /// Removes `id` from `key`'s set; true when the set became empty (and was dropped).
    private static func remove<Key: Hashable>(_ id: ConnectionID, from key: Key, in map: inout [Key: Set<ConnectionID>]) -> Bool {
        guard var members = map[key] else { return false }
        members.remove(id)
        if members.isEmpty {
            map[key] = nil
            return true
        }
        map[key] = members
        return false
    }
}

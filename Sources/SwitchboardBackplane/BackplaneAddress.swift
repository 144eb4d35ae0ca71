public import SwitchboardProtocol

/// Where a frame is published and what a gateway binds: one user, one room, or every gateway.
public enum BackplaneAddress: Hashable, Sendable, CustomStringConvertible {
    case user(UserID)
    case room(RoomID)
    case broadcast

    /// The AMQP routing key / channel name form: `user.<word>`, `room.<word>`, `broadcast`.
    public var routingKey: String {
        switch self {
        case .user(let id): "user." + RoutingWord.encode(id)
        case .room(let id): "room." + RoutingWord.encode(id)
        case .broadcast: "broadcast"
        }
    }

    public var description: String { routingKey }
}

extension BackplaneAddress {
    /// The address a routing key of this topology names; nil for keys Switchboard never binds.
    public init?(routingKey: String) {
        if routingKey == "broadcast" {
            self = .broadcast
            return
        }
        let parts = routingKey.split(separator: ".", maxSplits: 1)
        guard parts.count == 2, let id = RoutingWord.decode(String(parts[1])) else { return nil }
        switch parts[0] {
        case "user":
            guard let user = try? UserID(validating: id) else { return nil }
            self = .user(user)
        case "room":
            guard let room = try? RoomID(validating: id) else { return nil }
            self = .room(room)
        default:
            return nil
        }
    }
}
